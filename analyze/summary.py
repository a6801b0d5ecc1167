"""Summary statistics: aggregation across samples and steps (docs/METRICS.md section 5) and the llama.cpp
``perplexity --kl-divergence`` statistic block over tokens (docs/METRICS.md section 3)."""
from __future__ import annotations

import math

import numpy as np

#: Aggregate statistics per site and metric, in report order.
AGGREGATES = ("mean", "std", "min", "max", "p50", "p90", "p99")
KL_PERCENTILES = (("max", 100.0), ("p99.9", 99.9), ("p99", 99.0), ("p95", 95.0), ("p90", 90.0), ("median", 50.0),
                  ("p10", 10.0), ("p5", 5.0), ("p1", 1.0), ("p0.1", 0.1), ("min", 0.0))
DELTA_P_PERCENTILES = (("max", 100.0), ("p99.9", 99.9), ("p99", 99.0), ("p95", 95.0), ("p90", 90.0),
                       ("p75", 75.0), ("median", 50.0), ("p25", 25.0), ("p10", 10.0), ("p5", 5.0), ("p1", 1.0),
                       ("p0.1", 0.1), ("min", 0.0))


def aggregate(values) -> dict:
    """Aggregate one metric's values over samples/steps (docs/METRICS.md section 5).

    ``mean``/``std`` (population) use the finite values only; when every value is +inf they are +inf and 0 (likewise
    -inf); ``min``/``max``/percentiles include infinities (winml-cli's convention). ``None`` and NaN values are
    left out everywhere and counted in ``n_nan``; ``n_nonfinite`` counts the infinities.

    Args:
        values: iterable of floats (``None`` allowed).

    Returns:
        ``{"n", "n_nonfinite", "n_nan", "mean", "std", "min", "max", "p50", "p90", "p99"}``; the statistics are
        ``None`` when no value is a number.
    """
    raw = [math.nan if v is None else float(v) for v in values]
    arr = np.asarray(raw, dtype=np.float64)
    nan = np.isnan(arr)
    nums = arr[~nan]
    out = {"n": int(arr.size), "n_nonfinite": int(np.isinf(nums).sum()), "n_nan": int(nan.sum())}
    if nums.size == 0:
        out.update({k: None for k in AGGREGATES})
        return out
    finite = nums[np.isfinite(nums)]
    if finite.size:
        mean, std = float(finite.mean()), float(finite.std())
    elif (nums == math.inf).all():
        mean, std = math.inf, 0.0
    elif (nums == -math.inf).all():
        mean, std = -math.inf, 0.0
    else:  # only infinities of both signs: no meaningful mean
        mean, std = math.nan, math.nan
    ordered = np.sort(nums)
    p50, p90, p99 = (_percentile_linear(ordered, q) for q in (50, 90, 99))
    out.update({"mean": mean, "std": std, "min": float(ordered[0]), "max": float(ordered[-1]),
                "p50": p50, "p90": p90, "p99": p99})
    return out


def _percentile_linear(ordered: np.ndarray, q: float) -> float:
    """Percentile ``q`` of sorted values by linear interpolation at ``q/100 * (n-1)`` (docs/METRICS.md section 5).

    Equals ``np.percentile(x, q)`` bit for bit on finite values (it mirrors numpy's ``_lerp``, including its
    ``t >= 0.5`` branch) without its per-call overhead. Next to an infinity it gives the limit, where numpy's lerp
    gives NaN (``inf * 0``, ``inf - inf``): p50 of ``[1, 2, inf]`` is 2, p90 of ``[1, inf]`` is inf.
    """
    pos = q / 100.0 * (ordered.size - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, ordered.size - 1)
    t = pos - lo
    a, b = float(ordered[lo]), float(ordered[hi])
    if t == 0.0 or a == b:
        return a
    if math.isinf(a) and math.isinf(b):  # -inf then +inf: no defined value between them
        return math.nan
    if math.isinf(a) or math.isinf(b):  # any weight on an infinity gives that infinity
        return a if math.isinf(a) else b
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


