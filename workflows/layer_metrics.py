"""Layer metrics (tools/generate_layers_metrics.py): a model captured on a reference device/dtype and a candidate
device/dtype for every combination of model, batch size, sequence length and max new tokens, with per-layer
``abs_diff`` and ``cos_sim`` CSV files (the aiu-fms-testing-utils layout) next to our dumps and report JSON.

Per combination, in OUTPUT_PATH, with ``<prefix>`` = ``<model id>_max-new-tokens-<M>_batch-size-<B>_seq-length-<S>_
dtype-<candidate dtype>``:

    <prefix>.reference.h5, <prefix>.candidate.h5   the two dumps (every module, full tensors)
    <prefix>.report.json                           ``parity compare`` of the two (``parity thresholds build`` input)
    <prefix>--<layer>.abs_diff.csv                 |a - b| of every element of the layer's output (or input), all
                                                   records
    <prefix>--<layer>.cos_sim.csv                  the cosine of every row (last dimension), all records

A CSV starts with three header lines (``# site: <site>``, ``# reference ... candidate ...``, the metric name) and
then holds one value per line; the ``# site`` line maps the readable layer name back to the record site.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np

from protocol import InputSample, InputSet, ParityError, open_dump, split_site, write_input_set

log = logging.getLogger(__name__)
MODES = ("generate", "model-forward")
LAYER_METRICS = ("abs_diff", "cos_sim")


def model_file_id(model: str) -> str:
    """The model's part of the file names: its path or hub id with ``/`` written ``--`` (as the users' tools do)."""
    return model.strip("/").replace("/", "--")


def file_prefix(model: str, max_new_tokens: int, batch_size: int, seq_length: int, dtype: str) -> str:
    """``<model id>_max-new-tokens-<M>_batch-size-<B>_seq-length-<S>_dtype-<dtype>``."""
    return (f"{model_file_id(model)}_max-new-tokens-{max_new_tokens}_batch-size-{batch_size}_seq-length-"
            f"{seq_length}_dtype-{dtype}")


def layer_name(site: str, call: int = 0) -> str:
    """A readable, file-name-safe layer name for a record site: ``model.layers.0.mlp:out`` -> ``model.layers.0.mlp``,
    ``model.layers.0:out.0`` -> ``model.layers.0.0``, the root's ``:out.logits`` -> ``logits``,
    ``model.norm:in.args.0`` -> ``model.norm.input.args.0``."""
    module, direction, arg = split_site(site)
    if not direction:
        name = site
    else:
        name = module if arg == "" else (f"{module}.{arg}" if module else arg)
        if direction == "in":
            name = f"{module or 'root'}.input" + (f".{arg}" if arg else "")
    name = name or "root"
    if call:
        name += f".call{call}"
    return re.sub(r"[^A-Za-z0-9_.\-\[\]]", "_", name)


def parse_list(value, kind=str) -> list:
    """A list from a single value, a comma-separated string, or a list of such (the env-var convention)."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        for part in str(item).split(","):
            if part.strip():
                out.append(kind(part.strip()))
    return out


@dataclass
class LayerMetricsOptions:
    """Every combination of models x batch sizes x sequence lengths x max new tokens is captured twice.

    Attributes:
        models, batch_sizes, seq_lengths, max_new_tokens: the combinations.
        output_path: folder of the CSVs, dumps and reports (created).
        mode: ``model-forward`` (one forward) or ``generate`` (greedy, ``max_new_tokens`` steps, KV cache).
        reference_device, reference_dtype, candidate_device, candidate_dtype: the two captures.
        text_file: prompts' text (default: Wikitext-2 test through ``datasets``).
        echo: progress lines.
    """

    models: list
    batch_sizes: list = field(default_factory=lambda: [1])
    seq_lengths: list = field(default_factory=lambda: [64])
    max_new_tokens: list = field(default_factory=lambda: [128])
    output_path: str = "/tmp/output"
    mode: str = "model-forward"
    reference_device: str = "cpu"
    reference_dtype: str = "float32"
    candidate_device: str = "cpu"
    candidate_dtype: str = "float16"
    text_file: str | None = None
    echo: object = field(default=lambda line: None, repr=False)


def prompt_inputs(tokenizer: str, batch_size: int, seq_length: int, text_file: str | None) -> InputSet:
    """One sample of ``[batch_size, seq_length]`` token ids: consecutive disjoint chunks of the tokenized text."""
    from capture.text_inputs import build_text_input_set
    chunks = build_text_input_set(tokenizer, text_file=text_file, chunk_tokens=seq_length, max_samples=batch_size)
    if len(chunks.samples) < batch_size or chunks.samples[0].arrays["input_ids"].shape[-1] != seq_length:
        raise ParityError(f"the text gives {len(chunks.samples)} chunks of {seq_length} tokens, fewer than the batch "
                          f"size {batch_size}", text_file, "pass a longer text or smaller sizes")
    ids = np.concatenate([s.arrays["input_ids"] for s in chunks.samples], axis=0)
    provenance = {**chunks.provenance, "layout": "batch", "batch_size": batch_size, "seq_length": seq_length}
    return InputSet([InputSample({"input_ids": ids, "attention_mask": np.ones_like(ids)})], provenance)


