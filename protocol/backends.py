"""The capture backends, in one registry from which the job validation, the manifest's capture methods, the agent
and the ``parity capture`` commands all derive (docs/ARCHITECTURE.md section 8: a new backend is one entry here,
its module in capture/ and its command in capture/cli/).

The registry is plain data (protocol/ imports no backend): each backend is opened by its factory, named as
``"module:Class.method"``, with one signature for all::

    open(model, *, device=None, dtype=None, provider=None, attn_implementation=None, device_map=None,
         max_memory=None, offload_folder=None) -> CaptureBackend

and a backend refuses an option it cannot honour (a CaptureError), never drops it.
"""
from __future__ import annotations

from dataclasses import dataclass

#: The options of the factory signature; each backend honours some of them. ``device_map``, ``max_memory`` and
#: ``offload_folder`` spread a model over devices, host memory and disk while loading (accelerate's dispatch).
OPTIONS = ("device", "dtype", "provider", "attn_implementation", "device_map", "max_memory", "offload_folder")
#: The options that place a model; one of them given replaces a host's default ``device``.
PLACEMENT_OPTIONS = ("device_map", "max_memory", "offload_folder")


@dataclass(frozen=True)
class BackendSpec:
    """One capture backend.

    Attributes:
        name: its name in jobs, targets and ``parity capture <name>``.
        method: the manifest's ``capture.method`` of its dumps.
        factory: ``"module:Class.method"`` of the factory (the signature above).
        command: ``"module:attr"`` of its ``parity capture`` command. help: that command's one-line help.
        honours: which of OPTIONS it honours (what each means is the backend's: for ONNX, ``device`` picks the
            execution provider when no ``provider`` is given).
        extra: the pip extra that installs what it needs.
        replayer: ``"module:Class.method"`` of the factory of its replayer (protocol/replay.py), which calls a
            model's modules again on a candidate's recorded inputs; None when the backend has none.
    """

    name: str
    method: str
    factory: str
    command: str
    help: str
    honours: frozenset
    extra: str
    replayer: str | None = None


BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("torch", "torch-hooks", "capture.torch_backend:TorchBackend.open", "capture.cli.torch_cmd:torch_cmd",
                "Capture every module of a PyTorch / transformers model.",
                frozenset({"device", "dtype", "attn_implementation", "device_map", "max_memory", "offload_folder"}),
                "torch",
                "capture.torch_replay:TorchReplayer.open"),
    BackendSpec("onnx", "onnx-output-injection", "capture.onnx_backend:OnnxBackend.open",
                "capture.cli.onnx_cmd:onnx_cmd", "Capture an ONNX model's intermediate values with ONNX Runtime.",
                frozenset({"device", "provider"}), "onnx"),
    BackendSpec("genai", "ort-genai", "capture.genai_backend:GenaiBackend.open", "capture.cli.genai_cmd:genai_cmd",
                "Capture an ORT GenAI model's logits (and intermediates).", frozenset(), "genai"),
)}
#: The backend names, in registry order.
BACKEND_NAMES = tuple(BACKENDS)
#: Every manifest capture method: one per backend, and ``external`` for dumps written by other tools.
CAPTURE_METHODS = tuple(spec.method for spec in BACKENDS.values()) + ("external",)


def resolve(dotted: str):
    """The object named ``"module:attr.attr"`` (a factory of the registry), imported on demand.

    Raises:
        ImportError, AttributeError: it is not installed here.
    """
    import importlib
    module_name, _, attr = dotted.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def unhonoured(name: str, options: dict) -> list[str]:
    """The options given (not None) that backend ``name`` does not honour, in OPTIONS order.

    Raises:
        KeyError: an unknown backend.
    """
    honours = BACKENDS[name].honours
    return [k for k in OPTIONS if options.get(k) is not None and k not in honours]


def describe_honoured(name: str) -> str:
    """``device, dtype`` / ``none of device, dtype, provider...``: for messages."""
    honours = [k for k in OPTIONS if k in BACKENDS[name].honours]
    return ", ".join(honours) if honours else "none of " + ", ".join(OPTIONS)


#: Why a backend cannot honour an option, for the error's hint.
_WHY = {
    "torch": "a PyTorch model runs on its device (device=...), not through an execution provider",
    "onnx": "an ONNX graph runs in the dtype it was exported in and has no attention choice: export it in the "
            "dtype to capture; ONNX Runtime places the whole graph on its execution provider (no device map)",
    "genai": "an ORT GenAI build fixes its dtype (builder -p fp32|fp16|int8|int4) and the installed "
             "onnxruntime-genai distribution its device (onnxruntime-genai-cuda, -directml...), for the whole model",
}


def check_options(name: str, **options) -> None:
    """Refuse the options (given, not None) that backend ``name`` cannot honour.

    Raises:
        CaptureError: an option the backend does not honour, named with its value and the reason.
    """
    from .errors import CaptureError
    bad = unhonoured(name, options)
    if bad:
        given = ", ".join(f"{k}={options[k]!r}" for k in bad)
        raise CaptureError(f"the {name} backend cannot honour {given} (it takes {describe_honoured(name)})",
                           hint=f"{_WHY[name]}; leave {' and '.join(bad)} out for this label")
