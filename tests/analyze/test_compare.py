"""analyze.compare on real dumps: pairing, unmatched and mismatched records, stats-only, top-k, multi-rank,
input-set refusal, report JSON/CSV and schema versioning."""
from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

import analyze
from analyze.render.tables import write_csv
from analyze.report import read_report
from protocol import compute_stats
from analyze.errors import ReportError
from protocol.errors import InputSetMismatchError, PairingError

from .conftest import write_dump
from .reference_impl import logit_reference, tensor_reference


def _records(noise, rng_seed=0, extra=()):
    out = []
    for s in range(2):
        r = np.random.default_rng(s + rng_seed)
        h = r.standard_normal((1, 12, 16)).astype(np.float32)
        lg = (3 * r.standard_normal((1, 12, 50))).astype(np.float32)
        nr = np.random.default_rng(100 + s)
        out.append((f"s{s}/t0/model.layers.0:out#0", h + noise * nr.standard_normal(h.shape).astype(np.float32)))
        out.append(("stats", f"s{s}/t0/model.layers.1:out#0", compute_stats(h * (1 + noise)), "float32", h.shape))
        out.append((f"s{s}/t0/:out.logits#0", lg + noise * nr.standard_normal(lg.shape).astype(np.float32)))
    return out + list(extra)


def test_pass_and_divergence(tmp_path, input_set):
    path, sha, samples = input_set
    ref = write_dump(tmp_path / "ref.h5", _records(0.0), sha=sha)
    same = write_dump(tmp_path / "same.h5", _records(0.0), sha=sha)
    cand = write_dump(tmp_path / "cand.h5", _records(0.01), sha=sha)
    ok = analyze.compare(ref, same, inputs=path)
    assert ok.verdict == "pass" and ok.exit_code == 0 and ok.first_divergence is None
    rep = analyze.compare(ref, cand, inputs=path)
    assert rep.verdict == "diverged" and rep.exit_code == 1
    assert [s.name for s in rep.sites] == ["model.layers.0:out", "model.layers.1:out", ":out.logits"]
    assert rep.first_divergence["site"] == "model.layers.0:out" and rep.first_divergence["index"] == 0
    assert rep.sites[1].kind == "stats-only" and rep.sites[1].over_tolerance
    # per-record values equal the plain reference on the data written
    site = rep.sites[0]
    h0 = np.random.default_rng(0).standard_normal((1, 12, 16)).astype(np.float32)
    c0 = h0 + 0.01 * np.random.default_rng(100).standard_normal(h0.shape).astype(np.float32)
    assert site.records[0].metrics["rel_l2"] == pytest.approx(tensor_reference(h0, c0)["rel_l2"], rel=1e-12)
    assert site.aggregates["rel_l2"]["n"] == 2
    # the logit block: labels from the input set; last position unscored
    lb = rep.logits[0]
    assert lb.site == ":out.logits" and lb.statistics["n"] == 22
    rec = lb.records[0]
    lg = (3 * np.random.default_rng(0).standard_normal((1, 12, 16 * 0 + 50))).astype(np.float32)
    # recompute sample 0's logits as written (same draw order as _records)
    r = np.random.default_rng(0)
    r.standard_normal((1, 12, 16))
    lg = (3 * r.standard_normal((1, 12, 50))).astype(np.float32)
    nr = np.random.default_rng(100)
    nr.standard_normal((1, 12, 16))
    lc = lg + 0.01 * nr.standard_normal(lg.shape).astype(np.float32)
    ids = samples[0].arrays["input_ids"].reshape(-1)
    want = logit_reference(lg[0, 3], lc[0, 3], ids[4])
    assert rec.per_token["kl"][3] == pytest.approx(want["kl"], rel=1e-9)
    assert rec.per_token["nll_ref"][3] == pytest.approx(want["nll_ref"], rel=1e-12)
    nll = [logit_reference(lg[0, t], lc[0, t], ids[t + 1])["nll_ref"] for t in range(11)]
    assert lb.perplexity["reference"]["per_sample"][0]["ppl"] == pytest.approx(math.exp(np.mean(nll)))


