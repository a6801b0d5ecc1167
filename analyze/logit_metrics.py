"""Logit-distribution metrics of docs/METRICS.md section 2, per token position, in float64.

With ``x = a - max(a)`` and ``y = b - max(b)`` (shifted logits, float64), ``ea = exp(x)``, ``sa = sum(ea)``,
``p = ea/sa`` and ``log p = x - log sa`` (likewise ``q``), every metric reduces to a few dot products over the
vocabulary, so a row costs three float64 transcendental passes (two ``exp``, one ``log`` for JS) plus cheap
arithmetic:

    kl         = p·d - c                 d = x - y, c = log sa - log sb  (so log p - log q = d - c)
    kl_reverse = c - q·d
    js         = (p·x - log sa + q·y - log sb)/2 - (m'·log m')/2 + ln 2,   m' = p + q
    kl_abs_variant = p·|d - c|

With numba installed (the ``fast`` extra), ``analyze/logit_kernels.py`` computes those sums in fused compiled
loops with vector float64 ``exp``/``log`` (~4.5x faster; numpy's are scalar libm calls here); without it, numpy does
(``_divergences_numpy``). Both paths are tested against the same plain float64 reference.

Top-k uses a block-maximum prefilter (the top k of a row lie in the k blocks with the largest maxima), so it costs
one pass instead of a full partition. Rows are processed in tiles by a small thread pool: numpy and the compiled
loops release the GIL, so the tiles run in parallel.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common.compiled import load

#: Per-token metric names, in report order.
LOGIT_METRICS = ("kl", "kl_reverse", "js", "kl_abs_variant", "top1_agree", "topk_overlap", "delta_p",
                 "nll_ref", "nll_cand", "fms_ce", "fms_diff_mean", "fms_prob_mean", "fms_prob_std")
DEFAULT_TOPK = 10
FMS_TOPK = 20
_TILE_ELEMENTS = 1 << 17
_TILE_ELEMENTS_COMPILED = 1 << 20
_BLOCK = 128  # block length of the top-k prefilter
_LN2 = math.log(2.0)


def topk_indices(rows: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of each row (unordered), shape ``(n, k)``; NaN-free input assumed.

    Args:
        rows: ``(n, V)`` array.
        k: how many (clipped to V).
    """
    n, v = rows.shape
    k = min(k, v)
    nb = v // _BLOCK
    if nb <= 2 * k:
        return np.argpartition(rows, v - k, axis=1)[:, v - k:]
    # block j holds the elements j, j + nb, j + 2nb, ...: the maxima are then an elementwise maximum of _BLOCK
    # contiguous slices (vector code, ~2.5x faster than reducing contiguous blocks of _BLOCK)
    body = rows[:, :nb * _BLOCK].reshape(n, _BLOCK, nb)
    block_max = body.max(axis=1)
    blocks = np.argpartition(block_max, nb - k, axis=1)[:, nb - k:]  # (n, k)
    cand_idx = (blocks[:, None, :] + nb * np.arange(_BLOCK)[None, :, None]).reshape(n, _BLOCK * k)
    if nb * _BLOCK < v:  # the ragged tail is always a candidate
        tail = np.arange(nb * _BLOCK, v)
        cand_idx = np.concatenate([cand_idx, np.broadcast_to(tail, (n, tail.size))], axis=1)
    cand = np.take_along_axis(rows, cand_idx, axis=1)
    pick = np.argpartition(cand, cand.shape[1] - k, axis=1)[:, cand.shape[1] - k:]
    return np.take_along_axis(cand_idx, pick, axis=1)


def _top_of(rows: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """The k largest of each row among the indices ``idx`` (the top-k of a row from its top-K, K >= k)."""
    if idx.shape[1] <= k:
        return idx
    vals = np.take_along_axis(rows, idx, axis=1)
    return np.take_along_axis(idx, np.argpartition(vals, idx.shape[1] - k, axis=1)[:, idx.shape[1] - k:], axis=1)


def _rowdot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, y)


