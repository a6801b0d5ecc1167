"""Deep validation of dump and input-set files (``parity validate``)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from . import dtypes
from .dump_reader import DumpReader
from .errors import CorruptDumpError
from .h5util import attr_str, open_h5
from .inputs import read_input_set
from .version import INPUTS_FORMAT

#: Declared sizes above this are treated as corruption (no real tensor has 2**44 elements).
MAX_DECLARED_ELEMENTS = 1 << 44


@dataclass(frozen=True)
class ValidationResult:
    """What a valid file is: its kind (``dump`` or ``inputs``), version, and how many records or samples.

    ``checksums`` is False for a dump of format 1.0, whose data could not be verified (it has no checksums).
    """

    path: str
    kind: str
    format_version: str
    count: int
    sha256: str = ""
    checksums: bool = True

    def summary(self) -> str:
        """One line for the terminal."""
        what = "records" if self.kind == "dump" else "samples"
        extra = f", inputs sha256 {self.sha256[:12]}" if self.sha256 else ""
        if self.kind == "dump":
            extra += ", checksums verified" if self.checksums else \
                f", no checksums (format {self.format_version}): data not verified"
        return f"OK  {self.path}: {self.kind} v{self.format_version}, {self.count} {what}{extra}"


def validate(path: str | os.PathLike) -> ValidationResult:
    """Check a dump or input set completely: identity, version, state, manifest, index, every record's data.

    For a dump of format 1.1, every checksum too (header, index rows, each record's data and aux array, each
    auxiliary array); a 1.0 dump has none, which the result says (``checksums`` False).

    Returns:
        A ValidationResult when the file is sound.

    Raises:
        ParityError subclasses naming the file and the first problem found.
    """
    path = os.fspath(path)
    with open_h5(path, "dump") as f:
        is_inputs = attr_str(f, "format") == INPUTS_FORMAT
    if is_inputs:
        inputs = read_input_set(path, verify=True)
        with h5py.File(path, "r", locking=False) as f:
            version = attr_str(f, "format_version") or ""
        return ValidationResult(path, "inputs", version, len(inputs), inputs.sha256)
    with DumpReader(path) as reader:
        for info in reader.records():
            _check_record(reader, info)
        for name in reader.array_names():
            reader.array(name)
        return ValidationResult(path, "dump", reader.format_version, len(reader), reader.manifest.inputs_sha256,
                                reader.checksums)


def _check_record(reader: DumpReader, info) -> None:
    path = reader.path

    def bad(what: str) -> CorruptDumpError:
        return CorruptDumpError(f"record {info.key}: {what}", path, "the file is damaged; capture it again")

    if not dtypes.is_known(info.dtype):
        raise bad(f"unknown dtype {info.dtype!r}")
    for shape in (info.shape, info.orig_shape):
        if any((not isinstance(d, int)) or d < 0 for d in shape):
            raise bad(f"invalid shape {list(shape)}")
        if int(np.prod(shape, dtype=np.float64)) > MAX_DECLARED_ELEMENTS:
            raise bad(f"absurd declared shape {list(shape)}")
    if info.storage == "stats":
        return
    ds = reader.data_object(info, info.data)
    if not isinstance(ds, h5py.Dataset):
        raise bad(f"index points at missing data {info.data!r}")
    if tuple(ds.shape) != tuple(info.shape):
        raise bad(f"data has shape {list(ds.shape)} but the index says {list(info.shape)}")
    if ds.dtype != dtypes.storage_dtype(info.dtype):
        raise bad(f"data is stored as {ds.dtype} but dtype {info.dtype} needs {dtypes.storage_dtype(info.dtype)}")
    tag = ds.attrs.get("dtype")
    tag = tag.decode("utf-8", "replace") if isinstance(tag, bytes) else tag
    if tag is not None and tag != info.dtype:
        raise bad(f"data is tagged dtype {tag!r} but the index says {info.dtype}")
    nbytes = info.numel * ds.dtype.itemsize
    if ds.chunks is None and nbytes and ds.id.get_storage_size() != nbytes:
        raise bad(f"data holds {ds.id.get_storage_size()} bytes but its shape needs {nbytes}")
    # read it all, block by block: catches truncation inside the data, filter errors and (1.1) damaged bytes
    for _ in reader.iter_blocks(info, raw=True, reuse=True):
        pass
    if info.aux:
        if not isinstance(reader.data_object(info, info.aux), h5py.Dataset):
            raise bad(f"index points at missing auxiliary array {info.aux!r}")
        reader.read_aux(info)
