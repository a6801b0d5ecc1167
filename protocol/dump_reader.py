"""Reading dumps: the manifest, the index (without touching tensor data), records by key, chunked data.

A dump of format 1.1 carries CRC-32C checksums (SPEC.md section 8.1). The reader verifies the header and every index
row when it opens the dump, and a record's data (and aux array) on every read of it: ``read`` and ``read_aux`` before
returning it, ``iter_blocks`` over the blocks in order, checked before the last block is handed out, so a consumer
that takes every block cannot finish on damaged data. A mismatch raises ``CorruptDumpError`` naming the file and the
record. Dumps of format 1.0 have no checksums and are read unverified (``DumpReader.checksums`` is False).
"""
from __future__ import annotations

import os
from typing import Iterator

import h5py
import numpy as np

from . import dtypes
from .calls import CallLog
from .checksum import array_crc32c, bytes_crc32c, header_crc32c
from .errors import CorruptDumpError, IncompleteDumpError, NotAParityFileError
from .h5util import _first_line, attr_str, open_h5, read_bytes_dataset, read_json_dataset, read_text_dataset
from .heap_check import check_index_heaps
from .keys import RecordKey
from .manifest import Manifest
from .records import CHECKSUM_COLUMNS, REQUIRED_COLUMNS, RecordInfo, row_checksum_matches, row_key_text
from .version import DUMP_FORMAT, INPUTS_FORMAT, check_version

#: Whole-record reads above this many bytes are refused; use iter_blocks() (protects against absurd shapes).
MAX_READ_BYTES = 8 << 30
_DEFAULT_BLOCK = 1 << 22  # elements per block in iter_blocks
#: What to do about a checksum mismatch: the bytes changed after the writer checksummed them.
DAMAGED_HINT = ("the file was damaged after it was written (disk, network share or copy); "
                "copy it again or capture it again")


