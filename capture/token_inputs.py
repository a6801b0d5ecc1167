"""Input sets from explicit arrays in an ``.npz`` file (loaded without pickle).

Two layouts are accepted:

- batched: every array has the same first dimension N; sample i holds row i of each, kept 2-D (``[1, ...]``), so
  ``input_ids`` of shape ``[N, L]`` gives N samples of ``[1, L]``;
- per sample: names ``<array>.<i>`` (``input_ids.0``, ``input_ids.1``, ``attention_mask.0``...), each stored as is;
  use this for samples of different lengths.

An ``attention_mask`` of ones is added when ``input_ids`` has none.
"""
from __future__ import annotations

import hashlib
import os
import re
import zipfile

import numpy as np

from protocol import InputSample, InputSet, ParityError

_PER_SAMPLE = re.compile(r"^(?P<name>.+)\.(?P<index>\d+)$")


def build_token_input_set(npz_path: str, *, max_samples: int | None = None) -> InputSet:
    """Read an ``.npz`` of arrays into an InputSet (see the module docstring for the layouts).

    Raises:
        ParityError: the file is missing or not an npz, holds object arrays, or its arrays do not line up.
    """
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise ParityError("no such file", npz_path, "check the path") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ParityError(f"not a readable .npz of numeric arrays ({str(exc).splitlines()[0]})", npz_path,
                          "save the arrays with numpy.savez") from None
    if not arrays:
        raise ParityError("the .npz holds no array", npz_path)
    bad = [n for n, a in arrays.items() if a.dtype.kind not in "biuf"]
    if bad:
        raise ParityError(f"arrays {bad} are not bool, integer or float", npz_path)
    per_sample = all(_PER_SAMPLE.match(n) for n in arrays)
    samples = _per_sample(arrays, npz_path) if per_sample else _batched(arrays, npz_path)
    if max_samples:
        samples = samples[:max_samples]
    for s in samples:
        ids = s.arrays.get("input_ids")
        if ids is not None and "attention_mask" not in s.arrays:
            s.arrays["attention_mask"] = np.ones_like(ids, dtype=np.int64)
    h = hashlib.sha256()
    with open(npz_path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    digest = h.hexdigest()
    provenance = {"dataset": "npz", "file": os.path.abspath(npz_path), "file_sha256": digest,
                  "layout": "per-sample" if per_sample else "batched", "max_samples": max_samples,
                  "samples": len(samples)}
    return InputSet(samples, provenance)


def _batched(arrays: dict, path: str) -> list[InputSample]:
    counts = {n: (a.shape[0] if a.ndim else None) for n, a in arrays.items()}
    if None in counts.values() or len(set(counts.values())) != 1:
        raise ParityError(f"arrays do not share a first (sample) dimension: {counts}", path,
                          "give every array the shape [N, ...], or name them <array>.<i> per sample")
    n = next(iter(counts.values()))
    return [InputSample({name: np.ascontiguousarray(a[i:i + 1]) for name, a in arrays.items()}) for i in range(n)]


def _per_sample(arrays: dict, path: str) -> list[InputSample]:
    by_index: dict[int, dict] = {}
    for full, a in arrays.items():
        m = _PER_SAMPLE.match(full)
        by_index.setdefault(int(m.group("index")), {})[m.group("name")] = a
    indices = sorted(by_index)
    if indices != list(range(len(indices))):
        raise ParityError(f"per-sample arrays must be numbered 0..N-1 without gaps (found {indices[:10]})", path)
    return [InputSample(by_index[i]) for i in indices]
