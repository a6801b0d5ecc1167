"""The workflows users already run (KL across execution providers, layer metrics and thresholds, decoder parity
tests, eval compare, perplexity on identical inputs), composed from capture/ and analyze/.

This package is the one library place where capture/ and analyze/ meet: it only orchestrates (run captures, call
the analysis, shape the outputs the users' tools produced); numerics stay in analyze/ and capture in capture/.
Nothing in capture/, analyze/ or protocol/ imports it: it is imported lazily by the root CLI's command tables
(workflows/cli/main.py, the root CLI, which lives here), by the tools/ scripts and by pytest (the ``parity`` pytest11 plugin).

Import-light on purpose: ``import workflows`` (and the pytest plugin's load) imports no ML framework; torch, onnx,
onnxruntime and onnxruntime_genai are imported inside the functions that need them.
"""
