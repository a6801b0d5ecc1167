"""Golden files: every committed golden file stays readable with exactly the same contents; the script still writes
them; SPEC.md's listing is exactly what the code writes."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from workflows.cli.main import cli
from protocol import FORMAT_VERSION, open_dump, read_input_set, validate
from tests.protocol.support import REPO, load_script

GOLDEN = os.path.join(REPO, "tests", "data", "golden")
mg = load_script("tests", "data", "golden", "make_golden.py")
VERSIONS = sorted(os.path.basename(p)[len("contents-v"):-len(".json")]
                  for p in glob.glob(os.path.join(GOLDEN, "contents-v*.json")))


def _contents(version: str) -> dict:
    with open(os.path.join(GOLDEN, f"contents-v{version}.json"), encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("golden"))
    mg.make(out)
    return out


def test_there_are_golden_files_of_the_current_version():
    assert FORMAT_VERSION in VERSIONS
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(GOLDEN, "*")))
    assert total < 1 << 20


@pytest.mark.parametrize("version", VERSIONS)
def test_every_golden_file_reads_with_exactly_the_recorded_contents(version):
    assert mg.describe_all(GOLDEN, version) == _contents(version)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_golden_file_validates_through_the_cli(version):
    files = sorted(glob.glob(os.path.join(GOLDEN, f"*-v{version}*.h5")))
    result = CliRunner().invoke(cli, ["validate", *files])
    assert result.exit_code == 0, result.output
    assert result.output.count("OK  ") == len(files) == 3


def test_golden_dump_values_are_the_ones_written():
    """Spot checks against values computed by hand, independent of the recorded contents."""
    with open_dump(os.path.join(GOLDEN, f"dump-v{FORMAT_VERSION}.h5")) as r:
        assert len(r) == 24 and r.compression == "none"
        assert r.manifest.label == "cpu-fp32" and r.manifest.created == "2026-01-01T00:00:00+00:00"
        bf16 = r.read("s0/t0/model.layers.0.self_attn:out.0#0")
        assert bf16.dtype == np.float32
        assert bf16[:3].tolist() == [1.0, -2.5, 3.140625] and np.isnan(bf16[3]) and bf16[4] == -np.inf
        assert r.read("s0/t0/model.layers.0.self_attn:out.0#0", raw=True)[:2].tolist() == [0x3F80, 0xC020]
        e4m3 = r.read("s0/t0/model.layers.0.fp8_a:out#0")
        assert e4m3[[0, 2, 3, 5]].tolist() == [0.0, 1.0, 448.0, 2.0 ** -9] and np.signbit(e4m3[1])
        assert np.isnan(e4m3[4])
        e5m2 = r.read("s0/t0/model.layers.0.fp8_b:out#0")
        assert e5m2[[0, 1, 2, 4]].tolist() == [1.0, np.inf, -np.inf, 2.0 ** -16] and np.isnan(e5m2[3])
        f64 = r.record("s0/t0/model.embed_tokens:out#0")
        assert (f64.stats.nan_count, f64.stats.inf_count, f64.stats.min, f64.stats.max) == (1, 2, -2.25e300, 1.5)
        assert r.read("s0/t0/ints.uint64:out#0").tolist() == [0, 2 ** 64 - 1]
        assert r.read("s0/t0/ints.int64:out#0").tolist() == [-(2 ** 63), 2 ** 63 - 1]
        scalar = r.read("s0/t0/model.norm:out.scale#0")
        assert scalar.shape == () and scalar == np.float32(3.25)
        assert r.read("s0/t0/model.empty:out#0").shape == (0, 4)
        stats_only = r.record("s0/t0/model.layers.1:out.0#0")
        assert (stats_only.storage, stats_only.shape, stats_only.stats.l2) == ("stats", (2, 8, 64), 48.5)
        topk = r.record("s0/t0/:out.logits#0")
        assert r.read_aux(topk).tolist() == [[3, 1, 0]] and topk.stats.max == 3.5 and topk.orig_shape == (1, 5)
        assert [str(i.key) for i in r.records()][-2:] == ["s0/t0/model.layers.0:out.0#1", "s0/t1/:out.logits#0"]
        assert r.array("generated_tokens.s0").tolist() == [3, 1]
        calls = r.calls()  # format 1.2: call structures, a shared signature and one exception
        assert calls.modules() == ["", "model.layers.0"] and calls.module_class("model.layers.0") == "golden.DecoderLayer"
        first, second, later = (calls.signature("model.layers.0", *pos) for pos in ((0, 0, 0), (0, 0, 1), (0, 1, 0)))
        assert first == later and first["kwargs"]["cache"] == {"cache": "DynamicCache", "fresh": True}
        assert second["kwargs"] == {"cache": {"cache": "DynamicCache", "fresh": False}}
        assert calls.signature("model.unknown", 0, 0, 0) is None
    with open_dump(os.path.join(GOLDEN, f"dump-v{FORMAT_VERSION}-lz4.h5")) as r:
        assert r.compression == "lz4"
        assert r.read("s0/t0/:out.logits#0").reshape(-1).tolist() == np.linspace(-4, 4, 64, dtype=np.float32).tolist()
    inputs = read_input_set(os.path.join(GOLDEN, f"inputs-v{FORMAT_VERSION}.h5"))
    assert inputs.samples[1].arrays["temperature"].shape == ()
    assert validate(os.path.join(GOLDEN, f"dump-v{FORMAT_VERSION}.h5")).sha256 == inputs.sha256


def _same(fresh, committed, path: str = "") -> None:
    """Exactly equal, except statistics: the writer may compute them differently (a faster kernel) to 1e-13."""
    if isinstance(fresh, dict) and isinstance(committed, dict):
        assert fresh.keys() == committed.keys(), path
        for key in fresh:
            _same(fresh[key], committed[key], f"{path}/{key}")
    elif isinstance(fresh, list) and isinstance(committed, list):
        assert len(fresh) == len(committed), path
        for i, (x, y) in enumerate(zip(fresh, committed)):
            _same(x, y, f"{path}[{i}]")
    elif "/stats/" in path and isinstance(fresh, float) and isinstance(committed, float):
        assert fresh == pytest.approx(committed, rel=1e-13, nan_ok=True), path
    else:
        assert fresh == committed, path


def test_the_script_still_writes_the_committed_contents(fresh):
    _same(mg.describe_all(fresh), _contents(FORMAT_VERSION))
    with open(os.path.join(fresh, f"contents-v{FORMAT_VERSION}.json"), encoding="utf-8") as fh:
        _same(json.load(fh), _contents(FORMAT_VERSION))


def test_spec_listing_is_exactly_what_the_code_writes(fresh):
    block = mg.spec_listing_text()
    assert block is not None, "protocol/SPEC.md lacks the golden-listing markers"
    fresh_listing = mg.listing(os.path.join(fresh, f"dump-v{FORMAT_VERSION}.h5"))
    assert block == mg.spec_block(fresh_listing), \
        "SPEC.md's golden listing is stale: run python tests/data/golden/make_golden.py --update-spec"
    assert mg.listing(os.path.join(GOLDEN, f"dump-v{FORMAT_VERSION}.h5")) == fresh_listing


def test_the_script_never_replaces_existing_golden_files(fresh):
    before = {n: os.path.getmtime(os.path.join(fresh, n)) for n in os.listdir(fresh)}
    assert mg.make(fresh) == []
    assert {n: os.path.getmtime(os.path.join(fresh, n)) for n in os.listdir(fresh)} == before
