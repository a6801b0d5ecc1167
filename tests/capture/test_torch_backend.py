"""TorchBackend: determinism, dtype pairing, generate and teacher forcing, observer effect, back-pressure, errors."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from capture.base import CaptureOptions
from capture.policy import RecordPolicy
from capture.sink import RecordSink
from capture.torch_backend import TorchBackend
from capture.torch_hooks import torch_capture
from protocol import CaptureError, DumpWriter, InputSetMismatchError, Manifest, open_dump

from .conftest import token_input_set


@pytest.fixture(scope="module")
def fp32_backend(tiny_llama):
    return TorchBackend.from_pretrained(tiny_llama)


def _records(path):
    with open_dump(path) as dump:
        return dump.manifest, [(r, dump.read(r, raw=True) if r.has_data else None) for r in dump.records()]


def test_two_fp32_runs_give_bit_identical_records(fp32_backend, tmp_path):
    inputs = token_input_set(2)
    for name in ("a", "b"):
        fp32_backend.capture(inputs, str(tmp_path / f"{name}.h5"), CaptureOptions(label=name))
    ma, ra = _records(tmp_path / "a.h5")
    mb, rb = _records(tmp_path / "b.h5")
    assert len(ra) == len(rb) > 150
    for (ia, da), (ib, db) in zip(ra, rb):
        assert (ia.key, ia.seq, ia.dtype, ia.shape, ia.stats) == (ib.key, ib.seq, ib.dtype, ib.shape, ib.stats)
        assert da.dtype == db.dtype and da.tobytes() == db.tobytes(), ia.key
    assert ma.model["hash"] == mb.model["hash"] and len(ma.model["hash"]) == 64
    assert ma.model["hash_method"].startswith("sha256(weight files")
    assert ma.framework["name"] == "torch" and ma.framework["version"] == torch.__version__
    assert ma.device == {"type": "cpu", "name": "cpu", "index": None} and ma.dtype == "float32"
    assert ma.capture["method"] == "torch-hooks" and ma.capture["mode"] == "forward"
    assert ma.inputs_sha256 == inputs.sha256 and (ma.rank, ma.world_size) == (0, 1)


def test_fp32_and_bf16_keys_pair_one_to_one(fp32_backend, tiny_llama, tmp_path):
    inputs = token_input_set(1)
    fp32_backend.capture(inputs, str(tmp_path / "fp32.h5"), CaptureOptions(label="fp32"))
    bf16 = TorchBackend.from_pretrained(tiny_llama, dtype="bfloat16")
    bf16.capture(inputs, str(tmp_path / "bf16.h5"), CaptureOptions(label="bf16"))
    _, r32 = _records(tmp_path / "fp32.h5")
    mbf, r16 = _records(tmp_path / "bf16.h5")
    assert [i.key for i, _ in r32] == [i.key for i, _ in r16]
    assert mbf.dtype == "bfloat16"
    for (i32, _), (i16, d16) in zip(r32, r16):
        assert i32.shape == i16.shape
        assert i16.dtype == ("bfloat16" if i32.dtype == "float32" else i32.dtype), i16.key
        if i16.dtype == "bfloat16":
            assert d16.dtype == np.uint16
    # the drift is real but small: bf16 logits stay close to fp32 ones
    with open_dump(tmp_path / "fp32.h5") as a, open_dump(tmp_path / "bf16.h5") as b:
        la, lb = a.read("s0/t0/:out.logits#0"), b.read("s0/t0/:out.logits#0")
    assert 0 < np.abs(la - lb).max() < 0.5 * np.abs(la).max()


def test_generate_then_teacher_forcing_feeds_the_reference_tokens(fp32_backend, tiny_llama, tmp_path):
    inputs = token_input_set(2, seq=8)
    ref = str(tmp_path / "ref.h5")
    fp32_backend.capture(inputs, ref, CaptureOptions(label="ref", mode="generate", max_new_tokens=5,
                                                     policy=RecordPolicy(default="stats")))
    with open_dump(ref) as dump:
        ref_tokens = [dump.array(f"generated_tokens.s{i}") for i in range(2)]
        steps = sorted({r.key.step for r in dump.records()})
        step1 = [r for r in dump.records() if r.key.step == 1 and r.key.site == ":in.kwargs.input_ids"]
    assert steps == [0, 1, 2, 3, 4] and all(t.shape == (5,) and t.dtype == np.int64 for t in ref_tokens)
    assert step1[0].shape == (1, 1)  # decode steps feed one token with the KV cache
    # greedy decoding on the model itself gives the same tokens
    model = fp32_backend.model
    ids = torch.from_numpy(inputs.samples[0].arrays["input_ids"])
    for t in ref_tokens[0]:
        nxt = int(model(input_ids=ids).logits[0, -1].argmax())
        assert nxt == t
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    bf16 = TorchBackend.from_pretrained(tiny_llama, dtype="bfloat16")
    cand = str(tmp_path / "cand.h5")
    bf16.capture(inputs, cand, CaptureOptions(label="bf16", mode="teacher-forced", max_new_tokens=5, reference=ref,
                                              policy=RecordPolicy(default="stats")))
    with open_dump(cand) as dump:
        fed = [dump.array(f"generated_tokens.s{i}") for i in range(2)]
        own = dump.array("argmax_tokens.s0")
        keys = {r.key for r in dump.records()}
        manifest = dump.manifest
    for a, b in zip(fed, ref_tokens):
        np.testing.assert_array_equal(a, b)
    assert own.shape == (5,) and manifest.capture["mode"] == "teacher-forced"
    with open_dump(ref) as dump:
        assert keys == {r.key for r in dump.records()}


def test_teacher_forcing_refuses_a_reference_of_other_inputs(fp32_backend, tmp_path):
    ref = str(tmp_path / "ref.h5")
    fp32_backend.capture(token_input_set(1, seed=1), ref, CaptureOptions(label="r", mode="generate", max_new_tokens=2,
                                                                         policy=RecordPolicy(default="stats")))
    with pytest.raises(InputSetMismatchError, match="not [0-9a-f]{12}. Teacher-force with the input set of the reference"):
        fp32_backend.capture(token_input_set(1, seed=2), str(tmp_path / "c.h5"),
                             CaptureOptions(label="c", mode="teacher-forced", max_new_tokens=2, reference=ref))
    assert not os.path.exists(tmp_path / "c.h5") and not os.path.exists(tmp_path / "c.h5.partial")


def test_perturbation_check_is_recorded(fp32_backend, tmp_path):
    out = str(tmp_path / "p.h5")
    fp32_backend.capture(token_input_set(1), out, CaptureOptions(label="p", check_perturbation=True))
    with open_dump(out) as dump:
        check = dump.manifest.perturbation_check
    assert check["bit_identical"] is True and check["outputs"] == ["logits"] and check["max_abs_diff"] == 0.0


def test_in_memory_module_is_hashed_by_state_dict(twice_model, tmp_path):
    backend = TorchBackend(twice_model)
    from protocol import InputSample, InputSet
    inputs = InputSet([InputSample({"x": np.ones((2, 4), np.float32)})])
    backend.capture(inputs, str(tmp_path / "m.h5"), CaptureOptions(label="m"))
    with open_dump(tmp_path / "m.h5") as dump:
        assert dump.manifest.model["hash_method"] == "sha256(state_dict)"
        assert {r.key.site for r in dump.records()} >= {":in.kwargs.x", "lin:out", ":out"}


class _SlowWriter(DumpWriter):
    """A DumpWriter whose every record takes 5 ms, sampling how many bytes wait in the sink's queue."""

    sink: RecordSink | None = None
    queued: list

    def add(self, *args, **kwargs):
        self.queued.append(self.sink._queued_bytes)
        time.sleep(0.005)
        return super().add(*args, **kwargs)