class DumpReader:
    """A complete dump, open read-only. The index is loaded at open; tensor data is read only on request.

    Every read of a format 1.1 dump is verified against its checksums (see the module docstring).

    Attributes:
        checksums: True when the dump carries checksums (format 1.1 and later), False for format 1.0.

    Args:
        path: the dump file.

    Raises:
        ParityError subclasses: missing, empty, not HDF5, not a dump, another MAJOR version, unfinished, damaged.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._calls = None  # loaded on first use: CallLog, or False when the dump has none
        self._file = open_h5(self.path, "dump")
        try:
            self._load()
        except (OSError, RuntimeError, KeyError) as exc:
            # HDF5 refusing damaged metadata on the way (a failed checksum, an undecodable heap object; h5py says
            # KeyError for an object it cannot open)
            self._file.close()
            raise CorruptDumpError(f"dump cannot be read ({_first_line(exc)})", self.path,
                                   "the file is damaged; capture it again") from None
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
        _, minor = check_version(self.format_version, path, "dump")
        state = attr_str(f, "state")
        if state != "complete":
            raise IncompleteDumpError(f"dump is not complete (state={state!r})", path,
                                      "its writer was interrupted; capture it again")
        index = _open_object(f, "index", path, "the index")
        # whether to verify is decided by the checksum columns, whose names HDF5 itself checksums, and not by the
        # version string (unprotected text: one flipped bit turns 1.1 into 1.0)
        names = index.dtype.names if isinstance(index, h5py.Dataset) else None
        present = [c for c in CHECKSUM_COLUMNS if names and c in names]
        self.checksums = bool(present)
        if (minor >= 1 and isinstance(names, tuple)) or present:
            lacking = [c for c in CHECKSUM_COLUMNS if c not in (names or ())]
            if lacking:
                raise CorruptDumpError(f"index lacks the checksum columns {lacking} of format 1.1", path,
                                       "the file is damaged; capture it again")
        raw = read_bytes_dataset(f, "manifest", path, "dump")
        self.compression = attr_str(f, "compression") or "none"
        if self.checksums:
            self._check_header(raw)  # on the bytes: damage that breaks their UTF-8 is damage, not bad JSON
        text = read_text_dataset(f, "manifest", path, "dump", raw=raw)
        try:
            self.manifest = Manifest.from_dict(read_json_dataset(f, "manifest", path, "dump", text=text))
        except (ValueError, TypeError) as exc:
            raise CorruptDumpError(f"manifest is invalid ({exc})", path, "capture the dump again") from None
        if not isinstance(index, h5py.Dataset) or index.dtype.names is None:
            raise CorruptDumpError("dump has no index table", path, "the file is damaged; capture it again")
        missing = [c for c in REQUIRED_COLUMNS if c not in index.dtype.names]
        if missing:
            raise CorruptDumpError(f"index lacks columns {missing}", path, "the file is damaged; capture it again")
        check_index_heaps(index, path)  # before HDF5 parses them: a damaged collection can hang its parser
        try:
            rows = index[()]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptDumpError(f"index cannot be read ({_first_line(exc)})", path,
                                   "the file is damaged; capture it again") from None
        records = []
        for i, row in enumerate(rows):
            # the row's checksum first: damage is reported as damage, not as whatever the damaged JSON says
            if self.checksums and not row_checksum_matches(row):
                raise CorruptDumpError(f"index row {i} (record {row_key_text(row)}) does not match its checksum",
                                       path, DAMAGED_HINT)
            try:
                records.append(RecordInfo.from_row(row))
            except (ValueError, KeyError, TypeError) as exc:
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

    def _check_header(self, manifest: bytes) -> None:
        """Verify ``header_crc32c``: the root attributes and the manifest as stored."""
        f = self._file
        stored = f.attrs.get("header_crc32c")  # numeric attributes live in the (checksummed) object header
        count = f.attrs.get("record_count")
        if stored is None or count is None or np.ndim(stored) or np.ndim(count):
            raise CorruptDumpError("dump has no header checksum (root attribute 'header_crc32c')", self.path,
                                   "the file is damaged; capture it again")
        computed = header_crc32c(attr_str(f, "format") or "", self.format_version, self.compression, int(count),
                                 manifest)
        if computed != int(stored):
            raise CorruptDumpError("the manifest or the root attributes do not match their checksum", self.path,
                                   DAMAGED_HINT)

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
        self._verify(info, "data", info.data_crc32c, array_crc32c(stored) if info.data_crc32c is not None else None)
        return stored if raw else dtypes.decode(stored, info.dtype)

    def _verify(self, info: RecordInfo, what: str, stored: int | None, computed: int | None) -> None:
        """Raise CorruptDumpError naming the record when a checksum does not match (None: nothing to check)."""
        if stored is not None and computed != stored:
            raise CorruptDumpError(f"record {info.key}: {what} does not match its checksum", self.path, DAMAGED_HINT)

    def read_aux(self, record: RecordInfo | RecordKey | str) -> np.ndarray:
        """The record's second array (the indices of a top-k record)."""
        info = record if isinstance(record, RecordInfo) else self.record(record)
        if not info.aux:
            raise ValueError(f"record {info.key} has no auxiliary array")
        ds = self.data_object(info, info.aux)
        if ds is None:
            raise CorruptDumpError(f"auxiliary array of record {info.key} is missing ({info.aux})", self.path,
                                   "the file is damaged; capture it again")
        if not isinstance(ds, h5py.Dataset) or tuple(ds.shape) != tuple(info.shape):
            raise CorruptDumpError(f"auxiliary array of record {info.key} does not match its data "
                                   f"(shape {getattr(ds, 'shape', None)} for data {tuple(info.shape)})", self.path,
                                   "the file is damaged; capture it again")
        aux = self._read_whole(ds, f"auxiliary array of record {info.key}")
        self._verify(info, "auxiliary array", info.aux_crc32c,
                     array_crc32c(aux) if info.aux_crc32c is not None else None)
        return aux

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

        Raises:
            CorruptDumpError: the data cannot be read, or (format 1.1) does not match its checksum. The checksum
                runs over the blocks in order and is checked when the last one has been read, before it is yielded:
                a consumer that takes every block never finishes on unverified data (one that stops early has
                used data not yet verified).
        """
        info, ds = self._dataset(record)
        shape = info.shape
        check = info.data_crc32c is not None
        if len(shape) == 0 or info.numel == 0:
            data = ds[()]
            self._verify(info, "data", info.data_crc32c, array_crc32c(data) if check else None)
            yield np.asarray(data if raw else dtypes.decode(data, info.dtype)).reshape(-1)
            return
        buffers: list[np.ndarray] = []
        crc = 0
        done = 0
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
            if check:
                crc = array_crc32c(data, crc)
                done += data.size
                if done == info.numel:
                    self._verify(info, "data", info.data_crc32c, crc)
            yield (data if raw else dtypes.decode(data, info.dtype)).reshape(-1)

    def _dataset(self, record) -> tuple[RecordInfo, h5py.Dataset]:
        info = record if isinstance(record, RecordInfo) else self.record(record)
        if not info.has_data:
            raise ValueError(f"record {info.key} holds statistics only")
        ds = self.data_object(info, info.data)
        if not isinstance(ds, h5py.Dataset):
            raise CorruptDumpError(f"data of record {info.key} is missing ({info.data})", self.path,
                                   "the file is damaged; capture it again")
        if tuple(ds.shape) != tuple(info.shape):
            raise CorruptDumpError(f"data of record {info.key} has shape {tuple(ds.shape)} but the index says "
                                   f"{tuple(info.shape)}", self.path, "the file is damaged; capture it again")
        return info, ds

    def data_object(self, info: RecordInfo, name: str):
        """The HDF5 object at ``name`` (a record's data or aux path), or None when there is none.

        Raises:
            CorruptDumpError: the object exists but HDF5 cannot open it (its metadata fails HDF5's checksum).
        """
        return _open_object(self._file, name, self.path, f"data of record {info.key}")

    # -- auxiliary arrays -----------------------------------------------------------------------------------------

    def array_names(self) -> list[str]:
        """Names of the auxiliary arrays (e.g. generated tokens)."""
        group = _open_object(self._file, "arrays", self.path, "the arrays group")
        if not isinstance(group, h5py.Group):
            return []
        try:
            return sorted(group.keys())
        except (OSError, RuntimeError) as exc:
            raise CorruptDumpError(f"the arrays group cannot be listed ({_first_line(exc)})", self.path,
                                   "the file is damaged; capture it again") from None

    def array(self, name: str) -> np.ndarray:
        """One auxiliary array; KeyError when absent."""
        group = _open_object(self._file, "arrays", self.path, "the arrays group")
        ds = _open_object(group, name, self.path, f"array {name!r}") if isinstance(group, h5py.Group) else None
        if ds is None:
            raise KeyError(f"no array {name!r} in {self.path}")
        data = self._read_whole(ds, f"array {name!r}")
        if self.checksums:
            stored = ds.attrs.get("crc32c")
            if stored is None or np.ndim(stored):
                raise CorruptDumpError(f"array {name!r} has no checksum (attribute 'crc32c')", self.path,
                                       "the file is damaged; capture it again")
            if array_crc32c(data) != int(stored):
                raise CorruptDumpError(f"array {name!r} does not match its checksum", self.path, DAMAGED_HINT)
        return data

    # -- call structures ------------------------------------------------------------------------------------------

    def calls(self) -> "CallLog | None":
        """The call structures of the captured modules (format 1.2, SPEC.md section 10.1), or None when the dump
        has none (an older format, or a backend that records none).

        Raises:
            CorruptDumpError: ``/calls`` is damaged (its checksum, its JSON or its layout).
        """
        if self._calls is None:
            self._calls = self._load_calls() or False
        return self._calls or None

    def _load_calls(self) -> "CallLog | None":
        ds = _open_object(self._file, "calls", self.path, "the call structures")
        if ds is None:
            return None
        raw = read_bytes_dataset(self._file, "calls", self.path, "dump")
        if self.checksums:
            stored = ds.attrs.get("crc32c")
            if stored is None or np.ndim(stored):
                raise CorruptDumpError("the call structures have no checksum (attribute 'crc32c')", self.path,
                                       "the file is damaged; capture it again")
            if bytes_crc32c(raw) != int(stored):
                raise CorruptDumpError("the call structures (/calls) do not match their checksum", self.path,
                                       DAMAGED_HINT)
        text = read_text_dataset(self._file, "calls", self.path, "dump", raw=raw)
        return CallLog.from_document(read_json_dataset(self._file, "calls", self.path, "dump", text=text), self.path)

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


def _open_object(group: h5py.Group, name: str, path: str, what: str):
    """``group[name]``, or None when there is no such object.

    Raises:
        CorruptDumpError: the object exists but HDF5 cannot open it (its metadata fails HDF5's checksum, say).
    """
    try:
        return group[name]
    except KeyError as exc:
        text = str(exc).strip("'\"")
        if "doesn't exist" in text or "component not found" in text:
            return None
        raise CorruptDumpError(f"{what} cannot be opened ({text})", path, "the file is damaged; capture it again") \
            from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise CorruptDumpError(f"{what} cannot be opened ({_first_line(exc)})", path,
                               "the file is damaged; capture it again") from None


def _as_key(key) -> RecordKey:
    return key if isinstance(key, RecordKey) else RecordKey.parse(str(key))
