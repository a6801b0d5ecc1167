"""Two tensor-parallel ranks under torchrun (gloo, CPU processes): each writes its own dump with its rank in the
manifest, and ``parity compare`` pairs the dumps rank with rank, so a fault of one rank is reported under that rank."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from protocol import open_dump

WORLD = 2
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: One torchrun rank: a row-parallel linear layer (half the input features per rank, partial outputs summed by
#: all_reduce) and a replicated head, captured twice: as it is (ref) and with rank 1's head off by 1% (cand, as a
#: faulty device on one rank would be).
_RANK = textwrap.dedent("""
    import os, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch import nn
    from capture.base import CaptureOptions
    from capture.torch_backend import TorchBackend
    from protocol import InputSample, InputSet

    folder = sys.argv[1]
    dist.init_process_group("gloo")  # torchrun's env:// rendezvous
    rank = dist.get_rank()
    torch.set_num_threads(1)


    class RowParallel(nn.Module):
        def __init__(self, fault: float):
            super().__init__()
            gen = torch.Generator().manual_seed(0)
            full, head = torch.randn(6, 8, generator=gen), torch.randn(3, 6, generator=gen)
            self.shard = nn.Linear(4, 6, bias=False)
            self.shard.weight.data.copy_(full[:, rank * 4:(rank + 1) * 4])
            self.head = nn.Linear(6, 3, bias=False)
            self.head.weight.data.copy_(head * (1 + fault))

        def forward(self, x):
            partial = self.shard(x[..., rank * 4:(rank + 1) * 4])
            dist.all_reduce(partial)
            return {"y": self.head(partial)}


    try:
        inputs = InputSet([InputSample({"x": np.arange(16, dtype=np.float32).reshape(2, 8) / 10})])
        for label, fault in (("ref", 0.0), ("cand", 0.01 if rank == 1 else 0.0)):
            backend = TorchBackend(RowParallel(fault))
            backend.capture(inputs, os.path.join(folder, f"{label}.rank{rank}.h5"), CaptureOptions(label=label))
        dist.barrier()
    finally:
        dist.destroy_process_group()
""")


@pytest.fixture(scope="module")
def rank_dumps(tmp_path_factory) -> str:
    """A folder with ref.rank{0,1}.h5 and cand.rank{0,1}.h5 written by a real torchrun launch of two processes."""
    folder = tmp_path_factory.mktemp("torchrun")
    script = folder / "rank.py"
    script.write_text(_RANK)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={WORLD}", str(script), str(folder)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(folder)


@pytest.mark.slow
def test_two_torchrun_ranks_each_write_their_dump(rank_dumps):
    dumps = [open_dump(os.path.join(rank_dumps, f"ref.rank{r}.h5")) for r in range(WORLD)]
    try:
        assert [(d.manifest.rank, d.manifest.world_size) for d in dumps] == [(0, 2), (1, 2)]
        keys = [[str(r.key) for r in d.records()] for d in dumps]
        assert keys[0] == keys[1] == ["s0/t0/:in.kwargs.x#0", "s0/t0/shard:in.args.0#0", "s0/t0/shard:out#0",
                                      "s0/t0/head:in.args.0#0", "s0/t0/head:out#0", "s0/t0/:out.y#0"]
        shard = [d.read("s0/t0/shard:out#0") for d in dumps]
        summed = [d.read("s0/t0/head:in.args.0#0") for d in dumps]
        assert not np.array_equal(shard[0], shard[1])  # each rank computed its own half
        np.testing.assert_array_equal(summed[0], summed[1])  # all_reduce made them agree
        np.testing.assert_allclose(summed[0], shard[0] + shard[1], rtol=1e-6)
    finally:
        for d in dumps:
            d.close()


@pytest.mark.slow
def test_compare_pairs_rank_with_rank_and_reports_a_fault_under_its_rank(rank_dumps):
    sides = [os.path.join(rank_dumps, f"{label}.rank{r}.h5") for label in ("ref", "cand") for r in range(WORLD)]
    report = os.path.join(rank_dumps, "report.json")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "parity"), "compare", *sides, "-o", report],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1, proc.stderr  # a divergence
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == 2 and all("  rank=1" in line for line in fails), proc.stdout  # the FAIL lines name it
    assert any(" head:out " in line for line in fails)
    with open(report, encoding="utf-8") as fh:
        sites = json.load(fh)["sites"]
    records = [(s["site"], r["rank"], r["over_tolerance"]) for s in sites for r in s["records"]]
    assert {rank for _, rank, _ in records} == {0, 1}  # every site paired on both ranks
    assert sorted((site, rank) for site, rank, over in records if over) == [(":out.y", 1), ("head:out", 1)]
    assert {s["site"] for s in sites if s["over_tolerance"]} == {"head:out", ":out.y"}
