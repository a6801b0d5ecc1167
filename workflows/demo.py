"""``parity demo`` / ``make demo``: the main job end to end on a built-in default, offline, in about a minute.

Builds a small Llama from a config with fixed seeds, an input set from the bundled text (capture/data), captures a
CPU float32 reference and three candidates (CPU bfloat16; the model with one planted faulty layer, in float32 and
in bfloat16), compares each with the reference, replaying every module on the reference model (where is error
introduced, beyond the candidate's precision?), and writes JSON and HTML reports.

It lives in workflows/, the composition layer: it drives capture/ (imported inside ``run_demo``, so that importing
this module loads no ML framework) and then analyzes what it captured.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field

import numpy as np

from protocol.errors import ParityError

from analyze.compare import compare
from analyze.render.html import write_html
from analyze.render.text import summary_lines

DEFAULT_OUT = "demo-out"
DEMO_TEXT = "data/apache-2.0.txt"  # inside the capture package
FAULT_LAYER = 2
FAULT_TENSOR = f"model.layers.{FAULT_LAYER}.mlp.down_proj.weight"
FAULT_SCALE = 0.05  # noise of 5% of the weight's own std: a subtle fault, far above float32 rounding


@dataclass
class DemoComparison:
    """One candidate of the demo: its dump, its reports, its verdict and first divergent site."""

    name: str
    dump: str
    json: str
    html: str
    verdict: str
    first_divergence: dict | None
    top_gain: dict | None
    introduced: dict | None = None  # the replay's first module that introduces error
    summary: list = field(default_factory=list)


@dataclass
class DemoResult:
    """Where the demo wrote everything."""

    folder: str
    model: str
    inputs: str
    reference: str
    comparisons: list[DemoComparison] = field(default_factory=list)


def fresh_run_folder(out: str | os.PathLike) -> str:
    """A new, empty ``run-<UTC time>[-n]`` folder inside ``out``: earlier demo runs (and their dumps) are never
    overwritten.

    Raises:
        ParityError: ``out`` exists and is not a folder.
    """
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ParityError("exists and is not a folder", out, "pass another --out folder")
    os.makedirs(out, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("run-%Y%m%d-%H%M%S")
    for n in range(1000):
        path = os.path.join(out, stamp if n == 0 else f"{stamp}-{n}")
        try:
            os.mkdir(path)  # atomic: two demos started in the same second get different folders
            return path
        except FileExistsError:
            continue
    raise ParityError("could not create a fresh run folder", out, "clean up old runs or pass another --out")


def plant_fault(model_folder: str, out_folder: str, tensor: str, *, scale: float = FAULT_SCALE,
                seed: int = 1) -> str:
    """Copy a saved Hugging Face model folder, adding Gaussian noise (``scale`` x the tensor's std) to one weight.

    Works on the safetensors file directly (numpy only), so the faulty model is an ordinary model folder with its
    own weights hash. Used by the demo and by the localization tests.

    Returns:
        ``out_folder``.

    Raises:
        KeyError: the tensor is not in the model.
    """
    import shutil

    from safetensors.numpy import load_file, save_file
    shutil.copytree(model_folder, out_folder)
    path = os.path.join(out_folder, "model.safetensors")
    weights = load_file(path)
    if tensor not in weights:
        raise KeyError(f"{tensor} is not a tensor of {model_folder} (has {', '.join(sorted(weights)[:5])}, ...)")
    w = weights[tensor]
    noise = np.random.default_rng(seed).standard_normal(w.shape) * float(w.astype(np.float64).std()) * scale
    weights[tensor] = (w.astype(np.float64) + noise).astype(w.dtype)
    save_file(weights, path, metadata={"format": "pt"})
    return out_folder


def run_demo(out: str | os.PathLike = DEFAULT_OUT, *, samples: int = 4, tokens: int = 128, layers: int = 4,
             hidden: int = 128, show_progress: bool | None = None, echo=print) -> DemoResult:
    """Run the demo into a fresh folder under ``out``.

    Args:
        out: parent folder (created); the run goes to a new ``run-<time>`` sub-folder.
        samples, tokens: the input set (disjoint chunks of the bundled text).
        layers, hidden: the Llama's size.
        show_progress: progress bars (default: when stderr is a terminal).
        echo: where progress lines go.

    Returns:
        A DemoResult naming every file written.
    """
    from importlib import resources

    from capture.base import CaptureOptions
    from capture.text_inputs import build_text_input_set
    from capture.tiny_models import build_tiny_llama
    from capture.torch_backend import TorchBackend
    from capture.torch_replay import TorchReplayer
    from protocol import read_input_set, write_input_set
    from common.console import progress

    folder = fresh_run_folder(out)
    echo(f"demo folder: {folder}")
    model = build_tiny_llama(os.path.join(folder, "model"), seed=0, num_layers=layers, hidden=hidden,
                             heads=4, kv_heads=2)
    faulty = plant_fault(model, os.path.join(folder, "model-faulty"), FAULT_TENSOR)
    echo(f"model: Llama, {layers} layers, hidden {hidden} (seed 0); faulty copy: noise on {FAULT_TENSOR}")
    text = resources.files("capture").joinpath(DEMO_TEXT)
    with resources.as_file(text) as text_path:
        built = build_text_input_set(model, text_file=str(text_path), chunk_tokens=tokens, max_samples=samples)
    inputs_path = os.path.join(folder, "inputs.h5")
    write_input_set(inputs_path, built.samples, built.provenance)
    inputs = read_input_set(inputs_path)
    echo(f"input set: {len(inputs.samples)} samples x {tokens} tokens of {DEMO_TEXT}")
    runs = [("cpu-fp32", model, "float32"), ("cpu-bf16", model, "bfloat16"), ("cpu-fp32-faulty", faulty, "float32"),
            ("cpu-bf16-faulty", faulty, "bfloat16")]
    dumps = {}
    for label, path, dtype in runs:
        dumps[label] = os.path.join(folder, f"{label}.h5")
        backend = TorchBackend.from_pretrained(path, device="cpu", dtype=dtype)
        with progress(len(inputs.samples), f"capture {label}", enabled=show_progress) as bar:
            summary = backend.capture(inputs, dumps[label], CaptureOptions(label=label, run_id="demo"), progress=bar)
        echo(summary.line())
    result = DemoResult(folder, model, inputs_path, dumps["cpu-fp32"])
    replayer = TorchReplayer.open(model, dtype="float32")  # the reference model, loaded once for every candidate
    try:
        for label in ("cpu-bf16", "cpu-fp32-faulty", "cpu-bf16-faulty"):
            report = compare(dumps["cpu-fp32"], dumps[label], inputs=inputs_path, show_progress=show_progress,
                             replay=replayer)
            base = os.path.join(folder, f"cpu-fp32__vs__{label}")
            report.write_json(base + ".json")
            write_html(report, base + ".html")
            ranking = (report.localization or {}).get("gain_ranking") or []
            result.comparisons.append(DemoComparison(label, dumps[label], base + ".json", base + ".html",
                                                     report.verdict, report.first_divergence,
                                                     ranking[0] if ranking else None,
                                                     report.local["first_introduced"], summary_lines(report)))
    finally:
        replayer.close()
    return result
