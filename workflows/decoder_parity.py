"""Decoder parity test (the pytest plugin's engine): does a candidate decode like the reference?

As aiu-fms-testing-utils' test_decoders does, per (model, batch size, sequence length, max new tokens):

1. the reference (Hugging Face, by default CPU float32) generates greedily; its dump is cached in a directory, so
   later runs reuse it (checked against the input set's sha256 and the number of steps);
2. the candidate generates greedily; if its tokens equal the reference's, the case passes;
3. otherwise the candidate is run again teacher-forced with the reference's tokens, and the top-k metrics
   ``fms_ce`` and ``fms_diff_mean`` (docs/METRICS.md section 2.1) of every generated token are judged against their
   limits as a failure rate (the share of tokens over the limit, allowed: ``failure_threshold``, 1% by default), through
   analyze.compare's thresholds.

Only the last position of the logits is kept at every step (``slice:-2:-1``), so each generation step contributes
one distribution per sequence: the token it produced.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from protocol import ParityError, open_dump, read_input_set, write_input_set

#: aiu-fms-testing-utils' usual limits; calibrate your own (tools/get_thresholds.py) and set PARITY_METRIC_THRESHOLDS.
DEFAULT_METRIC_THRESHOLDS = {"fms_ce": 2.5, "fms_diff_mean": 0.001}
DEFAULT_FAILURE_THRESHOLD = 0.01
LAST_POSITION_RULES = (r"^:out\.logits$=slice:-2:-1",)
WORST_LISTED = 5


@dataclass
class DecoderParityConfig:
    """The options of a decoder parity run (PARITY_* environment variables or ``parity_*`` ini options).

    Attributes:
        model_paths: Hugging Face folders of the references.
        candidate_paths: the candidates, aligned with model_paths (default: the same folders).
        candidate_backend: ``torch`` (a Hugging Face folder on candidate_device/dtype) or ``genai`` (an ORT GenAI
            folder).
        reference_device, reference_dtype, candidate_device, candidate_dtype: where and how each side runs.
        batch_sizes, seq_lengths, max_new_tokens: the cases (every combination).
        metric_thresholds: limit per metric (``fms_ce``, ``fms_diff_mean``).
        failure_threshold: allowed share of tokens over a limit.
        reference_cache: directory of cached reference dumps (and input sets).
        text_file: the prompts' text (default: the local corpus of capture.tiny_models).
    """

    model_paths: list = field(default_factory=list)
    candidate_paths: list = field(default_factory=list)
    candidate_backend: str = "torch"
    reference_device: str = "cpu"
    reference_dtype: str = "float32"
    candidate_device: str = "cpu"
    candidate_dtype: str = "float32"
    batch_sizes: list = field(default_factory=lambda: [1])
    seq_lengths: list = field(default_factory=lambda: [64])
    max_new_tokens: list = field(default_factory=lambda: [8])
    metric_thresholds: dict = field(default_factory=lambda: dict(DEFAULT_METRIC_THRESHOLDS))
    failure_threshold: float = DEFAULT_FAILURE_THRESHOLD
    reference_cache: str | None = None
    text_file: str | None = None

    def cases(self) -> list[tuple]:
        """Every (model, candidate, batch size, sequence length, max new tokens)."""
        cands = self.candidate_paths or self.model_paths
        if len(cands) != len(self.model_paths):
            raise ParityError(f"{len(cands)} candidate path(s) for {len(self.model_paths)} model path(s)",
                              hint="give one PARITY_CANDIDATE_PATHS entry per PARITY_MODEL_PATHS entry")
        return [(m, c, b, s, n) for m, c in zip(self.model_paths, cands) for b in self.batch_sizes
                for s in self.seq_lengths for n in self.max_new_tokens]


@dataclass
class DecoderParityResult:
    """The verdict of one case: ``passed``, how (``tokens-equal`` or ``metrics``), the failure message, details."""

    passed: bool
    decided_by: str
    message: str
    failure_rates: dict = field(default_factory=dict)
    first_token_difference: dict | None = None


def parse_thresholds(text: str | None) -> dict:
    """``fms_ce=2.5,fms_diff_mean=0.001`` (or ``ce=...``/``diff_mean=...``) -> {metric: limit}, over the defaults.

    Raises:
        ParityError: malformed text or an unknown metric.
    """
    out = dict(DEFAULT_METRIC_THRESHOLDS)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = {"ce": "fms_ce", "diff_mean": "fms_diff_mean"}.get(name.strip(), name.strip())
        try:
            limit = float(value)
        except ValueError:
            sep = ""
        if not sep or name not in DEFAULT_METRIC_THRESHOLDS:
            raise ParityError(f"invalid metric threshold {item!r}",
                              hint="write e.g. fms_ce=2.5,fms_diff_mean=0.001")
        out[name] = limit
    return out


def _policy():
    from capture.policy import RecordPolicy
    return RecordPolicy.from_strings(list(LAST_POSITION_RULES), "skip")


def _inputs(cfg: DecoderParityConfig, model: str, batch: int, seq: int, folder: str) -> str:
    """The cached input set of a case: ``batch`` prompts of ``seq`` tokens (one [B, S] sample for torch, B samples
    of [1, S] for GenAI, which takes one sequence at a time)."""
    from .layer_metrics import prompt_inputs
    text_file = cfg.text_file
    if text_file is None:
        from capture.tiny_models import corpus_text
        text_file = os.path.join(folder, "corpus.txt")
        if not os.path.exists(text_file):
            with open(text_file, "w", encoding="utf-8") as fh:
                fh.write(corpus_text()[:200_000])
    s = prompt_inputs(model, batch, seq, text_file)
    samples = s.samples
    if cfg.candidate_backend == "genai":
        from protocol import InputSample
        ids = samples[0].arrays["input_ids"]
        samples = [InputSample({"input_ids": ids[i:i + 1], "attention_mask": np.ones_like(ids[i:i + 1])})
                   for i in range(ids.shape[0])]
    key = hashlib.sha256(f"{os.path.abspath(model)}|{batch}|{seq}|{cfg.candidate_backend}|{text_file}".encode())
    path = os.path.join(folder, f"inputs-{key.hexdigest()[:16]}.h5")
    if not os.path.exists(path):
        write_input_set(path, samples, s.provenance)
    return path


def _capture(kind: str, model: str, inputs: str, output: str, label: str, device: str, dtype: str, mode: str,
             steps: int, reference: str | None = None) -> None:
    from capture.base import CaptureOptions
    options = CaptureOptions(label=label, mode=mode, max_new_tokens=steps, reference=reference, policy=_policy())
    if kind == "genai":
        from capture.genai_backend import GenaiBackend
        from capture.onnx_backend import run_capture
        run_capture(GenaiBackend(model), inputs, output, options, show_progress=False)
        return
    from capture.torch_backend import capture_torch_model
    from capture.torch_hooks import ModuleSelection
    capture_torch_model(model, inputs, output, options, device=device, dtype=dtype,
                        selection=ModuleSelection(max_depth=0), show_progress=False)


def model_fingerprint(model: str) -> str:
    """Identity of a model for the reference cache: a folder's absolute path and its files' names, sizes and
    modification times (two models sharing a tokenizer share input sets, so the inputs alone cannot tell their
    references apart; this is cheap where hashing a 70B model's weights is not); a hub id stands for itself."""
    h = hashlib.sha256()
    if os.path.isdir(model):
        folder = os.path.abspath(model)
        h.update(folder.encode())
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                h.update(f"\0{entry.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    else:
        h.update(model.encode())
    return h.hexdigest()[:16]


def reference_dump(cfg: DecoderParityConfig, model: str, inputs: str, steps: int, cache: str) -> str:
    """The cached reference generate dump of a case, captured when missing.

    Raises:
        ParityError: a cached dump that consumed another input set or generated a different number of steps.
    """
    sha = read_input_set(inputs).sha256
    name = (f"reference-{model_fingerprint(model)}-{sha[:16]}-{cfg.reference_device.replace(':', '')}-"
            f"{cfg.reference_dtype}-{steps}.h5")
    path = os.path.join(cache, name)
    if os.path.exists(path):
        with open_dump(path) as d:
            ok = d.manifest.inputs_sha256 == sha and d.manifest.capture.get("steps") == steps
        if not ok:
            raise ParityError("the cached reference dump does not match this case (input set or steps)", path,
                              "remove it from the reference cache")
        return path
    _capture("torch", model, inputs, path, "reference", cfg.reference_device, cfg.reference_dtype, "generate", steps)
    return path


def _tokens(dump: str, count: int) -> list[np.ndarray]:
    with open_dump(dump) as d:
        return [np.asarray(d.array(f"generated_tokens.s{i}")) for i in range(count)]


def run_case(cfg: DecoderParityConfig, model: str, candidate: str, batch: int, seq: int, steps: int,
             work: str) -> DecoderParityResult:
    """Run one case (see the module docstring) with dumps under ``work`` and references under the cache."""
    from analyze.compare import compare
    cache = cfg.reference_cache or os.path.join(work, "reference-cache")
    os.makedirs(cache, exist_ok=True)
    inputs = _inputs(cfg, model, batch, seq, cache)
    ref = reference_dump(cfg, model, inputs, steps, cache)
    n_samples = len(read_input_set(inputs).samples)
    cand = os.path.join(work, "candidate-generate.h5")
    _capture(cfg.candidate_backend, candidate, inputs, cand, "candidate", cfg.candidate_device,
             cfg.candidate_dtype, "generate", steps)
    what = (f"{candidate} ({cfg.candidate_backend} {cfg.candidate_device} {cfg.candidate_dtype}) vs {model} "
            f"({cfg.reference_device} {cfg.reference_dtype}), batch {batch}, seq {seq}, {steps} new tokens")
    ref_tokens, cand_tokens = _tokens(ref, n_samples), _tokens(cand, n_samples)
    diff = None
    for i, (r, c) in enumerate(zip(ref_tokens, cand_tokens)):
        r2, c2 = r.reshape(-1, r.shape[-1]), c.reshape(-1, c.shape[-1])
        bad = np.argwhere(r2 != c2)
        if bad.size:
            row, step = (int(x) for x in bad[0])
            diff = {"sample": i, "sequence": row, "step": step, "reference": int(r2[row, step]),
                    "candidate": int(c2[row, step])}
            break
    if diff is None:
        return DecoderParityResult(True, "tokens-equal", f"{what}: the {steps} generated tokens are identical")
    forced = os.path.join(work, "candidate-teacher-forced.h5")
    _capture(cfg.candidate_backend, candidate, inputs, forced, "candidate-tf", cfg.candidate_device,
             cfg.candidate_dtype, "teacher-forced", steps, reference=ref)
    from analyze.thresholds import THRESHOLDS_KIND, THRESHOLDS_VERSION
    thresholds = {"kind": THRESHOLDS_KIND, "schema_version": THRESHOLDS_VERSION, "sites": {},
                  "provenance": {"source": "decoder parity test"},
                  "logits": {":out.logits": {m: {"limit": v} for m, v in cfg.metric_thresholds.items()}}}
    report = compare(ref, forced, inputs=inputs, sites=r"^:out\.logits$", metrics=["rel_l2", "cosine"],
                     thresholds=thresholds, max_failure_rate=cfg.failure_threshold)
    checks = report.thresholds["logits"]
    rates = {c["metric"]: c["failure_rate"] for c in checks}
    failed = [c for c in checks if not c["passed"]]
    head = (f"{what}: tokens differ first at sample {diff['sample']} sequence {diff['sequence']} step "
            f"{diff['step']} ({diff['reference']} vs {diff['candidate']})")
    if not failed:
        parts = ", ".join(f"{c['metric']} {100 * c['failure_rate']:.2f}%" for c in checks)
        return DecoderParityResult(True, "metrics", f"{head}; teacher-forced metrics within the failure threshold "
                                   f"{100 * cfg.failure_threshold:.2f}% ({parts})", rates, diff)
    lines = [head + "; teacher-forced top-k metrics failed:"]
    for c in failed:
        worst = ", ".join(f"step {t['step']} seq-row {t['position']} (sample {t['sample']}): {t['value']:.4g}"
                          for t in c["failing_tokens"][:WORST_LISTED])
        lines.append(f"  {c['metric']}: failure rate {100 * c['failure_rate']:.2f}% ({c['failed_tokens']}/"
                     f"{c['tokens']} tokens over {c['limit']:.4g}) > threshold {100 * cfg.failure_threshold:.2f}%; "
                     f"worst tokens: {worst}")
    return DecoderParityResult(False, "metrics", "\n".join(lines), rates, diff)


def output_signature(model: str, *, backend: str = "torch", device: str = "cpu", dtype: str = "float32",
                     seq: int = 32, seed: int = 0, work: str) -> dict:
    """A model output signature for the expectations test: the logits of one forward over ``seq`` fixed random
    token ids (below the vocabulary size), summarised per position (sum over the vocabulary, and argmax)."""
    import json
    from protocol import InputSample
    config = os.path.join(model, "genai_config.json" if backend == "genai" else "config.json")
    with open(config, encoding="utf-8") as fh:
        doc = json.load(fh)
    vocab = int((doc.get("model", {}) if backend == "genai" else doc).get("vocab_size") or 100)
    ids = np.random.default_rng(seed).integers(4, vocab, size=(1, seq), dtype=np.int64)
    inputs = os.path.join(work, "signature-inputs.h5")
    if not os.path.exists(inputs):
        write_input_set(inputs, [InputSample({"input_ids": ids, "attention_mask": np.ones_like(ids)})],
                        {"source": "output signature", "seed": seed})
    out = os.path.join(work, f"signature-{hashlib.sha256(os.path.abspath(model).encode()).hexdigest()[:12]}.h5")
    if os.path.exists(out):
        os.remove(out)  # our own scratch file from an earlier call in this test
    from .runs import capture_genai, capture_hf
    if backend == "genai":
        capture_genai(model, inputs, out, "signature")
    else:
        capture_hf(model, inputs, out, "signature", device=device, dtype=dtype)
    with open_dump(out) as d:
        logits = np.asarray(d.read(next(r for r in d.records() if r.key.site == ":out.logits")), np.float64)
    logits = logits.reshape(-1, logits.shape[-1])
    return {"seq": seq, "seed": seed, "sums": logits.sum(axis=1).tolist(),
            "argmax": logits.argmax(axis=1).astype(int).tolist()}