def test_slow_writer_makes_the_forward_wait_and_bounds_the_queue(fp32_backend, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores: on one, every CPU forward fills the cores and writes inline")
    bound = 16 << 10
    writer = _SlowWriter(str(tmp_path / "slow.h5"), Manifest(label="slow"))
    writer.queued = []
    sink = RecordSink(writer, max_queue_bytes=bound)
    writer.sink = sink
    feed = {k: torch.from_numpy(v) for k, v in token_input_set(1).samples[0].arrays.items()}
    model = fp32_backend.model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a forward that leaves a core free queues its records (else they are written inline)
    try:
        start = time.perf_counter()
        with sink, torch.inference_mode(), torch_capture(model, sink, RecordPolicy()) as cap:
            cap.at(0)
            model(**feed)
            forward_done = time.perf_counter() - start
            queued_at_end = sink._queued_bytes
    finally:
        torch.set_num_threads(threads)
    largest = 12 * 1000 * 4  # the logits record
    assert sink.records == len(writer.queued) == 80
    # memory stays within max(bound, largest record): a record larger than the bound is admitted alone
    assert max(writer.queued) <= max(bound, largest) and queued_at_end <= max(bound, largest)
    # 80 records x 5 ms: the forward (~20 ms alone) had to wait for the writer
    assert sink.blocked_seconds > 0.2 and forward_done > 0.25


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "cuda"}, "CUDA is not available on this machine. Available devices: cpu"),
    ({"device": "cuda:3"}, "CUDA is not available"),
    ({"device": "nonsense"}, "invalid device 'nonsense'"),
    ({"dtype": "int4"}, "unknown dtype 'int4'. Use float32, float16 or bfloat16"),
])
def test_bad_device_or_dtype_is_a_clear_error(tiny_llama, kwargs, message):
    with pytest.raises(CaptureError, match=message.replace(".", r"\.")):
        TorchBackend.from_pretrained(tiny_llama, **kwargs)


def test_missing_or_invalid_model_folder(tmp_path):
    with pytest.raises(CaptureError, match="no such model folder"):
        TorchBackend.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(CaptureError, match=r"not a Hugging Face model folder \(no config.json\)"):
        TorchBackend.from_pretrained(str(tmp_path))


