"""Capture overhead of the torch hooks (docs/PERFORMANCE.md P1, P2; issue 3).

A random Llama big enough to matter on CPU (default hidden 512, 8 layers, sequence 512, vocabulary 4096) runs:

- bare: the forward without hooks (baseline of P1 and P2);
- stats: statistics-only capture of every module's inputs and outputs (P1: time / bare, target <= 1.3); also
  with ``share_unchanged`` (one tensor reaching several sites is summarised once; opt-in, see torch_hooks);
- full: full-tensor capture of every module to a dump (P2: (time - bare) / raw write of the same bytes, target
  <= 1.4), where the raw write is plain h5py writing the very arrays of that dump (chunked as the writer chunks
  them, fsync at close; bench.protocol_io.raw_write);
- the floors: hooks on every module that only compute each tensor's statistics (``P1_floor_stats_only_hooks``, no
  file), or only write each tensor with plain h5py (``P2_floor_plain_h5py_hooks``: no statistics, index or
  manifest); what any capture that hooks every module pays on this machine.

Then the same on a model as wide as Llama-3.2-1B (hidden 2048; intermediate 5632, 2 layers), figures tagged
``_h2048`` (``--wide 0`` or BENCH_CAPTURE_WIDE=0 skips it).

Capture times run from the forward's start to the dump renamed into place (what a user waits for). Each variant
runs ``--repeat`` times after a warm-up, in interleaved rounds; the best time counts (the machine is shared and
noisy).

Run: ``python -m bench capture_overhead`` or ``python -m bench.capture_overhead --layers 4 --seq 256 --repeat 2``.
Environment overrides for ``python -m bench``: BENCH_CAPTURE_LAYERS, BENCH_CAPTURE_HIDDEN, BENCH_CAPTURE_SEQ,
BENCH_CAPTURE_REPEAT, BENCH_CAPTURE_DIR.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import h5py
import numpy as np
import torch

from bench import record
from bench.protocol_io import _fsync, raw_write
from capture.policy import RecordPolicy
from capture.sink import RecordSink
from capture.torch_hooks import torch_capture
from protocol import DumpWriter, Manifest, compute_stats, open_dump
from protocol.dump_writer import chunk_shape

BENCH = "capture_overhead"


def build_model(layers: int, hidden: int, vocab: int) -> torch.nn.Module:
    """A random LlamaForCausalLM built from a config (no files)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                      num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                      num_key_value_heads=max(hidden // 128, 1), max_position_embeddings=4096)
    return LlamaForCausalLM(cfg).eval()


def make_feed(seq: int, vocab: int) -> dict:
    """The inputs of the bench model: seeded random ids, a full attention mask, no cache."""
    ids = torch.randint(4, vocab, (1, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}


def _bare(model, feed) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(**feed)
    return time.perf_counter() - t0


def _captured(model, feed, path: str, default: str, share: bool = False) -> tuple[float, int, int]:
    """One hooked forward into a new dump; returns (seconds, records, tensor bytes)."""
    t0 = time.perf_counter()
    with RecordSink(DumpWriter(path, Manifest(label=default)), max_queue_bytes=256 << 20) as sink, \
            torch.no_grad(), torch_capture(model, sink, RecordPolicy(default=default),
                                                     share_unchanged=share) as cap:
        cap.at(0)
        model(**feed)
    return time.perf_counter() - t0, sink.records, sink.written_bytes


def _tensors(obj):
    """Every tensor in a hook's args/kwargs/output (tuples, lists, dicts and ModelOutput, which is a dict)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _floor(model, feed, path: str | None) -> tuple[float, int]:
    """The hand-written floor: forward pre/post hooks on every module that do nothing but, with ``path``, write each
    input and output tensor with plain h5py (as the raw baseline chunks them; no statistics, no index, no manifest;
    fsync at close), or without ``path`` compute each tensor's statistics (protocol.compute_stats, no file).
    Returns (seconds, tensors)."""
    count = 0
    f = h5py.File(path, "w") if path else None

    def put(obj) -> None:
        nonlocal count
        for t in _tensors(obj):
            a = t.detach().numpy()
            if f is None:
                compute_stats(a)
            else:
                big = a.nbytes > (4 << 20)
                f.create_dataset(f"r{count:08d}", data=a, chunks=chunk_shape(a.shape, a.itemsize) if big else None)
            count += 1

    handles = []
    t0 = time.perf_counter()
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(lambda m, args, kwargs: put((args, kwargs)), with_kwargs=True))
            handles.append(m.register_forward_hook(lambda m, args, kwargs, out: put(out), with_kwargs=True))
        with torch.no_grad():
            model(**feed)
    finally:
        for h in handles:
            h.remove()
        if f is not None:
            f.close()
    if path:
        _fsync(path)
    return time.perf_counter() - t0, count


def run(layers: int = 8, hidden: int = 512, seq: int = 512, vocab: int = 4096, repeat: int = 3,
        folder: str | None = None, tag: str = "") -> list[dict]:
    """Measure and record the figures (their names end with ``tag``); returns the JSON documents written."""
    work = tempfile.mkdtemp(prefix="bench-capture-", dir=folder)
    counter = iter(range(1 << 30))

    def fresh(tag: str) -> str:
        path = os.path.join(work, f"{tag}{next(counter)}.h5")
        return path

    def cleanup() -> None:
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))

    try:
        model = build_model(layers, hidden, vocab)
        feed = make_feed(seq, vocab)
        _bare(model, feed)  # warm-up: allocator, kernels
        _captured(model, feed, fresh("warm"), "stats")
        kept = fresh("full")
        _captured(model, feed, kept, "full")  # warm-up, and the arrays of the raw baseline
        with open_dump(kept) as dump:  # the very arrays of the dump, as stored
            arrays = [np.ascontiguousarray(dump.read(r, raw=True)) for r in dump.records() if r.has_data]
        cleanup()
        raw_path = os.path.join(work, "raw.h5")

        def one_raw() -> float:
            if os.path.exists(raw_path):
                os.unlink(raw_path)
            return raw_write(raw_path, arrays, "none")
        # interleaved rounds (bare, stats, full, raw write): load changes on a shared machine, and the disk's
        # writeback of the previous files, hit every variant alike
        bares, stats_runs, shared_runs, full_runs, raws, kept = [], [], [], [], [], ""
        stats_floors, write_floors = [], []
        for _ in range(repeat):
            bares.append(_bare(model, feed))
            stats_runs.append(_captured(model, feed, fresh("stats"), "stats"))
            shared_runs.append(_captured(model, feed, fresh("stats"), "stats", share=True))
            stats_floors.append(_floor(model, feed, None))
            if kept:
                os.unlink(kept)
            kept = fresh("full")
            full_runs.append(_captured(model, feed, kept, "full"))
            raws.append(one_raw())
            write_floors.append(_floor(model, feed, fresh("floor")))
            for name in os.listdir(work):
                if name.startswith(("stats", "floor")):
                    os.unlink(os.path.join(work, name))
        del arrays
        bare = min(bares)
        stats = min(r[0] for r in stats_runs)
        full = min(r[0] for r in full_runs)
        raw = min(raws)
        records, nbytes = full_runs[-1][1], full_runs[-1][2]
        size = {"layers": layers, "hidden": hidden, "seq": seq, "vocab": vocab, "records": records,
                "bytes": nbytes, "threads": torch.get_num_threads()}
        docs = [
            record(BENCH, "bare_forward" + tag, bare, "s", extra=size),
            record(BENCH, "P1_stats_capture" + tag, stats, "s", baseline=bare, ratio=stats / bare, target="<=1.3",
                   extra={**size, "records": stats_runs[-1][1]}),
            record(BENCH, "P1_stats_capture_shared" + tag, min(r[0] for r in shared_runs), "s", baseline=bare,
                   ratio=min(r[0] for r in shared_runs) / bare, target="<=1.3",
                   extra={**size, "share_unchanged": True}),
            record(BENCH, "full_capture" + tag, full, "s", baseline=bare, ratio=full / bare, extra=size),
            record(BENCH, "raw_h5py_write" + tag, raw, "s", extra={**size, "gb_per_s": nbytes / raw / 1e9}),
            record(BENCH, "P2_full_minus_bare_vs_raw" + tag, full - bare, "s", baseline=raw,
                   ratio=(full - bare) / raw, target="<=1.4", extra=size),
            # the floors: what hooks that do only the statistics, or only a plain h5py write, cost in the same rounds
            record(BENCH, "P1_floor_stats_only_hooks" + tag, min(r[0] for r in stats_floors), "s", baseline=bare,
                   ratio=min(r[0] for r in stats_floors) / bare, extra={**size, "tensors": stats_floors[-1][1]}),
            record(BENCH, "P2_floor_plain_h5py_hooks" + tag, min(r[0] for r in write_floors) - bare, "s",
                   baseline=raw, ratio=(min(r[0] for r in write_floors) - bare) / raw,
                   extra={**size, "tensors": write_floors[-1][1]}),
        ]
        return docs
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``python -m bench`` (no arguments: environment defaults) and direct runs."""
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=int(env("BENCH_CAPTURE_LAYERS", 8)))
    p.add_argument("--hidden", type=int, default=int(env("BENCH_CAPTURE_HIDDEN", 512)))
    p.add_argument("--seq", type=int, default=int(env("BENCH_CAPTURE_SEQ", 512)))
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=int(env("BENCH_CAPTURE_REPEAT", 5)))
    p.add_argument("--dir", default=env("BENCH_CAPTURE_DIR"), help="folder for the dumps (default: temp)")
    p.add_argument("--wide", type=int, default=int(env("BENCH_CAPTURE_WIDE", 1)),
                   help="1: also run a model of Llama-3.2-1B's width (hidden 2048, 2 layers), figures tagged _h2048")
    a = p.parse_args(argv if argv is not None else [])
    run(a.layers, a.hidden, a.seq, a.vocab, a.repeat, a.dir)
    if a.wide:
        # the hidden-512 model has few FLOPs per activation byte; real models are wider, so the same capture work
        # weighs less against the forward
        run(2, 2048, a.seq, a.vocab, min(a.repeat, 3), a.dir, tag="_h2048")


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
