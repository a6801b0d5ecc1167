"""P4 (docs/PERFORMANCE.md): every logit metric of docs/METRICS.md sections 2-3 for 1024 tokens x 128,256 vocabulary.

Ours: ``analyze.logit_metrics.token_metrics`` (every per-token metric in float64) plus the llama.cpp statistic
block. Baseline, same run, same float32 logits: the Model-Optimizer KL toolkit's computation (torch float32
``log_softmax`` of both sides, one KL number). torch is imported here only, for the baseline. Best of ``--repeat``.

Run: ``python -m bench logit_metrics`` or ``python -m bench.logit_metrics --tokens 256`` for a quicker look.
Environment overrides: BENCH_LOGIT_TOKENS, BENCH_LOGIT_VOCAB, BENCH_LOGIT_REPEAT.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from bench import record

BENCH = "logit_metrics"


def torch_kl(a, b) -> float:
    """The toolkit's computation: float32 log_softmax on both sides, KL summed over the vocabulary, mean."""
    import torch
    lp = torch.log_softmax(torch.from_numpy(a), dim=-1)
    lq = torch.log_softmax(torch.from_numpy(b), dim=-1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def ours(a, b, labels) -> dict:
    from analyze.logit_metrics import token_metrics
    from analyze.summary import llama_kl_statistics
    m = token_metrics(a, b, labels)
    return llama_kl_statistics(m["nll_ref"], m["nll_cand"], m["kl"], m["delta_p"], m["top1_agree"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=int(os.environ.get("BENCH_LOGIT_TOKENS", 1024)))
    parser.add_argument("--vocab", type=int, default=int(os.environ.get("BENCH_LOGIT_VOCAB", 128256)))
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_LOGIT_REPEAT", 3)))
    args = parser.parse_args(argv or [])
    rng = np.random.default_rng(0)
    a = 3 * rng.standard_normal((args.tokens, args.vocab), dtype=np.float32)
    b = a + np.float32(0.05) * rng.standard_normal(a.shape, dtype=np.float32)
    labels = rng.integers(0, args.vocab, args.tokens)
    t_torch = t_ours = float("inf")
    for _ in range(args.repeat):  # interleaved, best of each: the machine is shared
        t0 = time.perf_counter()
        kl_torch = torch_kl(a, b)
        t_torch = min(t_torch, time.perf_counter() - t0)
        t0 = time.perf_counter()
        stats = ours(a, b, labels)
        t_ours = min(t_ours, time.perf_counter() - t0)
    record(BENCH, "p4_all_logit_metrics_f64", t_ours, "s", baseline=t_torch, ratio=t_ours / t_torch, target="<=2",
           extra={"tokens": args.tokens, "vocab": args.vocab, "kl_ours": stats["kl"]["mean"], "kl_torch_f32": kl_torch})


if __name__ == "__main__":
    main(sys.argv[1:])