def test_a_model_spread_over_devices_is_captured_where_it_is():
    import torch

    from capture.torch_backend import TorchBackend
    from protocol import CaptureError
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model.hf_device_map = {"0": "cpu", "1": "meta"}  # what transformers sets after loading with a device_map
    backend = TorchBackend(model)
    assert backend.model is model and backend.device == torch.device("cpu")
    with pytest.raises(CaptureError, match="spread over several devices"):
        TorchBackend(model, device="cpu")


class _Decoder(torch.nn.Module):
    """A toy decoder whose forward takes its cache under ``cache_name`` (as transformers before and since 5.24 do),
    returns it under the same name, and checks that decode steps get back the cache it returned."""

    def __init__(self, cache_name: str):
        super().__init__()
        self.cache_name, self.embed, self.head = cache_name, torch.nn.Embedding(16, 4), torch.nn.Linear(4, 16)
        self.seen: list = []

    def _forward(self, input_ids, use_cache, cache):
        self.seen.append(None if cache is None else int(cache.shape[-1]))
        state = self.embed(input_ids).sum(dim=1, keepdim=True)
        length = input_ids.shape[-1] + (0 if cache is None else int(cache.shape[-1]))
        return {"logits": self.head(state), self.cache_name: torch.zeros(1, length)}


class _OldDecoder(_Decoder):
    def forward(self, input_ids, past_key_values=None, use_cache=False):
        return self._forward(input_ids, use_cache, past_key_values)


class _NewDecoder(_Decoder):
    def forward(self, input_ids, cache=None, use_cache=False):
        return self._forward(input_ids, use_cache, cache)


@pytest.mark.parametrize("cls, name", [(_OldDecoder, "past_key_values"), (_NewDecoder, "cache")],
                         ids=["past_key_values", "cache"])
def test_generate_passes_the_cache_under_the_name_forward_takes(cls, name, tmp_path):
    model = cls(name)
    inputs = token_input_set(1, seq=3, vocab=16)
    TorchBackend(model).capture(inputs, str(tmp_path / "g.h5"), CaptureOptions(label="g", mode="generate",
                                                                               max_new_tokens=3))
    assert model.seen == [None, 3, 4]  # the prefill without a cache, then each decode step with the one returned
    with open_dump(str(tmp_path / "g.h5")) as dump:
        sites = {r.key.site for r in dump.records()}
    assert ":out.logits" in sites and not any(name in s for s in sites)  # the cache is not captured


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 4)

    def forward(self, input_ids):
        return self.embed(input_ids)


def test_generate_refuses_a_model_without_a_cache_argument(tmp_path):
    model = _Encoder()
    with pytest.raises(CaptureError, match=r"_Encoder.forward takes no key/value cache argument \(none of cache, "
                                           r"past_key_values, cache_params\)"):
        TorchBackend(model).capture(token_input_set(1, seq=3, vocab=16), str(tmp_path / "g.h5"),
                                    CaptureOptions(label="g", mode="generate", max_new_tokens=2))
    assert not os.path.exists(tmp_path / "g.h5")


def test_generate_on_transformers_uses_no_deprecated_cache_name(fp32_backend, tmp_path):
    """Deprecations of the cache API come as FutureWarnings (errors under this suite's filterwarnings) and as
    ``warning_once`` log lines of transformers' own logger, which does not propagate: listen to it directly."""
    import logging

    import transformers
    once = getattr(logging.Logger, "warning_once", None)
    if hasattr(once, "cache_clear"):
        once.cache_clear()  # a line logged once already by an earlier test would not come again
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = transformers.logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        fp32_backend.capture(token_input_set(1, seq=6), str(tmp_path / "g.h5"),
                             CaptureOptions(label="g", mode="generate", max_new_tokens=3,
                                            policy=RecordPolicy(default="stats")))
    finally:
        logger.removeHandler(handler)
    assert not [line for line in lines if "deprecat" in line.lower()], lines


def test_a_default_mask_the_forward_does_not_take_is_dropped_and_a_padded_one_refused(tmp_path):
    model = _Encoder()
    inputs = token_input_set(2, seq=4, vocab=16)
    TorchBackend(model).capture(inputs, str(tmp_path / "a.h5"), CaptureOptions(label="a"))
    with open_dump(str(tmp_path / "a.h5")) as dump:
        assert dump.manifest.capture["dropped_inputs"] == {"attention_mask": {
            "why": "all ones of input_ids' shape (no padding), which the model assumes: it takes no attention_mask",
            "samples": 2}}
        assert dump.manifest.capture["derived_inputs"] == {}
    inputs.samples[1].arrays["attention_mask"][0, :2] = 0
    with pytest.raises(CaptureError, match=r"sample 1 of the input set does not match the model: attention_mask "
                                           r"masks 2 of 4 positions, but the model takes no attention_mask"):
        TorchBackend(model).capture(inputs, str(tmp_path / "b.h5"), CaptureOptions(label="b"))
    assert not os.path.exists(tmp_path / "b.h5")