def test_records_read_in_many_blocks_ahead_give_the_one_block_metrics(tmp_path, input_set):
    path, sha, _ = input_set
    rng = np.random.default_rng(7)
    big = [(f"s0/t0/m{i}:out#0", rng.standard_normal((40, 96)).astype(np.float32)) for i in range(3)]
    noisy = [(k, a + np.float32(1e-3) * rng.standard_normal(a.shape).astype(np.float32)) for k, a in big]
    noisy[1][1][5, 7] = np.nan  # a mismatch in a middle block
    ref = write_dump(tmp_path / "ref.h5", big, sha=sha)
    cand = write_dump(tmp_path / "cand.h5", noisy, sha=sha)
    whole = analyze.compare(ref, cand, inputs=path)
    blocks = analyze.compare(ref, cand, inputs=path, chunk_elements=500)  # 8 blocks per record, read ahead
    for sw, sb in zip(whole.sites, blocks.sites):
        for rw, rb in zip(sw.records, sb.records):
            assert rb.metrics.keys() == rw.metrics.keys()
            for name, value in rw.metrics.items():
                assert rb.metrics[name] == pytest.approx(value, rel=1e-12, nan_ok=True), name
    for (key, a), (_, b) in zip(big, noisy):  # and both are the plain reference's numbers
        got = blocks.sites[int(key[7])].records[0].metrics
        assert got["rel_l2"] == pytest.approx(tensor_reference(a, b)["rel_l2"], rel=1e-9)
        assert got["nan_mismatch"] == float(np.isnan(b).sum())


def test_unmatched_and_mismatched_records_are_reported(tmp_path, input_set):
    _, sha, _ = input_set
    ref = write_dump(tmp_path / "ref.h5", [("s0/t0/a:out#0", np.ones((2, 3), np.float32)),
                                           ("s0/t0/b:out#0", np.ones((2, 3), np.float32)),
                                           ("s0/t0/c:out#0", np.ones(4, np.float32)),
                                           ("s0/t0/only_ref:out#0", np.ones(1, np.float32))], sha=sha)
    cand = write_dump(tmp_path / "cand.h5", [("s0/t0/a:out#0", np.ones((2, 3), np.float32)),
                                             ("s0/t0/b:out#0", np.ones((3, 2), np.float32)),
                                             ("s0/t0/c:out#0", np.ones(4, np.int32)),
                                             ("s0/t0/only_cand:out#0", np.ones(1, np.float32))], sha=sha)
    rep = analyze.compare(ref, cand)
    assert rep.unmatched == {"reference_only": ["s0/t0/only_ref:out#0"], "candidate_only": ["s0/t0/only_cand:out#0"]}
    errors = {e["site"]: e["error"] for e in rep.errors}
    assert errors["b:out"].startswith("shape mismatch") and errors["c:out"].startswith("dtype-class mismatch")
    # records that could not be compared are errors, not a divergence: exit code 3, as for an unusable file
    assert rep.sites[0].over_tolerance is False and rep.verdict == "error" and rep.exit_code == 3


def test_different_input_sets_refused(tmp_path):
    ref = write_dump(tmp_path / "ref.h5", [("s0/t0/a:out#0", np.ones(3))], sha="a" * 64)
    cand = write_dump(tmp_path / "cand.h5", [("s0/t0/a:out#0", np.ones(3))], sha="b" * 64)
    with pytest.raises(InputSetMismatchError) as err:
        analyze.compare(ref, cand)
    assert "a" * 64 in str(err.value) and "b" * 64 in str(err.value) and "ref.h5" in str(err.value)
    assert "cand.h5" in str(err.value)


def test_wrong_input_set_file_refused(tmp_path, input_set):
    path, _, _ = input_set
    ref = write_dump(tmp_path / "ref.h5", [("s0/t0/a:out#0", np.ones(3))], sha="c" * 64)
    with pytest.raises(InputSetMismatchError):
        analyze.compare(ref, ref, inputs=path)


def test_different_models_warn(tmp_path):
    ref = write_dump(tmp_path / "ref.h5", [("s0/t0/a:out#0", np.ones(3))], model={"path": "m1"})
    cand = write_dump(tmp_path / "cand.h5", [("s0/t0/a:out#0", np.ones(3))], model={"path": "m2"})
    rep = analyze.compare(ref, cand)
    assert any("different models" in w for w in rep.warnings) and rep.verdict == "pass"


def test_multi_rank_pairs_rank_with_rank(tmp_path):
    for side, noise in (("ref", 0.0), ("cand", 0.5)):
        for rank in range(2):
            data = np.full(4, float(rank + 1), np.float32) + (noise if rank == 1 else 0.0)
            write_dump(tmp_path / f"{side}.rank{rank}.h5", [("s0/t0/a:out#0", data)], rank=rank, world_size=2)
    rep = analyze.compare(sorted(str(p) for p in tmp_path.glob("ref.rank*.h5")), str(tmp_path / "cand.rank*.h5"))
    recs = rep.sites[0].records
    assert [r.rank for r in recs] == [0, 1]
    assert recs[0].metrics["max_abs_diff"] == 0 and recs[1].metrics["max_abs_diff"] == pytest.approx(0.5)
    single = write_dump(tmp_path / "single.h5", [("s0/t0/a:out#0", np.ones(4, np.float32))])
    with pytest.raises(PairingError, match="2 rank"):
        analyze.compare(str(tmp_path / "ref.rank*.h5"), single)
    with pytest.raises(PairingError, match="ranks"):
        analyze.compare(str(tmp_path / "ref.rank1.h5"), str(tmp_path / "cand.rank1.h5"))


