"""The capture agent: records per-layer tensors of a model into a dump (PyTorch hooks, ONNX, ORT GenAI).

Import-light on purpose: ``import capture`` loads no ML framework. The torch entry points are attributes resolved
on first use: ``capture.torch_capture`` (hooks for your own loops) and ``capture.TorchBackend``.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "torch_capture": "capture.torch_hooks",
    "TorchCapture": "capture.torch_hooks",
    "ModuleSelection": "capture.torch_hooks",
    "TorchBackend": "capture.torch_backend",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'capture' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
