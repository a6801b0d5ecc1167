"""Local error by replay (docs/METRICS.md section 7): the judge's rule and its edge cases, non-finite values the
candidate introduces, and ``parity compare --replay`` through the installed entry point (exit codes, a model that
does not exist)."""
from __future__ import annotations

import math
import subprocess

import pytest
import torch

from analyze.compare import compare
from analyze.judge import judge_local
from analyze.render.text import local_lines
from capture.torch_hooks import torch_capture
from capture.torch_replay import TorchReplayer
from protocol import DumpWriter, Manifest

from .torch_dumps import capture, input_set


@pytest.mark.parametrize("local, expected, over, ratio", [
    (0.0, 0.0, False, 0.0),          # exact where exactness is expected (an fp32 embedding lookup)
    (1e-9, 0.0, True, math.inf),     # anything where nothing is expected
    (2e-3, 1e-3, False, 1.0),        # at the limit (factor 2) is not over
    (2.1e-3, 1e-3, True, 1.05),
    (math.nan, 1e-3, True, math.inf),
])
def test_judge_local_against_factor_times_expected(local, expected, over, ratio):
    d = judge_local(local, expected, factor=2.0)
    assert d.over is over and d.judged_by == "replay" and d.limit == 2.0 * expected
    assert d.ratio == pytest.approx(ratio) if math.isfinite(ratio) else d.ratio == ratio


def test_judge_local_non_finite_is_over_and_missing_numbers_are_not_judged():
    assert judge_local(0.0, 1e-3, non_finite=2).metric == "non_finite"
    assert judge_local(None, 1e-3).over is False and judge_local(1e-3, None).metric is None


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _dump(model, path, x, dtype="float32"):
    manifest = Manifest(run_id="r", label=path.rsplit("/", 1)[-1], dtype=dtype,
                        capture={"method": "torch-hooks", "mode": "forward"})
    with torch.no_grad(), torch_capture(model, DumpWriter(path, manifest)) as cap:
        cap.at(0)
        model(x)
    return path


def test_an_infinity_the_candidate_introduces_is_named_by_the_module_that_made_it(tmp_path):
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    ref_model, cand_model = _Net(), _Net()
    with torch.no_grad():
        cand_model.a.weight[0, 0] = float("inf")  # a broken weight: inf where the reference has none
    ref = _dump(ref_model, str(tmp_path / "ref.h5"), x)
    cand = _dump(cand_model, str(tmp_path / "cand.h5"), x)
    report = compare(ref, cand, replay=TorchReplayer(ref_model))
    first = report.local["first_introduced"]
    assert first["module"] == "a" and first["decided_by"] == "non_finite" and first["ratio"] == math.inf
    # b's inputs carry the inf already: replayed on them, b introduces nothing new
    b = next(e for e in report.local["modules"] if e["module"] == "b")
    assert not b["introduced"]
    assert any(line.startswith("INTRO a  NaN/Inf") for line in local_lines(report.local))


def test_parity_compare_replay_through_the_entry_point(tiny_llama, corpus_file, tmp_path, parity_exe):
    inputs = input_set(tiny_llama, corpus_file, str(tmp_path / "inputs.h5"), samples=1)
    ref = capture(tiny_llama, inputs, str(tmp_path / "ref.h5"))
    bf16 = capture(tiny_llama, inputs, str(tmp_path / "bf16.h5"), dtype="bfloat16")
    run = subprocess.run([parity_exe, "compare", ref, bf16, "--replay", tiny_llama, "-o", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=300)
    # over tolerance (accumulated bf16 error), but no module introduces error beyond bf16's rounding
    assert run.returncode == 1, run.stderr
    assert "error introduced: nowhere beyond the candidate's precision" in run.stdout
    assert "top error gain" not in run.stdout
    missing = str(tmp_path / "no-such-model")
    bad = subprocess.run([parity_exe, "compare", ref, bf16, "--replay", missing],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 3 and "Traceback" not in bad.stderr
    assert f"{missing}: no such model folder" in bad.stderr


def test_the_summary_without_replay_says_what_replay_would_add(tiny_llama, corpus_file, tmp_path):
    inputs = input_set(tiny_llama, corpus_file, str(tmp_path / "inputs.h5"), samples=1)
    ref = capture(tiny_llama, inputs, str(tmp_path / "ref.h5"))
    bf16 = capture(tiny_llama, inputs, str(tmp_path / "bf16.h5"), dtype="bfloat16")
    from analyze.render.text import summary_lines
    text = "\n".join(summary_lines(compare(ref, bf16)))
    assert "top error gain:" in text and "--replay REF_MODEL measures each module's own error" in text
