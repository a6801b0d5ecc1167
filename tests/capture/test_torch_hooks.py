"""Hooks: keys of every module's inputs and outputs, call indices, flattening, policies, hook lifetime."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from capture.flatten import flatten
from capture.policy import RecordPolicy
from capture.torch_hooks import ModuleSelection, torch_capture
from capture.torch_stats import device_stats, torch_stats
from protocol import DumpWriter, Manifest, compute_stats, open_dump

from .conftest import token_input_set


def _capture(model, path, feeds, policy=None, selection=None, mode=torch.inference_mode, share=False):
    """Run ``model(**feed)`` for each feed (sample i) under the hooks; return the dump's records by key text."""
    with mode(), torch_capture(model, DumpWriter(path, Manifest(label="t")), policy, selection=selection,
                               share_unchanged=share) as cap:
        for i, feed in enumerate(feeds):
            cap.at(i, 0)
            model(**feed)
    with open_dump(path) as dump:
        return {str(r.key): (r, dump.read(r) if r.has_data else None) for r in dump.records()}


def _sites(records) -> set[str]:
    return {k.split("/", 2)[2] for k in records}


def _called_modules(model, feed) -> set[str]:
    """Paths of the modules a forward actually calls, seen by plain hooks of the test's own."""
    called, handles = set(), []
    for path, module in model.named_modules():
        handles.append(module.register_forward_hook(lambda m, a, o, _p=path: called.add(_p)))
    try:
        with torch.inference_mode():
            model(**feed)
    finally:
        for h in handles:
            h.remove()
    return called


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_every_module_input_and_output_is_captured(kind, tiny_llama, tiny_bert, tmp_path):
    import transformers
    folder = tiny_llama if kind == "llama" else tiny_bert
    model = (transformers.LlamaForCausalLM if kind == "llama" else transformers.BertModel).from_pretrained(folder)
    s = token_input_set(1).samples[0]
    feed = {k: torch.from_numpy(v) for k, v in s.arrays.items()}
    records = _capture(model.eval(), str(tmp_path / "d.h5"), [feed])
    sites = _sites(records)
    called = _called_modules(model, feed)
    assert len(called) > (30 if kind == "llama" else 40)
    for path in called:
        assert any(site.startswith(f"{path}:in.") for site in sites), f"no input of {path!r}"
        assert any(site.startswith(f"{path}:out") for site in sites), f"no output of {path!r}"
    if kind == "llama":
        assert {":in.kwargs.input_ids#0", ":out.logits#0", "model.layers.1.self_attn.q_proj:in.args.0#0",
                "model.layers.0.mlp:out#0", "model:out.last_hidden_state#0"} <= sites
        rec, logits = records["s0/t0/:out.logits#0"]
        assert rec.module_type == "LlamaForCausalLM" and logits.shape == (1, 12, 1000)
        np.testing.assert_array_equal(logits, model(**feed).logits.detach().numpy())
    else:
        assert {":out.last_hidden_state#0", ":out.pooler_output#0", "encoder.layer.0.attention.self.query:out#0",
                "embeddings:in.kwargs.input_ids#0"} <= sites
    # execution order: the root's inputs come first and its outputs last
    order = sorted(records.values(), key=lambda rv: rv[0].seq)
    assert order[0][0].key.site.startswith(":in.") and order[-1][0].key.site.startswith(":out")


def test_keyword_only_args_dicts_and_nested_tuples(kwonly_dict_model, tmp_path):
    x = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    records = _capture(kwonly_dict_model, str(tmp_path / "d.h5"), [{"x": x}])
    assert _sites(records) == {
        ":in.kwargs.x#0", "lin:in.args.0#0", "lin:out#0", "inner:in.kwargs.x#0", "inner:in.kwargs.scale#0",
        "inner:out.y#0", "inner:out.pair.0#0", "inner:out.pair.1.0#0", ":out.0#0", ":out.1.0#0", ":out.1.1.0#0"}
    h = kwonly_dict_model.lin(x).detach().numpy()
    np.testing.assert_array_equal(records["s0/t0/inner:in.kwargs.x#0"][1], h)
    np.testing.assert_array_equal(records["s0/t0/inner:out.pair.1.0#0"][1], h - 1)
    np.testing.assert_array_equal(records["s0/t0/:out.0#0"][1], h * 2)
    assert records["s0/t0/inner:in.kwargs.scale#0"][0].shape == ()


