"""Thresholds built from real captured reports (CPU fp32 vs CPU bf16 of a tiny Llama at two sequence lengths) and
applied: site limits, logit failure rates against a direct count, the file's errors, and the CLI."""
from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

import analyze
from workflows.cli.main import cli
from workflows.demo import plant_fault
from analyze.render.text import summary_lines
from analyze.report import read_report
from analyze.threshold_check import apply_thresholds, check_report_file
from analyze.thresholds import build_thresholds, read_thresholds, statistic, write_thresholds
from analyze.errors import ThresholdFileError

from .torch_dumps import capture, input_set


@pytest.fixture(scope="module")
def baselines(tiny_llama, corpus_file, tmp_path_factory):
    """Reports (with per-token values) of fp32 vs bf16 at 32 and 48 tokens, a 40-token bf16 check report, and a
    40-token bf16 report of the model with a planted fault."""
    folder = tmp_path_factory.mktemp("thresholds")
    out = {}
    for tokens in (32, 48, 40):
        inputs = input_set(tiny_llama, corpus_file, str(folder / f"inputs{tokens}.h5"), tokens=tokens,
                           start=1000 * tokens)
        ref = capture(tiny_llama, inputs, str(folder / f"ref{tokens}.h5"))
        cand = capture(tiny_llama, inputs, str(folder / f"bf{tokens}.h5"), dtype="bfloat16")
        path = str(folder / f"report{tokens}.json")
        analyze.compare(ref, cand, inputs=str(folder / f"inputs{tokens}.h5")).write_json(path, tokens=True)
        out[tokens] = path
        out[f"ref{tokens}"] = ref
    faulty = plant_fault(tiny_llama, str(folder / "faulty"), "model.layers.1.self_attn.o_proj.weight", scale=0.5)
    out["fault_cand"] = capture(faulty, inputs_from(folder, 40), str(folder / "fault40.h5"), dtype="bfloat16")
    out["folder"] = folder
    return out


def inputs_from(folder, tokens):
    from protocol import read_input_set
    return read_input_set(str(folder / f"inputs{tokens}.h5"))


def _site_values(report, name, metric):
    return [r.metrics[metric] for r in report.site(name).records if metric in r.metrics]


def _scored(report, metric):
    vals = []
    for ls in report.logits:
        for r in ls.records:
            vals.append(np.asarray(r.per_token[metric])[np.asarray(r.scored_mask, bool)])
    return np.concatenate(vals)


def test_build_matches_sites_across_shapes(baselines):
    a, b = read_report(baselines[32]), read_report(baselines[48])
    doc = build_thresholds([baselines[32], baselines[48]], stat="max", margin=2.0)
    assert doc["kind"] == "tensorparity.thresholds" and doc["schema_version"] == "1.0"
    prov = doc["provenance"]
    assert prov["statistic"] == "max" and prov["margin"] == 2.0 and len(prov["reports"]) == 2
    assert all(len(r["sha256"]) == 64 and r["candidate"]["dtype"] == "bfloat16" for r in prov["reports"])
    name = "model.layers.1.mlp.down_proj:out"
    rel = _site_values(a, name, "rel_l2") + _site_values(b, name, "rel_l2")
    entry = doc["sites"][name]["metrics"]
    assert entry["rel_l2"]["n"] == 4 and entry["rel_l2"]["limit"] == max(rel) * 2.0
    cos = _site_values(a, name, "cosine") + _site_values(b, name, "cosine")
    assert entry["cosine"]["direction"] == "min" and entry["cosine"]["limit"] == 1.0 - (1.0 - min(cos)) * 2.0
    # never a size-dependent metric
    assert not {m for s in doc["sites"].values() for m in s["metrics"]} & {"nan_mismatch", "mse_sum", "l2"}
    # logits: the 99th percentile over every scored token of both reports, times the margin
    kl = np.concatenate([_scored(a, "kl"), _scored(b, "kl")])
    lg = doc["logits"][":out.logits"]["kl"]
    assert lg["source"] == "pooled tokens" and lg["n"] == kl.size
    assert lg["limit"] == pytest.approx(float(np.percentile(kl, 99)) * 2.0, rel=1e-12)


