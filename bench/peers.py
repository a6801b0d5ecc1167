"""Capture cost against the peers that dump per-module tensors of PyTorch models (issue 21).

The random Llama of bench.capture_overhead (default hidden 512, 8 layers, sequence 512, vocabulary 4096) and the
same inputs run, side by side:

- ``bare``: the forward without hooks (inference_mode), the baseline of every ratio;
- ``tp_stats``: tensorparity, statistics of every module's inputs and outputs (capture_overhead's "stats");
- ``tp_full``: tensorparity, every module's inputs and outputs as full tensors in a dump (fsync at close; "full");
- ``msprobe_stats`` / ``msprobe_tensor``: mindstudio-probe's PrecisionDebugger at level L0 (every module), task
  ``statistics`` or ``tensor`` (its default data_mode ``all``: inputs, outputs and the module's parameters; one
  torch.save file per tensor, no fsync), timed from ``start()`` through the forward, ``stop()`` and ``step()``
  (which write its JSON files);
- ``torchlens_ram`` / ``torchlens_disk`` / ``torchlens_record``: torchlens' ``trace`` (every operation's output
  copied and kept in RAM), ``trace(storage=to_disk(dir))`` (streamed to a bundle, fsynced), and its lightest mode,
  ``record`` with module events' metadata only (no tensor kept);
- ``torch_save`` / ``torch_save_fsync``: what teams write today, a forward hook on every module that torch.save()s
  the module's output to its own file; without fsync, and with each file fsynced in the hook.

msprobe's debugger is a process-wide singleton that leaves its hooks on the model, and torchlens wraps the torch
functions on its first trace and leaves them wrapped, so each runs in a worker process of its own (msprobe
statistics, msprobe tensor, torchlens) with its own copy of the same model (same seed) and inputs; bare,
tensorparity and torch.save run in this process. The worker waits on a pipe while the others run.

Every variant runs once as a warm-up, then ``--rounds`` interleaved rounds: each round runs the bare forward, then
every other variant in an order rotated from round to round (so that the disk's writeback of one variant's files
does not always land on the same next one), then the bare forward again; the round's bare time is the faster of
the two. A variant's figures are its median ratio to the bare forward of the
same round (and the best ratio), the bytes it wrote (the sizes of the files in its output folder; for the
in-memory torchlens trace, the RAM its kept tensors take), and its cost per byte, the median of
(time - bare) / bytes, in seconds per GB. Outputs are deleted after each run.

Then the same on a model as wide as Llama-3.2-1B (hidden 2048, 2 layers), figures tagged ``_h2048``, in as many
rounds (at most ``--wide-rounds``) as the time budget (``--budget``, default 360 s for the whole run) leaves after
its warm-up; ``--wide 0`` skips it.

A peer that does not import is reported as skipped; a peer that fails is reported with its error, and the others
go on.

Run: ``python -m bench peers`` or ``python -m bench.peers --layers 4 --seq 256 --rounds 3 --wide 0``.
Environment overrides for ``python -m bench``: BENCH_PEERS_LAYERS, BENCH_PEERS_HIDDEN, BENCH_PEERS_SEQ,
BENCH_PEERS_ROUNDS, BENCH_PEERS_WIDE, BENCH_PEERS_WIDE_ROUNDS, BENCH_PEERS_BUDGET, BENCH_PEERS_ONLY (variant names,
comma-separated), BENCH_PEERS_DIR.
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch

from bench import record
from bench.capture_overhead import _bare, _captured, build_model, make_feed

BENCH = "peers"

#: variant -> (where it runs: "main" or a worker kind, the peer's distribution, what it is)
VARIANTS = {
    "bare": ("main", None, "bare forward (baseline)"),
    "tp_stats": ("main", "tensorparity", "tensorparity statistics, every module"),
    "tp_full": ("main", "tensorparity", "tensorparity full tensors, every module (fsync)"),
    "msprobe_stats": ("msprobe_statistics", "mindstudio-probe", "msprobe L0 statistics"),
    "msprobe_tensor": ("msprobe_tensor", "mindstudio-probe", "msprobe L0 tensor (no fsync)"),
    "torchlens_ram": ("torchlens", "torchlens", "torchlens trace, kept in RAM"),
    "torchlens_disk": ("torchlens", "torchlens", "torchlens trace to_disk (fsync)"),
    "torchlens_record": ("torchlens", "torchlens", "torchlens record, metadata only"),
    "torch_save": ("main", "torch", "torch.save hook per module output"),
    "torch_save_fsync": ("main", "torch", "torch.save hook + fsync per file"),
}
_IMPORT_NAME = {"mindstudio-probe": "msprobe", "torchlens": "torchlens"}
#: a worker that has not answered a command in this long is taken as hung and stopped
_WORKER_TIMEOUT_S = 900


def versions() -> dict[str, str]:
    """Installed versions of torch, transformers and the peers (``missing`` when not installed)."""
    out = {}
    for dist in ("torch", "transformers", "tensorparity", "mindstudio-probe", "torchlens"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def folder_bytes(path: str) -> int:
    """Sum of the sizes of the files under ``path`` (or of ``path`` itself when it is a file)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def _clear(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.unlink(path)


# ---- the variants that run in this process ----------------------------------------------------------------------

def _torch_save_hooks(model, feed, out: str, fsync: bool) -> float:
    """A forward hook on every module that torch.save()s the module's output to a file of its own (optionally
    fsynced before the hook returns); returns the seconds from the forward's start to the last hook removed."""
    os.makedirs(out, exist_ok=True)
    counter = iter(range(1 << 30))

    def hook(module, args, output, name):
        path = os.path.join(out, f"{next(counter):05d}_{name or 'root'}.pt")
        with open(path, "wb") as fh:
            torch.save(output, fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())

    handles = []
    t0 = time.perf_counter()
    try:
        for name, m in model.named_modules():
            handles.append(m.register_forward_hook(lambda m, a, o, name=name: hook(m, a, o, name)))
        with torch.no_grad():
            model(**feed)
    finally:
        for h in handles:
            h.remove()
    return time.perf_counter() - t0


def _run_main(variant: str, model, feed, out: str) -> dict:
    """Run one in-process variant into the new folder ``out``; returns seconds and bytes."""
    if variant == "bare":
        return {"seconds": _bare(model, feed), "bytes": None}
    if variant in ("tp_stats", "tp_full"):
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "dump.h5")
        seconds, records, _ = _captured(model, feed, path, "stats" if variant == "tp_stats" else "full")
        return {"seconds": seconds, "bytes": folder_bytes(out), "records": records, "unit": "tensors"}
    if variant in ("torch_save", "torch_save_fsync"):
        seconds = _torch_save_hooks(model, feed, out, fsync=variant == "torch_save_fsync")
        return {"seconds": seconds, "bytes": folder_bytes(out), "records": len(os.listdir(out)), "unit": "files"}
    raise ValueError(variant)


