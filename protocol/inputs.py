"""Input sets (SPEC.md section 10): the exact arrays every backend consumes, content-addressed by sha256."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from .dump_writer import _fsync_path, _rename_no_clobber, _write_error
from .errors import CorruptDumpError, NotAParityFileError, ParityError
from .h5util import PARTIAL_SUFFIX, _first_line, attr_str, open_h5, read_json_dataset, write_json_dataset
from .version import DUMP_FORMAT, FORMAT_VERSION, INPUTS_FORMAT, check_version

_ALLOWED_KINDS = "biuf"  # bool, signed, unsigned, float


@dataclass
class InputSample:
    """One sample: named arrays (``input_ids``, ``attention_mask``, ``pixel_values``...) and JSON metadata.

    Conventional metadata: ``score_from`` (first position whose next-token prediction is scored, for strided
    windows), ``text`` (the original text of the scored tokens, for word/byte perplexity).
    """

    arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)


@dataclass
class InputSet:
    """An input set in memory: samples plus provenance (dataset, split, tokenizer, window, stride, seed...)."""

    samples: list[InputSample]
    provenance: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def sha256(self) -> str:
        """The content hash over the canonical encoding of the samples (see ``input_set_sha256``)."""
        return input_set_sha256(self.samples)

    def __len__(self) -> int:
        return len(self.samples)


def _field(h, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def canonical_json(obj) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, UTF-8, NaN refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def input_set_sha256(samples: list[InputSample]) -> str:
    """sha256 over the canonical encoding: per sample, per array name (sorted): name, little-endian dtype, shape,
    C-order bytes; then the sample's metadata as canonical JSON. Every field is length-prefixed (8 bytes, LE)."""
    h = hashlib.sha256()
    _field(h, INPUTS_FORMAT.encode())
    _field(h, len(samples).to_bytes(8, "little"))
    for sample in samples:
        _field(h, len(sample.arrays).to_bytes(8, "little"))
        for name in sorted(sample.arrays):
            arr = _canonical_array(sample.arrays[name], name)
            _field(h, name.encode())
            _field(h, arr.dtype.str.encode())
            _field(h, json.dumps(list(arr.shape)).encode())
            _field(h, arr.tobytes(order="C"))
        _field(h, canonical_json(sample.meta))
    return h.hexdigest()


def _canonical_array(arr, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in _ALLOWED_KINDS:
        raise ValueError(f"input array {name!r} has dtype {arr.dtype}; only bool, integer and float are allowed")
    # reshape: ascontiguousarray turns a 0-d array into a 1-d one
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(arr.shape)


def write_input_set(path: str | os.PathLike, samples: list[InputSample], provenance: dict | None = None) -> str:
    """Write an input set file (``*.partial`` then rename; never replaces an existing file).

    Returns:
        The input set's sha256.

    Raises:
        ParityError: the file exists, or the folder cannot be written.
        ValueError: an array of an unsupported dtype, an invalid array name, or non-JSON metadata.
    """
    path = os.fspath(path)
    if os.path.exists(path):
        raise ParityError("file already exists", path, "choose another name; input sets are never overwritten")
    sha = input_set_sha256(samples)
    partial = path + PARTIAL_SUFFIX
    try:
        with h5py.File(partial, "x") as f:
            f.attrs["format"] = INPUTS_FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["state"] = "writing"
            f.attrs["sha256"] = sha
            f.attrs["sample_count"] = len(samples)
            write_json_dataset(f, "provenance", provenance or {})
            write_json_dataset(f, "sample_meta", [s.meta for s in samples])
            group = f.create_group("samples")
            for i, sample in enumerate(samples):
                g = group.create_group(f"{i:08d}")
                for name, arr in sample.arrays.items():
                    if not name or "/" in name or name.startswith("."):
                        raise ValueError(f"invalid input array name {name!r}")
                    g.create_dataset(name, data=_canonical_array(arr, name))
            f.attrs["state"] = "complete"
        _fsync_path(partial)
    except FileExistsError:
        raise ParityError("an unfinished input set is in the way", partial,
                          "if nothing is writing it, delete it") from None
    except OSError as exc:
        _remove(partial)
        raise _write_error(exc, path) from None
    except BaseException:
        _remove(partial)
        raise
    _rename_no_clobber(partial, path)
    return sha


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def read_input_set(path: str | os.PathLike, *, verify: bool = True) -> InputSet:
    """Read an input set file; with ``verify`` (default), recompute its sha256 and refuse a mismatch.

    Raises:
        ParityError subclasses: missing, not HDF5, not an input set, another MAJOR version, damaged.
    """
    path = os.fspath(path)
    with open_h5(path, "input set") as f:
        fmt = attr_str(f, "format")
        if fmt != INPUTS_FORMAT:
            if fmt == DUMP_FORMAT:
                raise NotAParityFileError("this is a dump, not an input set", path,
                                          "pass an input set written by 'parity inputs'")
            raise NotAParityFileError("not a tensorparity input set (root attribute 'format' is "
                                      + (f"{fmt!r})" if fmt else "missing)"), path,
                                      "create one with 'parity inputs'")
        check_version(attr_str(f, "format_version") or "", path, "input set")
        if attr_str(f, "state") != "complete":
            raise CorruptDumpError("input set is not complete", path, "create it again")
        provenance = read_json_dataset(f, "provenance", path, "input set")
        metas = read_json_dataset(f, "sample_meta", path, "input set")
        group = f.get("samples")
        count = int(f.attrs.get("sample_count", -1))
        if not isinstance(group, h5py.Group) or not isinstance(metas, list) or len(group) != count \
                or len(metas) != count:
            raise CorruptDumpError("input set's samples are inconsistent with its sample_count", path,
                                   "the file is damaged; create it again")
        samples = []
        try:
            for i in range(count):
                g = group[f"{i:08d}"]
                samples.append(InputSample({name: g[name][()] for name in g}, metas[i]))
        except (KeyError, OSError) as exc:
            raise CorruptDumpError(f"input set sample cannot be read ({_first_line(exc)})", path,
                                   "the file is damaged; create it again") from None
        stored = attr_str(f, "sha256") or ""
    result = InputSet(samples, provenance if isinstance(provenance, dict) else {}, path)
    if verify and result.sha256 != stored:
        raise CorruptDumpError(f"input set content does not match its sha256 ({stored[:12]}...)", path,
                               "the file was altered or damaged; create it again")
    return result
