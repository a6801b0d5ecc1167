"""Perplexity (docs/METRICS.md section 4): token-weighted over the scored positions the input set defines.

Labels: the logits at position ``t`` predict ``input_ids[t + 1]``. A sample's ``score_from`` metadata (default 0) is
the first position whose prediction is scored, so each window scores positions ``score_from .. L-2`` — the Hugging
Face strided-window rule (for a window of length L whose last ``trg_len`` tokens are new, ``score_from = L - trg_len
- 1``; for the first window and for disjoint chunks, 0). Each token is then scored exactly once and the mean is
weighted by tokens, not windows. Word and byte perplexity (lm-evaluation-harness) count words and UTF-8 bytes of the
sample's ``text`` metadata, the original text of its scored tokens.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from protocol import DumpReader, InputSample, InputSet, RecordInfo
from protocol.errors import InputSetMismatchError, ParityError

from .logit_metrics import nll_only

DEFAULT_LOGITS_SITE = ":out.logits"


def labels_for(sample: InputSample | None, rows: int, step: int = 0) -> np.ndarray:
    """Next-token label of each logit row of one sample (``-1`` where a row is not scored).

    Args:
        sample: the input-set sample (``input_ids`` of shape ``(T,)`` or ``(B, T)``), or None (no labels).
        rows: how many logit rows the record holds (``B*T`` for a full forward record).
        step: generation step; only step 0 (the prefill / the forward pass) has labels from the input set.

    Returns:
        int64 array of length ``rows``; all ``-1`` when the rows do not line up with the sample's tokens.
    """
    out = np.full(rows, -1, dtype=np.int64)
    if sample is None or step != 0 or "input_ids" not in sample.arrays:
        return out
    ids = np.asarray(sample.arrays["input_ids"])
    ids = ids.reshape(1, -1) if ids.ndim <= 1 else ids.reshape(-1, ids.shape[-1])
    batch, length = ids.shape
    if batch * length != rows or length < 2:
        return out
    score_from = int(sample.meta.get("score_from", 0) or 0)
    lab = np.full((batch, length), -1, dtype=np.int64)
    lab[:, max(score_from, 0):length - 1] = ids[:, max(score_from, 0) + 1:]
    mask = sample.arrays.get("attention_mask")
    if mask is not None and np.asarray(mask).size == ids.size:  # padded positions predict nothing
        m = np.asarray(mask).reshape(batch, length).astype(bool)
        lab[:, :-1][~m[:, 1:]] = -1
    return lab.reshape(-1)


def count_words(text: str) -> int:
    """Words as lm-evaluation-harness counts them (split on whitespace runs)."""
    return len(re.split(r"\s+", text)) if text else 0


@dataclass
class PerplexityResult:
    """Perplexity of one dump over the scored tokens of its input set.

    Attributes:
        ppl: exp(Σ NLL / tokens); nll_sum, tokens: the sums behind it.
        words, bytes: counted on the samples' ``text`` metadata (None when a scored sample has none).
        word_ppl, byte_ppl, bits_per_byte: lm-evaluation-harness's definitions (None without text).
        per_sample: ``[{"sample", "tokens", "nll_sum", "ppl"}]``.
    """

    ppl: float
    nll_sum: float
    tokens: int
    words: int | None = None
    bytes: int | None = None
    word_ppl: float | None = None
    byte_ppl: float | None = None
    bits_per_byte: float | None = None
    per_sample: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def perplexity_from_nll(per_sample: list[tuple[int, np.ndarray, str | None]]) -> PerplexityResult:
    """Token-weighted perplexity from per-sample NLLs of scored tokens.

    Args:
        per_sample: ``(sample index, NLLs of its scored tokens, its text or None)``.
    """
    total, tokens = 0.0, 0
    words = nbytes = 0
    have_text = bool(per_sample)
    rows = []
    for index, nll, text in per_sample:
        nll = np.asarray(nll, dtype=np.float64)
        s = float(nll.sum())
        total += s
        tokens += nll.size
        rows.append({"sample": index, "tokens": int(nll.size), "nll_sum": s,
                     "ppl": math.exp(s / nll.size) if nll.size else None})
        if text is None:
            have_text = False
        else:
            words += count_words(text)
            nbytes += len(text.encode("utf-8"))
    result = PerplexityResult(math.exp(total / tokens) if tokens else math.nan, total, tokens, per_sample=rows)
    if have_text and words and nbytes:
        result.words, result.bytes = words, nbytes
        result.word_ppl = math.exp(total / words)
        result.byte_ppl = math.exp(total / nbytes)
        result.bits_per_byte = total / nbytes / math.log(2)
    return result


def logit_records(dump: DumpReader, logit_sites: str | None = None) -> list[RecordInfo]:
    """Records holding logits: the root's ``:out.logits`` by default, or those whose site matches a regex."""
    if logit_sites:
        pattern = re.compile(logit_sites)
        chosen = [r for r in dump.records() if pattern.search(r.key.site)]
    else:
        chosen = [r for r in dump.records() if r.key.site == DEFAULT_LOGITS_SITE]
    return [r for r in chosen if r.has_data and r.storage in ("full", "slice") and len(r.shape) >= 1]


def iter_logit_rows(dump: DumpReader, info: RecordInfo, chunk_elements: int):
    """Consecutive ``(rows, V)`` blocks of a logits record, whole rows only, bounded by ``chunk_elements``; each
    block is valid until the next is asked for (one reused buffer)."""
    v = int(info.shape[-1])
    per_block = max(v, (chunk_elements // max(v, 1)) * v)
    for block in dump.iter_blocks(info, per_block, reuse=True):
        yield block.reshape(-1, v)


def perplexity(dump: DumpReader, inputs: InputSet, *, logit_sites: str | None = None,
               chunk_elements: int = 1 << 22) -> PerplexityResult:
    """Perplexity of one dump's logits on its input set's tokens (``parity ppl``).

    Args:
        dump: an open dump whose logit records are full (forward mode; in generate mode, the prefill step).
        inputs: the input set the dump consumed.
        logit_sites: regex of the logits sites (default: the root's ``:out.logits``).
        chunk_elements: memory bound per block.

    Raises:
        InputSetMismatchError: the input set is not the one the dump consumed.
        ParityError: the dump holds no logits record whose rows line up with the input tokens.
    """
    sha = dump.manifest.inputs_sha256
    if sha and sha != inputs.sha256:
        raise InputSetMismatchError(f"the dump consumed input set {sha} but this input set is {inputs.sha256}",
                                    inputs.path, "pass the input set the dump was captured from")
    per_sample = []
    for info in logit_records(dump, logit_sites):
        if info.key.step != 0 or info.key.sample >= len(inputs.samples):
            continue
        sample = inputs.samples[info.key.sample]
        rows = info.numel // int(info.shape[-1])
        labels = labels_for(sample, rows)
        if not (labels >= 0).any():
            continue
        parts, start = [], 0
        for block in iter_logit_rows(dump, info, chunk_elements):
            lab = labels[start:start + block.shape[0]]
            start += block.shape[0]
            nll = nll_only(block, lab)
            parts.append(nll[lab >= 0])
        per_sample.append((info.key.sample, np.concatenate(parts), sample.meta.get("text")))
    if not per_sample:
        raise ParityError("no logits record lines up with the input set's tokens", dump.path,
                          "capture the full logits (site ':out.logits') in forward mode, or name the logits site "
                          "with --logits-site")
    return perplexity_from_nll(per_sample)
