"""Writing dumps (SPEC.md sections 3-9): records appended in order, index flushed incrementally, crash-safe."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

import h5py
import numpy as np

from . import dtypes
from .checksum import array_crc32c, bytes_crc32c, header_crc32c
from .errors import CaptureError
from .h5util import PARTIAL_SUFFIX, load_compression_plugins, set_text_attr, write_json_dataset
from .keys import RecordKey
from .manifest import Manifest
from .records import INDEX_DTYPE, STORAGE_KINDS, RecordInfo
from .stats import StatsAccumulator, TensorStats, compute_stats
from .version import DUMP_FORMAT, FORMAT_VERSION
from .writeback import SUPPORTED as _WRITEBACK, start_writeback

COMPRESSIONS = ("none", "lz4", "zstd", "gzip")
DEFAULT_CHUNK_BYTES = 4 << 20
_INDEX_FLUSH_ROWS = 256
#: Records at least this large get their statistics computed on a helper thread while their data is written. They
#: overlap on two cores when the write is an os.pwrite (_pwrite releases the GIL; h5py holds it for a whole write, so
#: for chunked or compressed records only numpy's loops overlap). Low, because the records of a capture are mostly
#: 0.5-4 MB activations; below it, the hand-over costs more than it saves.
_PARALLEL_STATS_BYTES = 256 << 10
#: Uncompressed contiguous records at least this large are written with os.pwrite at their offset (see _pwrite).
_DIRECT_BYTES = 64 << 10
_HAS_PWRITE = hasattr(os, "pwrite")  # not on Windows (DirectML hosts): HDF5 writes everything there
#: Every this many bytes of record data, the disk is asked to start writing them (protocol/writeback.py): a capture's
#: writes then reach the disk during the forward instead of all at the final fsync. 8 MiB: in the benchmark's A/B,
#: 2 MiB kicks cost more than they saved, 8 and 32 MiB did as well as each other.
_WRITEBACK_BYTES = 8 << 20
#: Free space kept beyond each record's bytes for HDF5's metadata (index, manifest, object headers).
_SPACE_MARGIN = 1 << 20
#: Generous bytes per index row (strings included) for the free-space check before an index flush.
_INDEX_ROW_BYTES = 1024
#: HDF5 file-format versions of a dump: those of HDF5 1.10 exactly (SPEC.md section 8.1). Its superblock, object
#: headers and chunk indexes carry checksums (Jenkins lookup3) that HDF5 verifies on every read, so damaged metadata
#: is refused instead of misread; every reader of h5py >= 3.10 (HDF5 >= 1.10.4) reads them, and the upper bound
#: keeps newer HDF5 releases from writing structures that 1.10 cannot read.
DUMP_LIBVER = ("v110", "v110")


def chunk_shape(shape: tuple, itemsize: int, target_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple:
    """A C-order chunk shape of at most ``target_bytes``: whole trailing dimensions, then part of the next one."""
    chunk = [1] * len(shape)
    size = itemsize
    for axis in range(len(shape) - 1, -1, -1):
        dim = max(int(shape[axis]), 1)
        if size * dim <= target_bytes:
            chunk[axis] = dim
            size *= dim
        else:
            chunk[axis] = max(1, target_bytes // size)
            break
    return tuple(chunk)


def _compression_kwargs(name: str) -> dict:
    if name == "none":
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    load_compression_plugins()
    import hdf5plugin
    return dict(hdf5plugin.LZ4() if name == "lz4" else hdf5plugin.Zstd(clevel=1))


class DumpWriter:
    """Write one dump file. Use as a context manager; the file appears under its final name only on success.

    The data goes to ``<path>.partial`` first. ``close()`` flushes the index, sets the root ``state`` attribute to
    ``complete`` (last), closes and fsyncs the file, then renames it into place without ever replacing an existing
    file. When the ``with`` block raises, the partial file is removed and nothing appears under the final name.
    Every 8 MiB of record data, the disk is asked to start writing (protocol/writeback.py, Linux), so that little is
    left for the final fsync. The dump is of format 1.1 (SPEC.md section 8.1): HDF5 1.10's file format, and a CRC-32C
    of every record's stored bytes, aux array and index row, of the header and of each auxiliary array.

    Args:
        path: the final file name (conventionally ``*.h5``).
        manifest: how the dump was made; ``writer.manifest`` may be replaced or edited until ``close()``.
        compression: ``none`` (default), ``lz4``, ``zstd`` or ``gzip``; recorded in the file.
        chunk_bytes: target chunk size for large tensors.

    Raises:
        CaptureError: the final file already exists, a leftover partial file is in the way, or the folder is not
            writable.
    """

    def __init__(self, path: str | os.PathLike, manifest: Manifest, *, compression: str = "none",
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
        self.path = os.fspath(path)
        self.partial_path = self.path + PARTIAL_SUFFIX
        self.manifest = manifest
        self.compression = compression
        self.chunk_bytes = int(chunk_bytes)
        self._filter = _compression_kwargs(compression)
        self._rows: list[tuple] = []
        self._keys: set[RecordKey] = set()
        self._seq = 0
        self._arrays: set[str] = set()
        self._calls: dict | None = None
        self._closed = False
        self._pool: ThreadPoolExecutor | None = None
        self._raw_fd: int | None = None  # second descriptor of the partial file, for direct data writes
        self._writeback = _WRITEBACK  # False once the kernel has refused the advice for this file
        self._unstarted = 0  # bytes of record data written since the disk was last asked to write
        self._type_ids: dict = {}  # HDF5 types and creation properties, made once per writer
        self._dcpls: dict = {}
        if os.path.exists(self.path):
            raise CaptureError("a dump already exists under this name", self.path,
                               "choose another output name; tensorparity never overwrites a dump")
        if os.path.exists(self.partial_path):
            raise CaptureError("an unfinished dump is in the way", self.partial_path,
                               "if no other capture is writing it, it was left by a killed writer: delete it")
        try:
            fd = os.open(self.partial_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            self._file = h5py.File(self.partial_path, "w", libver=DUMP_LIBVER)
        except OSError as exc:
            raise _write_error(exc, self.partial_path) from None
        f = self._file
        # fixed-length strings: in checksummed object headers and the dataset itself, out of HDF5's global heap,
        # which only the index's strings use (SPEC.md section 8.1)
        set_text_attr(f, "format", DUMP_FORMAT)
        set_text_attr(f, "format_version", FORMAT_VERSION)
        set_text_attr(f, "state", "writing")
        set_text_attr(f, "compression", compression)
        write_json_dataset(f, "manifest", manifest.to_json(), fixed=True)
        self._index = f.create_dataset("index", shape=(0,), maxshape=(None,), dtype=INDEX_DTYPE,
                                       chunks=(_INDEX_FLUSH_ROWS,))
        self._data = f.create_group("data")

    # -- records -------------------------------------------------------------------------------------------------

    def add(self, key: RecordKey, array: np.ndarray, *, dtype: str | None = None, stats: TensorStats | None = None,
            module_type: str = "", storage: str = "full", reduction: dict | None = None,
            orig_shape: tuple | None = None, aux: np.ndarray | None = None, meta: dict | None = None) -> RecordInfo:
        """Append a record holding tensor data.

        Args:
            key: the record's key (unique within the dump).
            array: the data, in its native dtype (or bit patterns with ``dtype`` naming the logical type).
            dtype: logical dtype, required for bit patterns (``bfloat16``, ``float8_*``) held in uint arrays.
            stats: statistics of the whole captured tensor when the caller has them (e.g. computed on the device);
                computed from ``array`` otherwise (only valid when nothing was reduced away).
            storage: ``full``, ``slice`` or ``topk``; reduction: its parameters; orig_shape: the shape before it.
            aux: a second array stored with the record (the indices of a top-k record).
            meta: backend-specific details (JSON-serialisable).
        """
        if storage not in STORAGE_KINDS or storage == "stats":
            raise ValueError(f"storage must be full, slice or topk for a record with data, not {storage!r}")
        array = np.asarray(array)
        logical = dtypes.logical_of(array, dtype)
        stored = dtypes.to_storage(array, logical)
        if stats is None and storage != "full":
            raise ValueError("statistics of the whole tensor are needed for a reduced record")
        if not stored.flags.c_contiguous:  # copied once, for the checksum and the write (0-d arrays always are)
            stored = np.ascontiguousarray(stored)
        name = self._data_name()
        ds, offset = self._new_dataset(name, stored, logical)
        # the checksum of the stored bytes is taken with the statistics: on the helper thread for large records,
        # while the data is written (pwrite and the CRC both release the GIL), from the same bytes the write reads
        pending: Future | None = None
        crc = None
        if stats is None:
            # started once the dataset exists: HDF5 calls hold the GIL, and competing for it with the statistics
            # thread made them ~8x slower (measured in a capture)
            values = dtypes.decode(stored, logical)
            if stored.nbytes >= _PARALLEL_STATS_BYTES:
                pending = self._stats_pool().submit(_stats_and_crc, values, stored)
            else:
                stats, crc = compute_stats(values), array_crc32c(stored)
        elif stored.nbytes >= _PARALLEL_STATS_BYTES:
            pending = self._stats_pool().submit(_stats_and_crc, None, stored, stats)
        else:
            crc = array_crc32c(stored)
        try:
            self._fill_dataset(ds, offset, stored)
        finally:
            if pending is not None:
                stats, crc = pending.result()
        aux_name = ""
        aux_crc = None
        if aux is not None:
            aux_name = name + "_aux"
            aux_arr = np.asarray(aux)
            aux_stored = dtypes.to_storage(aux_arr, dtypes.logical_of(aux_arr))
            self._write_dataset(aux_name, aux_stored, dtypes.logical_of(aux_arr))
            aux_crc = array_crc32c(aux_stored)
        return self._append(RecordInfo(
            key=key, seq=self._seq, module_type=module_type, dtype=logical, shape=tuple(stored.shape),
            orig_shape=tuple(orig_shape) if orig_shape is not None else tuple(stored.shape), storage=storage,
            reduction=reduction or {}, data=name, aux=aux_name, stats=stats, meta=meta or {},
            data_crc32c=crc, aux_crc32c=aux_crc))

    def add_stats(self, key: RecordKey, stats: TensorStats, *, dtype: str, shape: tuple, module_type: str = "",
                  meta: dict | None = None) -> RecordInfo:
        """Append a statistics-only record (no tensor data)."""
        dtypes.storage_dtype(dtype)  # validates the name
        return self._append(RecordInfo(
            key=key, seq=self._seq, module_type=module_type, dtype=dtype, shape=tuple(shape), orig_shape=tuple(shape),
            storage="stats", data="", stats=stats, meta=meta or {}))

    @contextlib.contextmanager
    def stream(self, key: RecordKey, shape: tuple, dtype: str, *, module_type: str = "",
               meta: dict | None = None) -> Iterator["RecordStream"]:
        """Append a record whose data arrives in pieces along the first axis (tensors larger than memory).

        Yields a ``RecordStream``; call ``write(chunk)`` with consecutive slabs ``[a:b, ...]``. The record is added
        when the block exits and every row was written.
        """
        storage = dtypes.storage_dtype(dtype)
        if len(shape) == 0:
            raise ValueError("a 0-d tensor cannot be streamed; use add()")
        name = self._data_name()
        ds = self._create_dataset(name, tuple(shape), storage, dtype)
        rs = RecordStream(ds, dtype, tuple(shape), self._wrote)
        try:
            yield rs
            if rs.rows_written != shape[0]:
                raise ValueError(f"stream for {key} wrote {rs.rows_written} of {shape[0]} rows")
        except BaseException:
            with contextlib.suppress(Exception):  # a failed stream leaves no dataset behind to clash with the next
                del self._file[name]
            raise
        self._append(RecordInfo(
            key=key, seq=self._seq, module_type=module_type, dtype=dtype, shape=tuple(shape), orig_shape=tuple(shape),
            storage="full", data=name, stats=rs.acc.result(), meta=meta or {}, data_crc32c=rs.crc))

    def add_array(self, name: str, array: np.ndarray) -> None:
        """Store a named auxiliary array under /arrays (e.g. ``generated_tokens.s0``); names are unique."""
        if not name or "/" in name or name in self._arrays:
            raise ValueError(f"invalid or duplicate array name {name!r}")
        arrays = self._file.require_group("arrays")
        array = np.asarray(array)
        stored = dtypes.to_storage(array, dtypes.logical_of(array))
        ds = arrays.create_dataset(name, data=stored)
        ds.attrs["crc32c"] = np.uint32(array_crc32c(stored))
        self._arrays.add(name)

    def set_calls(self, document: dict) -> None:
        """The call structures of the captured modules (protocol/calls.py), written as ``/calls`` when the dump
        is closed (SPEC.md section 10.1); a later call replaces an earlier one."""
        self._calls = document

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish the dump: flush the index, mark it complete, close, fsync, and rename it into place."""
        if self._closed:
            return
        try:
            self._flush_index()
            del self._file["manifest"]  # the final manifest (a capture may add results, e.g. a perturbation check)
            manifest = self.manifest.to_json()
            write_json_dataset(self._file, "manifest", manifest, fixed=True)
            if self._calls is not None:
                text = json.dumps(self._calls, sort_keys=True, allow_nan=True)
                write_json_dataset(self._file, "calls", text, fixed=True)
                self._file["calls"].attrs["crc32c"] = np.uint32(bytes_crc32c(text.encode("utf-8")))
            self._file.attrs["record_count"] = self._seq
            self._file.attrs["header_crc32c"] = np.uint32(header_crc32c(
                DUMP_FORMAT, FORMAT_VERSION, self.compression, self._seq, manifest))
            set_text_attr(self._file, "state", "complete")  # set last: nothing earlier can look complete
            self._file.flush()
            self._file.close()
            self._close_raw_fd()
            _fsync_path(self.partial_path)
        except OSError as exc:
            self.abort()
            raise _write_error(exc, self.path) from None
        except BaseException:  # e.g. the index flush's CaptureError (disk full): nothing may be left behind
            self.abort()
            raise
        self._closed = True
        self._stop_pool()
        _rename_no_clobber(self.partial_path, self.path)

    def abort(self) -> None:
        """Close and remove the partial file; nothing appears under the final name."""
        self._closed = True
        self._stop_pool()
        self._close_raw_fd()
        # unlink first: after an I/O error HDF5 may fail hard while closing, and nothing must be left behind
        with contextlib.suppress(OSError):
            os.unlink(self.partial_path)
        # release every HDF5 object while the file is still open: after a failed write, HDF5 crashes when an
        # object of a file it could not close cleanly is released later (at garbage collection)
        self._index = self._data = None
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(OSError):  # platforms that refuse to unlink an open file
            os.unlink(self.partial_path)

    def __enter__(self) -> "DumpWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def record_count(self) -> int:
        """Records appended so far."""
        return self._seq

    # -- internals -----------------------------------------------------------------------------------------------

    def _stats_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dump-stats")
        return self._pool

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _data_name(self) -> str:
        return f"data/r{self._seq:08d}"

    def _append(self, info: RecordInfo) -> RecordInfo:
        if info.key in self._keys:
            raise ValueError(f"duplicate record key {info.key}")
        self._keys.add(info.key)
        if info.seq != self._seq:
            raise RuntimeError(f"record {info.key} was built with seq {info.seq}, not the writer's next ({self._seq})")
        self._seq += 1
        self._rows.append(info.to_row())
        if len(self._rows) >= _INDEX_FLUSH_ROWS:
            self._flush_index()
        return info

    def _flush_index(self) -> None:
        if not self._rows:
            return
        # index rows and the metadata HDF5 writes with them: checked first, like every dataset, because a failed
        # HDF5 write crashes the process later (see _check_space)
        self._check_space(len(self._rows) * _INDEX_ROW_BYTES)
        rows = np.array(self._rows, dtype=INDEX_DTYPE)
        n = self._index.shape[0]
        try:
            self._index.resize((n + len(rows),))
            self._index[n:] = rows
        except OSError as exc:
            raise _write_error(exc, self.partial_path) from None
        self._rows.clear()

    def _check_space(self, nbytes: int) -> None:
        """Refuse a record the disk cannot hold before HDF5 tries: HDF5 2.0 crashes the process (at close or exit)
        after a failed write, so running out of space must be caught here."""
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.partial_path)))
        except (OSError, AttributeError):  # no statvfs (Windows): rely on the write errors
            return
        free = st.f_bavail * st.f_frsize
        if free < nbytes + _SPACE_MARGIN:
            raise CaptureError(f"the disk is full ({free / 2**20:.1f} MiB free, {(nbytes + _SPACE_MARGIN) / 2**20:.1f}"
                               f" MiB needed to go on); the dump was not written", self.path,
                               "free space or write elsewhere")

    def _create_dataset(self, name: str, shape: tuple, storage: np.dtype, logical: str,
                        direct: bool = False) -> h5py.Dataset:
        nbytes = int(np.prod(shape, dtype=np.int64)) * storage.itemsize
        self._check_space(nbytes)
        try:
            if not direct and shape and nbytes > 0 and (nbytes > self.chunk_bytes or self._filter):
                ds = self._file.create_dataset(name, shape=shape, dtype=storage, **self._filter,
                                               chunks=chunk_shape(shape, storage.itemsize, self.chunk_bytes))
            else:
                # contiguous: the low-level calls h5py's create_dataset makes (same type, properties and layout),
                # without its ~100 us of Python per dataset (a capture creates thousands); every record is in /data
                group, _, leaf = name.rpartition("/")
                if group != "data":
                    raise ValueError(f"record datasets live in /data, not {name!r}")
                dsid = h5py.h5d.create(self._data.id, leaf.encode(), self._type_id(storage),
                                       h5py.h5s.create_simple(shape), dcpl=self._contiguous_dcpl(direct))
                ds = h5py.Dataset(dsid)
        except OSError as exc:
            raise _write_error(exc, self.partial_path) from None
        if logical != storage.name:
            set_text_attr(ds, "dtype", logical)
        return ds

    def _type_id(self, storage: np.dtype) -> h5py.h5t.TypeID:
        tid = self._type_ids.get(storage)
        if tid is None:
            tid = self._type_ids[storage] = h5py.h5t.py_create(storage, logical=True)
        return tid

    def _contiguous_dcpl(self, direct: bool) -> h5py.h5p.PropDCID:
        """Creation properties of a contiguous dataset as h5py sets them (no timestamps); for a direct write, its
        space is allocated at creation (so it has an offset) and never filled by HDF5."""
        dcpl = self._dcpls.get(direct)
        if dcpl is None:
            dcpl = self._dcpls[direct] = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_obj_track_times(False)
            if direct:
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        return dcpl

    def _write_dataset(self, name: str, stored: np.ndarray, logical: str) -> None:
        self._fill_dataset(*self._new_dataset(name, stored, logical), stored)

    def _new_dataset(self, name: str, stored: np.ndarray, logical: str) -> tuple[h5py.Dataset, int | None]:
        """The dataset for ``stored``, and its file offset when its bytes are to be written directly."""
        direct = (_HAS_PWRITE and not self._filter and _DIRECT_BYTES <= stored.nbytes <= self.chunk_bytes
                  and stored.dtype.kind in "fiu")
        ds = self._create_dataset(name, tuple(stored.shape), stored.dtype, logical, direct)
        return ds, ds.id.get_offset() if direct else None

    def _fill_dataset(self, ds: h5py.Dataset, offset: int | None, stored: np.ndarray) -> None:
        if offset is not None:
            self._pwrite(np.ascontiguousarray(stored), offset)
        elif stored.size:
            try:
                ds.write_direct(np.ascontiguousarray(stored))
                # flush chunked data now: a write that fails later (disk full) in a cached chunk is otherwise only
                # reported, and ignored, when h5py deallocates the dataset, and HDF5 can crash on the next call
                # (contiguous datasets are written through, so their errors surface above)
                if ds.chunks:
                    ds.flush()
            except (OSError, RuntimeError) as exc:
                error = _write_error(exc, self.path)
                del ds  # release the dataset while its file is open: HDF5 crashes releasing it after abort()
                raise error from None
        self._wrote(stored.nbytes)

    def _wrote(self, nbytes: int) -> None:
        """Count record data just written (before compression); every _WRITEBACK_BYTES, ask the disk to start
        writing the file's dirty pages (HDF5's and ours alike) while the capture goes on. Advice only: once refused,
        never asked again for this file."""
        self._unstarted += nbytes
        if self._unstarted < _WRITEBACK_BYTES or not self._writeback:
            return
        self._unstarted = 0
        # our descriptor when direct writes opened one, else HDF5's: no extra handle (an NFS/SMB open) for the advice
        fd = self._raw_fd if self._raw_fd is not None else self._file.id.get_vfd_handle()
        self._writeback = start_writeback(fd)

    def _pwrite(self, data: np.ndarray, offset: int) -> None:
        """Write a contiguous dataset's bytes at its file offset, outside HDF5. The bytes are the same (the dataset's
        type is the array's own dtype), but the system call releases the GIL, which h5py holds for a whole write:
        the statistics of the record are computed on the helper thread meanwhile. The final fsync covers them."""
        try:
            if self._raw_fd is None:
                self._raw_fd = os.open(self.partial_path, os.O_WRONLY)
            view = memoryview(data.reshape(-1).view(np.uint8))
            while view.nbytes:
                written = os.pwrite(self._raw_fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            raise _write_error(exc, self.path) from None

    def _close_raw_fd(self) -> None:
        if self._raw_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._raw_fd)
            self._raw_fd = None


