"""A structural check of the HDF5 global-heap collections that hold the index's strings, before HDF5 parses them.

HDF5 checksums its metadata in the 1.10 file format, except the global heap, where every variable-length string
lives (in a dump of format 1.1, only the index's string columns: attributes and the manifest are fixed-length).
Damage there is caught by the index rows' checksums once the strings are read, but HDF5's parser of a collection
(``H5HG__cache_heap_deserialize``, HDF5 1.14 and 2.0) loops forever on an object whose size makes the next object
start where it began (size 0 for the free-space object, or a size that wraps around), so a damaged collection hangs
the process instead of failing. This module walks each collection that the index's rows reference, as HDF5 will,
and refuses the dump when HDF5's walk would not end or would fail.

Only the raw bytes are read: the index's chunks (``read_direct_chunk``: the string references as stored, 4-byte
length, 8-byte collection address, 4-byte object index) and each referenced collection's bytes.
"""
from __future__ import annotations

import os
import struct

import h5py
import numpy as np

from .errors import CorruptDumpError

_GCOL = b"GCOL"
_MIN_SIZE = 4096  # H5HG_MINSIZE: HDF5 refuses smaller collections
_HDR = 16  # signature, version, 3 reserved bytes, 8-byte collection size
_OBJ_HDR = 16  # 2-byte index, 2-byte reference count, 4 reserved bytes, 8-byte size
_OBJ = struct.Struct("<HH4xQ")
_HINT = "the file is damaged; capture it again"


def check_index_heaps(index: h5py.Dataset, path: str) -> None:
    """Walk every global-heap collection that the rows of ``index`` reference.

    Raises:
        CorruptDumpError: a referenced collection lies outside the file, lacks its signature, or has an object
            table that HDF5 would misparse or never finish parsing.
    """
    addresses = _referenced_collections(index, path)
    if not addresses:
        return
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        for addr in sorted(addresses):
            _check_collection(fh, int(addr), size, path)


def _referenced_collections(index: h5py.Dataset, path: str) -> set[int]:
    ftype = index.id.get_type()
    if not isinstance(ftype, h5py.h5t.TypeCompoundID) or index.chunks is None or index.shape[0] == 0:
        return set()
    # on disk a variable-length string is 4 + sizeof_addr + 4 bytes, where the type reports its in-memory size (a
    # pointer): HDF5 shifts every later member of the compound by the difference (H5T_set_loc)
    sizeof_addr = index.file.id.get_create_plist().get_sizes()[0]
    if sizeof_addr != 8:
        return set()  # not written by tensorparity (nor by h5py's defaults): nothing to rely on here
    offsets = []
    shift = 0
    members = sorted(range(ftype.get_nmembers()), key=ftype.get_member_offset)
    for i in members:
        member = ftype.get_member_type(i)
        if isinstance(member, h5py.h5t.TypeStringID) and member.is_variable_str():
            offsets.append(ftype.get_member_offset(i) + shift)
            shift += 4 + sizeof_addr + 4 - member.get_size()
    if not offsets:
        return set()
    row = ftype.get_size() + shift
    refs = np.dtype({"names": [f"r{i}" for i in range(len(offsets))], "formats": ["<u8"] * len(offsets),
                     "offsets": [o + 4 for o in offsets], "itemsize": row})  # the address after the 4-byte length
    lengths = np.dtype({"names": [f"n{i}" for i in range(len(offsets))], "formats": ["<u4"] * len(offsets),
                        "offsets": offsets, "itemsize": row})
    rows_left = int(index.shape[0])
    per_chunk = int(index.chunks[0])
    found: set[int] = set()
    dsid = index.id
    try:
        for i in range(dsid.get_num_chunks()):
            info = dsid.get_chunk_info(i)
            start = info.chunk_offset[0]
            n = min(per_chunk, rows_left - start)
            if n <= 0:
                continue
            mask, raw = dsid.read_direct_chunk(info.chunk_offset)
            if mask or len(raw) < n * row:  # the index is written unfiltered: a filtered or short chunk is damage
                raise CorruptDumpError(f"index chunk {i} is damaged (filter mask {mask}, {len(raw)} bytes)", path,
                                       _HINT)
            addr = np.frombuffer(raw, dtype=refs, count=n)
            used = np.frombuffer(raw, dtype=lengths, count=n)
            for j in range(len(offsets)):  # an empty string references no collection
                found.update(np.unique(addr[f"r{j}"][used[f"n{j}"] > 0]).tolist())
    except (OSError, RuntimeError, ValueError) as exc:
        raise CorruptDumpError(f"index cannot be read ({str(exc).splitlines()[0] if str(exc) else exc!r})", path,
                               _HINT) from None
    return found


def _check_collection(fh, addr: int, file_size: int, path: str) -> None:
    def bad(what: str) -> CorruptDumpError:
        return CorruptDumpError(f"the index's strings are damaged (global heap at {addr}: {what})", path, _HINT)

    if addr + _HDR > file_size:
        raise bad("outside the file")
    fh.seek(addr)
    head = fh.read(_HDR)
    if head[:4] != _GCOL or head[4] != 1:
        raise bad("no collection signature")
    size = struct.unpack_from("<Q", head, 8)[0]
    if size < _MIN_SIZE or addr + size > file_size:
        raise bad(f"declared size {size}")
    fh.seek(addr)
    chunk = fh.read(size)
    p = _HDR
    while p < size:  # HDF5's walk (H5HG__cache_heap_deserialize), with the checks it lacks
        if p + _OBJ_HDR > size:
            break  # the tail, too small for an object header: free space
        idx, _refs, length = _OBJ.unpack_from(chunk, p)
        need = length if idx == 0 else _OBJ_HDR + ((length + 7) & ~7)
        if need <= 0 or p + need > size:
            raise bad(f"object {idx} of size {length} at offset {p}")
        p += need