def test_module_called_twice_gets_call_indices(twice_model, tmp_path):
    x = torch.randn(3, 4)
    records = _capture(twice_model, str(tmp_path / "d.h5"), [{"x": x}, {"x": x + 1}])
    lin = {k for k in records if "/lin:" in k}
    assert lin == {f"s{s}/t0/lin:{d}#{c}" for s in (0, 1) for c in (0, 1) for d in ("in.args.0", "out")}
    first_out = records["s0/t0/lin:out#0"][1]
    np.testing.assert_array_equal(records["s0/t0/lin:in.args.0#1"][1], np.maximum(first_out, 0))
    # the call index restarts with every step: sample 1 has #0 and #1 again, and nothing with #2
    assert not any(k.endswith("#2") for k in records)


def test_hooks_are_removed_when_the_forward_raises(twice_model, tmp_path):
    path = tmp_path / "d.h5"
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        with torch_capture(twice_model, DumpWriter(str(path), Manifest(label="t"))) as cap:
            cap.at(0)
            twice_model(torch.randn(3, 5))  # wrong width: raises inside the forward
    for module in twice_model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
    assert not path.exists() and not (tmp_path / "d.h5.partial").exists()


def test_policy_stats_slice_topk_and_skip(tiny_llama, tmp_path):
    import transformers
    model = transformers.LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    feed = {k: torch.from_numpy(v) for k, v in token_input_set(1).samples[0].arrays.items()}
    policy = RecordPolicy.from_strings([r"^:out\.logits=topk:5", r"lm_head:in=slice:-2:-1", r"mlp=stats",
                                        r"self_attn\.[qkv]_proj=skip"], "full")
    records = _capture(model, str(tmp_path / "d.h5"), [feed], policy)
    logits = model(**feed).logits.detach()
    rec, top = records["s0/t0/:out.logits#0"]
    assert rec.storage == "topk" and top.shape == (1, 12, 5) and rec.orig_shape == (1, 12, 1000)
    np.testing.assert_array_equal(top, torch.topk(logits, 5).values.numpy())
    rec, last = records["s0/t0/lm_head:in.args.0#0"]
    assert rec.storage == "slice" and last.shape == (1, 1, 64) and rec.reduction["dim"] == -2
    rec, _ = records["s0/t0/model.layers.0.mlp.down_proj:out#0"]
    assert rec.storage == "stats" and not rec.has_data and rec.stats.numel == 12 * 64
    assert not any("q_proj" in k or "k_proj" in k or "v_proj" in k for k in records)
    # statistics always describe the whole tensor, whatever was kept of it
    want = compute_stats(logits.numpy())
    assert rec.stats is not None and records["s0/t0/:out.logits#0"][0].stats.max == want.max


def test_byte_budget_degrades_to_stats(twice_model, tmp_path, caplog):
    policy = RecordPolicy(default="full", byte_budget=200)
    records = _capture(twice_model, str(tmp_path / "d.h5"), [{"x": torch.randn(3, 4)}], policy)
    storages = [records[k][0].storage for k in sorted(records, key=lambda k: records[k][0].seq)]
    assert storages[:4] == ["full"] * 4 and set(storages[4:]) == {"stats"}
    assert "byte budget" in caplog.text


def test_selection_by_regex_type_and_depth(tiny_llama, tmp_path):
    import transformers
    model = transformers.LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    feed = {k: torch.from_numpy(v) for k, v in token_input_set(1).samples[0].arrays.items()}
    sel = ModuleSelection(include=r"layers\.1", module_types=("Linear",))
    modules = {k.split("/", 2)[2].split(":")[0] for k in _capture(model, str(tmp_path / "a.h5"), [feed],
                                                                   selection=sel)}
    assert modules == {f"model.layers.1.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                       "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                       "mlp.down_proj")}
    modules = {k.split("/", 2)[2].split(":")[0] for k in _capture(model, str(tmp_path / "b.h5"), [feed],
                                                                   selection=ModuleSelection(max_depth=1))}
    assert modules == {"", "model", "lm_head"}
    with pytest.raises(ValueError, match="invalid module regex"):
        ModuleSelection(include="(")


def test_bfloat16_tensors_are_stored_as_their_bits(twice_model, tmp_path):
    model = twice_model.to(torch.bfloat16)
    x = torch.randn(3, 4).to(torch.bfloat16)
    path = str(tmp_path / "d.h5")
    _capture(model, path, [{"x": x}])
    with open_dump(path) as dump:
        rec = dump.record("s0/t0/:in.kwargs.x#0")
        assert rec.dtype == "bfloat16"
        np.testing.assert_array_equal(dump.read(rec, raw=True), x.view(torch.int16).numpy().view(np.uint16))
        np.testing.assert_array_equal(dump.read(rec), x.float().numpy())


