"""What the two-pass capture (issue 20, ``parity zoom``) writes and names, on every planted fault of the suite.

A random Llama (workflows.fault_suite.build_model, ``--layers`` layers, default 4) saved to a folder;
for each fault of workflows/fault_suite.py (planted in layer ``FAULT_LAYER``) and each candidate dtype (float32,
bfloat16), against the float32 reference:

- one full capture of both sides (every site full), compared with replay: the module it names first
  (``report.local["first_introduced"]``);
- pass 1: both sides as statistics only (``RecordPolicy(default="stats")``), compared (no replay: no tensors), and
  ``zoom_policy(report, window=W)`` for each ``--windows`` W (default 1 and 3), centred on the pass-1 report's first
  divergent site;
- pass 2 for each W: both sides captured again with the zoom policy, compared with replay: the module it names.

Bytes are ``os.path.getsize`` of the dumps, reference and candidate summed. Per case it prints the share of one
full capture that pass 1 + pass 2 write, whether pass 2 names the module the full capture names and whether that
module is one the fault broke, and the site pass 1 centred on; the clean bfloat16 candidate (no fault) shows what
pass 1 does where nothing is broken. Recorded: the median and max share and the count of matching names, per W.

Run: ``python -m bench zoom_bytes`` or ``python -m bench.zoom_bytes --layers 4 --tokens 24 --windows 1 3``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from bench import record

BENCH = "zoom_bytes"
DTYPES = ("float32", "bfloat16")
WINDOWS = (1, 3)


def _named(report) -> str | None:
    first = (report.local or {}).get("first_introduced")
    return first["module"] if first else None


def _size(*paths: str) -> int:
    return sum(os.path.getsize(p) for p in paths)


def run_case(tmp: str, folder: str, inputs, ref, replayer, fault: str | None, dtype: str,
             windows: tuple[int, ...]) -> dict:
    """Full capture, pass 1 and pass 2 (per window) of one candidate; returns its row."""
    import torch

    from analyze.compare import compare
    from analyze.zoom import zoom_policy
    from capture.base import CaptureOptions
    from capture.policy import RecordPolicy
    from capture.torch_backend import TorchBackend
    from capture.torch_loading import load_hf_model
    from workflows.fault_suite import plant

    name = f"{fault or 'clean'}-{dtype}"
    model = load_hf_model(folder, device=torch.device("cpu"), dtype=torch.float32, attn_implementation=None,
                          trust_remote_code=False)
    ids = inputs.samples[0].arrays["input_ids"][0, :4]
    broken = plant(model, fault, token_ids=ids) if fault else ()
    cand = TorchBackend(model, dtype=dtype)

    def capture(backend, out, policy):
        backend.capture(inputs, out, CaptureOptions(label=os.path.basename(out)[:-3], policy=policy))
        return out

    row = {"fault": fault or "(clean)", "dtype": dtype, "broken": list(broken)}
    full = [ref["full"], capture(cand, os.path.join(tmp, f"{name}-full.h5"), RecordPolicy())]
    row["full_bytes"] = _size(*full)
    full_report = compare(*full, replay=replayer)
    row["full_named"] = _named(full_report)
    pass1 = [ref["stats"], capture(cand, os.path.join(tmp, f"{name}-stats.h5"), RecordPolicy(default="stats"))]
    row["pass1_bytes"] = _size(*pass1)
    report1 = compare(*pass1)
    row["pass1_centre"] = report1.first_divergence["site"] if report1.first_divergence else None
    row["full_first_divergence"] = (full_report.first_divergence or {}).get("site")
    curve = [e for e in report1.localization["curve"] if e["rel_l2"] is not None]
    worst = max(curve, key=lambda e: e["rel_l2"], default=None)  # what pass 1 saw when nothing was over
    row["pass1_worst"] = None if worst is None else (worst["site"], worst["rel_l2"], worst["limit"])
    row["windows"] = {}
    for w in windows:
        plan = zoom_policy(report1, window=w)
        if plan is None:  # no divergence in pass 1: nothing to zoom on, no pass 2
            row["windows"][w] = None
            continue
        policy = RecordPolicy.from_dict(plan.policy)
        pass2 = [capture(ref["backend"], os.path.join(tmp, f"{name}-ref-zoom{w}.h5"), policy),
                 capture(cand, os.path.join(tmp, f"{name}-zoom{w}.h5"), policy)]
        report2 = compare(*pass2, replay=replayer)
        named = _named(report2)
        row["windows"][w] = {"centre": plan.centre, "centred_on": plan.centred_on, "modules": plan.modules,
                             "pass2_bytes": _size(*pass2), "named": named,
                             "share": (row["pass1_bytes"] + _size(*pass2)) / row["full_bytes"],
                             "same": named == row["full_named"], "in_broken": named in broken,
                             "pass2_first_divergence": (report2.first_divergence or {}).get("site")}
        for p in pass2:
            os.unlink(p)
    for p in (full[1], pass1[1]):
        os.unlink(p)
    return row


def table(rows: list[dict], windows: tuple[int, ...]) -> str:
    """The markdown table of the rows: one line per (fault, dtype, window)."""
    lines = ["| fault | dtype | full: first divergence | full names | pass-1 centre | W | pass-2 window (modules) "
             "| pass 1 + pass 2 / full | pass-2 names | = full | broken |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for w in windows:
            z = r["windows"].get(w)
            centre = r["pass1_centre"]
            if centre is None and r["pass1_worst"]:
                site, value, limit = r["pass1_worst"]
                centre = f"(none: largest stats_rel_l2 {value:.2g} at {site}, limit {limit:g})"
            head = (f"| {r['fault']} | {r['dtype']} | {r['full_first_divergence'] or '(none)'} | "
                    f"{r['full_named'] or '-'} | {centre or '(none)'} | {w} ")
            if z is None:
                lines.append(head + f"| (no pass 2) | {r['pass1_bytes'] / r['full_bytes']:.1%} (pass 1 only) | - | "
                             f"{'yes' if r['full_named'] is None else 'no'} | - |")
                continue
            broken = "-" if not r["broken"] else ("yes" if z["in_broken"] else "no")
            lines.append(head + f"| {', '.join(m or '(root)' for m in z['modules'])} | {z['share']:.1%} | "
                         f"{z['named'] or '-'} | {'yes' if z['same'] else 'no'} | {broken} |")
    return "\n".join(lines)


def run(layers: int = 4, tokens: int = 24, samples: int = 1, windows: tuple[int, ...] = WINDOWS,
        faults: tuple[str, ...] | None = None, dtypes: tuple[str, ...] = DTYPES) -> list[dict]:
    """Measure, print the table and record the headline figures; returns the rows."""
    import torch

    from capture.base import CaptureOptions
    from capture.policy import RecordPolicy
    from capture.torch_backend import TorchBackend
    from capture.torch_replay import TorchReplayer
    from protocol import InputSample, read_input_set, write_input_set
    from workflows.fault_suite import FAULT_LAYER, FAULTS, build_model

    faults = tuple(faults or FAULTS)
    tmp = tempfile.mkdtemp(prefix="bench-zoom-")
    t0 = time.perf_counter()
    try:
        folder = build_model(os.path.join(tmp, "model"), layers=layers)
        rng = np.random.default_rng(0)
        write_input_set(os.path.join(tmp, "inputs.h5"),
                        [InputSample({"input_ids": rng.integers(4, 256, (1, tokens))}, {}) for _ in range(samples)])
        inputs = read_input_set(os.path.join(tmp, "inputs.h5"))
        ref_backend = TorchBackend.from_pretrained(folder)
        ref = {"backend": ref_backend, "full": os.path.join(tmp, "ref-full.h5"),
               "stats": os.path.join(tmp, "ref-stats.h5")}
        ref_backend.capture(inputs, ref["full"], CaptureOptions(label="ref-full"))
        ref_backend.capture(inputs, ref["stats"],
                            CaptureOptions(label="ref-stats", policy=RecordPolicy(default="stats")))
        replayer = TorchReplayer.open(folder)
        rows = []
        try:
            cases = [(f, d) for f in faults for d in dtypes] + ([(None, "bfloat16")] if "bfloat16" in dtypes else [])
            for fault, dtype in cases:
                rows.append(run_case(tmp, folder, inputs, ref, replayer, fault, dtype, windows))
        finally:
            replayer.close()
        seconds = time.perf_counter() - t0
        print(f"\nrandom Llama: hidden 64, {layers} layers, vocabulary 256; {samples} sample(s) x {tokens} tokens; "
              f"faults in layer {FAULT_LAYER}; float32 reference; {seconds:.0f} s\n")
        print(table(rows, windows))
        print()
        extra = {"layers": layers, "tokens": tokens, "samples": samples, "faults": list(faults),
                 "dtypes": list(dtypes), "torch_threads": torch.get_num_threads(),
                 "full_bytes": {r["dtype"]: r["full_bytes"] for r in rows},
                 "pass1_bytes": {r["dtype"]: r["pass1_bytes"] for r in rows}}
        faulty = [r for r in rows if r["broken"]]
        for w in windows:
            zs = [r["windows"][w] for r in faulty if r["windows"].get(w)]
            if not zs:
                continue
            shares = [z["share"] for z in zs]
            cases_w = {**extra, "window": w, "cases": len(faulty), "zoomed": len(zs)}
            record(BENCH, f"share_w{w}_median", statistics.median(shares), "share of full", extra=cases_w)
            record(BENCH, f"share_w{w}_max", max(shares), "share of full", extra=cases_w)
            record(BENCH, f"same_name_w{w}", sum(z["same"] for z in zs), f"of {len(faulty)} cases", extra=cases_w)
            record(BENCH, f"names_broken_w{w}", sum(z["in_broken"] for z in zs), f"of {len(faulty)} cases",
                   extra=cases_w)
        for dtype in dtypes:  # pass 1's share depends on the candidate's dtype only (a bfloat16 full dump is smaller)
            of = [r for r in faulty if r["dtype"] == dtype]
            if of:
                record(BENCH, f"pass1_share_{dtype}", of[0]["pass1_bytes"] / of[0]["full_bytes"], "share of full",
                       extra=extra)
        record(BENCH, "pass1_no_divergence", sum(r["pass1_centre"] is None for r in faulty), f"of {len(faulty)} cases",
               extra=extra)
        record(BENCH, "full_names_broken", sum(r["full_named"] in r["broken"] for r in faulty),
               f"of {len(faulty)} cases", extra=extra)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``python -m bench`` (no arguments: the defaults) and direct runs."""
    from workflows.fault_suite import FAULTS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=int(os.environ.get("BENCH_ZOOM_LAYERS", 4)))
    p.add_argument("--tokens", type=int, default=int(os.environ.get("BENCH_ZOOM_TOKENS", 24)))
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--windows", type=int, nargs="+", default=list(WINDOWS), help="zoom windows (sites each side)")
    p.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    a = p.parse_args([] if argv is None else argv)
    run(a.layers, a.tokens, a.samples, tuple(a.windows), tuple(a.faults), tuple(a.dtypes))


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
