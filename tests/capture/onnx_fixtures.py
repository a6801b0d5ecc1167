"""Tiny models exported to ONNX (dynamo and TorchScript) and built with the ORT GenAI builder, for the ONNX tests.

Everything is built once per test session (cached at module level, so every test module that imports these
fixtures shares the same files) inside one temporary folder that is removed at exit.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import types
import warnings

import numpy as np
import pytest

from protocol import InputSample, write_input_set

_ROOT = tempfile.mkdtemp(prefix="parity-onnx-tests-")
atexit.register(shutil.rmtree, _ROOT, True)
_CACHE: dict = {}
_LOCK = threading.RLock()
SEQ = 8


def _cached(key, build):
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = build()
        return _CACHE[key]


def _folder(name: str) -> str:
    path = os.path.join(_ROOT, name)
    os.makedirs(path, exist_ok=True)
    return path


def tiny_llama_dir() -> str:
    """A tiny random Llama (hidden 64, 2 layers) with its tokenizer, saved by save_pretrained."""
    from capture.tiny_models import build_tiny_llama
    return _cached("llama", lambda: build_tiny_llama(_folder("llama")))


def tiny_bert_dir() -> str:
    """A tiny random BERT encoder with its tokenizer."""
    from capture.tiny_models import build_tiny_bert
    return _cached("bert", lambda: build_tiny_bert(_folder("bert")))


#: the inputs of the default exports
MODEL_INPUTS = ("input_ids", "attention_mask")


def _export(kind: str, exporter: str, inputs: tuple[str, ...]) -> str:
    import torch
    import transformers
    folder = tiny_llama_dir() if kind == "llama" else tiny_bert_dir()
    model = getattr(transformers, "LlamaForCausalLM" if kind == "llama" else "BertModel").from_pretrained(
        folder, attn_implementation="eager").eval()
    cls_forward = type(model).forward
    first_output = "logits" if kind == "llama" else "last_hidden_state"

    # Keep the model itself as the exported root (so scopes are the model's own module paths) but give it a
    # plain (*inputs) -> tensor signature: no cache, no logits_to_keep input.
    def forward(self, *args):
        kwargs = dict(zip(inputs, args))
        if kind == "llama" and exporter == "torchscript" and "attention_mask" not in kwargs:
            # the TorchScript exporter cannot export Llama's mask-free path (aten::diff): the usual workaround is
            # an all-ones mask made inside the graph, so the graph still takes input_ids only
            kwargs["attention_mask"] = torch.ones_like(kwargs["input_ids"])
        out = cls_forward(self, **kwargs, **({"use_cache": False} if kind == "llama" else {}))
        return out[first_output]
    model.forward = types.MethodType(forward, model)
    ids = torch.arange(5, 5 + SEQ).reshape(1, SEQ)
    examples = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(SEQ)[None],
                "token_type_ids": torch.zeros_like(ids)}
    args = tuple(examples[name] for name in inputs)
    name = f"{kind}-{exporter}" + ("" if inputs == MODEL_INPUTS else "-" + "-".join(inputs))
    path = os.path.join(_folder(name), "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, args, path, dynamo=True, input_names=list(inputs),
                              output_names=[first_output], verbose=False)
        else:
            torch.onnx.export(model, args, path, dynamo=False, input_names=list(inputs), output_names=[first_output])
    return path


def exported(kind: str, exporter: str, inputs: tuple[str, ...] = MODEL_INPUTS) -> str:
    """``kind`` in llama/bert, ``exporter`` in dynamo/torchscript: the path of the exported model.onnx, whose
    graph inputs are ``inputs`` (names among input_ids, attention_mask, position_ids, token_type_ids)."""
    return _cached(("export", kind, exporter, tuple(inputs)), lambda: _export(kind, exporter, tuple(inputs)))


def token_samples(count: int = 2, seed: int = 0) -> list[InputSample]:
    """``count`` samples of SEQ token ids (int64) with an all-ones attention mask."""
    rng = np.random.default_rng(seed)
    return [InputSample({"input_ids": rng.integers(4, 1000, size=(1, SEQ), dtype=np.int64),
                         "attention_mask": np.ones((1, SEQ), dtype=np.int64)}) for _ in range(count)]


def token_inputs() -> str:
    """An input set file of two token samples (shared by every backend in a test)."""
    def build():
        path = os.path.join(_ROOT, "tokens.h5")
        write_input_set(path, token_samples(), {"source": "tests.capture.onnx_fixtures"})
        return path
    return _cached("tokens", build)


def torch_dump(kind: str) -> str:
    """A PyTorch fp32 forward dump of the tiny model over token_inputs(), by the torch helper's TorchBackend."""
    def build():
        from capture.base import CaptureOptions
        from capture.torch_backend import TorchBackend
        from protocol import read_input_set
        folder = tiny_llama_dir() if kind == "llama" else tiny_bert_dir()
        backend = TorchBackend.from_pretrained(folder, device="cpu", dtype="float32", attn_implementation="eager")
        path = os.path.join(_ROOT, f"torch-{kind}.h5")
        backend.capture(read_input_set(token_inputs()), path, CaptureOptions(label="torch-fp32"))
        return path
    return _cached(("torch", kind), build)


def short_context_llama_dir() -> str:
    """The tiny Llama with a context of 256 positions (``max_position_embeddings``), for context-length limits."""
    from capture.tiny_models import build_tiny_llama
    return _cached("llama-256", lambda: build_tiny_llama(_folder("llama-256"), max_positions=256))


def _genai_build(hf_dir: str, name: str, precision: str) -> str:
    out = _folder(f"genai-{name}")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", hf_dir, "-o", out,
           "-p", precision, "-e", "cpu", "-c", _folder(f"genai-cache-{name}"), "--extra_options", "hf_token=false"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not os.path.exists(os.path.join(out, "genai_config.json")):
        raise RuntimeError(f"GenAI builder failed: {done.stderr[-2000:]}")
    return out


def genai_build(precision: str) -> str:
    """The tiny Llama built by the ORT GenAI builder at ``precision`` (fp32/int8/int4), offline."""
    return _cached(("genai", precision), lambda: _genai_build(tiny_llama_dir(), precision, precision))


def short_context_genai_build() -> str:
    """short_context_llama_dir() built by the ORT GenAI builder in fp32 (genai_config.json context_length 256)."""
    return _cached(("genai", "llama-256"), lambda: _genai_build(short_context_llama_dir(), "llama-256-fp32", "fp32"))


def hf_logits(input_ids: np.ndarray) -> np.ndarray:
    """Reference fp32 logits of the tiny Llama for [1, L] ids (Hugging Face, no cache)."""
    import torch
    import transformers
    model = _cached("hf-llama", lambda: transformers.LlamaForCausalLM.from_pretrained(tiny_llama_dir()).eval())
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(input_ids), use_cache=False).logits.numpy()


@pytest.fixture(scope="session")
def llama_dir() -> str:
    return tiny_llama_dir()


@pytest.fixture(scope="session")
def tokens_h5() -> str:
    return token_inputs()
