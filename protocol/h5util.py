"""Opening HDF5 files with user-facing errors, and small JSON-in-HDF5 helpers. Internal to protocol/."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np

from .errors import CorruptDumpError, IncompleteDumpError, NotAParityFileError, ParityError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PARTIAL_SUFFIX = ".partial"

_plugins_loaded = False


def load_compression_plugins() -> None:
    """Register hdf5plugin's filters (lz4, zstd, bitshuffle...) so compressed datasets can be read."""
    global _plugins_loaded
    if not _plugins_loaded:
        import hdf5plugin  # noqa: F401  (registers filters on import)
        _plugins_loaded = True


def open_h5(path: str | os.PathLike, kind: str) -> h5py.File:
    """Open an HDF5 file read-only, turning every way it can fail into a ParityError naming the file.

    Args:
        path: the file.
        kind: ``"dump"`` or ``"input set"``, used in messages.
    """
    path = os.fspath(path)
    if path.endswith(PARTIAL_SUFFIX):
        raise IncompleteDumpError(f"this is an unfinished {kind} (a leftover {PARTIAL_SUFFIX} file)", path,
                                  "its writer was interrupted; capture it again")
    if not os.path.exists(path):
        raise ParityError("no such file", path, "check the path")
    if os.path.isdir(path):
        raise ParityError(f"is a folder, not a {kind} file", path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ParityError(f"cannot read file ({exc.strerror})", path, "check its permissions") from None
    if size == 0:
        raise CorruptDumpError("file is empty (0 bytes)", path, f"the {kind} was never written; capture it again")
    if head != HDF5_SIGNATURE:
        raise NotAParityFileError(f"not an HDF5 file, so not a tensorparity {kind}", path,
                                  "pass a file written by tensorparity")
    load_compression_plugins()
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        if "already open for write" in str(exc):
            # HDF5 1.10 files (dumps of format 1.1) flag themselves open while written, until their writer closes
            # them: a file under a final name still flagged was renamed from a killed or running writer's partial
            raise IncompleteDumpError(f"{kind} is not complete (HDF5 marks it as still open by its writer)", path,
                                      "its writer was interrupted; capture it again") from None
        raise CorruptDumpError(f"HDF5 file cannot be opened, probably truncated or damaged ({_first_line(exc)})",
                               path, f"capture the {kind} again") from None


def _first_line(exc: BaseException) -> str:
    # str() of a KeyError is the repr of its argument: quoted
    text = (str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_json_dataset(f: h5py.File, name: str, path: str, kind: str, *, text: str | None = None):
    """Read a scalar string dataset holding JSON (or parse its ``text``, read by ``read_text_dataset``);
    CorruptDumpError when missing or not JSON."""
    try:
        if text is None:
            text = read_text_dataset(f, name, path, kind)
        return json.loads(text)
    except ValueError as exc:
        raise CorruptDumpError(f"'{name}' is not valid JSON ({_first_line(exc)})", path,
                               f"the file is damaged; capture the {kind} again") from None


def read_text_dataset(f: h5py.File, name: str, path: str, kind: str, *, raw: bytes | None = None) -> str:
    """The text of a scalar string dataset (or of its ``raw`` bytes, read by ``read_bytes_dataset``);
    CorruptDumpError when missing or unreadable."""
    try:
        if raw is None:
            raw = read_bytes_dataset(f, name, path, kind)
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptDumpError(f"'{name}' is not valid JSON ({_first_line(exc)})", path,
                               f"the file is damaged; capture the {kind} again") from None


def read_bytes_dataset(f: h5py.File, name: str, path: str, kind: str) -> bytes:
    """The UTF-8 bytes of a scalar string dataset, undecoded; CorruptDumpError when missing or unreadable."""
    if name not in f:
        raise CorruptDumpError(f"{kind} has no '{name}'", path, f"the file is damaged; capture the {kind} again")
    try:
        raw = f[name][()]
        return raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
    except (ValueError, TypeError, OSError) as exc:
        raise CorruptDumpError(f"'{name}' is not valid JSON ({_first_line(exc)})", path,
                               f"the file is damaged; capture the {kind} again") from None


def write_json_dataset(f: h5py.File, name: str, obj, *, fixed: bool = False) -> None:
    """Store a JSON document as a scalar UTF-8 string dataset (canonical: sorted keys).

    ``fixed`` stores it as a fixed-length string (its bytes in the dataset itself) instead of a variable-length one
    (its bytes in HDF5's global heap, which HDF5 does not checksum and whose damage can hang HDF5's parser).
    """
    text = json.dumps(obj, sort_keys=True, allow_nan=True) if not isinstance(obj, str) else obj
    if fixed:
        raw = text.encode("utf-8")
        dt = h5py.string_dtype("utf-8", max(len(raw), 1))
        f.create_dataset(name, data=np.array(raw, dtype=dt), dtype=dt)
    else:
        f.create_dataset(name, data=text, dtype=h5py.string_dtype("utf-8"))


def set_text_attr(obj, name: str, text: str) -> None:
    """Set a string attribute as a fixed-length UTF-8 string: it lives in the object header, which HDF5 1.10's
    format checksums, instead of the global heap (see ``write_json_dataset``). Readers see the same text."""
    raw = text.encode("utf-8")
    dt = h5py.string_dtype("utf-8", max(len(raw), 1))
    obj.attrs.create(name, np.array(raw, dtype=dt), dtype=dt)


def attr_str(obj, name: str) -> str | None:
    """A string attribute, decoded; None when absent. CorruptDumpError when it cannot be read (the string lives in
    HDF5's global heap, which HDF5 does not checksum: damage there can make it undecodable)."""
    try:
        if name not in obj.attrs:
            return None
        value = obj.attrs[name]
    except (OSError, RuntimeError, KeyError) as exc:  # KeyError: h5py's word for an object HDF5 cannot open
        raise CorruptDumpError(f"attribute {name!r} cannot be read ({_first_line(exc)})", obj.file.filename,
                               "the file is damaged; capture it again") from None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return None
    return str(value)
