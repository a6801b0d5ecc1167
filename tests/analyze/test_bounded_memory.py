"""A 2 GB dump pair is compared with memory bounded by the block size (peak RSS measured in a subprocess)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from protocol import DumpWriter, Manifest, RecordKey

# VmHWM of the child's own address space: ru_maxrss would carry the parent's peak across fork+exec on Linux.
# The compiled kernels (numba and LLVM, ~120 MiB, loaded once per process by the first large block; a real model's
# logits load them anyway) are loaded before the baseline: what is bounded is the growth with the data.
CHILD = """
import sys, analyze, analyze.tensor_metrics
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
analyze.tensor_metrics._kernels()
before = hwm()
report = analyze.compare(sys.argv[1], sys.argv[2], chunk_elements=1 << 22)
print(before, hwm(), report.sites[0].records[0].metrics['rel_l2'], len(report.sites))
"""


@pytest.mark.slow
def test_two_gigabyte_pair_bounded_memory(tmp_path):
    rows, width, records = 16384, 4096, 4  # 4 x 256 MiB per side: 2 GiB together
    for side, noise in (("ref", 0.0), ("cand", 1e-3)):
        with DumpWriter(str(tmp_path / f"{side}.h5"), Manifest(label=side)) as w:
            for i in range(records):
                key = RecordKey(0, 0, f"layers.{i}:out")
                with w.stream(key, (rows, width), "float32") as stream:
                    for start in range(0, rows, 2048):
                        block = np.random.default_rng(i * 100 + start).standard_normal((2048, width),
                                                                                       dtype=np.float32)
                        if noise:
                            block += np.float32(noise)
                        stream.write(block)
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "ref.h5"), str(tmp_path / "cand.h5")],
                         capture_output=True, text=True, check=True).stdout.split()
    before, peak, rel_l2, sites = float(out[0]), float(out[1]), float(out[2]), int(out[3])
    assert sites == records and 0 < rel_l2 < 1e-2
    # 1 GiB per side was compared; the analyzer's own growth stays near a few blocks of 16 MiB
    assert peak - before < 256, f"peak RSS grew by {peak - before:.0f} MiB (from {before:.0f} MiB)"
