"""Running captures for the workflows: a Hugging Face model in this process, an ORT GenAI or ONNX model in this
process or in a subprocess of another interpreter (``python -m workflows.cli.main capture ...``).

Every capture writes a real dump through capture/'s backends; the workflows then read the dumps with analyze/.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass

from protocol import CaptureError

log = logging.getLogger(__name__)

#: Logits only: the root module's ``logits`` output in full, nothing else (the KL and perplexity workflows).
LOGITS_ONLY_RULES = (r"^:out\.logits$=full",)


@dataclass(frozen=True)
class ModelSpec:
    """One model to capture.

    Attributes:
        kind: ``hf`` (a transformers folder, captured with torch hooks), ``genai`` (an ORT GenAI folder) or
            ``onnx`` (a .onnx file, ONNX Runtime).
        path: the folder or file.
        label: the capture's label (also the dump's file name).
        device, dtype: for ``hf``: the torch device and dtype.
        ep: for ``genai`` (recorded only: the installed package decides) and ``onnx`` (the execution provider).
        python: for ``genai``/``onnx``: run the capture in a subprocess of this interpreter (None: this process).
    """

    kind: str
    path: str
    label: str
    device: str = "cpu"
    dtype: str = "float32"
    ep: str = "cpu"
    python: str | None = None


def logits_policy():
    """The record policy that keeps only the logits (``:out.logits``) in full."""
    from capture.policy import RecordPolicy
    return RecordPolicy.from_strings(list(LOGITS_ONLY_RULES), "skip")


def capture_hf(model_path: str, inputs_path: str, output: str, label: str, *, device: str = "cpu",
               dtype: str = "float32", logits_only: bool = True, mode: str = "forward", max_new_tokens: int = 0,
               reference: str | None = None, show_progress: bool | None = False):
    """Capture a transformers model over an input set with torch hooks.

    Args:
        model_path: a local Hugging Face folder (or hub id where a hub is reachable).
        inputs_path: the input set file; output: the dump to write (must not exist).
        label: the dump's label. device, dtype: where and how the model runs.
        logits_only: hook the root module only and keep just ``:out.logits`` (else every module, in full).
        mode, max_new_tokens, reference: see capture.base.CaptureOptions.
        show_progress: a progress bar on stderr.

    Returns:
        The CaptureSummary.

    Raises:
        ParityError: a bad model, input set, device, dtype or output.
    """
    from capture.base import CaptureOptions
    from capture.policy import RecordPolicy
    from capture.torch_backend import capture_torch_model
    from capture.torch_hooks import ModuleSelection
    policy = logits_policy() if logits_only else RecordPolicy()
    selection = ModuleSelection(max_depth=0) if logits_only else ModuleSelection()
    options = CaptureOptions(label=label, mode=mode, max_new_tokens=max_new_tokens, reference=reference,
                             policy=policy)
    return capture_torch_model(model_path, inputs_path, output, options, device=device, dtype=dtype,
                               selection=selection, show_progress=show_progress)


def capture_genai(model_dir: str, inputs_path: str, output: str, label: str, *, mode: str = "forward",
                  max_new_tokens: int = 0, reference: str | None = None, show_progress: bool | None = False):
    """Capture an ORT GenAI model folder's logits in this process (see capture.genai_backend)."""
    from capture.base import CaptureOptions
    from capture.genai_backend import GenaiBackend
    from capture.onnx_backend import run_capture
    options = CaptureOptions(label=label, mode=mode, max_new_tokens=max_new_tokens, reference=reference,
                             policy=logits_policy())
    return run_capture(GenaiBackend(model_dir), inputs_path, output, options, show_progress=show_progress)


def capture_onnx_outputs(model_path: str, inputs_path: str, output: str, label: str, *, ep: str = "cpu",
                         show_progress: bool | None = False):
    """Capture an ONNX model's graph outputs only (no injection) with ONNX Runtime in this process."""
    from capture.base import CaptureOptions
    from capture.onnx_backend import OnnxBackend, run_capture
    return run_capture(OnnxBackend(model_path, ep=ep, intermediates=False), inputs_path, output,
                       CaptureOptions(label=label), show_progress=show_progress)


def capture_command(spec: ModelSpec, inputs_path: str, output: str, *, mode: str = "forward",
                    max_new_tokens: int = 0, reference: str | None = None) -> list[str]:
    """The ``python -m workflows.cli.main capture genai|onnx ...`` command line that captures ``spec`` in a subprocess
    of ``spec.python`` (the interpreter of the environment that holds that execution provider's packages)."""
    if spec.kind not in ("genai", "onnx"):
        raise ValueError(f"no subprocess capture for kind {spec.kind!r}")
    python = spec.python or sys.executable
    cmd = [python, "-m", "workflows.cli.main", "capture", spec.kind, spec.path, "--inputs", inputs_path,
           "--label", spec.label, "-o", output, "--mode", mode]
    if max_new_tokens:
        cmd += ["--max-new-tokens", str(max_new_tokens)]
    if reference:
        cmd += ["--reference", reference]
    if spec.kind == "onnx":
        cmd += ["--ep", spec.ep, "--outputs-only"]
    return cmd


def run_capture_subprocess(spec: ModelSpec, inputs_path: str, output: str, *, debug: bool = False,
                           mode: str = "forward", max_new_tokens: int = 0, reference: str | None = None,
                           timeout: float | None = None) -> None:
    """Capture ``spec`` in its own process (so each execution provider's packages stay in their own interpreter
    and a crash of one runtime cannot take the others down). Nothing is installed: the interpreter must already
    have tensorparity and the runtime.

    Args:
        debug: stream the subprocess's output (with ``-vv`` logging); otherwise it is kept and shown on failure.
        timeout: seconds before the capture is stopped (None: no limit).

    Raises:
        CaptureError: the interpreter is missing, lacks tensorparity, or the capture failed (its last lines quoted).
    """
    cmd = capture_command(spec, inputs_path, output, mode=mode, max_new_tokens=max_new_tokens, reference=reference)
    python = cmd[0]
    if os.sep in python and not os.path.exists(python):
        raise CaptureError("Python interpreter not found", python, "pass --python with an existing interpreter")
    if debug:
        cmd.insert(3, "-vv")  # right after "-m workflows.cli.main": the root group's verbosity
    log.debug("running %s", " ".join(cmd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(cmd, stdout=None if debug else subprocess.PIPE,
                              stderr=None if debug else subprocess.STDOUT, text=True, env=env, timeout=timeout)
    except FileNotFoundError:
        raise CaptureError("Python interpreter not found", python,
                           "pass --python with an existing interpreter") from None
    except subprocess.TimeoutExpired:
        raise CaptureError(f"the {spec.label} capture did not finish within {timeout:.0f} s", spec.path) from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout or "").strip().splitlines()[-5:]) if not debug else "(see the output above)"
        hint = ("install tensorparity and the runtime into that interpreter's environment (this tool never "
                "installs anything during a run)" if "No module named" in (done.stdout or "")
                else "run with --debug for the full output")
        raise CaptureError(f"the {spec.label} capture ({spec.kind}, {python}) failed with exit code "
                           f"{done.returncode}: {tail}", spec.path, hint)
