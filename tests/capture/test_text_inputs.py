"""Input sets from text (chunks, strided windows with the HF perplexity rule) and from .npz; tiny-model builders."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from capture.text_inputs import build_text_input_set, load_wikitext, windows
from capture.token_inputs import build_token_input_set
from protocol import ParityError


def _hf_perplexity_targets(total: int, max_length: int, stride: int) -> list[tuple[int, int, list[int]]]:
    """The Hugging Face perplexity guide's loop: (begin, end, positions of the window whose labels count)."""
    out, prev_end = [], 0
    for begin in range(0, total, stride):
        end = min(begin + max_length, total)
        trg_len = end - prev_end
        labels = list(range(begin, end))
        labels[:-trg_len] = [-100] * (len(labels) - trg_len)
        # the model shifts labels: label at window position j is predicted from position j - 1, and j = 0 never
        scored = [j for j in range(1, end - begin) if labels[j] != -100]
        out.append((begin, end, scored))
        prev_end = end
        if end == total:
            break
    return out


@pytest.mark.parametrize("total, length, stride", [(100, 32, 16), (100, 32, 32), (37, 16, 5), (10, 32, 8)])
def test_strided_windows_score_what_the_hf_rule_scores(total, length, stride):
    spans = windows(total, chunk=length, stride=stride)
    expected = _hf_perplexity_targets(total, length, stride)
    assert [(b, e) for b, e, _ in spans] == [(b, e) for b, e, _ in expected]
    for (begin, end, score_from), (_, _, targets) in zip(spans, expected):
        assert list(range(score_from + 1, end - begin)) == targets
    # with overlapping windows, every token but the first is a target exactly once (with stride == length, the
    # rule never scores a window's first token, as in the HF guide)
    scored = [b + j for (b, e, s) in spans for j in range(s + 1, e - b)]
    if stride < length:
        assert scored == list(range(1, total))
    else:
        assert scored == [t for t in range(1, total) if t % stride]


def test_disjoint_chunks_drop_the_short_tail():
    assert windows(10, chunk=4, stride=None) == [(0, 4, 0), (4, 8, 0)]
    assert windows(3, chunk=4, stride=None) == [(0, 3, 0)]
    with pytest.raises(ValueError, match="stride must be between 1 and the window length"):
        windows(10, chunk=4, stride=5)


def test_strided_text_input_set_covers_the_text_once(tiny_tokenizer):
    from transformers import AutoTokenizer
    text = "The quick brown fox jumps over the lazy dog. " * 12
    s = build_text_input_set(tiny_tokenizer, text=text, chunk_tokens=24, stride=10)
    ids = AutoTokenizer.from_pretrained(tiny_tokenizer)(text)["input_ids"]
    assert ids[0] == 1  # BOS, as Llama tokenizers add
    starts = [smp.meta["start"] for smp in s.samples]
    assert starts == list(range(0, 10 * len(starts), 10))
    for smp in s.samples:
        begin, length = smp.meta["start"], smp.arrays["input_ids"].shape[1]
        assert smp.arrays["input_ids"].dtype == np.int64 and smp.arrays["input_ids"].shape[0] == 1
        np.testing.assert_array_equal(smp.arrays["input_ids"][0], ids[begin:begin + length])
        np.testing.assert_array_equal(smp.arrays["attention_mask"], np.ones((1, length), np.int64))
    # the scored texts, in order, are the original text after the BOS (whose offsets are empty)
    assert "".join(smp.meta["text"] for smp in s.samples) == text
    p = s.provenance
    assert (p["layout"], p["window"], p["stride"], p["dataset"], p["total_tokens"]) == ("strided", 24, 10, "text",
                                                                                        len(ids))
    assert len(p["tokenizer_sha256"]) == 64 and p["text_sha256"] == hashlib.sha256(text.encode()).hexdigest()


