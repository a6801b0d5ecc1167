"""KL divergence across execution providers (tools/compute_kl_divergence.py): one tokenization, one dump per model,
the pairwise JSON of ``parity kl``.

The corpus (Wikitext-2 test through ``datasets``, or a text file) is tokenized once with the reference's tokenizer
into disjoint chunks (1024 tokens by default) and written as an input set; the Hugging Face model is captured in
this process and every ORT GenAI model in its own subprocess (``--python`` per EP, for when the CUDA and DirectML
packages live in different environments); the dumps then go to analyze.kl.pairwise_kl, whose JSON is the Model-
Optimizer KL toolkit's shape (``models``, ``kl_divergences`` {pair: {total, average}}, per-chunk results) with the
true KL and, under ``kl_abs_variant``, the toolkit's own quantity.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

from protocol import ParityError, atomic_write_json

from .context_lengths import ChunkTooLongError, choose_chunk_tokens, model_context_length
from .runs import ModelSpec, capture_hf, run_capture_subprocess

log = logging.getLogger(__name__)
EP_CHOICES = ("cuda", "directml", "cpu")
#: tokens per chunk when none is asked for (the KL toolkit's), shrunk to the smallest context of the models
DEFAULT_CHUNK_TOKENS = 1024


@dataclass
class KlRunOptions:
    """What ``compute_kl_divergence`` does.

    Attributes:
        hf_model: the Hugging Face reference folder (None: compare the GenAI models among themselves, the first one
            being the reference).
        models: the GenAI models, in the order given (``ModelSpec`` of kind ``genai``).
        output: the JSON results file.
        device: torch device of the Hugging Face model. dtype: its dtype.
        text_file: corpus file (default: Wikitext-2 test through ``datasets``).
        chunk_tokens: tokens per disjoint chunk (None: DEFAULT_CHUNK_TOKENS, or the smallest context of the
            models when that is shorter). max_chunks: keep the first N chunks (None: all).
        keep_logits: keep the input set and the dumps in ``<output stem>_dumps/`` (else a temporary folder).
        debug: stream every subprocess's output and log at debug level.
        echo: where progress lines go (default: print).
    """

    hf_model: str | None
    models: list[ModelSpec]
    output: str
    device: str = "cpu"
    dtype: str = "float32"
    text_file: str | None = None
    chunk_tokens: int | None = None
    max_chunks: int | None = None
    keep_logits: bool = False
    debug: bool = False
    echo: object = field(default=print, repr=False)


def unique_labels(names: list[str]) -> list[str]:
    """``cpu, cpu, cuda`` -> ``cpu, cpu_2, cuda``: labels name the dumps and the JSON's pairs."""
    used: dict[str, int] = {}
    out = []
    for n in names:
        used[n] = used.get(n, 0) + 1
        out.append(n if used[n] == 1 else f"{n}_{used[n]}")
    return out


def chunk_tokens_for(opts: KlRunOptions) -> tuple[int, dict, str | None]:
    """The chunk length of a run: ``opts.chunk_tokens``, or the default shrunk to the smallest model context.

    Returns:
        (tokens per chunk, {label: context or None} of every model, a one-line note when the default was shrunk).

    Raises:
        ChunkTooLongError: an explicit ``chunk_tokens`` over a model's context (the tool's usage error).
    """
    contexts = {"hf": model_context_length("hf", opts.hf_model)} if opts.hf_model else {}
    contexts.update({m.label: model_context_length(m.kind, m.path) for m in opts.models})
    chunk, note = choose_chunk_tokens(opts.chunk_tokens, DEFAULT_CHUNK_TOKENS, contexts)
    return chunk, contexts, note


