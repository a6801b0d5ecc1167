"""What replay costs (issue 17): ``compare --replay`` against the capture of the same candidate, in the same rounds.

A random Llama (hidden ``--hidden``, ``--layers`` layers, ``--tokens`` tokens, ``--samples`` samples) saved to a
folder; per round: the bfloat16 candidate's capture (PyTorch hooks into a dump, the baseline), its comparison with the
float32 reference without replay, and the replay alone (``replay_local_errors`` on the open candidate: every module
call run three times, in float32, float64 and bfloat16, the model loaded once outside the rounds). Best of
``--repeat`` interleaved rounds; figures are ratios to the capture time.

Run: ``python -m bench replay_cost`` or ``python -m bench.replay_cost --hidden 512 --layers 8 --tokens 512``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from bench import record

BENCH = "replay_cost"


def run(hidden: int = 256, layers: int = 4, tokens: int = 256, samples: int = 2, repeat: int = 3) -> dict:
    """Measure and record the figures; returns them."""
    import torch

    from analyze.compare import compare
    from analyze.local_error import replay_local_errors
    from analyze.pairing import open_side
    from capture.base import CaptureOptions
    from capture.tiny_models import build_tiny_llama
    from capture.torch_backend import TorchBackend
    from capture.torch_replay import TorchReplayer
    from protocol import InputSample, read_input_set, write_input_set

    tmp = tempfile.mkdtemp(prefix="bench-replay-")
    try:
        model = build_tiny_llama(os.path.join(tmp, "model"), num_layers=layers, hidden=hidden, heads=8, kv_heads=4,
                                 tokenizer=False, max_positions=max(tokens, 128))
        rng = np.random.default_rng(0)
        write_input_set(os.path.join(tmp, "in.h5"),
                        [InputSample({"input_ids": rng.integers(4, 250, (1, tokens))}, {}) for _ in range(samples)])
        inputs = read_input_set(os.path.join(tmp, "in.h5"))
        ref = os.path.join(tmp, "ref.h5")
        TorchBackend.from_pretrained(model).capture(inputs, ref, CaptureOptions(label="ref"))
        cand_backend = TorchBackend.from_pretrained(model, dtype="bfloat16")
        replayer = TorchReplayer.open(model)
        times = {"capture": [], "compare": [], "replay": []}
        calls = 0
        for i in range(repeat):
            cand = os.path.join(tmp, f"cand{i}.h5")
            t0 = time.perf_counter()
            cand_backend.capture(inputs, cand, CaptureOptions(label="bf16"))
            times["capture"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            compare(ref, cand)
            times["compare"].append(time.perf_counter() - t0)
            side = open_side(cand)
            try:
                t0 = time.perf_counter()
                local = replay_local_errors(side, replayer)
                times["replay"].append(time.perf_counter() - t0)
            finally:
                side.close()
            calls = local["replayed"]
            os.unlink(cand)
        best = {k: min(v) for k, v in times.items()}
        extra = {"hidden": hidden, "layers": layers, "tokens": tokens, "samples": samples, "module_calls": calls,
                 "torch_threads": torch.get_num_threads()}
        record(BENCH, "capture_bf16", best["capture"], "s", extra=extra)
        record(BENCH, "compare_no_replay", best["compare"], "s", baseline=best["capture"],
               ratio=best["compare"] / best["capture"], extra=extra)
        record(BENCH, "replay", best["replay"], "s", baseline=best["capture"], ratio=best["replay"] / best["capture"],
               extra=extra)
        return best
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``python -m bench`` (no arguments: environment defaults) and direct runs."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=int(os.environ.get("BENCH_REPLAY_HIDDEN", 256)))
    p.add_argument("--layers", type=int, default=int(os.environ.get("BENCH_REPLAY_LAYERS", 4)))
    p.add_argument("--tokens", type=int, default=int(os.environ.get("BENCH_REPLAY_TOKENS", 256)))
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args([] if argv is None else argv)
    run(a.hidden, a.layers, a.tokens, a.samples, a.repeat)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
