"""Strided-window perplexity (docs/METRICS.md section 4) against a direct computation with transformers' loss."""
from __future__ import annotations

import math

import numpy as np
import pytest

from analyze.perplexity import labels_for, perplexity
from protocol import InputSample, open_dump, read_input_set, write_input_set

from .conftest import write_dump

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_strided_windows_match_transformers_loss(tiny_llama, tmp_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ids = torch.tensor(np.random.default_rng(0).integers(0, model.config.vocab_size, (1, 45)))
    max_length, stride, seq_len = 16, 6, ids.shape[1]
    samples, logits, total, count = [], [], 0.0, 0
    prev_end = 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        window = ids[:, begin:end]
        target = window.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            out = model(window, labels=target)
        n_loss = int((target[:, 1:] != -100).sum())  # each token scored exactly once
        total += float(out.loss) * n_loss
        count += n_loss
        samples.append(InputSample({"input_ids": window.numpy()},
                                   {"score_from": max(window.shape[1] - trg_len - 1, 0)}))
        logits.append(out.logits.numpy())
        prev_end = end
        if end == seq_len:
            break
    assert count == seq_len - 1
    path = str(tmp_path / "inputs.h5")
    sha = write_input_set(path, samples, {"window": max_length, "stride": stride})
    dump = write_dump(tmp_path / "d.h5", [(f"s{i}/t0/:out.logits#0", lg) for i, lg in enumerate(logits)], sha=sha)
    with open_dump(dump) as d:
        result = perplexity(d, read_input_set(path), chunk_elements=3 * model.config.vocab_size)
    assert result.tokens == count
    assert result.ppl == pytest.approx(math.exp(total / count), rel=1e-5)  # float32 model loss vs float64


def test_labels_for_windows_and_padding():
    s = InputSample({"input_ids": np.array([[5, 6, 7, 8, 9]]), "attention_mask": np.array([[1, 1, 1, 1, 0]])},
                    {"score_from": 1})
    assert labels_for(s, 5).tolist() == [-1, 7, 8, -1, -1]
    assert labels_for(s, 5, step=1).tolist() == [-1] * 5
    assert labels_for(s, 4).tolist() == [-1] * 4  # rows do not line up with the tokens
