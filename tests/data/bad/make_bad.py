"""Write the hostile files: each is a real file damaged in one way, with the exact one-line message that
``parity validate`` must print for it (``EXPECTED``; ``{path}`` stands for the path given on the command line).

    python tests/data/bad/make_bad.py            # (re)write them next to this script
    python tests/data/bad/make_bad.py --out DIR  # somewhere else (the tests do this)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from protocol import FORMAT_VERSION, DumpWriter, InputSample, Manifest, RecordKey, write_input_set  # noqa: E402
from protocol.dump_reader import DAMAGED_HINT  # noqa: E402
from protocol.records import row_crc32c  # noqa: E402

_DAMAGED = "the file is damaged; capture it again"
_FLIPPED = DAMAGED_HINT[:1].upper() + DAMAGED_HINT[1:]

#: file name -> the exact message after "Error: " (``{path}`` is the file as named on the command line)
EXPECTED = {
    "truncated.h5": "{path}: HDF5 file cannot be opened, probably truncated or damaged (Unable to synchronously "
                    "open file (truncated file: eof = 6144, sblock->base_addr = 0, stored_eof = 80896)). "
                    "Capture the dump again",
    "empty.h5": "{path}: file is empty (0 bytes). The dump was never written; capture it again",
    "not_hdf5.h5": "{path}: not an HDF5 file, so not a tensorparity dump. Pass a file written by tensorparity",
    "wrong_format.h5": "{path}: not a tensorparity dump (root attribute 'format' is 'acme.tensors'). "
                       "Pass a file written by tensorparity",
    "major2.h5": "{path}: dump format version 2.0 is not supported by this reader (format " + FORMAT_VERSION + "). "
                 "Upgrade tensorparity to read it",
    "malformed_version.h5": "{path}: malformed format_version 'one.zero' in this dump. "
                            "This reader understands dump format 1.x",
    "missing_manifest.h5": "{path}: dump has no 'manifest'. The file is damaged; capture the dump again",
    "missing_data.h5": "{path}: record s0/t0/layers.1:out#0: index points at missing data 'data/r00000001'. "
                       + _DAMAGED[:1].upper() + _DAMAGED[1:],
    "absurd_shape.h5": "{path}: record s0/t0/layers.0:out#0: absurd declared shape [1099511627776, 1099511627776]. "
                       + _DAMAGED[:1].upper() + _DAMAGED[1:],
    "shape_mismatch.h5": "{path}: record s0/t0/layers.2:out#0: data has shape [2, 3] but the index says [4, 4]. "
                         + _DAMAGED[:1].upper() + _DAMAGED[1:],
    "leftover.h5.partial": "{path}: this is an unfinished dump (a leftover .partial file). "
                           "Its writer was interrupted; capture it again",
    "state_writing.h5": "{path}: dump is not complete (HDF5 marks it as still open by its writer). "
                        "Its writer was interrupted; capture it again",
    "tampered_inputs.h5": "{path}: input set content does not match its sha256 (af25783c44f6...). "
                          "The file was altered or damaged; create it again",
    # bytes changed after writing (format 1.1 checksums, SPEC.md section 8.1)
    "flipped_data.h5": "{path}: record s0/t0/layers.1:out#0: data does not match its checksum. " + _FLIPPED,
    "flipped_index.h5": "{path}: index row 2 (record s0/t0/layers.3:out#0) does not match its checksum. "
                        + _FLIPPED,
    "flipped_manifest.h5": "{path}: the manifest or the root attributes do not match their checksum. " + _FLIPPED,
}

#: files whose problem is found on opening (so ``parity inspect`` refuses them with the same message)
FOUND_ON_OPEN = sorted(set(EXPECTED) - {"missing_data.h5", "absurd_shape.h5", "shape_mismatch.h5",
                                        "flipped_data.h5"})


def _manifest() -> Manifest:
    return Manifest(run_id="bad", label="bad", producer={"name": "tensorparity", "version": "bad"},
                    created="2026-01-01T00:00:00+00:00", host="bad-host")


def _base_dump(path: str) -> None:
    """A sound little dump that the cases below damage."""
    with DumpWriter(path, _manifest()) as w:
        w.add(RecordKey(0, 0, "layers.0:out"), np.arange(6, dtype=np.float32).reshape(2, 3))
        w.add(RecordKey(0, 0, "layers.1:out"), np.ones(4, np.float32))
        w.add(RecordKey(0, 0, "layers.2:out"), np.zeros((2, 3), np.float32))


def _edit(src: str, dst: str, fn) -> None:
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        fn(f)


def _set_index_field(f: h5py.File, row: int, field: str, value: str) -> None:
    """Change one index cell, as a buggy or hostile writer would: with a matching row checksum, so that the checks
    behind the checksum are what finds it."""
    index = f["index"]
    rows = index[()]
    rows[row][field] = value
    rows[row]["row_crc32c"] = row_crc32c(rows[row])
    index[row] = rows[row]


def _flip(src: str, dst: str, old: bytes, new: bytes) -> None:
    """Copy ``src`` with every occurrence of ``old`` replaced (bytes changed behind HDF5's back, as a flaky disk or
    share would change them)."""
    with open(src, "rb") as fh:
        data = fh.read()
    assert len(old) == len(new) and old in data, old
    with open(dst, "wb") as fh:
        fh.write(data.replace(old, new))


def _flip_record_data(src: str, dst: str, name: str) -> None:
    """Copy ``src`` with the first 4 bytes of the contiguous dataset ``name`` inverted."""
    with h5py.File(src, "r") as f:
        offset = f[name].id.get_offset()
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fh:
        fh.seek(offset)
        head = fh.read(4)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in head))


def make(out: str) -> list[str]:
    """Write every hostile file into ``out`` (replacing earlier ones: they are generated, not user data)."""
    os.makedirs(out, exist_ok=True)
    for name in EXPECTED:
        p = os.path.join(out, name)
        if os.path.exists(p):
            os.unlink(p)
    base = os.path.join(out, "_base.h5")
    if os.path.exists(base):
        os.unlink(base)
    _base_dump(base)
    p = lambda name: os.path.join(out, name)  # noqa: E731

    with open(base, "rb") as fh:
        data = fh.read()
    with open(p("truncated.h5"), "wb") as fh:
        fh.write(data[:6144])
    open(p("empty.h5"), "wb").close()
    with open(p("not_hdf5.h5"), "w", encoding="utf-8") as fh:
        fh.write("layer,max_abs_diff\nlayers.0,0.5\n")
    _edit(base, p("wrong_format.h5"), lambda f: f.attrs.__setitem__("format", "acme.tensors"))
    _edit(base, p("major2.h5"), lambda f: f.attrs.__setitem__("format_version", "2.0"))
    _edit(base, p("malformed_version.h5"), lambda f: f.attrs.__setitem__("format_version", "one.zero"))
    _edit(base, p("missing_manifest.h5"), lambda f: f.__delitem__("manifest"))
    _edit(base, p("missing_data.h5"), lambda f: f.__delitem__("data/r00000001"))
    _edit(base, p("absurd_shape.h5"),
          lambda f: _set_index_field(f, 0, "shape", "[1099511627776, 1099511627776]"))
    _edit(base, p("shape_mismatch.h5"), lambda f: _set_index_field(f, 2, "shape", "[4, 4]"))
    _flip_record_data(base, p("flipped_data.h5"), "data/r00000001")
    _flip(base, p("flipped_index.h5"), b"layers.2:out", b"layers.3:out")  # one bit of the row's site
    _flip(base, p("flipped_manifest.h5"), b'"host": "bad-host"', b'"host": "bad-hosu"')  # one bit

    # a writer that never finished: the partial file as a killed process leaves it, and the same file renamed
    w = DumpWriter(p("leftover.h5"), _manifest())
    w.add(RecordKey(0, 0, "layers.0:out"), np.ones(3, np.float32))
    w._file.flush()
    shutil.copyfile(w.partial_path, p("state_writing.h5"))
    shutil.copyfile(w.partial_path, p("leftover.h5.partial.tmp"))
    w.abort()
    os.replace(p("leftover.h5.partial.tmp"), p("leftover.h5.partial"))

    tampered = p("tampered_inputs.h5")
    write_input_set(tampered, [InputSample({"input_ids": np.array([[1, 2, 3]], np.int64)}, {})])
    with h5py.File(tampered, "r+") as f:
        f["samples/00000000/input_ids"][0, 0] = 9
    os.unlink(base)
    return sorted(EXPECTED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE)
    args = parser.parse_args(argv)
    for name in make(args.out):
        print(f"wrote {os.path.join(args.out, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
