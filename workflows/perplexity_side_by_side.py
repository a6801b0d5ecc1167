"""Perplexity of a Hugging Face model and of an ONNX / ORT GenAI model on exactly the same token ids
(tools/calculate_perplexity.py), side by side with their ratio and its uncertainty.

The corpus is tokenized once into strided windows (Hugging Face's "perplexity of fixed-length models" rule: each
token scored once, the mean weighted by tokens; capture.text_inputs), both models are captured over that one input
set, and analyze.compare's logit block gives both perplexities, the ratio exp(mean(nll_cand - nll_ref)) and its
standard error from the paired per-token NLLs (llama.cpp's formula, docs/METRICS.md section 3).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass

from protocol import ParityError, atomic_write_json, write_input_set

from .context_lengths import ChunkTooLongError, choose_chunk_tokens, model_context_length

#: the window when none is asked for (shrunk to the smallest context of the two models)
DEFAULT_MAX_LENGTH = 1024


@dataclass
class PerplexityComparison:
    """Both perplexities on the same ids and their ratio.

    Attributes:
        reference, candidate: ``{"label", "path", "ppl", "ppl_se", "nll_sum", "word_ppl", "byte_ppl",
            "bits_per_byte"}``.
        ratio, ratio_se: PPL(candidate) / PPL(reference) and its standard error (paired, per token).
        mean_ln_ratio, mean_ln_ratio_se: mean(nll_cand - nll_ref) and its standard error.
        tokens: scored tokens (each once). windows: samples. max_length, stride: the windowing.
        inputs_sha256: the input set both consumed.
    """

    reference: dict
    candidate: dict
    ratio: float
    ratio_se: float
    mean_ln_ratio: float
    mean_ln_ratio_se: float
    correlation: float | None
    tokens: int
    windows: int
    max_length: int
    stride: int | None
    inputs_sha256: str

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"tool": "tools/calculate_perplexity.py", **asdict(self)}


def _side(label: str, path: str, ppl: dict, block: dict | None) -> dict:
    return {"label": label, "path": os.path.abspath(path), "ppl": ppl.get("ppl"),
            "ppl_se": (block or {}).get("se"), "nll_sum": ppl.get("nll_sum"), "tokens": ppl.get("tokens"),
            "word_ppl": ppl.get("word_ppl"), "byte_ppl": ppl.get("byte_ppl"), "bits_per_byte": ppl.get("bits_per_byte")}


def perplexity_window(hf_model: str, model: str, max_length: int | None) -> tuple[int, str | None]:
    """The window length of a comparison: ``max_length``, or DEFAULT_MAX_LENGTH shrunk to the smaller context.

    Returns:
        (the window, a one-line note when the default was shrunk, else None).

    Raises:
        ChunkTooLongError: an explicit ``max_length`` over a model's context (the tool's usage error).
    """
    genai = os.path.isfile(os.path.join(model, "genai_config.json"))
    contexts = {"hf": model_context_length("hf", hf_model),
                "genai" if genai else "onnx": model_context_length("genai" if genai else "onnx", model)}
    return choose_chunk_tokens(max_length, DEFAULT_MAX_LENGTH, contexts, option="--max_length")


def compare_perplexity(hf_model: str, model: str, *, text_file: str | None = None, max_length: int | None = None,
                       stride: int | None = 512, max_samples: int | None = None, device: str = "cpu",
                       dtype: str = "float32", ep: str = "cpu", python: str | None = None,
                       work_dir: str | None = None, echo=None) -> PerplexityComparison:
    """Perplexity of ``hf_model`` and ``model`` on the same strided windows of one tokenization.

    Args:
        hf_model: the Hugging Face folder (the reference; its tokenizer tokenizes the corpus).
        model: an ORT GenAI folder (genai_config.json) or an ONNX file with a ``logits`` output that takes
            ``input_ids`` (and ``attention_mask`` or not: capture/standard_inputs.py).
        text_file: the corpus (default: Wikitext-2 test through ``datasets``).
        max_length: window length (None: DEFAULT_MAX_LENGTH, or the smaller context of the two models when that
            is shorter). stride: the stride between windows (None: disjoint chunks).
        max_samples: the first N windows only. device, dtype: of the Hugging Face model.
        ep: ONNX Runtime execution provider of an ONNX model. python: capture ``model`` in a subprocess of this
            interpreter (None: in this process).
        work_dir: keep the input set and dumps there (default: a temporary folder, removed).
        echo: a callable for progress lines (None: quiet).

    Raises:
        ParityError: an unusable model or corpus, a window over a model's context, a failed capture, no logits to
            score.
    """
    from analyze.compare import compare
    from capture.text_inputs import build_text_input_set
    from .runs import ModelSpec, capture_genai, capture_hf, capture_onnx_outputs, run_capture_subprocess
    say = echo or (lambda line: None)
    is_genai = os.path.isfile(os.path.join(model, "genai_config.json"))
    if not is_genai and not (model.endswith(".onnx") and os.path.isfile(model)):
        raise ParityError("neither an ORT GenAI model folder (genai_config.json) nor an .onnx file", model,
                          "pass the GenAI builder's output folder or an ONNX file with a 'logits' output")
    try:
        max_length, note = perplexity_window(hf_model, model, max_length)
    except ChunkTooLongError as exc:
        raise ParityError(str(exc), hint="a model cannot score more positions than its context") from None
    if note:
        say(f"note: {note}")
    work = work_dir or tempfile.mkdtemp(prefix="parity-ppl-")
    os.makedirs(work, exist_ok=True)
    try:
        say(f"tokenizing {text_file or 'Wikitext-2 (test)'} into windows of {max_length} tokens, stride {stride}")
        inputs = build_text_input_set(hf_model, text_file=text_file, chunk_tokens=max_length, stride=stride,
                                      max_samples=max_samples)
        inputs_path = os.path.join(work, "inputs.h5")
        sha = write_input_set(inputs_path, inputs.samples, inputs.provenance)
        ref, cand = os.path.join(work, "hf.h5"), os.path.join(work, "candidate.h5")
        say(f"capturing {hf_model} (torch {device} {dtype}) over {len(inputs.samples)} windows")
        capture_hf(hf_model, inputs_path, ref, "hf", device=device, dtype=dtype)
        label = "genai" if is_genai else "onnx"
        say(f"capturing {model} ({label})")
        if python:
            run_capture_subprocess(ModelSpec(label, model, label, ep=ep, python=python), inputs_path, cand)
        elif is_genai:
            capture_genai(model, inputs_path, cand, label)
        else:
            capture_onnx_outputs(model, inputs_path, cand, label, ep=ep)
        report = compare(ref, cand, inputs=inputs_path, sites=r"^:out\.logits$", metrics=["rel_l2", "cosine"])
        if not report.logits or not report.logits[0].perplexity:
            raise ParityError("the two dumps hold no comparable logits with next-token labels", model,
                              "check that the model's output is named 'logits' and covers every position")
        site = report.logits[0]
        st, ppl = site.statistics, site.perplexity
        return PerplexityComparison(
            reference=_side("hf", hf_model, ppl["reference"], st.get("ppl_ref")),
            candidate=_side(label, model, ppl["candidate"], st.get("ppl_cand")),
            ratio=st["ppl_ratio"]["value"], ratio_se=st["ppl_ratio"]["se"],
            mean_ln_ratio=st["mean_ln_ppl_ratio"]["value"], mean_ln_ratio_se=st["mean_ln_ppl_ratio"]["se"],
            correlation=st.get("cor_ln_ppl"), tokens=int(ppl["reference"]["tokens"]), windows=len(inputs.samples),
            max_length=max_length, stride=stride, inputs_sha256=sha)
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def comparison_lines(c: PerplexityComparison) -> list[str]:
    """The side-by-side table: one line per model, then the ratio with its uncertainty."""
    def row(side):
        extra = f"  word ppl {side['word_ppl']:.6g}" if side.get("word_ppl") else ""
        return f"{side['label']:<8} {side['ppl']:>14.6f} ± {side['ppl_se'] or 0:.4g}{extra}   {side['path']}"
    return [f"{c.tokens} tokens scored once each, {c.windows} windows of {c.max_length} (stride {c.stride}), same ids "
            f"for both (input set {c.inputs_sha256[:12]})",
            f"{'model':<8} {'perplexity':>14}",
            row(c.reference), row(c.candidate),
            f"ratio PPL({c.candidate['label']})/PPL(hf) = {c.ratio:.6f} ± {c.ratio_se:.2g}  "
            f"(mean ln ratio {c.mean_ln_ratio:.3e} ± {c.mean_ln_ratio_se:.2g})"]


def write_comparison(c: PerplexityComparison, path: str) -> None:
    """Write the comparison as JSON (atomically)."""
    atomic_write_json(path, c.to_dict())
