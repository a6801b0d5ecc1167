"""Eval compare mode (``parity eval-compare MODEL.onnx --hf HF_DIR``): an ONNX model against its Hugging Face source
on random inputs drawn from the ONNX I/O spec, per output, winml-cli's 5 metrics x 4 statistics.

The inputs are drawn once (capture.random_inputs) and written as an input set; the ONNX model's graph outputs are
captured with ONNX Runtime (no injection) and the Hugging Face model on CPU in float32 (the reference) with a hook
on its root module; analyze.compare pairs the outputs by name (``:out.<name>``) on their intersection, and its
per-site aggregates (docs/METRICS.md section 5, winml-cli's conventions for infinities) give, per output,
``{sqnr,psnr,cosine,mse,max_abs_diff}_{mean,std,min,max}``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

from protocol import ParityError, open_dump

log = logging.getLogger(__name__)

#: winml-cli's metric names -> analyze's metric names (docs/METRICS.md section 1).
EVAL_METRICS = {"sqnr": "sqnr_db", "psnr": "psnr_db", "cosine": "cosine", "mse": "mse",
                "max_abs_diff": "max_abs_diff"}
EVAL_STATISTICS = ("mean", "std", "min", "max")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
OUTPUTS_ONLY_RULES = (r"^:out(\.|$)=full",)


@dataclass
class EvalCompareResult:
    """Per output name: the 20 metric keys; plus what was compared and what could not be.

    Attributes:
        outputs: ``{output name: {"sqnr_mean": ..., ..., "max_abs_diff_max": ...}}`` (20 keys each).
        samples: random samples compared. precision: the ONNX model's declared precision (recorded).
        only_onnx, only_hf: output names present on one side only (left out, with a warning).
        warnings: the warnings (also logged). dims, int_ranges: how the inputs were drawn. seed: their seed.
        model, hf_model: the two models.
    """

    outputs: dict
    samples: int
    precision: str
    model: str
    hf_model: str
    only_onnx: list = field(default_factory=list)
    only_hf: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    dims: dict = field(default_factory=dict)
    int_ranges: dict = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"tool": "parity eval-compare", "model": self.model, "hf_model": self.hf_model,
                "reference": "Hugging Face, cpu, float32", "precision": self.precision, "samples": self.samples,
                "seed": self.seed, "dims": self.dims, "int_ranges": {k: list(v) for k, v in self.int_ranges.items()},
                "outputs": self.outputs, "only_onnx": self.only_onnx, "only_hf": self.only_hf,
                "warnings": self.warnings}


def refuse_composite(model: str, hf_dir: str) -> str:
    """The single .onnx file to compare.

    Raises:
        ParityError: a folder of several ONNX files, a GenAI pipeline folder, or an encoder-decoder Hugging Face
            model: each component must be compared on its own.
    """
    from capture.onnx_backend import resolve_model_file
    hint = "compare each component separately: parity eval-compare COMPONENT.onnx --hf HF_DIR"
    folder = model if os.path.isdir(model) else os.path.dirname(os.path.abspath(model))
    config = os.path.join(folder, "genai_config.json")
    if os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            doc = {}
        parts = [k for k, v in (doc.get("model") or {}).items() if isinstance(v, dict) and "filename" in v]
        if len(parts) > 1 or "pipeline" in ((doc.get("model") or {}).get("decoder") or {}):
            raise ParityError(f"a composite model ({', '.join(parts) or 'a pipeline'})", model, hint)
    try:
        path = resolve_model_file(model)
    except ParityError as exc:
        raise ParityError(exc.what, exc.path, hint if "composite" in exc.what else exc.hint) from None
    hf_config = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(hf_config):
        raise ParityError("not a Hugging Face model folder (no config.json)", hf_dir, "pass the model's folder")
    with open(hf_config, encoding="utf-8") as fh:
        cfg = json.load(fh)
    if cfg.get("is_encoder_decoder"):
        raise ParityError("the Hugging Face model is an encoder-decoder (a composite model)", hf_dir, hint)
    return path


def default_draw(specs, hf_dir: str, dims: dict, int_ranges: dict, sequence_length: int) -> tuple[dict, dict]:
    """Sizes for every named dim and value ranges that a Hugging Face model accepts.

    Dims named like a batch get 1, every other named dim ``sequence_length``; ``input_ids`` draws below the
    config's ``vocab_size``, ``attention_mask`` is all ones, ``token_type_ids`` below ``type_vocab_size``. Values
    given by the user win.
    """
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as fh:
        cfg = json.load(fh)
    dims, ranges = dict(dims), {}
    for spec in specs:
        for d in spec.shape:
            if isinstance(d, str) and d not in dims:
                dims[d] = 1 if "batch" in d.lower() else sequence_length
        if spec.dtype.kind in "iu":
            if spec.name == "input_ids" and cfg.get("vocab_size"):
                ranges[spec.name] = (0, int(cfg["vocab_size"]))
            elif spec.name == "attention_mask":
                ranges[spec.name] = (1, 2)
            elif spec.name == "token_type_ids":
                ranges[spec.name] = (0, int(cfg.get("type_vocab_size") or 1))
    ranges.update(int_ranges)
    return dims, ranges


def eval_compare(model: str, hf_dir: str, *, samples: int = 100, precision: str = "fp32", dims: dict | None = None,
                 int_ranges: dict | None = None, float_ranges: dict | None = None, sequence_length: int = 32,
                 seed: int = 0, ep: str = "cpu", work_dir: str | None = None,
                 show_progress: bool | None = False) -> EvalCompareResult:
    """Compare an ONNX model's outputs with its Hugging Face model's (CPU, float32) on random inputs.

    Args:
        model: the .onnx file (or a folder holding exactly one).
        hf_dir: the Hugging Face model folder.
        samples: random input samples. precision: the ONNX model's precision (recorded in the result).
        dims, int_ranges, float_ranges: input drawing (see default_draw and capture.random_inputs).
        sequence_length: size of named non-batch dims not given in ``dims``.
        seed: sample i is drawn from (seed, i). ep: ONNX Runtime execution provider of the ONNX model.
        work_dir: keep the input set and both dumps there (default: a temporary folder, removed).

    Returns:
        An EvalCompareResult (20 keys per output in ``outputs``).

    Raises:
        ParityError: a composite model, a bad model or folder, no output name in common.
    """
    from analyze.compare import compare
    from capture.random_inputs import RandomInputOptions, read_input_specs, write_random_inputs
    if precision not in PRECISIONS:
        raise ParityError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    path = refuse_composite(model, hf_dir)
    specs = read_input_specs(path)
    dims, ranges = default_draw(specs, hf_dir, dims or {}, int_ranges or {}, sequence_length)
    used_dims = {d for s in specs for d in s.shape if isinstance(d, str)}
    dims = {k: v for k, v in dims.items() if k in used_dims}
    work = work_dir or tempfile.mkdtemp(prefix="parity-eval-")
    os.makedirs(work, exist_ok=True)
    try:
        inputs = os.path.join(work, "inputs.h5")
        write_random_inputs(path, inputs, RandomInputOptions(dims=dims, int_ranges=ranges,
                                                             float_ranges=dict(float_ranges or {}), seed=seed,
                                                             samples=samples))
        ref, cand = os.path.join(work, "hf-cpu-fp32.h5"), os.path.join(work, f"onnx-{precision}.h5")
        _capture_hf_outputs(hf_dir, inputs, ref, show_progress)
        from .runs import capture_onnx_outputs
        capture_onnx_outputs(path, inputs, cand, f"onnx-{precision}", ep=ep, show_progress=show_progress)
        onnx_names, hf_names = _output_names(cand), _output_names(ref)
        common = sorted(set(onnx_names) & set(hf_names))
        only_onnx = sorted(set(onnx_names) - set(hf_names))
        only_hf = sorted(set(hf_names) - set(onnx_names))
        warnings = []
        if only_onnx or only_hf:
            warnings.append(f"outputs compared by name on their intersection ({', '.join(common) or 'none'}); "
                            f"only in the ONNX model: {', '.join(only_onnx) or 'none'}; only in the Hugging Face "
                            f"model: {', '.join(only_hf) or 'none'}")
            log.warning(warnings[-1])
        if not common:
            raise ParityError(f"the ONNX model's outputs ({', '.join(onnx_names)}) and the Hugging Face model's "
                              f"({', '.join(hf_names)}) share no name", path,
                              "export the model with the Hugging Face output names (e.g. logits, "
                              "last_hidden_state)")
        sites = "^:out\\.(" + "|".join(re.escape(n) for n in common) + ")$"
        report = compare(ref, cand, inputs=inputs, sites=sites, metrics=list(EVAL_METRICS.values()),
                         show_progress=show_progress)
        outputs = {}
        for site in report.sites:
            name = site.site.split(":out.", 1)[1]
            keys = {}
            for short, metric in EVAL_METRICS.items():
                agg = site.aggregates.get(metric) or {}
                for stat in EVAL_STATISTICS:
                    keys[f"{short}_{stat}"] = agg.get(stat)
            outputs[name] = keys
        warnings += [w for w in report.warnings if "input set" not in w and "different models" not in w]
        return EvalCompareResult(outputs, samples, precision, os.path.abspath(path), os.path.abspath(hf_dir),
                                 only_onnx, only_hf, warnings, dims, ranges, seed)
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _capture_hf_outputs(hf_dir: str, inputs: str, output: str, show_progress) -> None:
    from capture.base import CaptureOptions
    from capture.policy import RecordPolicy
    from capture.torch_backend import capture_torch_model
    from capture.torch_hooks import ModuleSelection
    options = CaptureOptions(label="hf-cpu-fp32", policy=RecordPolicy.from_strings(list(OUTPUTS_ONLY_RULES), "skip"))
    capture_torch_model(hf_dir, inputs, output, options, device="cpu", dtype="float32",
                        selection=ModuleSelection(max_depth=0), show_progress=show_progress)


def _output_names(dump: str) -> list[str]:
    """The root module's output names in a dump (``:out.<name>`` sites, first call), in record order."""
    names = []
    with open_dump(dump) as d:
        for info in d.records():
            site = info.key.site
            if site.startswith(":out.") and info.key.call == 0 and site[5:] not in names:
                names.append(site[5:])
    return names


def result_lines(result: EvalCompareResult) -> list[str]:
    """Terminal lines: one per output with each metric's mean (and the cosine's minimum)."""
    def f(v):
        return "n/a" if v is None else f"{v:.4g}"
    lines = [f"{result.samples} random samples, reference Hugging Face cpu float32, candidate ONNX "
             f"({result.precision})"]
    for name, k in result.outputs.items():
        lines.append(f"{name}: sqnr {f(k['sqnr_mean'])} dB, psnr {f(k['psnr_mean'])} dB, cosine "
                     f"{f(k['cosine_mean'])} (min {f(k['cosine_min'])}), mse {f(k['mse_mean'])}, max_abs_diff "
                     f"{f(k['max_abs_diff_max'])}")
    return lines