class RecordStream:
    """Writes one record's data slab by slab along the first axis, accumulating its statistics."""

    def __init__(self, ds: h5py.Dataset, logical: str, shape: tuple, wrote: Callable[[int], None]):
        self._ds = ds
        self._logical = logical
        self._shape = shape
        self._wrote = wrote  # the writer's count of bytes written (it starts the disk's writes)
        self.rows_written = 0
        self.acc = StatsAccumulator()
        self.crc = 0  # CRC-32C of the stored bytes so far: slabs are consecutive in C order

    def write(self, chunk: np.ndarray) -> None:
        """Write the next rows; ``chunk.shape[1:]`` must equal the record's trailing shape."""
        chunk = dtypes.to_storage(np.asarray(chunk), self._logical)
        if chunk.shape[1:] != self._shape[1:]:
            raise ValueError(f"chunk shape {chunk.shape} does not fit record shape {self._shape}")
        end = self.rows_written + chunk.shape[0]
        if end > self._shape[0]:
            raise ValueError(f"stream overflows the declared {self._shape[0]} rows")
        self._ds[self.rows_written:end] = chunk
        self._wrote(chunk.nbytes)
        self.crc = array_crc32c(chunk, self.crc)
        self.acc.update(dtypes.decode(chunk, self._logical))
        self.rows_written = end


