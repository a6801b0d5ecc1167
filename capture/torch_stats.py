"""Tensor statistics computed where the tensor lives; only a few numbers cross to the host.

On an accelerator, torch computes them on the device. On the CPU, protocol.compute_stats runs over a zero-copy
numpy view (the same numbers, exactly, and faster on a busy machine).

The device path (``device_stats``) agrees with ``protocol.compute_stats`` (float64 over the finite elements;
population std; l2 from the mean and the centred sum of squares; Chan's combination across blocks) to about 1e-13
relative. Per block (protocol.stats' block size): ``aminmax`` in the tensor's own dtype (exact), a float64 sum for
the mean, and the sum of the squared centred values (a second pass is cheaper than torch's one-pass ``var_mean``,
and stable). The per-block numbers stay on the device until one final ``tolist()``, so an accelerator synchronises
once per tensor. Tensors holding NaN or Inf take a masked path.
"""
from __future__ import annotations

import math

import torch

from protocol import TensorStats, compute_stats

_NAN = float("nan")
_BLOCK = 1 << 17  # elements per block, as protocol.stats uses (its _BLOCK): the same blocks give the same rounding
_NUMPY_TYPES = {torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16, torch.int8,
                torch.uint8, torch.bool}
_BIT_TYPES = {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
              if hasattr(torch, n)}


def torch_stats(t: torch.Tensor) -> TensorStats:
    """Statistics of a tensor (any device, any real dtype) as ``protocol.TensorStats``, computed where it lives.

    Args:
        t: the tensor; bool counts as 0/1, bfloat16 and fp8 are widened to float32 (exact).

    Returns:
        The statistics; min/max/mean/std/abs_max/l2 are NaN when no element is finite.
    """
    if t.device.type == "cpu" and t.dtype in _NUMPY_TYPES:
        # on the host, protocol's own single-threaded numpy pass over a zero-copy view: identical numbers, and no
        # OpenMP thread team per small reduction (those stall for a scheduler tick when the cores are busy)
        return compute_stats(t.detach().numpy())
    if t.device.type == "cpu" and t.dtype in (torch.bfloat16, *_BIT_TYPES):
        return compute_stats(t.detach().to(torch.float32).numpy())  # exact widening
    return device_stats(t)


def device_stats(t: torch.Tensor) -> TensorStats:
    """Statistics computed by torch on the tensor's device (see the module docstring); any device, any real dtype."""
    with torch.no_grad():
        numel = t.numel()
        if numel == 0:
            return TensorStats(0, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, 0, 0)
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        elif t.dtype in _BIT_TYPES:
            t = t.to(torch.float32)
        x = t.reshape(-1)
        parts = [_block_moments(x[i:i + _BLOCK]) for i in range(0, numel, _BLOCK)]
        rows = torch.stack(parts).tolist()
        if t.is_floating_point() and not all(math.isfinite(r[2]) for r in rows):
            return _masked(x, numel)
        return _combine(numel, rows, 0, 0)


def _block_moments(x: torch.Tensor) -> torch.Tensor:
    """``[count, min, mean, m2, max]`` of a flat block, as a float64 tensor on the block's device."""
    lo, hi = torch.aminmax(x)
    x64 = x.to(torch.float64)
    n = x64.numel()
    mean = x64.sum() / n
    m2 = (x64 - mean).square_().sum()
    return torch.stack([torch.tensor(float(n), dtype=torch.float64, device=x.device), lo.to(torch.float64),
                        mean, m2, hi.to(torch.float64)])


def _masked(x: torch.Tensor, numel: int) -> TensorStats:
    """The slow path for tensors holding NaN or Inf: statistics over the finite elements, plus the counts."""
    rows, nan_count, inf_count = [], 0, 0
    for i in range(0, numel, _BLOCK):
        block = x[i:i + _BLOCK]
        finite = torch.isfinite(block)
        counts = torch.stack([torch.isnan(block).sum(), finite.sum()]).tolist()
        nan_count += int(counts[0])
        inf_count += block.numel() - int(counts[0]) - int(counts[1])
        if counts[1]:
            rows.append(_block_moments(block[finite]))
    if not rows:
        return TensorStats(numel, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, nan_count, inf_count)
    return _combine(numel, torch.stack(rows).tolist(), nan_count, inf_count)


def _combine(numel: int, rows: list, nan_count: int, inf_count: int) -> TensorStats:
    """Chan et al.'s pairwise combination of the blocks' counts, means and centred sums of squares."""
    n, mean, m2, lo, hi = 0, 0.0, 0.0, math.inf, -math.inf
    for bn, blo, bmean, bm2, bhi in rows:
        bn = int(bn)
        total = n + bn
        delta = bmean - mean
        mean += delta * bn / total
        m2 += bm2 + delta * delta * n * bn / total
        n = total
        lo, hi = min(lo, blo), max(hi, bhi)
    var = max(m2 / n, 0.0)
    return TensorStats(numel=numel, min=lo, max=hi, mean=mean, std=math.sqrt(var), abs_max=max(abs(lo), abs(hi)),
                       l2=math.sqrt(max(m2 + n * mean * mean, 0.0)), nan_count=nan_count, inf_count=inf_count)
