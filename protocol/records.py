"""The description of one record as the index holds it (SPEC.md sections 5-7)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import h5py
import numpy as np

from .keys import RecordKey
from .stats import TensorStats

STORAGE_KINDS = ("full", "stats", "slice", "topk")

_STR = h5py.string_dtype("utf-8")
#: The compound row type of /index. Column order is part of the format; readers address columns by name.
INDEX_DTYPE = np.dtype([
    ("sample", "<i8"), ("step", "<i8"), ("site", _STR), ("call", "<i8"),
    ("seq", "<i8"), ("module_type", _STR), ("dtype", _STR),
    ("shape", _STR), ("orig_shape", _STR), ("storage", _STR), ("reduction", _STR),
    ("data", _STR), ("aux", _STR),
    ("numel", "<i8"), ("min", "<f8"), ("max", "<f8"), ("mean", "<f8"), ("std", "<f8"),
    ("abs_max", "<f8"), ("l2", "<f8"), ("nan_count", "<i8"), ("inf_count", "<i8"),
    ("meta", _STR),
])
REQUIRED_COLUMNS = tuple(INDEX_DTYPE.names)


@dataclass(frozen=True)
class RecordInfo:
    """One index row: the key, where the record sits in execution order, what it holds, and its statistics.

    Attributes:
        key: the record's key.
        seq: execution order within the dump (0, 1, 2, ...).
        module_type: module class name (torch) or op type (ONNX); may be empty.
        dtype: logical dtype of the captured tensor (``bfloat16``, ``float32``...).
        shape: shape of the stored data (after any reduction); ``()`` for 0-d; for ``stats`` records, the
            captured tensor's shape.
        orig_shape: shape of the captured tensor before any reduction.
        storage: ``full`` | ``stats`` | ``slice`` | ``topk``.
        reduction: parameters of the reduction (``{}`` for ``full``/``stats``).
        data: HDF5 path of the data (empty for ``stats``); aux: second dataset (top-k indices) or empty.
        stats: statistics of the whole captured tensor (before reduction).
        meta: backend-specific details (ONNX value name, producing node...).
    """

    key: RecordKey
    seq: int
    module_type: str
    dtype: str
    shape: tuple
    orig_shape: tuple
    storage: str
    reduction: dict = field(default_factory=dict)
    data: str = ""
    aux: str = ""
    stats: TensorStats | None = None
    meta: dict = field(default_factory=dict)

    @property
    def has_data(self) -> bool:
        """True when tensor data is stored (anything but a statistics-only record)."""
        return bool(self.data)

    @property
    def numel(self) -> int:
        """Number of stored elements."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def to_row(self) -> tuple:
        s = self.stats
        return (self.key.sample, self.key.step, self.key.site, self.key.call, self.seq, self.module_type,
                self.dtype, _json_shape(self.shape), _json_shape(self.orig_shape), self.storage,
                _json_dict(self.reduction), self.data, self.aux,
                s.numel, s.min, s.max, s.mean, s.std, s.abs_max, s.l2, s.nan_count, s.inf_count,
                _json_dict(self.meta))

    @classmethod
    def from_row(cls, row) -> "RecordInfo":
        """Build from one structured row of /index (strings may come back as bytes)."""
        def s(name):
            v = row[name]
            return v.decode("utf-8") if isinstance(v, bytes) else str(v)
        stats = TensorStats(int(row["numel"]), float(row["min"]), float(row["max"]), float(row["mean"]),
                            float(row["std"]), float(row["abs_max"]), float(row["l2"]),
                            int(row["nan_count"]), int(row["inf_count"]))
        return cls(
            key=RecordKey(int(row["sample"]), int(row["step"]), s("site"), int(row["call"])),
            seq=int(row["seq"]), module_type=s("module_type"), dtype=s("dtype"),
            shape=tuple(json.loads(s("shape"))), orig_shape=tuple(json.loads(s("orig_shape"))),
            storage=s("storage"), reduction=json.loads(s("reduction")), data=s("data"), aux=s("aux"),
            stats=stats, meta=json.loads(s("meta")))


# A capture writes one index row per record (thousands per forward), so the row's JSON columns take a shortcut for
# their common values; the text is exactly json.dumps's (a test compares them).

def _json_shape(shape) -> str:
    """``json.dumps(list(shape))`` of a shape of integers."""
    return "[" + ", ".join([str(int(d)) for d in shape]) + "]"


def _json_dict(d: dict) -> str:
    """``json.dumps(d, sort_keys=True)``, with the empty dict (most records) for free."""
    return json.dumps(d, sort_keys=True) if d else "{}"