def test_flatten_paths_and_cache_skipping():
    from transformers import DynamicCache
    t = torch.zeros(1)
    tree = {"a": (t, [t, {"b": t}]), "past_key_values": ((t, t),), "n": 3, "s": "x", "none": None}
    assert [p for p, _ in flatten(tree, torch.is_tensor, "kwargs")] == [
        "kwargs.a.0", "kwargs.a.1.0", "kwargs.a.1.1.b"]
    assert [p for p, _ in flatten(tree, torch.is_tensor, include_cache=True)] == [
        "a.0", "a.1.0", "a.1.1.b", "past_key_values.0.0", "past_key_values.0.1"]
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 3, 4), torch.ones(1, 2, 3, 4), 0)
    assert flatten({"c": cache}, torch.is_tensor) == []
    assert [p for p, _ in flatten({"c": cache}, torch.is_tensor, include_cache=True)] == ["c.0.key", "c.0.value"]


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16", "float16", "int64", "bool"])
def test_device_statistics_agree_with_protocol(dtype):
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(700, 901, generator=gen, dtype=torch.float64) * 3 + 50  # 630k elements: 3 blocks
    t = (base > 50) if dtype == "bool" else base.to(getattr(torch, dtype))
    got = device_stats(t)  # the accelerator path, run here on the CPU
    want = compute_stats(t.float().numpy() if dtype == "bfloat16" else t.numpy())
    assert torch_stats(t) == want
    assert (got.numel, got.nan_count, got.inf_count, got.min, got.max, got.abs_max) == \
        (want.numel, want.nan_count, want.inf_count, want.min, want.max, want.abs_max)
    for name in ("mean", "std", "l2"):
        assert math.isclose(getattr(got, name), getattr(want, name), rel_tol=1e-12), name


def test_device_statistics_of_non_finite_and_empty_tensors():
    t = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 3.0, float("nan")])
    got, want = device_stats(t), compute_stats(t.numpy())
    assert (got.numel, got.min, got.max, got.nan_count, got.inf_count) == (5 + 1, 1.0, 3.0, 2, 2)
    assert math.isclose(got.mean, want.mean, rel_tol=1e-15) and math.isclose(got.std, want.std, rel_tol=1e-15)
    nothing = device_stats(torch.tensor([float("nan"), float("inf")]))
    assert nothing.nan_count == 1 and nothing.inf_count == 1 and math.isnan(nothing.mean)
    assert device_stats(torch.zeros(0)).numel == 0 and torch_stats(torch.zeros(0)).numel == 0


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("policy", ["full", "stats"])
@pytest.mark.parametrize("share", [False, True], ids=["copy-each", "share-unchanged"])
def test_a_tensor_changed_in_place_between_sites_is_recorded_as_it_was(tmp_path, mode, policy, share):
    """Sites reached by one tensor share its statistics and copy only while it is unchanged (version counter)."""
    from torch import nn

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = nn.Identity(), nn.Identity()

        def forward(self, x):
            y = self.first(x)  # the same object as x
            y.mul_(2)
            return self.second(y)

    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    records = _capture(InPlace(), str(tmp_path / "d.h5"), [{"x": x.clone()}], RecordPolicy(default=policy),
                       mode=mode, share=share)
    before, after = x.numpy(), 2 * x.numpy()
    for site, values in ((":in.kwargs.x", before), ("first:in.args.0", before), ("first:out", before),
                         ("second:in.args.0", after), ("second:out", after), (":out", after)):
        rec, data = records[f"s0/t0/{site}#0"]
        assert rec.stats == compute_stats(values), site
        if policy == "full":
            np.testing.assert_array_equal(data, values, err_msg=site)


class _VecAndMask(torch.nn.Module):
    def forward(self, x):
        return x.sum(-1), x > 0  # a 1-D float output and a bool output


def test_reductions_that_cannot_apply_store_the_whole_tensor_as_full(tmp_path):
    # slicing dim -2 of a 1-D tensor and the top-k of a bool tensor cannot apply: the record holds the whole
    # tensor and says so, rather than claiming a reduction it does not hold
    policy = RecordPolicy.from_strings([r":out\.0=slice:-2:-1", r":out\.1=topk:2"], "full")
    x = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 6.0]])
    records = _capture(_VecAndMask(), str(tmp_path / "d.h5"), [{"x": x}], policy)
    rec, data = records["s0/t0/:out.0#0"]
    assert rec.storage == "full" and rec.reduction == {} and data.shape == (2,)
    rec, data = records["s0/t0/:out.1#0"]
    assert rec.storage == "full" and not rec.aux and data.shape == (2, 3) and data.dtype == np.bool_