def mean_and_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and llama.cpp's standard error sqrt((mean(x²) - mean(x)²)/(n-1)); SE is 0 when n <= 10."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if n <= 10:
        return mean, 0.0
    var = float(np.mean(x * x)) - mean * mean
    return mean, math.sqrt(max(var, 0.0) / (n - 1))


def _percentiles(x: np.ndarray, table) -> dict:
    if x.size == 0:
        return {name: None for name, _ in table}
    vals = np.percentile(x, [q for _, q in table])  # linear interpolation at f·(n-1)
    return {name: float(v) for (name, _), v in zip(table, vals)}


def llama_kl_statistics(nll_ref, nll_cand, kl, delta_p, top1_agree) -> dict:
    """The llama.cpp ``perplexity --kl-divergence`` statistic block over n scored tokens (docs/METRICS.md section 3).

    Args:
        nll_ref, nll_cand: per-token negative log-likelihoods of the true next token (natural log), or None
            when there are no labels (the perplexity entries are then None).
        kl: per-token KL(reference ‖ candidate).
        delta_p: per-token q[y] - p[y], or None without labels.
        top1_agree: per-token 0/1.

    Returns:
        A JSON-ready dict: ``n``, ``ppl_ref``/``ppl_cand`` (value, se), ``cor_ln_ppl``, ``mean_ln_ppl_ratio``
        (value, se), ``ppl_ratio`` (value, se), ``kl`` (mean, se, percentiles), ``delta_p`` (mean, se, rms,
        percentiles), ``same_top_p`` (value, se).
    """
    kl, agree = np.asarray(kl, np.float64), np.asarray(top1_agree, np.float64)
    n = int(kl.size)
    out: dict = {"n": n}
    if nll_ref is None or nll_cand is None:  # no labels: no perplexity part
        out.update({"ppl_ref": None, "ppl_cand": None, "cor_ln_ppl": None, "mean_ln_ppl_ratio": None,
                    "ppl_ratio": None})
    else:
        out.update(_ppl_block(np.asarray(nll_ref, np.float64), np.asarray(nll_cand, np.float64)))
    mk, sek = mean_and_se(kl)
    out["kl"] = {"mean": mk, "se": sek, **_percentiles(kl, KL_PERCENTILES)}
    if delta_p is None:
        out["delta_p"] = None
    else:
        dp = np.asarray(delta_p, np.float64)
        mdp, sedp = mean_and_se(dp)
        out["delta_p"] = {"mean": mdp, "se": sedp, "rms": math.sqrt(float(np.mean(dp * dp))) if dp.size else math.nan,
                          **_percentiles(dp, DELTA_P_PERCENTILES)}
    p = float(agree.mean()) if n else math.nan
    out["same_top_p"] = {"value": p, "se": math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0}
    return out


def _ppl_block(nr: np.ndarray, nc: np.ndarray) -> dict:
    n = int(nr.size)
    out: dict = {}
    mr, ser = mean_and_se(nr)
    mc, sec = mean_and_se(nc)
    ppl_r, ppl_c = (math.exp(mr), math.exp(mc)) if n else (math.nan, math.nan)
    out["ppl_ref"] = {"value": ppl_r, "se": ppl_r * ser}
    out["ppl_cand"] = {"value": ppl_c, "se": ppl_c * sec}
    out["cor_ln_ppl"] = float(np.corrcoef(nr, nc)[0, 1]) if n > 1 and nr.std() > 0 and nc.std() > 0 else None
    md = float((nc - nr).mean()) if n else math.nan
    if n > 10:
        cov = (float(np.mean(nr * nc)) - mr * mc) / (n - 1)
        se_d = math.sqrt(max(sec * sec + ser * ser - 2.0 * cov, 0.0))
    else:
        se_d = 0.0
    out["mean_ln_ppl_ratio"] = {"value": md, "se": se_d}
    ratio = math.exp(md) if n else math.nan
    out["ppl_ratio"] = {"value": ratio, "se": ratio * se_d}
    return out
