"""The judge (analyze/judge.py): one decision per record and site that every part of a report reads alike.

The regression: sdpa against eager attention with a float32 tolerance of 1e-9 and the eager capture given as the
floor printed 48 FAIL lines (judged by the raw tolerance) and then ``verdict: pass`` (judged by the floor), and
``parity compare --floor`` exited 0.
"""
from __future__ import annotations

import csv
import math

import pytest
from click.testing import CliRunner

import analyze
from workflows.cli.main import cli
from analyze.judge import Decision, judge_record, judge_site
from analyze.render.tables import write_csv
from analyze.render.text import summary_lines

from .torch_dumps import capture, input_set


@pytest.fixture(scope="module")
def attention_pair(tiny_llama, corpus_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("judge")
    inputs = input_set(tiny_llama, corpus_file, str(folder / "inputs.h5"))
    ref = capture(tiny_llama, inputs, str(folder / "sdpa.h5"), attn="sdpa")
    again = capture(tiny_llama, inputs, str(folder / "sdpa-again.h5"), attn="sdpa")
    eager = capture(tiny_llama, inputs, str(folder / "eager.h5"), attn="eager")
    return folder, ref, again, eager


def _fail_sites(lines: list[str]) -> list[str]:
    return [line.split()[2] for line in lines if line.startswith("FAIL  #")]


def _everything_agrees(report, csv_folder):
    """FAIL lines, totals, the CSV, the first divergence, the localization curve and the verdict: one decision."""
    over = [s.name for s in report.sites if s.over_tolerance]
    assert _fail_sites(summary_lines(report)) == over
    assert report.totals["over_tolerance"] == len(over)
    write_csv(report, str(csv_folder))
    with open(csv_folder / "sites.csv", newline="") as fh:
        assert [r["site"] + (f"#{r['call']}" if r["call"] != "0" else "") for r in csv.DictReader(fh)
                if r["over_tolerance"] == "1"] == over
    curve_over = [e["site"] for e in report.localization["curve"] if e["over"]]
    assert curve_over == over
    assert (report.first_divergence or {}).get("site") == (over[0] if over else None)
    assert report.verdict == ("diverged" if over else "error" if report.errors else "pass")


def test_a_floor_equal_to_the_candidate_gives_no_fail_line_and_passes(attention_pair, tmp_path):
    folder, ref, _, eager = attention_pair
    tight = {"float32": 1e-9}
    raw = analyze.compare(ref, eager, tolerances=tight)
    assert raw.totals["over_tolerance"] > 10 and raw.verdict == "diverged"  # sdpa vs eager: real rounding noise
    _everything_agrees(raw, tmp_path / "raw")
    floored = analyze.compare(ref, eager, tolerances=tight, floor=eager)
    assert {s.judged_by for s in floored.sites} == {"floor"}
    assert floored.totals["over_tolerance"] == 0 and floored.verdict == "pass"
    _everything_agrees(floored, tmp_path / "floored")
    result = CliRunner().invoke(cli, ["compare", ref, eager, "--floor", eager, "--tolerance", "float32=1e-9"])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output


def test_a_floor_of_exact_noise_judges_the_whole_error_and_says_so(attention_pair, tmp_path):
    folder, ref, again, eager = attention_pair
    floored = analyze.compare(ref, eager, tolerances={"float32": 1e-9}, floor=again)  # sdpa twice: floor 0
    assert floored.verdict == "diverged" and floored.totals["over_tolerance"] > 10
    _everything_agrees(floored, tmp_path / "csv")
    lines = [line for line in summary_lines(floored) if line.startswith("FAIL")]
    assert lines and all(" over the floor" in line for line in lines)
    result = CliRunner().invoke(cli, ["compare", ref, eager, "--floor", again, "--tolerance", "float32=1e-9"])
    assert result.exit_code == 1 and result.output.count("FAIL  #") == len(lines)


def test_the_judge_rules():
    tol = 1e-5
    assert judge_record({"rel_l2": 2e-5, "cosine": 1.0}, tolerance=tol) == Decision(
        True, "tolerance", "rel_l2", 2e-5, tol, pytest.approx(2.0))
    cos = judge_record({"rel_l2": 1e-6, "cosine": 0.9998}, tolerance=tol)
    assert cos.over and cos.metric == "cosine" and cos.limit == 1 - tol
    # exact: a cosine that rounds to 1 - ulp is not a divergence; NaN/Inf on one side always is
    assert not judge_record({"rel_l2": 0.0, "cosine": 1 - 1e-16}, tolerance=0.0).over
    assert judge_record({"rel_l2": 0.0, "nan_mismatch": 3}, tolerance=tol).metric == "nan_mismatch"
    assert judge_record({"rel_l2": math.nan}, tolerance=tol).over
    assert judge_record({"stats_rel_l2": 3e-5}, stats_only=True, tolerance=tol).metric == "stats_rel_l2"
    one_nan = judge_record({"stats_rel_l2": 1e-9, "nan_count_diff": 1}, stats_only=True, tolerance=1e-2)
    assert one_nan.over and one_nan.metric == "nan_count_diff"
    # an empty tensor: nothing to judge, by tolerance and by thresholds alike
    assert not judge_record({"rel_l2": None, "cosine": None}, status="empty", tolerance=tol).over
    assert not judge_record({"rel_l2": None}, status="empty", limits={"rel_l2": {"limit": 1e-3}}).over
    # a record that could not be compared is an error, never a numeric divergence
    err = judge_record({}, status="error", tolerance=tol)
    assert not err.over and err.metric == "error"
    # the floor: the excess of error and of 1 - cosine
    assert not judge_record({"rel_l2": 3e-5, "cosine": 0.99995}, tolerance=tol, floor=(2.5e-5, 0.99996)).over
    floored = judge_record({"rel_l2": 5e-5, "cosine": 1.0}, tolerance=tol, floor=(1e-5, 1.0))
    assert floored.over and floored.judged_by == "floor" and floored.value == pytest.approx(4e-5)
    # thresholds: each limited metric in its direction, the worst ratio decides; exact never fails
    limits = {"rel_l2": {"limit": 1e-3}, "cosine": {"limit": 0.999}}
    th = judge_record({"rel_l2": 5e-4, "cosine": 0.998}, limits=limits)
    assert th.over and th.metric == "cosine" and th.ratio == pytest.approx(2.0)
    assert not judge_record({"rel_l2": 0.0, "cosine": 0.5}, limits=limits).over
    # sites: by tolerance the first record over decides; by thresholds the worst, kept even when within
    a, b = Decision(True, "tolerance", "rel_l2", 2.0, 1.0, 2.0, "k1"), Decision(True, "tolerance", "rel_l2", 9.0,
                                                                               1.0, 9.0, "k2")
    assert judge_site([Decision(False, "tolerance"), a, b], "tolerance") is a
    within = [Decision(False, "thresholds", "rel_l2", 1.0, 2.0, 0.5, "k1"),
              Decision(False, "thresholds", "rel_l2", 1.8, 2.0, 0.9, "k2")]
    assert judge_site(within, "thresholds").key == "k2" and not judge_site(within, "thresholds").over
