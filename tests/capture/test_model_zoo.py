"""The model zoo: a tiny model of each family (decoders incl. MoE and SSM, encoders, encoder-decoders, speech,
vision), each captured in float32 twice, in bfloat16 and with one planted fault, then compared.

For every family: the float32 and bfloat16 keys pair one to one, float32 twice is bit-exact, and the planted fault is
the first divergent module. The families are listed in zoo_models.py.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

import analyze
from capture.base import CaptureOptions
from capture.torch_backend import TorchBackend
from protocol import InputSample, InputSet, open_dump

from .zoo_models import ZOO, ZooModel

pytestmark = pytest.mark.slow


def _inputs(entry: ZooModel) -> InputSet:
    rng = np.random.default_rng(0)
    return InputSet([InputSample(entry.inputs(rng)) for _ in range(2)], {"dataset": f"zoo-{entry.family}"})


def _plant_fault(model, module_path: str):
    """A copy of ``model`` with Gaussian noise (5% of the weight's std) added to one module's weight."""
    import torch
    faulty = copy.deepcopy(model)
    weight = faulty.get_submodule(module_path).weight
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        weight.add_(torch.randn(weight.shape, generator=gen) * weight.std() * 0.05)
    return faulty


def _capture(model, inputs, path, dtype=None) -> str:
    TorchBackend(model, dtype=dtype).capture(inputs, str(path), CaptureOptions(label=path.stem))
    return str(path)


def _records(path) -> dict:
    with open_dump(path) as dump:
        return {r.key: dump.read(r, raw=True).tobytes() if r.has_data else None for r in dump.records()}


@pytest.mark.parametrize("entry", ZOO, ids=[f"{e.kind}-{e.family}" for e in ZOO])
def test_family_pairs_is_exact_twice_and_names_a_planted_fault(entry, tmp_path):
    try:
        model = entry.build()
    except (ImportError, AttributeError, TypeError, ValueError) as exc:  # not in the installed transformers
        pytest.skip(f"{entry.family} does not build here: {exc}")
    inputs = _inputs(entry)
    a = _capture(model, inputs, tmp_path / "fp32-a.h5")
    b = _capture(model, inputs, tmp_path / "fp32-b.h5")
    bf16 = _capture(copy.deepcopy(model), inputs, tmp_path / "bf16.h5", dtype="bfloat16")
    module = entry.fault_module(model)
    fault = _capture(_plant_fault(model, module), inputs, tmp_path / "fault.h5")

    ra, rb = _records(a), _records(b)
    assert len(ra) > 20 and ra == rb, "float32 twice is not bit-exact"

    report = analyze.compare(a, bf16)
    assert report.unmatched == {"reference_only": [], "candidate_only": []}
    assert not report.errors and len(report.sites) > 10
    outputs = report.totals["module_outputs"]
    assert outputs["paired"] == outputs["reference"] == len({(s.site.split(":")[0], s.call) for s in report.sites
                                                             if s.site.split(":")[1].startswith("out")})
    with open_dump(bf16) as dump:
        assert {r.key for r in dump.records()} == set(ra)

    report = analyze.compare(a, fault)
    assert report.verdict == "diverged"
    site = report.first_divergence["site"]
    assert site.split(":")[0] == module, f"first divergence at {site}, fault planted in {module}"
    assert [s.site for s in report.sites if s.over_tolerance][0] == site
