"""Inputs with a standard default, reconciled between an input set and the inputs a model takes.

One input set feeds every backend, but exports differ in what they take: ``torch.onnx.export(...,
input_names=["input_ids"])`` makes a graph without ``attention_mask`` while ``parity inputs tokens`` and ``parity
inputs text`` always store one; a BERT export may take ``token_type_ids`` that a text input set lacks. Three inputs
have a standard default that Hugging Face models use when they are not given:

- ``attention_mask``: all ones of ``input_ids``' shape (nothing is padding);
- ``position_ids``: ``0 .. L-1`` along the last dimension;
- ``token_type_ids``: all zeros of ``input_ids``' shape (one segment).

The rule (``fit_inputs``), the same for every backend:

- an input the model does not take is **dropped** when it equals its default, since it carries no information; it
  is **refused** when it differs (a mask with zeros, shifted positions): the model would silently compute something
  else than the backend that does take it;
- an input the model takes and the sample lacks is **derived** from its default, in the model's dtype;
- any other mismatch (an input without a default missing, an unknown input extra) is refused.

The input set itself never changes (its sha256 stays the one every dump records, so the dumps still pair); what
was dropped or derived is recorded in the dump's manifest under ``capture.dropped_inputs`` and
``capture.derived_inputs`` (``InputAdjustments``).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from protocol import CaptureError

#: name -> how its default is described in messages and in the manifest
STANDARD_DEFAULTS = {
    "attention_mask": "all ones of input_ids' shape (no padding)",
    "position_ids": "0..L-1 along the last dimension",
    "token_type_ids": "all zeros of input_ids' shape (one segment)",
}

#: what a model that takes no such input assumes, for the hint of a refusal
_IGNORED_MEANS = {"attention_mask": "every position were a real token", "position_ids": "positions were 0..L-1",
                  "token_type_ids": "every token were in segment 0"}


@dataclass
class FittedInputs:
    """One sample's arrays as the model takes them, and what had to change.

    Attributes:
        arrays: exactly the model's inputs (derived ones included), by name.
        dropped: name -> why it could be left out.
        derived: name -> what was fed instead.
    """

    arrays: dict
    dropped: dict = field(default_factory=dict)
    derived: dict = field(default_factory=dict)


@dataclass
class InputAdjustments:
    """What ``fit_inputs`` dropped and derived over all samples of a capture, for the manifest."""

    dropped: dict = field(default_factory=dict)
    derived: dict = field(default_factory=dict)

    def add(self, fitted: FittedInputs) -> None:
        """Count one sample's drops and derivations."""
        for mine, theirs in ((self.dropped, fitted.dropped), (self.derived, fitted.derived)):
            for name, why in theirs.items():
                entry = mine.setdefault(name, {"why": why, "samples": 0})
                entry["samples"] += 1

    def to_manifest(self) -> dict:
        """``{"dropped_inputs": {name: {"why", "samples"}}, "derived_inputs": {...}}`` for manifest.capture."""
        return {"dropped_inputs": self.dropped, "derived_inputs": self.derived}


def default_value(name: str, input_ids: np.ndarray, dtype=None) -> np.ndarray:
    """The standard default of ``name`` for a sample whose token ids are ``input_ids`` (int64 unless ``dtype``).

    Raises:
        KeyError: ``name`` has no standard default.
    """
    ids = np.asarray(input_ids)
    dtype = np.dtype(dtype or np.int64)
    if name == "attention_mask":
        return np.ones(ids.shape, dtype=dtype)
    if name == "token_type_ids":
        return np.zeros(ids.shape, dtype=dtype)
    if name == "position_ids":
        return np.ascontiguousarray(np.broadcast_to(np.arange(ids.shape[-1], dtype=dtype), ids.shape))
    raise KeyError(name)


