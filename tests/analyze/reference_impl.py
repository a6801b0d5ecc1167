"""Independent, plainly written float64 implementations of docs/METRICS.md sections 1-2, for the tests only (no
analyze imports)."""
from __future__ import annotations

import math

import numpy as np


def tensor_reference(a, b, atol=1e-5, rtol=1e-5) -> dict:
    """Tensor metrics by direct formulas over the positions finite on both sides."""
    a = np.asarray(a, dtype=np.float64).reshape(-1) if np.asarray(a).ndim else np.asarray(a, np.float64).reshape(1)
    b = np.asarray(b, dtype=np.float64).reshape(-1) if np.asarray(b).ndim else np.asarray(b, np.float64).reshape(1)
    nan_mm = int(sum(1 for x, y in zip(a, b) if math.isnan(x) != math.isnan(y)))
    inf_mm = int(sum(1 for x, y in zip(a, b)
                     if math.isinf(x) != math.isinf(y) or (math.isinf(x) and math.isinf(y) and x != y)))
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = a - b
    n = a.size
    mse = float(np.sum(d ** 2) / n)
    na, nb = math.sqrt(float(np.sum(a ** 2))), math.sqrt(float(np.sum(b ** 2)))
    nd = math.sqrt(float(np.sum(d ** 2)))
    rel = (0.0 if nd == 0 else math.inf) if na == 0 else nd / na
    if na == 0 and nb == 0:
        cos = 1.0
    elif na == 0 or nb == 0:
        cos = 0.0
    else:
        cos = float(np.sum(a * b)) / (na * nb)
    sig, noise = float(np.sum(a ** 2)), float(np.sum(d ** 2))
    sqnr = math.inf if noise == 0 else (-math.inf if sig == 0 else 10 * math.log10(sig / noise))
    peak = float(np.max(np.abs(a)))
    psnr = math.inf if mse == 0 else (-math.inf if peak == 0 else 10 * math.log10(peak ** 2 / mse))
    fails = sum(1 for x, y in zip(a, b) if abs(x - y) > atol and abs(x - y) > rtol * abs(x))
    return {"max_abs_diff": float(np.max(np.abs(d))), "mean_abs_diff": float(np.mean(np.abs(d))), "mse": mse,
            "rmse": math.sqrt(mse), "rel_l2": rel, "cosine": cos, "sqnr_db": sqnr, "psnr_db": psnr,
            "allclose_frac": (n - fails) / n, "nan_mismatch": float(nan_mm), "inf_mismatch": float(inf_mm)}


def row_cosines(a, b) -> list[float]:
    """Cosine per row over the last dimension, with cosine's zero conventions (non-finite positions dropped)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    r = a.shape[-1] if a.ndim else 1
    out = []
    for x, y in zip(a.reshape(-1, r), b.reshape(-1, r)):
        k = np.isfinite(x) & np.isfinite(y)
        x, y = x[k], y[k]
        nx, ny = math.sqrt(sum(v * v for v in x)), math.sqrt(sum(v * v for v in y))
        out.append(1.0 if nx == 0 and ny == 0 else 0.0 if nx == 0 or ny == 0 else sum(x * y) / (nx * ny))
    return out


def logit_reference(a_row, b_row, label=None, k=10, fms_k=20) -> dict:
    """Logit metrics of one token position by direct formulas (float64 log_softmax)."""
    a = np.asarray(a_row, np.float64)
    b = np.asarray(b_row, np.float64)
    lp = a - (a.max() + math.log(np.sum(np.exp(a - a.max()))))
    lq = b - (b.max() + math.log(np.sum(np.exp(b - b.max()))))
    p, q = np.exp(lp), np.exp(lq)
    m = (p + q) / 2
    out = {"kl": float(np.sum(p * (lp - lq))), "kl_reverse": float(np.sum(q * (lq - lp))),
           "js": float(0.5 * np.sum(p * (lp - np.log(m))) + 0.5 * np.sum(q * (lq - np.log(m)))),
           "kl_abs_variant": float(np.sum(p * np.abs(lp - lq))),
           "top1_agree": float(np.argmax(a) == np.argmax(b)),
           "topk_overlap": len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k}
    if label is not None:
        out["delta_p"] = float(q[label] - p[label])
        out["nll_ref"] = float(-lp[label])
        out["nll_cand"] = float(-lq[label])
    idx = np.argsort(-a)[:fms_k]
    r, t = a[idx], b[idx]
    pr = np.exp(r - r.max()) / np.sum(np.exp(r - r.max()))
    pt = np.exp(t - t.max()) / np.sum(np.exp(t - t.max()))
    ratio = pr / pt
    out["fms_ce"] = float(-np.sum(pt * np.log(pr)))
    out["fms_diff_mean"] = float(np.mean(np.abs(pr - pt)))
    out["fms_prob_mean"] = float(np.mean(ratio) - 1)
    out["fms_prob_std"] = float(np.std(ratio, ddof=1))
    return out
