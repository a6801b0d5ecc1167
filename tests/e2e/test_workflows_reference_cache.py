"""The decoder-parity reference cache tells models apart even when they share a tokenizer (and input sets)."""
from __future__ import annotations

import os

from workflows.decoder_parity import model_fingerprint


def _model(folder, weights: bytes) -> str:
    os.makedirs(folder)
    for name, data in (("config.json", b"{}"), ("tokenizer.json", b"{}"), ("model.safetensors", weights)):
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)
    return str(folder)


def test_fingerprint_separates_models_and_follows_weight_changes(tmp_path):
    a = _model(tmp_path / "base", b"\0" * 64)
    b = _model(tmp_path / "finetune", b"\0" * 64)  # same files, another model
    assert model_fingerprint(a) == model_fingerprint(a) != model_fingerprint(b)
    before = model_fingerprint(a)
    with open(os.path.join(a, "model.safetensors"), "ab") as fh:  # new weights in place
        fh.write(b"\1")
    assert model_fingerprint(a) != before
    assert model_fingerprint("org/name") == model_fingerprint("org/name") != model_fingerprint("org/other")
