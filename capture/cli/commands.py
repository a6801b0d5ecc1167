"""capture/'s command table for the root ``parity`` CLI (workflows/cli/main.py composes every package's table).

Each entry is ``name -> ("module:attr", one-line help)``, or ``name -> ({sub-table}, help)`` for a group, so that
``parity --help`` lists every command without importing any of it.
"""
from __future__ import annotations

from protocol.backends import BACKENDS

#: ``parity capture <backend>``: one command per backend of the registry (protocol/backends.py).
CAPTURE_COMMANDS: dict = {name: (spec.command, spec.help) for name, spec in BACKENDS.items()}
#: ``parity inputs <kind>``: input sets that every backend consumes.
INPUTS_COMMANDS: dict = {
    "text": ("capture.cli.inputs_cmd:text_cmd", "Tokenize a corpus once into chunks or strided windows."),
    "tokens": ("capture.cli.inputs_cmd:tokens_cmd", "Make an input set from the arrays of an .npz file."),
    "random": ("capture.cli.random_inputs_cmd:random_inputs_cmd", "Random inputs from an ONNX model's input spec."),
}
COMMANDS: dict = {
    "capture": (CAPTURE_COMMANDS, "Capture per-layer tensors of a model into a dump."),
    "inputs": (INPUTS_COMMANDS, "Build input sets (token ids, random inputs) that every backend consumes."),
    # the shared-folder workflow, capture side
    "submit": ("capture.cli.submit_cmd:submit_cmd", "Write a capture job into a shared folder."),
    "agent": ("capture.cli.agent_cmd:agent_cmd", "Capture the shared folder's jobs of one label (daemon)."),
}
