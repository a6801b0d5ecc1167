"""``parity demo`` end to end through the installed entry point (what ``make demo`` runs): it builds, captures,
compares, names the planted fault as the first divergent site, writes the reports, and never overwrites a run."""
from __future__ import annotations

import json
import os
import subprocess

from workflows.demo import FAULT_TENSOR, fresh_run_folder


def test_parity_demo_end_to_end(tmp_path, parity_exe):
    out = tmp_path / "demo-out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([parity_exe, "demo", "--out", str(out), "--samples", "2", "--tokens", "48"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = os.listdir(out)
    assert len(runs) == 1 and runs[0].startswith("run-")
    folder = out / runs[0]
    fault_site = FAULT_TENSOR.rsplit(".", 1)[0]
    text = proc.stdout
    assert "first divergence: #" in text and f"{fault_site}:out" in text
    assert f"error introduced here: {fault_site} (" in text
    assert "error introduced: nowhere beyond the candidate's precision" in text  # the clean bf16 candidate
    assert "top error gain" not in text  # replay answers "where"; the gain ranking would blame the embedding
    assert f"everything is in {folder}" in text
    for name in ("cpu-fp32.h5", "cpu-bf16.h5", "cpu-fp32-faulty.h5", "inputs.h5",
                 "cpu-fp32__vs__cpu-bf16.json", "cpu-fp32__vs__cpu-bf16.html",
                 "cpu-fp32__vs__cpu-fp32-faulty.json", "cpu-fp32__vs__cpu-fp32-faulty.html",
                 "cpu-bf16-faulty.h5", "cpu-fp32__vs__cpu-bf16-faulty.json", "cpu-fp32__vs__cpu-bf16-faulty.html"):
        assert (folder / name).is_file(), name
        assert f"{folder / name}" in text or name.endswith(".h5")
    with open(folder / "cpu-fp32__vs__cpu-fp32-faulty.json", encoding="utf-8") as fh:
        doc = json.load(fh)
    assert doc["first_divergence"]["site"] == f"{fault_site}:out" and doc["verdict"] == "diverged"
    assert doc["localization"]["gain_ranking"][0]["module"] == fault_site
    assert doc["local"]["first_introduced"]["module"] == fault_site
    with open(folder / "cpu-fp32__vs__cpu-bf16.json", encoding="utf-8") as fh:
        clean = json.load(fh)
    assert clean["candidate"]["dtype"] == "bfloat16"
    # the everyday candidate: bf16 is over tolerance everywhere, yet nothing (the embedding least) is blamed
    assert clean["first_divergence"] is not None and clean["local"]["first_introduced"] is None
    with open(folder / "cpu-fp32__vs__cpu-bf16-faulty.json", encoding="utf-8") as fh:
        assert json.load(fh)["local"]["first_introduced"]["module"] == fault_site
    # a second run never touches the first: a fresh folder every time, even within the same second
    before = sorted(os.listdir(folder))
    a, b = fresh_run_folder(out), fresh_run_folder(out)
    assert len({a, b, str(folder)}) == 3 and sorted(os.listdir(folder)) == before


def test_demo_refuses_a_file_as_out(tmp_path, parity_exe):
    target = tmp_path / "not-a-folder"
    target.write_text("keep me")
    proc = subprocess.run([parity_exe, "demo", "--out", str(target)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "is a file" in proc.stderr  # a usage error, before anything runs
    assert target.read_text() == "keep me"


def test_demo_help_names_an_example():
    from click.testing import CliRunner

    from workflows.cli.main import cli
    res = CliRunner().invoke(cli, ["demo", "--help"])
    assert res.exit_code == 0 and "parity demo --out demo-out" in res.output
