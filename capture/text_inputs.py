"""Input sets from text: a corpus tokenized once, cut into disjoint chunks or strided windows.

Every backend consumes the same token ids from the input set, so nothing is tokenized twice. Each sample holds
``input_ids`` and ``attention_mask`` (int64, shape ``[1, L]``) and the metadata the perplexity metrics need:

- ``score_from``: the first position whose next-token prediction counts. Disjoint chunks score every position
  (0); a strided window scores only the tokens that no earlier window scored (the Hugging Face perplexity rule:
  the last ``trg_len = end - previous end`` tokens are targets, predicted from one position earlier).
- ``text``: the original text of the scored target tokens (positions ``score_from + 1 .. L - 1``), for word- and
  byte-level perplexity.
- ``start``: where the sample begins in the token stream.
"""
from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from protocol import InputSample, InputSet, ParityError

log = logging.getLogger(__name__)

WIKITEXT = ("wikitext", "wikitext-2-raw-v1", "test")


def load_wikitext() -> str:
    """Wikitext-2 (raw) test split joined as the Hugging Face perplexity guide does (``"\\n\\n".join``).

    Raises:
        ParityError: ``datasets`` is not installed or the dataset cannot be loaded (e.g. no network).
    """
    try:
        import datasets
    except ImportError:
        raise ParityError("Wikitext-2 needs the 'datasets' package, which is not installed",
                          hint="pip install datasets, or pass --text-file") from None
    try:
        data = datasets.load_dataset(WIKITEXT[0], WIKITEXT[1], split=WIKITEXT[2])
    except Exception as exc:  # datasets raises many kinds (ConnectionError, FileNotFoundError, HfHubHTTPError...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ParityError(f"Wikitext-2 cannot be loaded ({first})", hint="pass a local corpus with --text-file") \
            from None
    return "\n\n".join(data["text"])


def tokenizer_files_sha256(folder: str) -> str:
    """sha256 over the tokenizer files of a folder (names and bytes), to record which tokenizer made the ids."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.startswith(("tokenizer", "special_tokens", "vocab", "merges")) or name.endswith(".model"):
            h.update(name.encode() + b"\0")
            with open(os.path.join(folder, name), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def load_tokenizer(path: str):
    """A transformers tokenizer from a local folder (or hub id where a hub is reachable).

    Raises:
        ParityError: the tokenizer cannot be loaded.
    """
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ParityError(f"cannot load a tokenizer ({first})", path,
                          "pass a folder holding tokenizer.json (e.g. the model folder)") from None


def windows(total: int, *, chunk: int, stride: int | None) -> list[tuple[int, int, int]]:
    """``(begin, end, score_from)`` of every sample over a stream of ``total`` tokens.

    Without ``stride``: disjoint chunks of ``chunk`` tokens (a shorter tail is dropped unless it is the only chunk).
    With ``stride``: windows of at most ``chunk`` tokens starting every ``stride`` tokens (the HF perplexity loop).
    """
    if chunk < 2:
        raise ValueError("a window needs at least 2 tokens")
    if stride is None:
        out = [(b, b + chunk, 0) for b in range(0, total - chunk + 1, chunk)]
        return out or ([(0, total, 0)] if total >= 2 else [])
    if not 0 < stride <= chunk:
        raise ValueError("the stride must be between 1 and the window length")
    out, prev_end = [], 0
    for begin in range(0, total, stride):
        end = min(begin + chunk, total)
        trg_len = end - prev_end
        length = end - begin
        if length >= 2:
            out.append((begin, end, max(length - trg_len - 1, 0)))
        prev_end = end
        if end == total:
            break
    return out


def build_text_input_set(tokenizer_path: str, *, text: str | None = None, text_file: str | None = None,
                         chunk_tokens: int = 1024, stride: int | None = None, max_samples: int | None = None,
                         seed: int = 0) -> InputSet:
    """Tokenize a corpus once and cut it into samples.

    Args:
        tokenizer_path: folder (or hub id) of the tokenizer; recorded with a hash of its files.
        text: the corpus itself; or text_file: a UTF-8 file; neither: Wikitext-2 test through ``datasets``.
        chunk_tokens: tokens per sample (disjoint chunks), or the window length (max length) with ``stride``.
        stride: strided windows every ``stride`` tokens, each scoring only its new tokens.
        max_samples: keep the first N samples.
        seed: recorded in the provenance (the construction is deterministic; kept for sampled variants).

    Returns:
        The InputSet (not yet written; see protocol.write_input_set).

    Raises:
        ParityError: an unreadable text file, an unloadable tokenizer or dataset, a corpus too short for a sample.
    """
    if text is not None:
        source = {"dataset": "text", "split": None}
    elif text_file is not None:
        try:
            with open(text_file, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ParityError(f"cannot read the text file ({exc.__class__.__name__})", text_file,
                              "pass a readable UTF-8 text file") from None
        source = {"dataset": "text-file", "text_file": os.path.abspath(text_file), "split": None}
    else:
        text = load_wikitext()
        source = {"dataset": f"{WIKITEXT[0]}/{WIKITEXT[1]}", "split": WIKITEXT[2]}
    tok = load_tokenizer(tokenizer_path)
    enc = tok(text, return_offsets_mapping=bool(getattr(tok, "is_fast", False)))
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = enc.get("offset_mapping")
    try:
        spans = windows(len(ids), chunk=chunk_tokens, stride=stride)
    except ValueError as exc:
        raise ParityError(f"invalid window: {exc}") from None
    if not spans:
        raise ParityError(f"the corpus has only {len(ids)} tokens: too short for a sample",
                          text_file, "pass more text")
    if max_samples:
        spans = spans[:max_samples]
    samples = []
    for begin, end, score_from in spans:
        window = ids[begin:end][None, :]
        first_target = begin + score_from + 1
        if offsets is not None:
            scored = text[offsets[first_target][0]:offsets[end - 1][1]]
        else:
            scored = tok.decode(ids[first_target:end])
        samples.append(InputSample({"input_ids": window, "attention_mask": np.ones_like(window)},
                                   {"score_from": int(score_from), "text": scored, "start": int(begin)}))
    folder = tokenizer_path if os.path.isdir(tokenizer_path) else None
    provenance = {
        **source, "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "total_tokens": int(len(ids)),
        "tokenizer": os.path.abspath(tokenizer_path) if folder else tokenizer_path,
        "tokenizer_sha256": tokenizer_files_sha256(folder) if folder else None,
        "tokenizer_class": type(tok).__name__, "window": int(chunk_tokens), "stride": stride,
        "layout": "strided" if stride else "chunks", "max_samples": max_samples, "seed": seed,
        "samples": len(samples),
    }
    log.info("%d samples of up to %d tokens from %d tokens", len(samples), chunk_tokens, len(ids))
    return InputSet(samples, provenance)