@pytest.mark.parametrize("stat", ["mean", "max", "p99", "p99.9"])
def test_statistics(baselines, stat):
    doc = build_thresholds([baselines[32]], stat=stat, margin=1.0, metrics=["rel_l2"])
    name = "model.layers.0.self_attn.q_proj:out"
    vals = np.array(_site_values(read_report(baselines[32]), name, "rel_l2"))
    want = {"mean": vals.mean(), "max": vals.max(), "p99": np.percentile(vals, 99),
            "p99.9": np.percentile(vals, 99.9)}[stat]
    assert doc["sites"][name]["metrics"]["rel_l2"]["limit"] == pytest.approx(want, rel=1e-12)
    assert statistic([1.0, float("nan"), 3.0], "mean") == 2.0


def test_margin_one_max_passes_its_own_baseline_exactly(baselines):
    doc = build_thresholds([baselines[32]], stat="max", margin=1.0, logit_metrics=["kl"], logit_percentile=100)
    result = apply_thresholds(read_report(baselines[32]), doc)
    assert result["sites_failed"] == 0 and result["passed"]
    assert result["logits"][0]["failed_tokens"] == 0


def test_failure_rate_against_a_direct_count(baselines):
    doc = build_thresholds([baselines[32], baselines[48]], margin=1.0, logit_percentile=90.0)
    report = read_report(baselines[40])
    inputs = inputs_from(baselines["folder"], 40)
    result = apply_thresholds(report, doc, max_failure_rate=0.01, inputs=inputs)
    for lg in result["logits"]:
        vals = _scored(report, lg["metric"])
        limit = doc["logits"][":out.logits"][lg["metric"]]["limit"]
        direct = int(np.count_nonzero(vals > limit))
        assert lg["tokens"] == vals.size and lg["failed_tokens"] == direct
        assert lg["failure_rate"] == direct / vals.size
        assert lg["passed"] == (direct / vals.size <= 0.01)
        listed = [t["value"] for t in lg["failing_tokens"]]
        assert listed == sorted(listed, reverse=True) and len(listed) == min(direct, 50)
        for t in lg["failing_tokens"]:
            ids = inputs.samples[t["sample"]].arrays["input_ids"].reshape(-1)
            assert t["token"] == ids[t["position"]] and t["next_token"] == ids[t["position"] + 1]
            rec = next(r for r in report.logits[0].records if r.sample == t["sample"])
            assert rec.per_token[lg["metric"]][t["position"]] == t["value"] > limit
    assert any(not lg["passed"] for lg in result["logits"])  # a p90 limit: ~10% of tokens over it
    assert not result["passed"]


def test_compare_with_thresholds_passes_bf16_and_fails_a_fault(baselines, tmp_path):
    th = str(tmp_path / "th.json")
    write_thresholds(build_thresholds([baselines[32], baselines[48]], stat="max", margin=3.0), th)
    ref = baselines["ref40"]
    ok = analyze.compare(ref, str(baselines["folder"] / "bf40.h5"), thresholds=th)
    assert ok.thresholds["sites_failed"] == 0, ok.thresholds["failures"][:3]
    assert ok.first_divergence is None  # the default tolerance would flag bf16 sites; the thresholds do not
    assert analyze.compare(ref, str(baselines["folder"] / "bf40.h5")).first_divergence is not None
    bad = analyze.compare(ref, baselines["fault_cand"], thresholds=th)
    assert bad.verdict == "diverged" and bad.exit_code == 1 and not bad.thresholds["passed"]
    failed = [f["site"] for f in bad.thresholds["failures"]]
    assert "model.layers.1.self_attn.o_proj:out" in failed
    fd = bad.first_divergence
    assert fd["judged_by"] == "thresholds" and fd["site"] == failed[0]
    assert bad.thresholds["worst_sites"][0]["ratio"] >= bad.thresholds["worst_sites"][-1]["ratio"]
    lines = summary_lines(bad)
    assert any("(threshold)" in line and line.startswith("FAIL  #") for line in lines)
    doc = bad.to_dict()
    assert doc["thresholds"]["file"] == th and "site_results" not in doc["thresholds"]


