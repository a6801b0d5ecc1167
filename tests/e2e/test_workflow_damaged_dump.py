"""A capture damaged after it was written (issue 19), through the installed ``parity``: validate names the record,
compare reports it as a per-record error instead of a divergence, and a damaged manifest makes the dump unusable."""
from __future__ import annotations

import shutil
import subprocess

import h5py

from protocol import FORMAT_VERSION, open_dump
from protocol.dump_reader import DAMAGED_HINT

from .conftest import ENV, make_inputs

HINT = DAMAGED_HINT[:1].upper() + DAMAGED_HINT[1:]
KEY = "s0/t0/model.layers.0.mlp:out#0"


def _parity(exe: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, env=ENV)


def _invert(path: str, offset: int, n: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(n)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def test_damaged_capture_is_named_by_validate_and_an_error_in_compare(parity_exe, tiny_llama, tmp_path):
    inputs = make_inputs(str(tmp_path / "prompts.h5"), samples=1, length=8)
    ref = str(tmp_path / "ref.h5")
    res = _parity(parity_exe, "capture", "torch", tiny_llama, "--inputs", inputs, "--label", "cpu-fp32", "-o", ref)
    assert res.returncode == 0, res.stderr
    cand = str(tmp_path / "cand.h5")
    shutil.copyfile(ref, cand)  # the same capture, copied to another host... and damaged on the way
    with open_dump(cand) as dump:
        info = dump.record(KEY)
    with h5py.File(cand, "r", locking=False) as f:
        ds = f[info.data]
        offset = ds.id.get_offset() if ds.chunks is None else ds.id.get_chunk_info(0).byte_offset
    _invert(cand, offset + 8, 16)

    res = _parity(parity_exe, "validate", ref, cand)
    assert res.returncode == 3
    assert res.stdout.startswith(f"OK  {ref}: dump v{FORMAT_VERSION}, ") and res.stdout.endswith(", checksums verified\n")
    assert res.stderr == f"Error: {cand}: record {KEY}: data does not match its checksum. {HINT}\n"

    res = _parity(parity_exe, "compare", ref, cand)
    assert res.returncode == 3, res.stdout + res.stderr  # an error, not a divergence
    lines = res.stdout.splitlines()
    errors = [line for line in lines if line.startswith("ERROR ")]
    assert len(errors) == 1 and errors[0].endswith(
        f"model.layers.0.mlp:out  damaged dump: {cand}: record {KEY}: data does not match its checksum. {HINT}")
    assert not [line for line in lines if line.startswith("FAIL ") or line.startswith("first divergence")]
    assert ", 0 over tolerance, 1 records in error;" in res.stdout and "verdict: error" in res.stdout

    # a damaged manifest: the dump cannot be trusted at all
    shutil.copyfile(ref, cand)
    with open(cand, "rb") as fh:
        data = fh.read()
    label = b'"label": "cpu-fp32"'
    places = [i for i in range(len(data)) if data.startswith(label, i)]  # the live manifest, and an earlier copy
    assert places
    for at in places:
        _invert(cand, at + 10, 1)
    res = _parity(parity_exe, "compare", ref, cand)
    assert res.returncode == 3
    assert res.stderr.endswith(f"Error: {cand}: the manifest or the root attributes do not match their checksum. "
                               f"{HINT}\n")
