"""Session-scoped tiny models, tokenizer and corpus for every test package (registered in tests/conftest.py).

Built offline from configs with fixed seeds (capture.tiny_models), once per session, in a session temp folder.
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> str:
    """Folder holding the byte-level BPE tokenizer (vocabulary 1000) trained on local text."""
    from capture.tiny_models import build_tokenizer
    folder = str(tmp_path_factory.mktemp("tiny-tokenizer"))
    build_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """Folder of a random LlamaForCausalLM (hidden 64, 2 layers, vocabulary 1000) with its tokenizer."""
    from capture.tiny_models import build_tiny_llama
    return build_tiny_llama(str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """Folder of a random BertModel (hidden 64, 2 layers, vocabulary 1000) with its tokenizer."""
    from capture.tiny_models import build_tiny_bert
    return build_tiny_bert(str(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> str:
    """A UTF-8 text file holding capture.tiny_models.corpus_text() (~0.8 MB of English)."""
    from capture.tiny_models import corpus_text
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(corpus_text(), encoding="utf-8")
    return str(path)
