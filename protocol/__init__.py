"""tensorparity's file protocol: dumps, input sets and the shared-folder layout (see SPEC.md).

Depends only on the standard library, numpy and h5py; numba, when installed (the ``fast`` extra), computes the
statistics of large float arrays faster, imported on first use (protocol/stats_kernels.py), never by
``import protocol``. Only this package opens dump files with h5py.
"""
from .calls import CallLog, CallLogBuilder
from .dots import dot, row_dots
from .dtypes import bfloat16_bits, decode
from .dump_reader import DumpReader, block_slices, open_dump
from .dump_writer import COMPRESSIONS, DumpWriter
from .errors import (
    CaptureError, CorruptDumpError, IncompleteDumpError, InputSetMismatchError, JobError, NotAParityFileError,
    PairingError, ParityError, UnsupportedFolderError, UnsupportedVersionError,
)
from .folder import (
    SharedFolder, atomic_write_json, check_name, create_exclusive_json, link_no_replace, parse_dump_name, read_json,
    resolve_inside, write_new_json,
)
from .inputs import InputSample, InputSet, input_set_sha256, read_input_set, write_input_set
from .keys import RecordKey, make_site, split_site
from .manifest import CAPTURE_METHODS, CAPTURE_MODES, Manifest
from .records import RecordInfo
from .stats import StatsAccumulator, TensorStats, compute_stats
from .validate import ValidationResult, validate
from .version import DUMP_FORMAT, FORMAT_VERSION, INPUTS_FORMAT

__all__ = [
    "CallLog", "CallLogBuilder", "dot", "row_dots", "bfloat16_bits", "decode", "DumpReader", "block_slices", "open_dump", "COMPRESSIONS",
    "DumpWriter",
    "CaptureError", "CorruptDumpError", "IncompleteDumpError", "InputSetMismatchError", "JobError",
    "NotAParityFileError", "PairingError", "ParityError", 
    "UnsupportedFolderError", "UnsupportedVersionError", "SharedFolder", "atomic_write_json", "check_name",
    "create_exclusive_json", "link_no_replace", "parse_dump_name", "read_json", "resolve_inside", "write_new_json",
    "InputSample", "InputSet", "input_set_sha256",
    "read_input_set", "write_input_set", "RecordKey", "make_site", "split_site", "CAPTURE_METHODS",
    "CAPTURE_MODES", "Manifest", "RecordInfo", "StatsAccumulator", "TensorStats", "compute_stats",
    "ValidationResult", "validate", "DUMP_FORMAT", "FORMAT_VERSION", "INPUTS_FORMAT",
]