@pytest.mark.parametrize("content,needle", [
    (None, "thresholds file not found"),
    ("{not json", "not valid JSON"),
    (json.dumps({"kind": "other"}), "not a thresholds file"),
    (json.dumps({"kind": "tensorparity.thresholds", "schema_version": "2.0", "sites": {}}),
     "thresholds schema version 2.0 is not supported (this reader knows 1.x)"),
    (json.dumps({"kind": "tensorparity.thresholds", "schema_version": "1.0",
                 "sites": {"a:out": {"metrics": {"rel_l2": {"limit": "x"}}}}}), "'limit' must be a number"),
    (json.dumps({"kind": "tensorparity.thresholds", "schema_version": "1.0",
                 "sites": {"a:out": {"metrics": {"l2": {"limit": 1}}}}}), "unknown metric 'l2'"),
], ids=["missing", "not-json", "wrong-kind", "version", "bad-limit", "unknown-metric"])
def test_threshold_file_errors(tmp_path, baselines, content, needle):
    path = tmp_path / "th.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ThresholdFileError) as exc:
        read_thresholds(path)
    assert needle in str(exc.value) and str(path) in str(exc.value)
    res = CliRunner().invoke(cli, ["thresholds", "check", baselines[32], "--thresholds", str(path)])
    assert res.exit_code == 3 and needle in res.output
    res = CliRunner().invoke(cli, ["compare", baselines["ref32"], str(baselines["folder"] / "bf32.h5"),
                                   "--thresholds", str(path)])
    assert res.exit_code == 3 and needle in res.output


def test_cli_build_and_check(baselines, tmp_path, parity_exe):
    th = str(tmp_path / "th.json")
    runner = CliRunner()
    res = runner.invoke(cli, ["thresholds", "build", baselines[32], baselines[48], "-o", th, "--stat", "p99",
                              "--margin", "3"])
    assert res.exit_code == 0, res.output
    assert "written: " + th in res.output and read_thresholds(th).provenance["statistic"] == "p99"
    res = runner.invoke(cli, ["thresholds", "check", baselines[40], "--thresholds", th, "--max-failure-rate", "1"])
    assert res.exit_code == 0, res.output
    assert "passed" in res.output.splitlines()[-1]
    strict = str(tmp_path / "strict.json")
    assert runner.invoke(cli, ["thresholds", "build", baselines[32], "-o", strict, "--margin", "1",
                               "--logit-percentile", "50"]).exit_code == 0
    proc = subprocess.run([parity_exe, "thresholds", "check", baselines[48], "--thresholds", strict],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "FAIL  logits :out.logits kl:" in proc.stdout and "FAILED" in proc.stdout
    # a report without per-token values cannot give a failure rate: unusable input, with the fix
    plain = str(tmp_path / "plain.json")
    with open(baselines[40]) as fh:
        doc = json.load(fh)
    for ls in doc["logits"]:
        for r in ls["records"]:
            r.pop("per_token"), r.pop("scored_mask")
    with open(plain, "w") as fh:
        json.dump(doc, fh)
    res = runner.invoke(cli, ["thresholds", "check", plain, "--thresholds", th])
    assert res.exit_code == 3 and "parity compare --tokens" in res.output
    with pytest.raises(Exception, match="per-token"):
        check_report_file(plain, th)
    assert runner.invoke(cli, ["thresholds", "build", baselines[32], "-o", th, "--metrics", "l2"]).exit_code == 2
    assert runner.invoke(cli, ["thresholds", "build", "--help"]).exit_code == 0
    assert runner.invoke(cli, ["thresholds", "check", "--help"]).exit_code == 0
    assert not math.isnan(read_thresholds(th).sites["model.layers.0:out"]["rel_l2"]["limit"])