def test_topk_and_slice_records(tmp_path):
    vals = np.array([[5.0, 4.0, 3.0]], np.float32)
    kw = {"storage": "topk", "reduction": {"kind": "topk", "k": 3}, "stats": compute_stats(vals)}
    ref = write_dump(tmp_path / "ref.h5", [("s0/t0/:out.logits#0", vals, {**kw, "aux": np.array([[1, 2, 3]])}),
                                           ("s0/t0/h:out#0", vals, {"storage": "slice", "stats": compute_stats(vals),
                                                                   "reduction": {"kind": "slice", "dim": 1}})])
    cand = write_dump(tmp_path / "cand.h5", [("s0/t0/:out.logits#0", vals, {**kw, "aux": np.array([[1, 2, 9]])}),
                                             ("s0/t0/h:out#0", vals, {"storage": "full"})])
    rep = analyze.compare(ref, cand)
    assert rep.sites[0].kind == "topk"
    assert rep.sites[0].records[0].metrics["topk_index_overlap"] == pytest.approx(2 / 3)
    assert rep.errors[0]["error"].startswith("reduction mismatch")


def test_metric_and_site_selection(tmp_path):
    ref = write_dump(tmp_path / "ref.h5", [("s0/t0/a:out#0", np.ones(3)), ("s0/t0/b:out#0", np.ones(3))])
    rep = analyze.compare(ref, ref, metrics=["cosine"], sites="^a")
    assert [s.name for s in rep.sites] == ["a:out"] and set(rep.sites[0].records[0].metrics) == {"cosine"}
    with pytest.raises(ValueError, match="unknown metric"):
        analyze.compare(ref, ref, metrics=["nope"])


def test_report_json_csv_and_schema_version(tmp_path, input_set):
    path, sha, _ = input_set
    ref = write_dump(tmp_path / "ref.h5", _records(0.0), sha=sha)
    cand = write_dump(tmp_path / "cand.h5", _records(0.01), sha=sha)
    rep = analyze.compare(ref, cand, inputs=path)
    out = tmp_path / "r.json"
    rep.write_json(out)
    back = read_report(out)  # the model again, equal to the one written
    assert back.schema_version == analyze.SCHEMA_VERSION and back.verdict == "diverged"
    assert back.to_dict() == json.loads(out.read_text())
    assert back.sites[0].records[0].metrics["sqnr_db"] == rep.sites[0].records[0].metrics["sqnr_db"]
    assert "per_token" not in json.loads(out.read_text())["logits"][0]["records"][0]
    files = write_csv(rep, tmp_path / "csv")
    with open(files[0], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["site"] for r in rows] == ["model.layers.0:out", "model.layers.1:out", ":out.logits"]
    assert float(rows[0]["rel_l2_max"]) == pytest.approx(rep.sites[0].aggregates["rel_l2"]["max"])
    bad = json.loads(out.read_text())
    bad["schema_version"] = "2.0"
    (tmp_path / "v2.json").write_text(json.dumps(bad))
    with pytest.raises(ReportError, match="schema version 2.0"):
        read_report(tmp_path / "v2.json")
    with pytest.raises(ReportError):
        read_report(tmp_path / "missing.json")


def test_input_set_found_next_to_dumps(tmp_path, input_set):
    path, sha, _ = input_set
    os.rename(path, tmp_path / f"{sha}.h5")
    ref = write_dump(tmp_path / "ref.h5", _records(0.0), sha=sha)
    rep = analyze.compare(ref, ref)
    assert rep.inputs["path"].endswith(f"{sha}.h5") and rep.logits[0].perplexity


def test_nothing_in_common_is_an_error_not_a_pass(tmp_path, input_set):
    _, sha, _ = input_set
    ref = write_dump(tmp_path / "ref.h5", [("s0/t0/a:out#0", np.ones(3, np.float32))], sha=sha)
    cand = write_dump(tmp_path / "cand.h5", [("s0/t0/model.a:out#0", np.ones(3, np.float32))], sha=sha)
    with pytest.raises(PairingError, match=r"no record key in common \(1 only in the reference, 1 only in the "):
        analyze.compare(ref, cand)
    with pytest.raises(PairingError, match="no record of both dumps has a site matching --sites 'typo'"):
        analyze.compare(ref, ref, sites="typo")
    from click.testing import CliRunner

    from workflows.cli.main import cli
    result = CliRunner().invoke(cli, ["compare", ref, cand])
    assert result.exit_code == 3 and result.output.count("\n") == 1 and "no record key in common" in result.output