# ---- the worker processes -----------------------------------------------------------------------------------------

def _count_tensors(doc) -> int:
    """Tensors described in an msprobe dump.json's ``data`` (entries of ``"type": "torch.Tensor"``)."""
    if isinstance(doc, dict):
        return (doc.get("type") == "torch.Tensor") + sum(_count_tensors(v) for v in doc.values())
    if isinstance(doc, list):
        return sum(_count_tensors(v) for v in doc)
    return 0


class _MsprobeRunner:
    """mindstudio-probe's PrecisionDebugger on this process's model (one task per process: it is a singleton)."""

    def __init__(self, task: str, work: str):
        from msprobe.pytorch import PrecisionDebugger
        self.dump_path = os.path.join(work, f"msprobe_{task}_dump")
        config = {"task": task, "dump_path": self.dump_path, "rank": [], "step": [], "level": "L0",
                  "async_dump": False, task: {"scope": [], "list": [], "data_mode": ["all"]}}
        if task == "statistics":
            config[task]["summary_mode"] = "statistics"
        config_path = os.path.join(work, f"msprobe_{task}.json")
        with open(config_path, "w", encoding="utf-8") as fh:
            json.dump(config, fh)
        self.debugger = PrecisionDebugger(config_path=config_path)

    def run(self, variant: str, model, feed, out: str) -> dict:
        _clear(self.dump_path)
        t0 = time.perf_counter()
        self.debugger.start(model=model)
        with torch.no_grad():
            model(**feed)
        self.debugger.stop()
        self.debugger.step()
        seconds = time.perf_counter() - t0
        nbytes = folder_bytes(self.dump_path)
        tensors = 0
        for root, _, files in os.walk(self.dump_path):
            if "dump.json" in files:
                with open(os.path.join(root, "dump.json"), encoding="utf-8") as fh:
                    tensors += _count_tensors(json.load(fh).get("data", {}))
        _clear(self.dump_path)
        return {"seconds": seconds, "bytes": nbytes, "records": tensors, "unit": "tensors"}