def _stats_and_crc(values: np.ndarray | None, stored: np.ndarray,
                   stats: TensorStats | None = None) -> tuple[TensorStats, int]:
    """The statistics of ``values`` (unless given) and the CRC-32C of ``stored``: one helper-thread task."""
    if stats is None:
        stats = compute_stats(values)
    return stats, array_crc32c(stored)


def _write_error(exc: OSError, path: str) -> CaptureError:
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code is None:  # HDF5 errors carry the system errno in their text only
        m = re.search(r"errno = (\d+)", text)
        code = int(m.group(1)) if m else None
    if code == errno.ENOSPC or "No space left" in text:
        return CaptureError("the disk is full; the dump was not written", path, "free space or write elsewhere")
    if code == errno.EFBIG or "File too large" in text:
        return CaptureError("the file grew beyond the allowed file size (EFBIG); the dump was not written", path,
                            "raise the file size limit (ulimit -f) or write to another file system")
    if code == errno.ENOTDIR:
        return CaptureError("the output folder is not a folder; the dump was not written", path,
                            "choose an existing folder")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or "ermission" in text or "read-only" in text.lower():
        return CaptureError("the output folder is not writable; the dump was not written", path,
                            "choose a folder you can write to")
    if code == errno.ENOENT:
        return CaptureError("the output folder does not exist", path, "create it first")
    return CaptureError(f"cannot write the dump ({text.splitlines()[0] if text else type(exc).__name__})", path)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_no_clobber(src: str, dst: str) -> None:
    """Move ``src`` to ``dst`` atomically, failing (never replacing) when ``dst`` exists."""
    try:
        os.link(src, dst)  # atomic and refuses an existing target
    except FileExistsError:
        raise CaptureError("a dump appeared under this name while writing", dst,
                           f"yours is kept as {src}; rename it by hand") from None
    except OSError:  # filesystems without hard links (some SMB mounts)
        if os.path.exists(dst):
            raise CaptureError("a dump appeared under this name while writing", dst,
                               f"yours is kept as {src}; rename it by hand") from None
        os.rename(src, dst)
        _fsync_dir(dst)
        return
    os.unlink(src)
    _fsync_dir(dst)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