def generate_layers_metrics(opts: LayerMetricsOptions) -> list[dict]:
    """Capture, compare and write the per-layer CSVs for every combination.

    Returns:
        One dict per combination: ``prefix``, ``reference``/``candidate`` dump paths, ``report`` path, ``csv``
        (list of files), ``layers`` (count), ``first_divergence``.

    Raises:
        ParityError: a bad model, device, dtype or text; an existing dump under a combination's name.
    """
    from analyze.compare import compare
    from .runs import capture_hf
    if opts.mode not in MODES:
        raise ParityError(f"unknown mode {opts.mode!r}", hint=f"use one of {', '.join(MODES)}")
    os.makedirs(opts.output_path, exist_ok=True)
    results = []
    combos = list(itertools.product(opts.models, opts.batch_sizes, opts.seq_lengths, opts.max_new_tokens))
    for n, (model, batch, seq, new_tokens) in enumerate(combos, 1):
        prefix = file_prefix(model, new_tokens, batch, seq, opts.candidate_dtype)
        base = os.path.join(opts.output_path, prefix)
        opts.echo(f"[{n}/{len(combos)}] {model}: batch {batch}, seq {seq}, max new tokens {new_tokens}, "
                  f"{opts.mode}: {opts.reference_device} {opts.reference_dtype} vs {opts.candidate_device} "
                  f"{opts.candidate_dtype}")
        inputs_path = base + ".inputs.h5"
        if not os.path.exists(inputs_path):
            s = prompt_inputs(model, batch, seq, opts.text_file)
            write_input_set(inputs_path, s.samples, s.provenance)
        mode = "forward" if opts.mode == "model-forward" else "generate"
        steps = new_tokens if mode == "generate" else 0
        ref, cand = base + ".reference.h5", base + ".candidate.h5"
        for path, device, dtype, label in ((ref, opts.reference_device, opts.reference_dtype, "reference"),
                                           (cand, opts.candidate_device, opts.candidate_dtype, "candidate")):
            capture_hf(model, inputs_path, path, f"{label}-{device}-{dtype}", device=device, dtype=dtype,
                       logits_only=False, mode=mode, max_new_tokens=steps)
        report = compare(ref, cand, inputs=inputs_path)
        report_path = base + ".report.json"
        report.write_json(report_path, tokens=True)
        header = f"# reference {opts.reference_device} {opts.reference_dtype}, candidate {opts.candidate_device} " \
                 f"{opts.candidate_dtype}, {opts.mode}"
        files = write_layer_csvs(ref, cand, base, header)
        results.append({"prefix": prefix, "reference": ref, "candidate": cand, "report": report_path, "csv": files,
                        "layers": len(files) // 2, "first_divergence": report.first_divergence})
        opts.echo(f"      {len(files) // 2} layers, report {report_path}")
    return results


def layer_values(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The users' two per-layer series, in float64: ``|a - b|`` per element, and the cosine of each row (last
    dimension; docs/METRICS.md section 1.3: two zero rows 1.0, one zero row 0.0)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    abs_diff = np.abs(a64 - b64).reshape(-1)
    last = a64.shape[-1] if a64.ndim else 1
    ra, rb = a64.reshape(-1, last), b64.reshape(-1, last)
    na, nb = np.linalg.norm(ra, axis=1), np.linalg.norm(rb, axis=1)
    dot = np.einsum("ij,ij->i", ra, rb)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, dot / (na * nb)))
    return abs_diff, cos


def write_layer_csvs(ref_path: str, cand_path: str, base: str, header: str) -> list[str]:
    """Write ``<base>--<layer>.abs_diff.csv`` and ``.cos_sim.csv`` for every module input and output (the layer
    I/O; inputs are named ``<layer>.input...``) of floating type present in full in both dumps with equal shapes:
    the values of every record (sample, step) of the site, in record order."""
    series: dict = {}
    with open_dump(ref_path) as rd, open_dump(cand_path) as cd:
        for ri in rd.records():
            site = ri.key.site
            if split_site(site)[1] not in ("in", "out") or ri.key not in cd or ri.storage != "full" \
                    or not ri.has_data:
                continue
            ci = cd.record(ri.key)
            if ci.storage != "full" or tuple(ci.shape) != tuple(ri.shape) or not ri.numel \
                    or ri.dtype.startswith(("int", "uint", "bool")):
                continue
            abs_diff, cos = layer_values(rd.read(ri), cd.read(ci))
            name = site if ri.key.call == 0 else f"{site}#{ri.key.call}"
            entry = series.setdefault(name, (layer_name(site, ri.key.call), [], []))
            entry[1].append(abs_diff)
            entry[2].append(cos)
    files = []
    for site, (name, diffs, coss) in series.items():
        for metric, values in (("abs_diff", diffs), ("cos_sim", coss)):
            path = f"{base}--{name}.{metric}.csv"
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(f"# site: {site}\n{header}\n{metric}\n")
                np.savetxt(fh, np.concatenate(values), fmt="%.9g")
            files.append(path)
    return files
