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
        raise CorruptDumpError(f"HDF5 file cannot be opened, probably truncated or damaged ({_first_line(exc)})",
                               path, f"capture the {kind} again") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_json_dataset(f: h5py.File, name: str, path: str, kind: str):
    """Read a scalar string dataset holding JSON; CorruptDumpError when missing or not JSON."""
    if name not in f:
        raise CorruptDumpError(f"{kind} has no '{name}'", path, f"the file is damaged; capture the {kind} again")
    try:
        raw = f[name][()]
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        return json.loads(text)
    except (ValueError, TypeError, OSError, UnicodeDecodeError) as exc:
        raise CorruptDumpError(f"'{name}' is not valid JSON ({_first_line(exc)})", path,
                               f"the file is damaged; capture the {kind} again") from None


def write_json_dataset(f: h5py.File, name: str, obj) -> None:
    """Store a JSON document as a scalar UTF-8 string dataset (canonical: sorted keys)."""
    text = json.dumps(obj, sort_keys=True, allow_nan=True) if not isinstance(obj, str) else obj
    f.create_dataset(name, data=text, dtype=h5py.string_dtype("utf-8"))


def attr_str(obj, name: str) -> str | None:
    """A string attribute, decoded; None when absent."""
    if name not in obj.attrs:
        return None
    value = obj.attrs[name]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return None
    return str(value)
