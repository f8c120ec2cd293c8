"""The GPU compiler accepts every kernel launch the ops make (sm_90 target, compiled on the CPU down to PTX).

The interpreter tests check the math; this checks what only the compiler sees (loop-carried types, layouts,
shared memory), so a kernel that would fail to build on the GPU fails here first. One subprocess compiles every
op's launches (one import of torch/Triton/hfzoo instead of one per op).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

HARNESS = Path(__file__).with_name("compile_harness.py")
# distinct kernel launches each op's cases make (kernels x settings); fewer means a launch went missing
MIN_LAUNCHES = {"gla": 30, "rmsnorm": 4, "nearest_code": 20, "varlen_alibi": 10, "group_rational": 4,
                "mosaicbert_ops": 14, "linear_attention": 10, "rational_linear": 16}


def _harness(*args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    return subprocess.run([sys.executable, str(HARNESS), *args], env=env, capture_output=True, text=True,
                          timeout=900)


def test_kernels_compile_for_hopper(tmp_path):
    r = _harness(*MIN_LAUNCHES, tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    compiled = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("ok ")]
    counts = {op: compiled.count(op) for op in MIN_LAUNCHES}
    assert all(counts[op] >= n for op, n in MIN_LAUNCHES.items()), (counts, r.stdout)
