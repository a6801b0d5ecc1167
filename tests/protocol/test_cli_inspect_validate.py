"""``parity inspect`` and ``parity validate`` on real files, through click's runner and the installed entry point."""
from __future__ import annotations

import json
import math
import os
import subprocess

from click.testing import CliRunner

from workflows.cli.main import cli
from protocol import FORMAT_VERSION

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(REPO, "tests", "data", "golden")
DUMP = os.path.join(GOLDEN, f"dump-v{FORMAT_VERSION}.h5")
INPUTS = os.path.join(GOLDEN, f"inputs-v{FORMAT_VERSION}.h5")


def test_inspect_table_lists_manifest_and_every_record():
    result = CliRunner().invoke(cli, ["inspect", DUMP])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{DUMP}: dump v{FORMAT_VERSION}, 24 records, compression none"
    assert "label cpu-fp32" in lines[1] and "created 2026-01-01T00:00:00+00:00 on golden-host" in lines[1]
    assert "capture external / generate" in lines[3]
    rows = [line for line in lines if line.lstrip()[:1].isdigit()]
    assert len(rows) == 24
    bf16 = next(r for r in rows if "self_attn:out.0#0" in r).split()
    assert bf16[:4] == ["4", "s0/t0/model.layers.0.self_attn:out.0#0", "bfloat16", "[6]"]
    assert bf16[-2:] == ["1", "1"]  # one NaN, one -Inf
    stats_only = next(r for r in rows if "model.layers.1:out.0#0" in r)
    assert "stats" in stats_only and "[2, 8, 64]" in stats_only


def test_inspect_sites_filter_and_json():
    result = CliRunner().invoke(cli, ["inspect", "--json", "--sites", r"^ints\.", DUMP])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["format_version"] == FORMAT_VERSION and doc["manifest"]["run_id"] == "golden"
    assert [r["key"] for r in doc["records"]] == [f"s0/t0/ints.{t}:out#0" for t in
                                                 ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                                  "uint64")]
    assert doc["records"][3]["stats"]["min"] == float(-(2 ** 63))
    full = json.loads(CliRunner().invoke(cli, ["inspect", "--json", DUMP]).stdout)
    f64 = next(r for r in full["records"] if r["key"] == "s0/t0/model.embed_tokens:out#0")
    assert f64["stats"]["nan_count"] == 1 and f64["stats"]["inf_count"] == 2 and f64["stats"]["min"] == -2.25e300
    empty = next(r for r in full["records"] if r["key"] == "s0/t0/model.empty:out#0")
    assert math.isnan(empty["stats"]["mean"]) and empty["shape"] == [0, 4]


def test_inspect_input_set_table_and_json():
    result = CliRunner().invoke(cli, ["inspect", INPUTS])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{INPUTS}: input set, 2 samples, sha256 ")
    assert lines[3] == "  sample 1: attention_mask int64[1, 2], input_ids int64[1, 2], temperature float32[]"
    doc = json.loads(CliRunner().invoke(cli, ["inspect", "--json", INPUTS]).stdout)
    assert doc["provenance"]["dataset"] == "golden" and len(doc["sha256"]) == 64
    assert doc["samples"][0]["arrays"]["input_ids"] == {"dtype": "int64", "shape": [1, 5]}
    assert doc["samples"][0]["meta"] == {"score_from": 1, "text": "a golden window"}


def test_inspect_and_validate_usage_errors_exit_2_and_missing_files_exit_3(tmp_path):
    assert CliRunner().invoke(cli, ["validate"]).exit_code == 2
    assert CliRunner().invoke(cli, ["inspect", "--bogus", DUMP]).exit_code == 2
    missing = str(tmp_path / "none.h5")
    result = CliRunner().invoke(cli, ["validate", missing])
    assert result.exit_code == 3 and result.stderr == f"Error: {missing}: no such file. Check the path\n"
    result = CliRunner().invoke(cli, ["inspect", missing])
    assert result.exit_code == 3 and result.stderr == f"Error: {missing}: no such file. Check the path\n"


def test_installed_entry_point_inspects_and_validates_golden_files(parity_exe):
    old = os.path.join(GOLDEN, "dump-v1.0-lz4.h5")
    files = [DUMP, os.path.join(GOLDEN, f"dump-v{FORMAT_VERSION}-lz4.h5"), INPUTS, old]
    res = subprocess.run([parity_exe, "validate", *files], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    sha = res.stdout.splitlines()[2].split("sha256 ")[1][:12]
    assert res.stdout.splitlines()[1] == (f"OK  {files[1]}: dump v{FORMAT_VERSION}, 2 records, inputs sha256 {sha}, "
                                          "checksums verified")
    # a 1.0 dump has no checksums: still valid, and validate says what it could not verify
    assert res.stdout.splitlines()[3] == (f"OK  {old}: dump v1.0, 2 records, inputs sha256 {sha}, "
                                          "no checksums (format 1.0): data not verified")
    res = subprocess.run([parity_exe, "inspect", "--json", files[1]], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert [r["dtype"] for r in json.loads(res.stdout)["records"]] == ["float32", "bfloat16"]