class _Scratch:
    """float64 buffers of one worker thread, reused across tiles (no per-tile allocation)."""

    def __init__(self, elements: int):
        self.x = np.empty(elements)
        self.y = np.empty(elements)
        self.ea = np.empty(elements)
        self.eb = np.empty(elements)
        self.t = np.empty(elements)

    def view(self, name: str, n: int, v: int) -> np.ndarray:
        return getattr(self, name)[:n * v].reshape(n, v)


def _divergences_numpy(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray, s: _Scratch) -> tuple:
    """``(sa, sb, p·x, q·y, p·d, q·d, p·|d - c|, m'·log m')`` per row with numpy (see the module docstring)."""
    n, v = a.shape
    x, y, ea, eb, t = (s.view(nm, n, v) for nm in ("x", "y", "ea", "eb", "t"))
    np.subtract(a, ma[:, None], out=x, dtype=np.float64)
    np.subtract(b, mb[:, None], out=y, dtype=np.float64)
    np.exp(x, out=ea)
    np.exp(y, out=eb)
    sa, sb = ea.sum(axis=1), eb.sum(axis=1)
    c = np.log(sa) - np.log(sb)
    ea *= (1.0 / sa)[:, None]  # p
    eb *= (1.0 / sb)[:, None]  # q
    px, qy = _rowdot(ea, x), _rowdot(eb, y)
    np.subtract(x, y, out=t)  # d
    pd, qd = _rowdot(ea, t), _rowdot(eb, t)
    t -= c[:, None]
    np.abs(t, out=t)
    p_abs = _rowdot(ea, t)
    np.add(ea, eb, out=t)  # m' = p + q = 2m
    np.log(t, out=x)
    return sa, sb, px, qy, pd, qd, p_abs, _rowdot(t, x)


def _divergences_compiled(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray, kernels,
                          s: _Scratch) -> tuple:
    """The same sums by ``analyze.logit_kernels`` (one fused pass per side and one for JS, vector exp/log)."""
    n, v = a.shape
    if a.dtype != b.dtype:  # one compiled variant per dtype: a mixed pair is widened, one tile at a time
        a, b = a.astype(np.float64), b.astype(np.float64)
    sums = np.empty((n, 8))
    kernels.row_sums(_probed_layout(a), _probed_layout(b), ma, mb, sums, s.ea, s.eb, s.t)
    sa, sb, sax, say, sbx, sby, sabs, smlogm = sums.T
    return sa, sb, sax / sa, sby / sb, (sax - say) / sa, (sbx - sby) / sb, sabs / sa, smlogm


def _tile_metrics(a: np.ndarray, b: np.ndarray, labels: np.ndarray, k: int, s: _Scratch, kernels) -> dict:
    n, v = a.shape
    r = np.arange(n)
    out = {}
    ia, ib = np.argmax(a, axis=1), np.argmax(b, axis=1)
    ma, mb = a[r, ia].astype(np.float64), b[r, ib].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if kernels is not None:
            sa, sb, px, qy, pd, qd, p_abs, mlogm = _divergences_compiled(a, b, ma, mb, kernels, s)
        else:
            sa, sb, px, qy, pd, qd, p_abs, mlogm = _divergences_numpy(a, b, ma, mb, s)
        lsa, lsb = np.log(sa), np.log(sb)
        c = lsa - lsb
        out["kl"] = pd - c
        out["kl_reverse"] = c - qd
        out["kl_abs_variant"] = p_abs
        out["js"] = 0.5 * (px - lsa + qy - lsb) - 0.5 * mlogm + _LN2
        has = labels >= 0
        lab = np.where(has, labels, 0)
        xl = a[r, lab].astype(np.float64) - ma  # the shifted logits of the labels
        yl = b[r, lab].astype(np.float64) - mb
        out["nll_ref"] = np.where(has, lsa - xl, np.nan)
        out["nll_cand"] = np.where(has, lsb - yl, np.nan)
        out["delta_p"] = np.where(has, np.exp(yl) / sb - np.exp(xl) / sa, np.nan)
    bad = ~(np.isfinite(out["kl"]) & np.isfinite(out["js"]) & np.isfinite(out["kl_abs_variant"]))
    if bad.any():  # -inf logits (masked vocabulary), NaN or Inf: redo those rows with explicit conventions
        for i in np.flatnonzero(bad):
            row = _row_slow(a[i].astype(np.float64), b[i].astype(np.float64))
            for name, val in row.items():
                out[name][i] = val
    out["top1_agree"] = (ia == ib).astype(np.float64)
    fa = topk_indices(a, max(k, FMS_TOPK))
    ta, tb = _top_of(a, fa, min(k, v)), topk_indices(b, k)
    out["topk_overlap"] = _overlap(ta, tb) / min(k, v)
    out.update(_fms(a, b, _top_of(a, fa, min(FMS_TOPK, v))))
    return out