class _TorchlensRunner:
    """torchlens' trace (in RAM, to disk) and record (module metadata only)."""

    def __init__(self, work: str):
        import warnings

        import torchlens  # noqa: F401  (fails here, at start-up, when torchlens is missing)
        # transformers' mask code turns a tensor into a Python scalar: torchlens warns on every trace
        warnings.filterwarnings("ignore", module="torchlens")
        warnings.filterwarnings("ignore", message=".*scalar escape.*")

    def run(self, variant: str, model, feed, out: str) -> dict:
        import torchlens as tl
        if variant == "torchlens_ram":
            t0 = time.perf_counter()
            with torch.no_grad():
                trace = tl.trace(model, (), input_kwargs=feed)
            seconds = time.perf_counter() - t0
            ram = int(trace.saved_activation_memory)
            layers = len(trace.layers)
            del trace
            gc.collect()
            return {"seconds": seconds, "bytes": None, "ram_bytes": ram, "records": layers, "unit": "ops"}
        if variant == "torchlens_disk":
            _clear(out)
            t0 = time.perf_counter()
            with torch.no_grad():
                trace = tl.trace(model, (), input_kwargs=feed, storage=tl.to_disk(out))
            seconds = time.perf_counter() - t0
            layers = len(trace.layers)
            del trace
            gc.collect()
            return {"seconds": seconds, "bytes": folder_bytes(out), "records": layers, "unit": "ops"}
        if variant == "torchlens_record":
            from torchlens.fastlog.types import CaptureSpec
            t0 = time.perf_counter()
            with torch.no_grad():
                rec = tl.record(model, (), input_kwargs=feed, default_module=CaptureSpec(save_out=False))
            seconds = time.perf_counter() - t0
            n = len(rec.records)
            del rec
            gc.collect()
            return {"seconds": seconds, "bytes": None, "ram_bytes": None, "records": n, "unit": "module events"}
        raise ValueError(variant)


