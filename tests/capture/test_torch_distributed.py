"""Two ranks under torch.distributed (gloo, CPU processes): each writes its own dump with its rank in the manifest."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from protocol import open_dump

WORLD = 2


def _rank_main(rank: int, folder: str) -> None:
    """One rank: a row-parallel linear layer (half the input features per rank, outputs summed by all_reduce)."""
    import torch.distributed as dist
    from torch import nn

    from capture.base import CaptureOptions
    from capture.torch_backend import TorchBackend
    from protocol import InputSample, InputSet

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)

    class RowParallelLinear(nn.Module):
        def __init__(self):
            super().__init__()
            gen = torch.Generator().manual_seed(0)
            full = torch.randn(6, 8, generator=gen)
            self.shard = nn.Linear(4, 6, bias=False)
            self.shard.weight.data.copy_(full[:, rank * 4:(rank + 1) * 4])

        def forward(self, x):
            partial = self.shard(x[..., rank * 4:(rank + 1) * 4])
            dist.all_reduce(partial)
            return {"y": partial}

    try:
        inputs = InputSet([InputSample({"x": np.arange(16, dtype=np.float32).reshape(2, 8) / 10})])
        backend = TorchBackend(RowParallelLinear())
        backend.capture(inputs, os.path.join(folder, f"tp.rank{rank}.h5"), CaptureOptions(label="tp"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_each_write_their_dump(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path),), nprocs=WORLD, join=True)
    dumps = [open_dump(tmp_path / f"tp.rank{r}.h5") for r in range(WORLD)]
    try:
        assert [(d.manifest.rank, d.manifest.world_size) for d in dumps] == [(0, 2), (1, 2)]
        keys = [[str(r.key) for r in d.records()] for d in dumps]
        assert keys[0] == keys[1] == ["s0/t0/:in.kwargs.x#0", "s0/t0/shard:in.args.0#0", "s0/t0/shard:out#0",
                                      "s0/t0/:out.y#0"]
        shard = [d.read("s0/t0/shard:out#0") for d in dumps]
        summed = [d.read("s0/t0/:out.y#0") for d in dumps]
        assert not np.array_equal(shard[0], shard[1])  # each rank computed its own half
        np.testing.assert_array_equal(summed[0], summed[1])  # all_reduce made them agree
        np.testing.assert_allclose(summed[0], shard[0] + shard[1], rtol=1e-6)
    finally:
        for d in dumps:
            d.close()
