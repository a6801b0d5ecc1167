"""Reading dumps: the manifest, the index (without touching tensor data), records by key, chunked data."""
from __future__ import annotations

import os
from typing import Iterator

import h5py
import numpy as np

from . import dtypes
from .errors import CorruptDumpError, IncompleteDumpError, NotAParityFileError
from .h5util import _first_line, attr_str, open_h5, read_json_dataset
from .keys import RecordKey
from .manifest import Manifest
from .records import REQUIRED_COLUMNS, RecordInfo
from .version import DUMP_FORMAT, INPUTS_FORMAT, check_version

#: Whole-record reads above this many bytes are refused; use iter_blocks() (protects against absurd shapes).
MAX_READ_BYTES = 8 << 30
_DEFAULT_BLOCK = 1 << 22  # elements per block in iter_blocks


class DumpReader:
    """A complete dump, open read-only. The index is loaded at open; tensor data is read only on request.

    Args:
        path: the dump file.

    Raises:
        ParityError subclasses: missing, empty, not HDF5, not a dump, another MAJOR version, unfinished, damaged.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._file = open_h5(self.path, "dump")
        try:
            self._load()
        except BaseException:
            self._file.close()
            raise

    def _load(self) -> None:
        f, path = self._file, self.path
        fmt = attr_str(f, "format")
        if fmt != DUMP_FORMAT:
            if fmt == INPUTS_FORMAT:
                raise NotAParityFileError("this is an input set, not a dump", path,
                                          "pass a dump written by 'parity capture'")
            raise NotAParityFileError(
                "not a tensorparity dump (root attribute 'format' is "
                + (f"{fmt!r})" if fmt is not None else "missing)"), path, "pass a file written by tensorparity")
        self.format_version = attr_str(f, "format_version") or ""
        check_version(self.format_version, path, "dump")
        state = attr_str(f, "state")
        if state != "complete":
            raise IncompleteDumpError(f"dump is not complete (state={state!r})", path,
                                      "its writer was interrupted; capture it again")
        try:
            self.manifest = Manifest.from_dict(read_json_dataset(f, "manifest", path, "dump"))
        except (ValueError, TypeError) as exc:
            raise CorruptDumpError(f"manifest is invalid ({exc})", path, "capture the dump again") from None
        self.compression = attr_str(f, "compression") or "none"
        index = f.get("index")
        if not isinstance(index, h5py.Dataset) or index.dtype.names is None:
            raise CorruptDumpError("dump has no index table", path, "the file is damaged; capture it again")
        missing = [c for c in REQUIRED_COLUMNS if c not in index.dtype.names]
        if missing:
            raise CorruptDumpError(f"index lacks columns {missing}", path, "the file is damaged; capture it again")
        try:
            rows = index[()]
            records = [RecordInfo.from_row(r) for r in rows]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptDumpError(f"index cannot be read ({_first_line(exc)})", path,
                                   "the file is damaged; capture it again") from None
        declared = f.attrs.get("record_count")
        if declared is not None and int(declared) != len(records):
            raise CorruptDumpError(f"index holds {len(records)} records but the dump declares {int(declared)}",
                                   path, "the file is damaged; capture it again")
        records.sort(key=lambda r: r.seq)
        self._records = records
        self._by_key = {r.key: r for r in records}
        if len(self._by_key) != len(records):
            raise CorruptDumpError("index has duplicate keys", path, "the file is damaged; capture it again")

    # -- listing ---------------------------------------------------------------------------------------------------

    def records(self) -> list[RecordInfo]:
        """All records in execution order (by ``seq``); reads no tensor data."""
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key) -> bool:
        return _as_key(key) in self._by_key

    def record(self, key: RecordKey | str) -> RecordInfo:
        """The record with this key. Raises KeyError naming the key and the file."""
        k = _as_key(key)
        try:
            return self._by_key[k]
        except KeyError:
            raise KeyError(f"no record {k} in {self.path}") from None

    # -- data ------------------------------------------------------------------------------------------------------

    def read(self, record: RecordInfo | RecordKey | str, *, raw: bool = False) -> np.ndarray:
        """The record's data: decoded values (bfloat16/fp8 as float32 of identical value), or the stored bits.

        Raises:
            ValueError: a statistics-only record (no data).
            CorruptDumpError: the data is missing or disagrees with the index.
        """
        info, ds = self._dataset(record)
        nbytes = info.numel * ds.dtype.itemsize
        if nbytes > MAX_READ_BYTES:
            raise MemoryError(f"record {info.key} is {nbytes / 2**30:.1f} GiB; read it with iter_blocks()")
        try:
            stored = ds[()]
        except OSError as exc:
            raise CorruptDumpError(f"data of record {info.key} cannot be read ({_first_line(exc)})", self.path,
                                   "the file is damaged; capture it again") from None
        return stored if raw else dtypes.decode(stored, info.dtype)

    def read_aux(self, record: RecordInfo | RecordKey | str) -> np.ndarray:
        """The record's second array (the indices of a top-k record)."""
        info = record if isinstance(record, RecordInfo) else self.record(record)
        if not info.aux or info.aux not in self._file:
            raise ValueError(f"record {info.key} has no auxiliary array")
        ds = self._file[info.aux]
        if not isinstance(ds, h5py.Dataset) or tuple(ds.shape) != tuple(info.shape):
            raise CorruptDumpError(f"auxiliary array of record {info.key} does not match its data "
                                   f"(shape {getattr(ds, 'shape', None)} for data {tuple(info.shape)})", self.path,
                                   "the file is damaged; capture it again")
        return self._read_whole(ds, f"auxiliary array of record {info.key}")

    def iter_blocks(self, record: RecordInfo | RecordKey | str, max_elements: int = _DEFAULT_BLOCK, *,
                    raw: bool = False, reuse: bool = False) -> Iterator[np.ndarray]:
        """The record's data as consecutive flat C-order blocks of at most ``max_elements`` elements.

        Two records of the same shape are cut at the same places, so paired blocks line up element by element.
        Memory stays bounded by ``max_elements`` whatever the tensor's size.

        Args:
            record: the record (info, key or key string).
            max_elements: the most elements per block.
            raw: stored values (bit patterns for bfloat16/fp8) instead of decoded ones.
            reuse: read the blocks into two alternating buffers: a block stays valid until the one after it has
                been taken (for consumers that reduce each block at once, possibly reading the next one ahead
                with ``read_ahead``: a fresh array per block costs a page fault per 4 KiB, ~1.4x the read).
        """
        info, ds = self._dataset(record)
        shape = info.shape
        if len(shape) == 0 or info.numel == 0:
            data = ds[()]
            yield np.asarray(data if raw else dtypes.decode(data, info.dtype)).reshape(-1)
            return
        buffers: list[np.ndarray] = []
        for i, index in enumerate(block_slices(shape, max_elements)):
            try:
                if reuse:
                    block_shape = _selection_shape(shape, index)
                    n = int(np.prod(block_shape, dtype=np.int64))
                    if len(buffers) < 2:  # the first blocks are the largest
                        buffers.append(np.empty(n, dtype=ds.dtype))
                    data = buffers[i % 2][:n].reshape(block_shape)
                    ds.read_direct(data, source_sel=index)
                else:
                    data = ds[index]
            except OSError as exc:
                raise CorruptDumpError(f"data of record {info.key} cannot be read ({_first_line(exc)})",
                                       self.path, "the file is damaged; capture it again") from None
            yield (data if raw else dtypes.decode(data, info.dtype)).reshape(-1)

    def _dataset(self, record) -> tuple[RecordInfo, h5py.Dataset]:
        info = record if isinstance(record, RecordInfo) else self.record(record)
        if not info.has_data:
            raise ValueError(f"record {info.key} holds statistics only")
        ds = self._file.get(info.data)
        if not isinstance(ds, h5py.Dataset):
            raise CorruptDumpError(f"data of record {info.key} is missing ({info.data})", self.path,
                                   "the file is damaged; capture it again")
        if tuple(ds.shape) != tuple(info.shape):
            raise CorruptDumpError(f"data of record {info.key} has shape {tuple(ds.shape)} but the index says "
                                   f"{tuple(info.shape)}", self.path, "the file is damaged; capture it again")
        return info, ds

    # -- auxiliary arrays -----------------------------------------------------------------------------------------

    def array_names(self) -> list[str]:
        """Names of the auxiliary arrays (e.g. generated tokens)."""
        group = self._file.get("arrays")
        return sorted(group.keys()) if isinstance(group, h5py.Group) else []

    def array(self, name: str) -> np.ndarray:
        """One auxiliary array; KeyError when absent."""
        group = self._file.get("arrays")
        if not isinstance(group, h5py.Group) or name not in group:
            raise KeyError(f"no array {name!r} in {self.path}")
        return self._read_whole(group[name], f"array {name!r}")

    def _read_whole(self, ds, what: str) -> np.ndarray:
        """Read a whole dataset, refusing declared sizes no real array has (a hostile file's absurd shape)."""
        if not isinstance(ds, h5py.Dataset):
            raise CorruptDumpError(f"{what} is not a dataset", self.path, "the file is damaged; capture it again")
        nbytes = int(np.prod(ds.shape, dtype=np.float64)) * ds.dtype.itemsize
        if nbytes > MAX_READ_BYTES:
            raise CorruptDumpError(f"{what} declares {nbytes / 2**30:.1f} GiB", self.path,
                                   "the file is damaged or hostile; capture it again")
        try:
            return ds[()]
        except OSError as exc:
            raise CorruptDumpError(f"{what} cannot be read ({_first_line(exc)})", self.path,
                                   "the file is damaged; capture it again") from None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> "DumpReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_dump(path: str | os.PathLike) -> DumpReader:
    """Open a complete dump for reading (see DumpReader)."""
    return DumpReader(path)


def block_slices(shape: tuple, max_elements: int) -> Iterator[tuple]:
    """Index tuples that cut an array of ``shape`` into consecutive C-order blocks of at most ``max_elements``."""
    max_elements = max(int(max_elements), 1)
    inner = 1
    axis = len(shape) - 1
    # find the outermost axis whose trailing block still fits
    while axis > 0 and inner * shape[axis] <= max_elements:
        inner *= shape[axis]
        axis -= 1
    if inner * shape[axis] <= max_elements:  # the whole tensor fits
        yield (Ellipsis,)
        return
    step = max(1, max_elements // inner)
    for outer in np.ndindex(*shape[:axis]):
        for start in range(0, shape[axis], step):
            yield (*outer, slice(start, min(start + step, shape[axis])))


def _selection_shape(shape: tuple, index: tuple) -> tuple:
    """Shape of ``array[index]`` for an index from ``block_slices`` (integers drop their axis)."""
    if index == (Ellipsis,):
        return tuple(shape)
    out = [s.stop - s.start for s in index if isinstance(s, slice)]
    return (*out, *shape[len(index):])


def _as_key(key) -> RecordKey:
    return key if isinstance(key, RecordKey) else RecordKey.parse(str(key))
