"""Fixtures of the torch capture tests: small hand-written models with awkward call patterns, and input sets.

The tiny HF models (tiny_llama, tiny_bert, tiny_tokenizer, corpus_file) come from tests/fixtures_models.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from protocol import InputSample, InputSet, write_input_set

SEQ = 12


class _Lazy:
    """Defines the torch modules only when a test asks for one (torch is not imported at collection)."""

    @staticmethod
    def kwonly_dict_model():
        import torch
        from torch import nn

        class Inner(nn.Module):
            def forward(self, *, x, scale, note="unused"):  # keyword-only arguments
                return {"y": x * scale, "pair": (x + 1, (x - 1, None, 3)), "note": note}

        class KwDictModel(nn.Module):
            """Its inner module takes keyword-only args and returns a dict with nested tuples."""

            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.lin = nn.Linear(4, 4)
                self.inner = Inner()

            def forward(self, x):
                out = self.inner(x=self.lin(x), scale=torch.tensor(2.0))
                return out["y"], out["pair"]

        return KwDictModel().eval()

    @staticmethod
    def twice_model():
        import torch
        from torch import nn

        class Twice(nn.Module):
            """Calls one Linear twice per forward."""

            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.lin = nn.Linear(4, 4)

            def forward(self, x):
                return self.lin(torch.relu(self.lin(x)))

        return Twice().eval()


@pytest.fixture
def kwonly_dict_model():
    """A model whose inner module takes keyword-only arguments and returns a dict of nested tuples."""
    return _Lazy.kwonly_dict_model()


@pytest.fixture
def twice_model():
    """A model that calls the same Linear twice in one forward."""
    return _Lazy.twice_model()


def token_input_set(count: int = 2, seq: int = SEQ, seed: int = 0, vocab: int = 1000) -> InputSet:
    """``count`` samples of random token ids (ids 4..vocab-1) with attention masks, shape [1, seq]."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        ids = rng.integers(4, vocab, size=(1, seq), dtype=np.int64)
        samples.append(InputSample({"input_ids": ids, "attention_mask": np.ones_like(ids)}))
    return InputSet(samples, {"dataset": "random-tokens", "seed": seed})


@pytest.fixture(scope="session")
def llama_inputs_file(tmp_path_factory) -> str:
    """An input set file of 2 samples x 12 random tokens."""
    path = os.path.join(str(tmp_path_factory.mktemp("inputs")), "tokens.h5")
    s = token_input_set()
    write_input_set(path, s.samples, s.provenance)
    return path
