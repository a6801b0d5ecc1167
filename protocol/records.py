"""The description of one record as the index holds it (SPEC.md sections 5-7)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import h5py
import numpy as np

from .checksum import bytes_crc32c, encode_fields
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
    # format 1.1 (SPEC.md section 8.1): CRC-32C of the record's data and aux bytes, and of this row's other columns
    ("data_crc32c", "<u4"), ("aux_crc32c", "<u4"), ("row_crc32c", "<u4"),
])
#: The columns every dump of format 1.x has (those of 1.0).
REQUIRED_COLUMNS = tuple(n for n in INDEX_DTYPE.names if not n.endswith("_crc32c"))
#: The checksum columns of format 1.1; a dump has all of them or none (1.0).
CHECKSUM_COLUMNS = ("data_crc32c", "aux_crc32c", "row_crc32c")
#: The columns ``row_crc32c`` covers, in order: every 1.1 column but itself (columns added later are not covered).
ROW_CHECKSUM_COVERS = INDEX_DTYPE.names[:-1]
_ROW_KINDS = "".join("s" if h5py.check_string_dtype(INDEX_DTYPE.fields[n][0]) else INDEX_DTYPE.fields[n][0].kind
                     .replace("f", "d").replace("i", "q").replace("u", "q") for n in ROW_CHECKSUM_COVERS)


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
        data_crc32c, aux_crc32c: CRC-32C of the stored bytes of ``data`` and ``aux`` (protocol/checksum.py); None
            in a dump of format 1.0, which has no checksums, and for what is not stored.
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
    data_crc32c: int | None = None
    aux_crc32c: int | None = None

    @property
    def has_data(self) -> bool:
        """True when tensor data is stored (anything but a statistics-only record)."""
        return bool(self.data)

    @property
    def numel(self) -> int:
        """Number of stored elements."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def to_row(self) -> tuple:
        """The /index row (INDEX_DTYPE's columns), its ``row_crc32c`` included."""
        s = self.stats
        row = (self.key.sample, self.key.step, self.key.site, self.key.call, self.seq, self.module_type,
               self.dtype, _json_shape(self.shape), _json_shape(self.orig_shape), self.storage,
               _json_dict(self.reduction), self.data, self.aux,
               s.numel, s.min, s.max, s.mean, s.std, s.abs_max, s.l2, s.nan_count, s.inf_count,
               _json_dict(self.meta), self.data_crc32c or 0, self.aux_crc32c or 0)
        return (*row, bytes_crc32c(encode_fields(row, _ROW_KINDS)))

    @classmethod
    def from_row(cls, row) -> "RecordInfo":
        """Build from one structured row of /index (strings may come back as bytes)."""
        def s(name):
            v = row[name]
            return v.decode("utf-8") if isinstance(v, bytes) else str(v)
        stats = TensorStats(int(row["numel"]), float(row["min"]), float(row["max"]), float(row["mean"]),
                            float(row["std"]), float(row["abs_max"]), float(row["l2"]),
                            int(row["nan_count"]), int(row["inf_count"]))
        names = row.dtype.names
        data = s("data")
        aux = s("aux")
        checked = "data_crc32c" in names
        return cls(
            key=RecordKey(int(row["sample"]), int(row["step"]), s("site"), int(row["call"])),
            seq=int(row["seq"]), module_type=s("module_type"), dtype=s("dtype"),
            shape=tuple(json.loads(s("shape"))), orig_shape=tuple(json.loads(s("orig_shape"))),
            storage=s("storage"), reduction=json.loads(s("reduction")), data=data, aux=aux,
            stats=stats, meta=json.loads(s("meta")),
            data_crc32c=int(row["data_crc32c"]) if checked and data else None,
            aux_crc32c=int(row["aux_crc32c"]) if checked and aux else None)


def row_crc32c(row) -> int:
    """The ``row_crc32c`` that a structured /index row should hold: CRC-32C of its covered columns."""
    return bytes_crc32c(encode_fields([row[name] for name in ROW_CHECKSUM_COVERS], _ROW_KINDS))


def row_checksum_matches(row) -> bool:
    """Whether a structured /index row of format 1.1+ matches its ``row_crc32c`` (SPEC.md section 8.1)."""
    return row_crc32c(row) == int(row["row_crc32c"])


def row_key_text(row) -> str:
    """The record key of a structured /index row as text, without trusting its JSON columns (for messages)."""
    site = row["site"]
    site = site.decode("utf-8", "replace") if isinstance(site, bytes) else str(site)
    return f"s{int(row['sample'])}/t{int(row['step'])}/{site}#{int(row['call'])}"


# A capture writes one index row per record (thousands per forward), so the row's JSON columns take a shortcut for
# their common values; the text is exactly json.dumps's (a test compares them).

def _json_shape(shape) -> str:
    """``json.dumps(list(shape))`` of a shape of integers."""
    return "[" + ", ".join([str(int(d)) for d in shape]) + "]"


def _json_dict(d: dict) -> str:
    """``json.dumps(d, sort_keys=True)``, with the empty dict (most records) for free."""
    return json.dumps(d, sort_keys=True) if d else "{}"