def test_chunked_text_file_input_set(tiny_tokenizer, corpus_file):
    s = build_text_input_set(tiny_tokenizer, text_file=corpus_file, chunk_tokens=64, max_samples=3, seed=7)
    assert len(s) == 3 and all(smp.arrays["input_ids"].shape == (1, 64) for smp in s.samples)
    assert [smp.meta["score_from"] for smp in s.samples] == [0, 0, 0]
    assert [smp.meta["start"] for smp in s.samples] == [0, 64, 128]
    with open(corpus_file, encoding="utf-8") as fh:
        corpus = fh.read()
    assert all(smp.meta["text"] in corpus for smp in s.samples)
    assert s.provenance["dataset"] == "text-file" and s.provenance["seed"] == 7
    assert s.provenance["text_file"] == os.path.abspath(corpus_file)


def test_text_input_errors(tiny_tokenizer, tmp_path):
    with pytest.raises(ParityError, match="cannot read the text file"):
        build_text_input_set(tiny_tokenizer, text_file=str(tmp_path / "missing.txt"))
    with pytest.raises(ParityError, match="too short for a sample"):
        build_text_input_set(tiny_tokenizer, text="")
    with pytest.raises(ParityError, match="cannot load a tokenizer"):
        build_text_input_set(str(tmp_path), text="hello")


def test_wikitext_without_datasets_points_to_text_file():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ParityError, match="pass --text-file"):
            load_wikitext()
    else:  # datasets is installed but no hub is reachable here: still a clear error
        with pytest.raises(ParityError, match="--text-file"):
            load_wikitext()


def test_npz_batched_and_per_sample(tmp_path):
    batched = tmp_path / "b.npz"
    np.savez(batched, input_ids=np.arange(12).reshape(3, 4), pixel_values=np.zeros((3, 2), np.float32))
    s = build_token_input_set(str(batched), max_samples=2)
    assert len(s) == 2 and s.samples[1].arrays["input_ids"].tolist() == [[4, 5, 6, 7]]
    assert s.samples[0].arrays["attention_mask"].tolist() == [[1, 1, 1, 1]]
    assert s.provenance["layout"] == "batched" and len(s.provenance["file_sha256"]) == 64
    ragged = tmp_path / "r.npz"
    np.savez(ragged, **{"input_ids.0": np.arange(3)[None], "input_ids.1": np.arange(5)[None]})
    s = build_token_input_set(str(ragged))
    assert [smp.arrays["input_ids"].shape for smp in s.samples] == [(1, 3), (1, 5)]


@pytest.mark.parametrize("arrays, message", [
    ({"input_ids": np.zeros((2, 3)), "mask": np.zeros((3, 3))}, "do not share a first"),
    ({"input_ids.0": np.zeros(2), "input_ids.2": np.zeros(2)}, "numbered 0..N-1 without gaps"),
    ({"names": np.array(["a", "b"])}, "not bool, integer or float"),
])
def test_npz_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ParityError, match=message):
        build_token_input_set(str(path))


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, input_ids=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ParityError, match="not a readable .npz of numeric arrays"):
        build_token_input_set(str(path))
    with pytest.raises(ParityError, match="no such file"):
        build_token_input_set(str(tmp_path / "none.npz"))


def test_tiny_builders_are_deterministic(tiny_llama, tiny_tokenizer, tmp_path):
    from capture.tiny_models import build_tiny_llama

    def digest(folder, name):
        with open(os.path.join(folder, name), "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()

    again = build_tiny_llama(str(tmp_path / "again"))
    other = build_tiny_llama(str(tmp_path / "other"), seed=1, tokenizer=False)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert digest(again, name) == digest(tiny_llama, name), name
    assert digest(other, "model.safetensors") != digest(tiny_llama, "model.safetensors")
    # a fresh process trains the same tokenizer
    code = ("import sys; from capture.tiny_models import build_tokenizer; build_tokenizer(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "tok")], check=True, capture_output=True)
    assert digest(tmp_path / "tok", "tokenizer.json") == digest(tiny_tokenizer, "tokenizer.json")
