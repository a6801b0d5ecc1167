"""``parity compare`` / ``kl`` / ``ppl`` through click's CliRunner and once through the installed entry point;
the pairwise KL JSON shape."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from workflows.cli.main import cli
from analyze.kl import pairwise_kl
from protocol import open_dump

from .conftest import write_dump


def _logit_dump(path, sha, noise, label):
    recs = []
    for s in range(2):
        lg = (3 * np.random.default_rng(s).standard_normal((1, 12, 50))).astype(np.float32)
        lg += noise * np.random.default_rng(10 + s).standard_normal(lg.shape).astype(np.float32)
        recs.append((f"s{s}/t0/:out.logits#0", lg))
        recs.append((f"s{s}/t0/model.layers.0:out#0", lg[..., :16].copy()))
    return write_dump(path, recs, sha=sha, label=label)


@pytest.fixture
def dumps(tmp_path, input_set):
    path, sha, _ = input_set
    return (path, _logit_dump(tmp_path / "fp32.h5", sha, 0.0, "fp32"), _logit_dump(tmp_path / "int8.h5", sha, 0.05, "int8"),
            _logit_dump(tmp_path / "int4.h5", sha, 0.5, "int4"))


def test_compare_exit_codes_and_lines(dumps, tmp_path):
    inputs, fp32, int8, _ = dumps
    runner = CliRunner()
    same = runner.invoke(cli, ["compare", fp32, fp32, "--inputs", inputs])
    assert same.exit_code == 0, same.output
    assert "verdict: pass" in same.output
    out = tmp_path / "r.json"
    res = runner.invoke(cli, ["compare", fp32, int8, "--inputs", inputs, "-o", str(out), "--csv", str(tmp_path / "c")])
    assert res.exit_code == 1, res.output
    fails = [ln for ln in res.output.splitlines() if ln.startswith("FAIL")]
    assert fails[0].startswith("FAIL  #0 :out.logits  rel_l2=") and "> 1.0e-05  cos=" in fails[0]
    assert json.loads(out.read_text())["verdict"] == "diverged" and (tmp_path / "c" / "sites.csv").exists()
    usage = runner.invoke(cli, ["compare", fp32, int8, "--metrics", "bogus"])
    assert usage.exit_code == 2
    odd = runner.invoke(cli, ["compare", fp32])
    assert odd.exit_code == 2
    missing = runner.invoke(cli, ["compare", fp32, str(tmp_path / "nope.h5")])
    assert missing.exit_code == 3 and "nope.h5" in missing.output


def test_kl_json_shape(dumps):
    inputs, fp32, int8, int4 = dumps
    doc = pairwise_kl([fp32, int8, int4], inputs=inputs)
    assert [m["name"] for m in doc["models"]] == ["fp32", "int8", "int4"]
    assert set(doc["kl_divergences"]) == {"fp32_vs_int8", "fp32_vs_int4", "int8_vs_int4"}
    pair = doc["kl_divergences"]["fp32_vs_int8"]
    assert pair["tokens"] == 22 and pair["average"] == pytest.approx(pair["total"] / 22)
    assert doc["kl_divergences"]["fp32_vs_int4"]["average"] > pair["average"] > 0
    assert doc["kl_abs_variant"]["fp32_vs_int8"]["average"] >= pair["average"]
    chunks = doc["chunks"]["fp32_vs_int8"]
    assert len(chunks) == 2 and sum(c["tokens"] for c in chunks) == 22
    assert sum(c["kl_total"] for c in chunks) == pytest.approx(pair["total"])
    stats = doc["llama_statistics"]["fp32_vs_int8"]
    assert stats["kl"]["mean"] == pytest.approx(pair["average"]) and "ppl_ratio" in stats
    assert "token" in doc["weighting"] and doc["summary"]["max_average_kl_pair"] == "fp32_vs_int4"
    json.dumps(doc)


def test_kl_with_a_dump_without_logits_names_the_pairs_it_could_score(dumps, tmp_path):
    inputs, fp32, int8, _ = dumps
    with open_dump(fp32) as d:
        sha = d.manifest.inputs_sha256
    no_logits = write_dump(tmp_path / "hidden.h5", [("s0/t0/model.layers.0:out#0", np.ones((1, 12, 16), np.float32))],
                           sha=sha, label="hidden")
    doc = pairwise_kl([fp32, int8, no_logits], inputs=inputs)
    assert doc["kl_divergences"]["fp32_vs_hidden"]["average"] is None
    assert doc["summary"]["max_average_kl_pair"] == doc["summary"]["min_average_kl_pair"] == "fp32_vs_int8"


def test_kl_and_ppl_commands(dumps, tmp_path):
    inputs, fp32, int8, _ = dumps
    runner = CliRunner()
    out = tmp_path / "kl.json"
    res = runner.invoke(cli, ["kl", fp32, int8, "--inputs", inputs, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "fp32_vs_int8: KL average" in res.output and json.loads(out.read_text())["models"]
    ppl = runner.invoke(cli, ["ppl", fp32, "--inputs", inputs, "--json"])
    assert ppl.exit_code == 0, ppl.output
    doc = json.loads(ppl.output)
    assert doc["tokens"] == 22 and doc["word_ppl"] > 0
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(fp32, alone / "fp32.h5")  # no input set next to it
    nolabels = runner.invoke(cli, ["ppl", str(alone / "fp32.h5")])
    assert nolabels.exit_code == 3 and "--inputs" in nolabels.output


def test_installed_entry_point(dumps, parity_exe):
    inputs, fp32, int8, _ = dumps
    proc = subprocess.run([parity_exe, "compare", fp32, int8, "--inputs", inputs], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[-1] == "verdict: diverged"
    helps = subprocess.run([parity_exe, "kl", "--help"], capture_output=True, text=True)
    assert helps.returncode == 0 and "Example" in helps.stdout
