"""Real captures of the session's tiny models for the localization, thresholds and HTML tests (plain functions;
the fixtures that call them live in each test module)."""
from __future__ import annotations

import os

from capture.base import CaptureOptions
from capture.text_inputs import build_text_input_set
from capture.torch_backend import TorchBackend
from protocol import read_input_set, write_input_set


def input_set(tokenizer_folder: str, corpus_file: str, path: str, *, tokens: int = 32, samples: int = 2,
              start: int = 0):
    """Write an input set of ``samples`` disjoint chunks of ``tokens`` tokens (skipping ``start`` characters)."""
    with open(corpus_file, encoding="utf-8") as fh:
        text = fh.read()[start:start + 40_000]
    built = build_text_input_set(tokenizer_folder, text=text, chunk_tokens=tokens, max_samples=samples)
    write_input_set(path, built.samples, built.provenance)
    return read_input_set(path)


def capture(model_folder: str, inputs, out: str, *, dtype: str = "float32", attn: str | None = None,
            label: str | None = None) -> str:
    """Capture every module of a saved model over an input set into ``out``; returns ``out``."""
    backend = TorchBackend.from_pretrained(model_folder, device="cpu", dtype=dtype, attn_implementation=attn)
    backend.capture(inputs, out, CaptureOptions(label=label or os.path.basename(out)[:-3]))
    return out