def _worker_main(argv: list[str]) -> None:
    """A worker process (``python -m bench.peers --worker KIND CONFIG_JSON WORK``, started by ``_Worker``): builds
    the model, answers ``["bare"]``, ``["run", variant, out]`` and ``["quit"]`` (JSON lines on stdin) with
    ``["ok", result]`` or ``["error", text]`` (JSON lines on what was its stdout). Its stdout and stderr (the
    peers' logs) go to ``WORK/worker_KIND.log``. A plain process, not a multiprocessing child: torchlens refuses to
    capture in one."""
    kind, cfg, work = argv[0], json.loads(argv[1]), argv[2]
    answers = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    log = os.open(os.path.join(work, f"worker_{kind}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)

    def answer(status: str, payload) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        answers.write(json.dumps([status, payload]) + "\n")

    try:
        model = build_model(cfg["layers"], cfg["hidden"], cfg["vocab"])
        feed = make_feed(cfg["seq"], cfg["vocab"])
        _bare(model, feed)
        if kind.startswith("msprobe_"):
            runner = _MsprobeRunner(kind.split("_", 1)[1], work)
        elif kind == "torchlens":
            runner = _TorchlensRunner(work)
        else:
            raise ValueError(kind)
    except BaseException:
        answer("error", traceback.format_exc())
        return
    answer("ok", None)
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg[0] == "quit":
                answer("ok", None)
                return
            if msg[0] == "bare":
                answer("ok", {"seconds": _bare(model, feed)})
            else:
                answer("ok", runner.run(msg[1], model, feed, msg[2]))
        except BaseException:
            answer("error", traceback.format_exc())


class _Worker:
    """The parent's handle on a worker process (started here, ended by ``close``)."""

    def __init__(self, kind: str, cfg: dict, work: str):
        self.kind = kind
        self.log_path = os.path.join(work, f"worker_{kind}.log")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.peers", "--worker", kind, json.dumps(cfg), work],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root)
        self.error: str | None = None

    def _answer(self):
        ready, _, _ = select.select([self.proc.stdout], [], [], _WORKER_TIMEOUT_S)
        if not ready:
            self.close(kill=True)
            raise RuntimeError(f"worker {self.kind} did not answer in {_WORKER_TIMEOUT_S} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"worker {self.kind} died (exit code {self.proc.returncode}); log tail:\n"
                               + self.log_tail())
        status, payload = json.loads(line)
        if status != "ok":
            raise RuntimeError(payload)
        return payload

    def ready(self) -> None:
        """Wait for the worker's start-up; sets ``error`` when it failed."""
        try:
            self._answer()
        except RuntimeError as exc:
            self.error = str(exc)

    def call(self, *msg):
        self.proc.stdin.write((json.dumps(list(msg)) + "\n").encode())
        self.proc.stdin.flush()
        return self._answer()

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    def close(self, kill: bool = False) -> None:
        if self.proc.poll() is None and not kill:
            try:
                self.call("quit")
            except (OSError, RuntimeError, ValueError):
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- the measurement ----------------------------------------------------------------------------------------------

def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text


def _available(variants: list[str]) -> tuple[list[str], dict[str, str]]:
    """The variants whose peer imports; the others with why they are skipped."""
    keep, skipped = [], {}
    for v in variants:
        dist = VARIANTS[v][1]
        module = _IMPORT_NAME.get(dist or "")
        if module and importlib.util.find_spec(module) is None:
            skipped[v] = f"{dist} is not installed"
        else:
            keep.append(v)
    return keep, skipped


def run(layers: int = 8, hidden: int = 512, seq: int = 512, vocab: int = 4096, rounds: int = 7,
        folder: str | None = None, tag: str = "", only: list[str] | None = None,
        deadline: float | None = None) -> dict:
    """Measure every variant (``only``: these) in a warm-up and ``rounds`` interleaved rounds, print the table and
    record the figures (named ``<variant><tag>``). With ``deadline`` (a time.monotonic() value), the rounds are
    cut to what fits before it after the warm-up (none: the figures are not recorded). Returns the summary."""
    cfg = {"layers": layers, "hidden": hidden, "seq": seq, "vocab": vocab}
    wanted = ["bare"] + [v for v in VARIANTS if v != "bare" and (not only or v in only)]
    variants, failed = _available(wanted)
    work = tempfile.mkdtemp(prefix="bench-peers-", dir=folder)
    workers: dict[str, _Worker] = {}
    counter = iter(range(1 << 30))
    times: dict[str, list[float]] = {v: [] for v in variants}
    ratios: dict[str, list[float]] = {v: [] for v in variants}
    costs: dict[str, list[float]] = {v: [] for v in variants}
    info: dict[str, dict] = {}
    notes: list[str] = []
    try:
        kinds = sorted({VARIANTS[v][0] for v in variants} - {"main"})
        for kind in kinds:  # start-up overlaps this process's own model building
            workers[kind] = _Worker(kind, cfg, work)
        model = build_model(layers, hidden, vocab)
        feed = make_feed(seq, vocab)
        _bare(model, feed)
        bares = {}  # worker kind -> its bare forward / ours, before its peer ran
        for w in workers.values():  # all started before any is timed: a worker's start-up takes both cores
            w.ready()
        for kind, w in workers.items():
            if w.error:
                for v in [v for v in variants if VARIANTS[v][0] == kind]:
                    failed[v] = f"worker did not start: {_last_line(w.error)}"
                continue
            # the same forward in the worker and here, one after the other, before any peer ran
            ours = min(_bare(model, feed), _bare(model, feed))
            theirs = min(w.call("bare")["seconds"], w.call("bare")["seconds"])
            bares[kind] = theirs / ours
            notes.append(f"worker {kind}: bare forward {theirs:.3f} s, {ours:.3f} s in the main process just "
                         f"before (x{theirs / ours:.2f}), before its peer ran")
        variants = [v for v in variants if v not in failed]

        def one(v: str) -> dict:
            out = os.path.join(work, f"{v}_{next(counter)}")
            where = VARIANTS[v][0]
            try:
                if where == "main":
                    return _run_main(v, model, feed, out)
                return workers[where].call("run", v, out)
            finally:
                _clear(out)

        # warm-up: allocator, kernels, the peers' lazy set-up (torchlens wraps torch here)
        t_warm = time.perf_counter()
        for v in variants:
            try:
                info[v] = one(v)
            except Exception as exc:  # a peer failing is a figure too: report it, go on with the others
                failed[v] = _last_line(str(exc) or repr(exc))
                print(f"peers: {v} failed in the warm-up: {exc}", flush=True)
        round_s = time.perf_counter() - t_warm
        variants = [v for v in variants if v not in failed]
        if "torchlens" in bares and any(v.startswith("torchlens") for v in variants):
            ours, theirs = [], []
            for _ in range(3):  # alternately, so that both see the same machine
                ours.append(_bare(model, feed))
                theirs.append(workers["torchlens"].call("bare")["seconds"])
            notes.append(f"torchlens leaves torch's functions wrapped after a trace: a bare forward in its worker "
                         f"then takes {min(theirs):.3f} s against {min(ours):.3f} s in the main process "
                         f"(x{min(theirs) / min(ours):.2f}; x{bares['torchlens']:.2f} before its first "
                         "trace)")
        if deadline is not None:
            left = deadline - time.monotonic()
            fit = int(left // max(round_s, 1e-3))
            if fit < rounds:
                notes.append(f"time budget: {fit} of {rounds} rounds fit in the {left:.0f} s left "
                             f"(a round takes ~{round_s:.0f} s)")
                rounds = max(fit, 0)
        others = [v for v in variants if v != "bare"]
        for r in range(rounds):
            first = one("bare")["seconds"]
            k = r % max(len(others), 1)
            got = {}
            for v in others[k:] + others[:k]:
                if v in failed:
                    continue
                try:
                    got[v] = one(v)
                except Exception as exc:
                    failed[v] = f"round {r + 1}: {_last_line(str(exc) or repr(exc))}"
                    print(f"peers: {v} failed in round {r + 1}: {exc}", flush=True)
            # the round's bare forward: the faster of one at its start and one at its end (another process's burst
            # on this shared machine hits one of them rather than both)
            bare = min(first, one("bare")["seconds"])
            times["bare"].append(bare)
            ratios["bare"].append(1.0)
            for v, res in got.items():
                info[v] = res
                times[v].append(res["seconds"])
                ratios[v].append(res["seconds"] / bare)
                nbytes = res.get("bytes") or res.get("ram_bytes")
                if nbytes:
                    costs[v].append((res["seconds"] - bare) / (nbytes / 1e9))
            print(f"peers: round {r + 1}/{rounds} done, bare {bare:.3f} s", flush=True)
    finally:
        for w in workers.values():
            w.close()
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for v in wanted:
        if v in failed or not times.get(v):
            rows.append({"variant": v, "what": VARIANTS[v][2], "failed": failed.get(v, "no round ran")})
            continue
        res = info.get(v, {})
        rows.append({"variant": v, "what": VARIANTS[v][2], "rounds": len(times[v]),
                     "seconds": statistics.median(times[v]), "ratio": statistics.median(ratios[v]),
                     "best_ratio": min(ratios[v]), "bytes": res.get("bytes"), "ram_bytes": res.get("ram_bytes"),
                     "s_per_gb": statistics.median(costs[v]) if costs[v] else None,
                     "records": res.get("records"), "unit": res.get("unit")})
    summary = {"config": cfg, "tag": tag, "rounds": rounds, "rows": rows, "notes": notes}
    print_table(summary)
    if rounds:
        _record(summary)
    return summary


def _fmt_bytes(row: dict) -> str:
    if row.get("bytes") is not None:
        return f"{row['bytes'] / 1e6:,.1f} MB"
    if row.get("ram_bytes") is not None:
        return f"{row['ram_bytes'] / 1e6:,.1f} MB (RAM)"
    return "—"


def print_table(summary: dict) -> None:
    """The markdown table of one configuration."""
    c = summary["config"]
    bare = next((r for r in summary["rows"] if r["variant"] == "bare" and "seconds" in r), None)
    print(f"\n### hidden {c['hidden']}, {c['layers']} layers, {c['seq']} tokens, vocabulary {c['vocab']}: "
          f"{summary['rounds']} rounds after a warm-up, torch threads {torch.get_num_threads()}"
          + (f", bare forward median {bare['seconds']:.3f} s" if bare else "") + "\n")
    print("| variant | what | median × bare | best × bare | median s | bytes written | (t - bare) / bytes | "
          "records |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in summary["rows"]:
        if "failed" in r:
            print(f"| {r['variant']} | {r['what']} | failed: {r['failed']} | | | | | |")
            continue
        cost = "—" if r["s_per_gb"] is None or r["variant"] == "bare" else f"{r['s_per_gb']:.2f} s/GB"
        records = "—" if r.get("records") is None else f"{r['records']} {r.get('unit') or ''}".strip()
        print(f"| {r['variant']} | {r['what']} | {r['ratio']:.2f} | {r['best_ratio']:.2f} | {r['seconds']:.3f} | "
              f"{_fmt_bytes(r)} | {cost} | {records} |")
    for note in summary["notes"]:
        print(f"- {note}")
    print("- bytes written: the files in the variant's output folder (RAM: the tensors a trace keeps); for the "
          "statistics-only variants that is the summaries, so their (t - bare) / bytes is no per-byte cost of "
          "tensor capture")
    print(flush=True)


def _record(summary: dict) -> None:
    vers = versions()
    tag = summary["tag"]
    rows = [r for r in summary["rows"] if "failed" not in r]
    bare = next((r for r in rows if r["variant"] == "bare"), None)
    size = {**summary["config"], "rounds": summary["rounds"], "threads": torch.get_num_threads()}
    for r in rows:
        dist = VARIANTS[r["variant"]][1]
        extra = {**size, "best_ratio": round(r["best_ratio"], 4), "bytes": r["bytes"], "ram_bytes": r["ram_bytes"],
                 "s_per_gb": None if r["s_per_gb"] is None else round(r["s_per_gb"], 4), "records": r["records"],
                 "records_unit": r.get("unit"),
                 "peer": dist, "peer_version": vers.get(dist) if dist else None, "torch": vers["torch"]}
        if r["variant"] == "bare":
            record(BENCH, "bare_forward" + tag, r["seconds"], "s", extra=extra)
        else:
            record(BENCH, r["variant"] + tag, r["seconds"], "s", baseline=bare["seconds"] if bare else None,
                   ratio=r["ratio"], extra=extra)


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``python -m bench`` (no arguments: environment defaults) and direct runs."""
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=int(env("BENCH_PEERS_LAYERS", 8)))
    p.add_argument("--hidden", type=int, default=int(env("BENCH_PEERS_HIDDEN", 512)))
    p.add_argument("--seq", type=int, default=int(env("BENCH_PEERS_SEQ", 512)))
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=int(env("BENCH_PEERS_ROUNDS", 7)))
    p.add_argument("--wide", type=int, default=int(env("BENCH_PEERS_WIDE", 1)),
                   help="1: also run a model of Llama-3.2-1B's width (hidden 2048, 2 layers), figures tagged _h2048")
    p.add_argument("--wide-rounds", type=int, default=int(env("BENCH_PEERS_WIDE_ROUNDS", 3)))
    p.add_argument("--budget", type=float, default=float(env("BENCH_PEERS_BUDGET", 360)),
                   help="seconds for the whole run: the wide model gets the rounds that fit (0: no limit)")
    p.add_argument("--only", default=env("BENCH_PEERS_ONLY", ""),
                   help=f"comma-separated variants (bare always runs): {', '.join(v for v in VARIANTS if v != 'bare')}")
    p.add_argument("--dir", default=env("BENCH_PEERS_DIR"), help="folder for the outputs (default: temp)")
    a = p.parse_args(argv if argv is not None else [])
    only = [v.strip() for v in a.only.split(",") if v.strip()]
    unknown = [v for v in only if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}")
    t0 = time.monotonic()
    vers = versions()
    print("peers: " + ", ".join(f"{k} {v}" for k, v in vers.items()), flush=True)
    for dist in ("mindstudio-probe", "torchlens"):
        if importlib.util.find_spec(_IMPORT_NAME[dist]) is None:
            print(f"peers: {dist} is not installed: its variants are skipped "
                  "(pip install -c requirements/test.txt -e '.[bench]')", flush=True)
    run(a.layers, a.hidden, a.seq, a.vocab, a.rounds, a.dir, only=only)
    if a.wide:
        deadline = t0 + a.budget if a.budget > 0 else None
        run(2, 2048, a.seq, a.vocab, a.wide_rounds, a.dir, tag="_h2048", only=only, deadline=deadline)
    print(f"peers: {time.monotonic() - t0:.0f} s in all", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker_main(sys.argv[2:])
    else:
        main(sys.argv[1:])
