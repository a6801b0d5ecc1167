"""Queue numpy tensors (ONNX Runtime and ORT GenAI outputs) as records, under the capture policy.

The same reductions as the torch capture (full, statistics, slice along a dim, top-k along the last dim), on numpy
arrays; statistics always describe the whole captured tensor.
"""
from __future__ import annotations

import numpy as np

from protocol import RecordKey, compute_stats

from .policy import Rule, applicable
from .sink import PendingRecord, RecordSink, Resolved

_STATS_RECORD_BYTES = 256  # what a statistics-only record weighs in the writer's queue
_NUMPY_LOGICAL = {"float32": "float32", "float16": "float16", "float64": "float64", "int64": "int64",
                  "int32": "int32", "int16": "int16", "int8": "int8", "uint8": "uint8", "uint16": "uint16",
                  "uint32": "uint32", "uint64": "uint64", "bool": "bool"}


def reduce_array(array: np.ndarray, rule: Rule) -> tuple[np.ndarray, np.ndarray | None]:
    """The part of ``array`` a rule keeps: all of it, a slice along a dim, or the top-k along the last dim."""
    if rule.action == "slice":  # rules reach here through policy.applicable: the dim exists
        dim = rule.params["dim"]
        index = (slice(None),) * (dim % array.ndim) + (slice(rule.params["start"], rule.params["stop"]),)
        return np.ascontiguousarray(array[index]), None
    if rule.action == "topk":
        k = min(int(rule.params["k"]), array.shape[-1])
        # descending and stable, like torch.topk's sorted output
        indices = np.argsort(-array.astype(np.float64), axis=-1, kind="stable")[..., :k]
        return np.take_along_axis(array, indices, axis=-1), indices.astype(np.int64)
    return array, None


def put_numpy_record(sink: RecordSink, rule: Rule, key: RecordKey, array: np.ndarray, *, module_type: str = "",
                     meta: dict | None = None) -> bool:
    """Queue one numpy tensor under ``rule``; returns False when the rule skips it or its dtype is unsupported.

    The array must not be modified afterwards (ONNX Runtime returns fresh arrays, so no copy is made).
    """
    logical = _NUMPY_LOGICAL.get(array.dtype.name)
    if rule.action == "skip" or logical is None:
        return False
    shape = tuple(array.shape)
    rule = applicable(rule, shape, array.dtype == np.bool_)
    if rule.action != "stats":
        data, aux = reduce_array(array, rule)
        nbytes = data.nbytes + (aux.nbytes if aux is not None else 0)
        if sink.reserve(nbytes):
            whole = array

            def resolve() -> Resolved:
                return Resolved(compute_stats(whole), data, aux)

            sink.put(PendingRecord(key, logical, shape, "full" if rule.action == "full" else rule.action, nbytes,
                                   resolve, module_type, rule.reduction(), meta or {}))
            return True
    whole = array
    sink.put(PendingRecord(key, logical, shape, "stats", _STATS_RECORD_BYTES + whole.nbytes,
                           lambda: Resolved(compute_stats(whole)), module_type, {}, meta or {}))
    return True
