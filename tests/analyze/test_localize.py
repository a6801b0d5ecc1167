"""Localization on real captures: a planted fault (one layer's weight perturbed) is named as the first divergent
site and the top error-gain module (several layers, Llama and BERT); the noise floor is subtracted record by record;
the worst elements match a direct computation; the degenerate gain cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

import analyze
from workflows.demo import plant_fault
from analyze.localize import error_gains, localize, report_sites
from analyze.render.text import summary_lines
from analyze.report import Report
from protocol import open_dump

from .torch_dumps import capture, input_set


@pytest.fixture(scope="module")
def llama_setup(tiny_llama, corpus_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loc-llama")
    inputs = input_set(tiny_llama, corpus_file, str(folder / "inputs.h5"))
    ref = capture(tiny_llama, inputs, str(folder / "ref.h5"))
    return folder, inputs, ref


@pytest.fixture(scope="module")
def bert_setup(tiny_bert, corpus_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loc-bert")
    inputs = input_set(tiny_bert, corpus_file, str(folder / "inputs.h5"))
    ref = capture(tiny_bert, inputs, str(folder / "ref.h5"))
    return folder, inputs, ref


@pytest.mark.parametrize("family,module", [
    ("llama", "model.layers.0.self_attn.v_proj"),
    ("llama", "model.layers.1.mlp.down_proj"),
    ("bert", "encoder.layer.0.intermediate.dense"),
    ("bert", "encoder.layer.1.attention.self.query"),
], ids=["llama-L0-v_proj", "llama-L1-down_proj", "bert-L0-intermediate", "bert-L1-query"])
def test_planted_fault_is_first_divergence_and_top_gain(family, module, request, tiny_llama, tiny_bert):
    folder, inputs, ref = request.getfixturevalue(f"{family}_setup")
    model = tiny_llama if family == "llama" else tiny_bert
    tag = module.replace(".", "_")
    faulty = plant_fault(model, str(folder / f"faulty-{tag}"), f"{module}.weight", scale=0.05)
    cand = capture(faulty, inputs, str(folder / f"cand-{tag}.h5"))
    report = analyze.compare(ref, cand)
    loc = report.localization
    assert report.verdict == "diverged"
    assert report.first_divergence["site"] == f"{module}:out"
    assert loc["first_divergence"]["site"] == f"{module}:out"
    # every site before it is exact: the fault is the first thing that differs
    before = [e for e in loc["curve"] if e["index"] < report.first_divergence["index"]]
    assert before and all(e["rel_l2"] == 0.0 for e in before)
    top = loc["gain_ranking"][0]
    assert top["module"] == module and top["infinite"] and top["in_error"] == 0.0 and top["out_error"] > 0
    # its parents also see exact inputs and a wrong output, but come later in execution order
    parents = [g["module"] for g in loc["gain_ranking"] if g["infinite"]][1:]
    assert all(module.startswith(p) or p == "<root>" for p in parents)
    # neighbours are the sites around it in execution order
    names = [e["site"] for e in loc["curve"]]
    i = names.index(f"{module}:out")
    assert loc["neighbours"]["before"] == names[max(0, i - 3):i]
    assert loc["neighbours"]["after"] == names[i + 1:i + 4]
    # the terminal summary names it
    lines = summary_lines(report)
    assert any(line.startswith(f"first divergence: #{i} {module}:out") for line in lines)
    assert any(line.startswith(f"top error gain: {module} (gain inf") for line in lines)


def test_worst_elements_match_a_direct_computation(llama_setup, tiny_llama):
    folder, inputs, ref = llama_setup
    faulty = plant_fault(tiny_llama, str(folder / "faulty-worst"), "model.layers.1.mlp.up_proj.weight")
    cand = capture(faulty, inputs, str(folder / "cand-worst.h5"))
    report = analyze.compare(ref, cand, chunk_elements=1000)  # several blocks per record
    we = report.localization["worst_elements"]
    assert we["site"] == "model.layers.1.mlp.up_proj:out"
    with open_dump(ref) as rd, open_dump(cand) as cd:
        a = rd.read(we["key"]).astype(np.float64)
        b = cd.read(we["key"]).astype(np.float64)
    d = np.abs(a - b).reshape(-1)
    want = np.argsort(-d, kind="stable")[:10]
    assert [e["flat"] for e in we["elements"]] == [int(i) for i in want]
    for e in we["elements"]:
        idx = tuple(e["index"])
        assert e["reference"] == a[idx] and e["candidate"] == b[idx] and e["abs_diff"] == d[e["flat"]]
    # it is the worst record of the site
    site = report.site(we["site"])
    assert we["key"] == max(site.records, key=lambda r: r.metrics["rel_l2"]).key


def test_noise_floor_is_subtracted(llama_setup, tiny_llama):
    """Reference: sdpa attention. Floor: the same model with eager attention (real rounding noise, ~1e-7).
    Candidate: the faulty model, eager. With a tolerance below the noise, the raw walk stops at the noise; the
    floor-subtracted walk finds the fault."""
    folder, inputs, _ = llama_setup
    ref = capture(tiny_llama, inputs, str(folder / "ref-sdpa.h5"), attn="sdpa")
    floor = capture(tiny_llama, inputs, str(folder / "floor-eager.h5"), attn="eager")
    faulty = plant_fault(tiny_llama, str(folder / "faulty-floor"), "model.layers.1.mlp.gate_proj.weight")
    cand = capture(faulty, inputs, str(folder / "cand-eager.h5"), attn="eager")
    tight = {"float32": 1e-9}
    raw = analyze.compare(ref, cand, tolerances=tight)
    assert raw.first_divergence["index"] < raw.site("model.layers.1.mlp.gate_proj:out").index
    floored = analyze.compare(ref, cand, tolerances=tight, floor=floor)
    assert floored.first_divergence["site"] == "model.layers.1.mlp.gate_proj:out"
    assert floored.localization["floor"] and floored.options["floor"]
    # excess = candidate error - floor error, record by record
    noise = analyze.compare(ref, floor)
    noise_err = {r.key: r.metrics["rel_l2"] for s in noise.sites for r in s.records}
    for e in floored.localization["curve"]:
        site = floored.site(e["site"])
        errs = [r.metrics.get("rel_l2") for r in site.records]
        if None in errs:
            continue
        want = max(r.metrics["rel_l2"] - noise_err[r.key] for r in site.records)
        assert e["excess"] == pytest.approx(want, abs=0)
        assert e["floor"] == max(noise_err[r.key] for r in site.records)
    assert noise.verdict == "diverged" or noise.first_divergence is None  # noise below 1e-5: either is possible
    # the floor against itself: nothing in excess
    same = analyze.compare(ref, floor, tolerances=tight, floor=floor)
    assert same.first_divergence is None and same.verdict == "pass"


def _site(index, site, recs, module_type="Linear"):
    return {"index": index, "site": site, "call": 0, "module_type": module_type, "kind": "full", "tolerance": 1e-5,
            "worst": {}, "records": [{"key": f"s{s}/t0/{site}#0", "sample": s, "step": 0, "rank": 0, "status": "ok",
                                      "metrics": {"rel_l2": v}} for s, v in enumerate(recs)]}


def test_degenerate_gains():
    doc = {"sites": [
        _site(0, "a:in.args.0", [0.0, 0.0]), _site(1, "a:out", [0.0, 0.0]),        # both 0: no error
        _site(2, "b:in.args.0", [0.0, 1e-3]), _site(3, "b:out", [1e-6, 1e-3]),     # 0 -> >0: infinite
        _site(4, "c:out", [0.5, 0.5]),                                             # no input record
        _site(5, "d:in.args.0", [1e-3, 2e-3]), _site(6, "d:out", [1e-2, 2e-3]),   # finite: worst record 10
        _site(7, "e:in.args.0", [1e-3, 1e-3]), _site(8, "e:out", [2e-3, 1e-3]),   # finite: 2
        _site(9, ":in.kwargs.input_ids", [0.0, 0.0]), _site(10, ":out.logits", [0.1, 0.1]),  # root: infinite, later
    ]}
    doc = Report.from_dict(doc)
    ranking, other = error_gains(report_sites(doc))
    assert [g["module"] for g in ranking] == ["b", "<root>", "d", "e"]
    assert ranking[0]["infinite"] and math.isinf(ranking[0]["gain"]) and ranking[0]["key"] == "s0/t0/b:out#0"
    assert ranking[2]["gain"] == pytest.approx(10.0) and ranking[2]["in_error"] == 1e-3
    assert other == {"no_error": ["a"], "no_input": ["c"]}
    loc = localize(doc)
    gains = {e["site"]: e["gain"] for e in loc["curve"]}
    assert math.isinf(gains["b:out"]) and gains["a:out"] is None and gains["c:out"] is None


@pytest.mark.parametrize("k", [1, 10, 300])
def test_worst_elements_over_many_tiles_with_nan_and_inf(tmp_path, k):
    """worst_elements against a direct float64 ranking, on a record of several blocks of many tiles: one-sided
    NaN/Inf rank first, NaN or the same Inf on both sides counts as equal, late tiles can still hold the largest."""
    from analyze.localize import worst_elements
    from protocol import DumpWriter, Manifest, RecordKey
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 9000)).astype(np.float32)
    b = (a + rng.standard_normal(a.shape).astype(np.float32) * np.float32(1e-3)).astype(np.float32)
    b[39, 8999] += 5.0  # the very last element: the largest finite difference
    a[2, 3] = b[2, 3] = np.nan  # equal
    a[5, 5] = b[5, 5] = np.inf  # equal
    b[30, 1] = np.nan  # one-sided: the worst
    a[33, 7] = -np.inf
    paths = []
    for side, x in (("ref", a), ("cand", b)):
        paths.append(str(tmp_path / f"{side}.h5"))
        with DumpWriter(paths[-1], Manifest(label=side)) as w:
            w.add(RecordKey(0, 0, "m:out"), x)
    with open_dump(paths[0]) as rd, open_dump(paths[1]) as cd:
        key = RecordKey(0, 0, "m:out")
        got = worst_elements(rd, cd, rd.record(key), cd.record(key), k=k, chunk_elements=100_000)
    fa, fb = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    with np.errstate(invalid="ignore"):
        d = np.abs(fa - fb)
    d[(fa == fb) | (np.isnan(fa) & np.isnan(fb))] = 0.0
    d[np.isnan(d)] = np.inf
    want = np.argsort(-d, kind="stable")[:k]
    assert [e["flat"] for e in got] == [int(i) for i in want]
    assert got[0]["abs_diff"] == math.inf and {got[0]["flat"], got[min(1, k - 1)]["flat"]} <= {30 * 9000 + 1,
                                                                                             33 * 9000 + 7}
    if k >= 3:
        assert got[2]["flat"] == a.size - 1 and got[2]["abs_diff"] == d[-1]