def compute_kl_divergence(opts: KlRunOptions) -> dict:
    """Tokenize once, capture every model, write and return the pairwise KL JSON.

    Returns:
        The ``parity kl`` document (also written to ``opts.output``), with a ``run`` block naming the models,
        their execution providers and interpreters, the corpus and the dumps (when kept).

    Raises:
        ParityError: fewer than two models in all, a chunk length over a model's context, an unusable model or
            corpus, a failed capture; the message names the model and what to do.
    """
    from analyze.kl import pairwise_kl
    from capture.text_inputs import build_text_input_set
    from protocol import write_input_set
    total = len(opts.models) + (1 if opts.hf_model else 0)
    if total < 2:
        raise ParityError("KL needs at least two models", hint="pass --hf_model and one --ep/--path pair, or two "
                          "or more --ep/--path pairs")
    try:
        chunk_tokens, contexts, note = chunk_tokens_for(opts)
    except ChunkTooLongError as exc:
        raise ParityError(str(exc), hint="a model cannot score more positions than its context") from None
    if note:
        log.warning(note)
    tokenizer = opts.hf_model or opts.models[0].path
    if opts.keep_logits:
        work = os.path.splitext(os.path.abspath(opts.output))[0] + "_dumps"
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="parity-kl-")
    started = time.perf_counter()
    try:
        steps = total + 2
        opts.echo(f"[1/{steps}] tokenizing {opts.text_file or 'Wikitext-2 (test)'} with {tokenizer} into "
                  f"{chunk_tokens}-token chunks")
        inputs = build_text_input_set(tokenizer, text_file=opts.text_file, chunk_tokens=chunk_tokens,
                                      max_samples=opts.max_chunks)
        inputs_path = _fresh(os.path.join(work, "inputs.h5"))
        write_input_set(inputs_path, inputs.samples, inputs.provenance)
        opts.echo(f"      {len(inputs.samples)} chunks, {inputs.provenance.get('total_tokens')} tokens in the corpus")
        dumps, described, step = [], [], 2
        if opts.hf_model:
            label = unique_labels(["hf"] + [m.label for m in opts.models])[0]
            out = _fresh(os.path.join(work, f"{label}.h5"))
            opts.echo(f"[{step}/{steps}] capturing {label}: {opts.hf_model} (torch {opts.device} {opts.dtype})")
            t0 = time.perf_counter()
            capture_hf(opts.hf_model, inputs_path, out, label, device=opts.device, dtype=opts.dtype,
                       show_progress=None if not opts.debug else False)
            opts.echo(f"      done in {time.perf_counter() - t0:.1f} s")
            dumps.append(out)
            described.append({"label": label, "kind": "hf", "path": os.path.abspath(opts.hf_model),
                              "device": opts.device, "dtype": opts.dtype})
            step += 1
        for spec in opts.models:
            out = _fresh(os.path.join(work, f"{spec.label}.h5"))
            opts.echo(f"[{step}/{steps}] capturing {spec.label}: {spec.path} (ORT GenAI, ep {spec.ep}, "
                      f"{spec.python or 'this interpreter'})")
            t0 = time.perf_counter()
            run_capture_subprocess(spec, inputs_path, out, debug=opts.debug)
            opts.echo(f"      done in {time.perf_counter() - t0:.1f} s")
            dumps.append(out)
            described.append({"label": spec.label, "kind": spec.kind, "path": os.path.abspath(spec.path),
                              "ep": spec.ep, "python": spec.python})
            step += 1
        opts.echo(f"[{step}/{steps}] computing KL divergences of {total * (total - 1) // 2} pairs")
        doc = pairwise_kl(dumps, inputs=inputs_path)
        doc["run"] = {"tool": "tools/compute_kl_divergence.py", "models": described,
                      "corpus": {k: inputs.provenance.get(k) for k in ("dataset", "split", "text_file",
                                                                       "text_sha256", "total_tokens")},
                      "chunk_tokens": chunk_tokens, "context_lengths": contexts, "chunks": len(inputs.samples),
                      "dumps": dumps if opts.keep_logits else None, "inputs": inputs_path if opts.keep_logits
                      else None, "seconds": round(time.perf_counter() - started, 2)}
        atomic_write_json(opts.output, doc)
        return doc
    finally:
        if not opts.keep_logits:
            shutil.rmtree(work, ignore_errors=True)


def _fresh(path: str) -> str:
    """``path``, or ``path`` with a numeric suffix when a file of that name exists (dumps are never replaced)."""
    if not os.path.exists(path):
        return path
    stem, ext = os.path.splitext(path)
    n = 2
    while os.path.exists(f"{stem}.{n}{ext}"):
        n += 1
    return f"{stem}.{n}{ext}"


def summary_lines(doc: dict) -> list[str]:
    """One line per pair: the token-weighted KL average (and the toolkit's variant), then the output's path."""
    lines = []
    for pair, v in doc["kl_divergences"].items():
        avg = v["average"]
        if avg is None:
            lines.append(f"{pair}: no comparable logits")
            continue
        lines.append(f"{pair}: KL {avg:.6e} over {v['tokens']} tokens (kl_abs_variant "
                     f"{doc['kl_abs_variant'][pair]['average']:.6e})")
    return lines