def difference_from_default(name: str, array: np.ndarray, input_ids: np.ndarray | None) -> str | None:
    """None when ``array`` equals the standard default of ``name``; else how it differs, for a message.

    Without ``input_ids`` the values alone decide (a mask of ones, positions 0..L-1, zeros).
    """
    arr = np.asarray(array)
    ids = None if input_ids is None else np.asarray(input_ids)
    if name == "position_ids":
        # positions may carry leading dims of their own (e.g. [3, 1, L] rope sections): compare along the last one
        if ids is not None and (arr.ndim == 0 or arr.shape[-1] != ids.shape[-1]):
            return f"position_ids of shape {list(arr.shape)} do not cover input_ids' {ids.shape[-1]} positions"
        if arr.ndim == 0 or not np.array_equal(arr, np.broadcast_to(np.arange(arr.shape[-1]), arr.shape)):
            return "position_ids are not 0..L-1"
        return None
    if ids is not None and _as_rows(arr).shape != _as_rows(ids).shape:
        return f"{name} has shape {list(arr.shape)}, not input_ids' {list(ids.shape)}"
    want = 1 if name == "attention_mask" else 0
    off = int(np.count_nonzero(arr != want))
    if not off:
        return None
    if name == "attention_mask":
        return f"attention_mask masks {off} of {arr.size} positions"
    return f"{name} has {off} nonzero value(s)"


def fit_inputs(arrays: Mapping[str, np.ndarray], model_inputs: Mapping[str, object], *, sample: int,
               path=None, refuse_unknown: bool = True, other_remedy: str = "") -> FittedInputs:
    """Reconcile one sample's arrays with the inputs a model takes (see the module docstring for the rule).

    Args:
        arrays: the sample's arrays by name.
        model_inputs: the model's inputs: name -> numpy dtype of a derived value (None: int64).
        sample: the sample's index (for messages). path: the input set file (for messages).
        refuse_unknown: refuse an extra input that has no standard default (False: leave it out silently, for a
            backend that takes keyword arguments it does not declare).
        other_remedy: what else the user can do about an informative input the model does not take, with
            ``{name}`` for the input (e.g. ``"export the model with a {name} input"``).

    Returns:
        The FittedInputs: ``arrays`` holds exactly ``model_inputs``' names.

    Raises:
        CaptureError: an informative input the model does not take, a missing input without a standard default
            (or without input_ids to derive it from), or (with ``refuse_unknown``) an unknown extra input.
    """
    ids = arrays.get("input_ids")
    fitted = FittedInputs({})
    informative, unknown, missing = [], [], []
    for name, array in arrays.items():
        if name in model_inputs:
            fitted.arrays[name] = array
        elif name in STANDARD_DEFAULTS:
            diff = difference_from_default(name, array, ids)
            if diff is None:
                fitted.dropped[name] = f"{STANDARD_DEFAULTS[name]}, which the model assumes: it takes no {name}"
            else:
                informative.append((name, diff))
        elif refuse_unknown:
            unknown.append(name)
    for name, dtype in model_inputs.items():
        if name in arrays:
            continue
        if name in STANDARD_DEFAULTS and ids is not None:
            fitted.arrays[name] = default_value(name, ids, dtype)
            fitted.derived[name] = f"{STANDARD_DEFAULTS[name]}: the input set has no {name}"
        else:
            missing.append(f"{name} (no input_ids to derive it from)" if name in STANDARD_DEFAULTS else name)
    if informative or unknown or missing:
        raise _mismatch(informative, unknown, missing, list(model_inputs), sample, path, other_remedy)
    return fitted


def _mismatch(informative, unknown, missing, takes, sample, path, other_remedy) -> CaptureError:
    parts, hints = [], []
    if missing:
        parts.append(f"missing model input(s) {', '.join(missing)}")
    if unknown:
        parts.append(f"input(s) {', '.join(unknown)} that the model does not take")
    for name, diff in informative:
        parts.append(f"{diff}, but the model takes no {name}")
    if informative:
        names = [n for n, _ in informative]
        hint = (f"without {' and '.join(names)} the model computes as if "
                f"{' and '.join(_IGNORED_MEANS[n] for n in names)}; build the input set without padding or custom "
                f"positions (e.g. 'parity inputs tokens' from unpadded input_ids)")
        if other_remedy:
            hint += ", or " + ", or ".join(other_remedy.format(name=n) for n in names)
        hints.append(hint)
    if missing or unknown:
        hints.append("build an input set with exactly the model's inputs ('parity inputs tokens FILE.npz' from "
                     "arrays of those names, or 'parity inputs random MODEL' for an ONNX model)")
    return CaptureError(f"sample {sample} of the input set does not match the model: {'; '.join(parts)} "
                        f"(the model takes {', '.join(takes)})", path, "; ".join(hints))


def _as_rows(array: np.ndarray) -> np.ndarray:
    """``[L]`` as ``[1, L]``: input sets store ``[1, L]`` but a 1-D array means the same sample."""
    return array[None, :] if array.ndim == 1 else array