_COMPILED_TYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _probed_layout(x: np.ndarray) -> np.ndarray:
    """``x`` as the C-contiguous, writable array the kernels were probed with (a copy of one tile otherwise): numba
    compiles anew, for seconds, for each other layout or a read-only array."""
    return x if x.flags.c_contiguous and x.flags.writeable else np.array(x, order="C")


def _probe(kernels) -> None:
    for dtype in _COMPILED_TYPES:
        x = np.zeros((1, 3), dtype=dtype)
        kernels.row_sums(x, x, np.zeros(1), np.zeros(1), np.empty((1, 8)), np.empty(3), np.empty(3), np.empty(3))
        kernels.exp_sums(x, np.zeros(1), np.empty(1), np.empty(3))


def _kernels():
    """``analyze.logit_kernels``, or None without numba (then numpy does the work); imported once."""
    return load("analyze.logit_kernels", _probe)


def _overlap(ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
    sa, sb = np.sort(ta, axis=1), np.sort(tb, axis=1)
    return np.array([np.intersect1d(x, y, assume_unique=True).size for x, y in zip(sa, sb)], dtype=np.float64)


def _fms(a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> dict:
    """aiu-fms-testing-utils metrics over the reference's top-k (renormalised softmax over those k)."""
    ra = np.take_along_axis(a, idx, axis=1).astype(np.float64)
    tb = np.take_along_axis(b, idx, axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        lpr = ra - ra.max(axis=1, keepdims=True)
        lpr -= np.log(np.exp(lpr).sum(axis=1, keepdims=True))
        lpt = tb - tb.max(axis=1, keepdims=True)
        lpt -= np.log(np.exp(lpt).sum(axis=1, keepdims=True))
        pr, pt = np.exp(lpr), np.exp(lpt)
        ratio = pr / pt
        return {"fms_ce": -(pt * lpr).sum(axis=1),
                "fms_diff_mean": np.abs(pr - pt).mean(axis=1),
                "fms_prob_mean": ratio.mean(axis=1) - 1.0,
                "fms_prob_std": ratio.std(axis=1, ddof=1) if ratio.shape[1] > 1 else np.full(len(ratio), np.nan)}


def _row_slow(a: np.ndarray, b: np.ndarray) -> dict:
    """One row with explicit conventions: 0·log 0 = 0; p>0 where q=0 gives +inf; NaN/+Inf logits give NaN."""
    if np.isnan(a).any() or np.isnan(b).any() or np.isposinf(a).any() or np.isposinf(b).any():
        return {"kl": math.nan, "kl_reverse": math.nan, "js": math.nan, "kl_abs_variant": math.nan}
    if np.isneginf(a).all() or np.isneginf(b).all():
        return {"kl": math.nan, "kl_reverse": math.nan, "js": math.nan, "kl_abs_variant": math.nan}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lp = a - (a.max() + math.log(np.exp(a - a.max()).sum()))
        lq = b - (b.max() + math.log(np.exp(b - b.max()).sum()))
        p, q = np.exp(lp), np.exp(lq)
        m = 0.5 * (p + q)
        lm = np.log(m)

        def xlogy_ratio(w, lw, lz):
            terms = np.where(w > 0, w * (lw - lz), 0.0)
            return float(terms.sum())

        kl = xlogy_ratio(p, lp, lq)
        kl_rev = xlogy_ratio(q, lq, lp)
        js = 0.5 * xlogy_ratio(p, lp, lm) + 0.5 * xlogy_ratio(q, lq, lm)
        absv = float(np.where(p > 0, p * np.abs(lp - lq), 0.0).sum())
    return {"kl": kl, "kl_reverse": kl_rev, "js": js, "kl_abs_variant": absv}


def token_metrics(a: np.ndarray, b: np.ndarray, labels: np.ndarray | None = None, *, k: int = DEFAULT_TOPK,
                  threads: int | None = None) -> dict[str, np.ndarray]:
    """Every logit metric for each row (token position) of two ``(n, V)`` logit arrays.

    Args:
        a: reference logits, ``(n, V)`` (any float dtype; upcast to float64 internally).
        b: candidate logits, same shape.
        labels: next-token id per row, ``-1`` where the position is not scored (``nll_*`` and ``delta_p`` are NaN
            there); ``None`` for no labels.
        k: ``topk_overlap``'s k (the fms metrics always use k=20, as aiu-fms-testing-utils does).
        threads: worker threads (default: CPU count, at most 4).

    Returns:
        metric name -> float64 array of length n (``top1_agree`` is 0/1).

    Raises:
        ValueError: shapes differ or are not 2-d.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"logit arrays must be two (n, V) arrays of one shape, got {a.shape} and {b.shape}")
    n, v = a.shape
    labels = np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if (labels >= v).any():
        raise ValueError(f"a label is outside the vocabulary of {v}")
    if n == 0 or v == 0:
        return {m: np.empty(0) for m in LOGIT_METRICS}
    kernels = _kernels() if a.dtype in _COMPILED_TYPES and b.dtype in _COMPILED_TYPES else None
    # the compiled path needs scratch for one row only, so its tiles can be larger (fewer numpy calls per row)
    rows = max(1, (_TILE_ELEMENTS_COMPILED if kernels is not None else _TILE_ELEMENTS) // v)
    starts = list(range(0, n, rows))
    workers = max(1, min(threads or min(os.cpu_count() or 1, 4), len(starts)))
    elements = v if kernels is not None else rows * v
    results: list[dict] = [None] * len(starts)  # type: ignore[list-item]

    def run(worker: int) -> None:
        scratch = _Scratch(elements)
        for j in range(worker, len(starts), workers):
            s = starts[j]
            results[j] = _tile_metrics(a[s:s + rows], b[s:s + rows], labels[s:s + rows], k, scratch, kernels)

    if workers == 1:
        run(0)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(run, w) for w in range(workers)]:
                f.result()
    return {m: np.concatenate([r[m] for r in results]) for m in LOGIT_METRICS}


def nll_only(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``-log softmax(logits)[label]`` per row in float64 (NaN where label < 0); for perplexity of one dump."""
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    n, v = logits.shape
    out = np.full(n, np.nan)
    kernels = _kernels() if logits.dtype in _COMPILED_TYPES else None
    rows = max(1, _TILE_ELEMENTS // max(v, 1))
    buf = np.empty(v if kernels is not None else rows * v)
    for s in range(0, n, rows):
        blk = logits[s:s + rows]
        m = blk.shape[0]
        mx = blk.max(axis=1).astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            if kernels is not None:
                sums = np.empty(m)
                kernels.exp_sums(_probed_layout(blk), mx, sums, buf)
            else:
                x = buf[:m * v].reshape(m, v)
                np.subtract(blk, mx[:, None], out=x, dtype=np.float64)
                np.exp(x, out=x)
                sums = x.sum(axis=1)
            lse = np.log(sums) + mx
            lab = labels[s:s + m]
            has = lab >= 0
            picked = blk[np.arange(m), np.where(has, lab, 0)].astype(np.float64)
            out[s:s + m] = np.where(has, lse - picked, np.nan)
    return out
