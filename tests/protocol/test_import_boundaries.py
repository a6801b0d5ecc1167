"""docs/ARCHITECTURE.md section 2: the packages' import boundaries, checked in a fresh interpreter."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = {
    "protocol": ["torch", "onnx", "onnxruntime", "onnxruntime_genai", "click", "watchdog", "transformers",
                 "capture", "analyze", "numba"],
    "analyze": ["torch", "onnx", "onnxruntime", "onnxruntime_genai", "transformers", "capture", "numba", "dask",
                "distributed"],
    # dask is loaded by analyze/distributed.py only, when a command is given --scheduler
    "analyze.watcher": ["dask", "distributed", "analyze.distributed"],
    "analyze.cli.compare_cmd": ["dask", "distributed", "analyze.distributed"],
    "capture": ["analyze", "torch", "onnx", "onnxruntime", "onnxruntime_genai", "transformers"],
    "workflows": ["torch", "onnx", "onnxruntime", "onnxruntime_genai", "transformers"],
    # the root CLI composes every package's command table, and loads no command module until it runs
    "workflows.cli.main": ["torch", "onnx", "onnxruntime", "onnxruntime_genai", "transformers", "numba",
                           "capture.torch_backend", "analyze.cli.compare_cmd", "capture.cli.torch_cmd"],
    "common": ["torch", "onnx", "onnxruntime", "onnxruntime_genai", "transformers", "numba", "click", "watchdog",
               "protocol", "capture", "analyze", "workflows"],
}


def _loaded_after_import(module: str) -> set[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_import_does_not_pull_forbidden_modules(module):
    loaded = _loaded_after_import(module)
    pulled = [m for m in FORBIDDEN[module] if m in loaded]
    assert pulled == [], f"'import {module}' imports {pulled}"


@pytest.mark.parametrize("argv", [["--help"], ["inspect", "--help"], ["validate", "--help"], ["compare", "--help"]])
def test_cli_help_imports_no_ml_framework(argv):
    code = ("import sys, json\nfrom workflows.cli.main import cli\n"
            f"try:\n    cli({argv!r}, prog_name='parity')\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    assert not loaded & {"torch", "onnx", "onnxruntime", "onnxruntime_genai", "transformers", "numba"}
