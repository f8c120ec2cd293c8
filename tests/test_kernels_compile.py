"""The GPU compiler accepts every kernel launch the ops make (sm_90 target, compiled on the CPU).

The interpreter tests check the math; this checks what only the compiler sees (loop-carried types, layouts,
shared memory), so a kernel that would fail to build on the GPU fails here first.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("compile_harness.py")
# distinct kernel launches each op's cases make (kernels x settings); fewer means a launch went missing
MIN_LAUNCHES = {"gla": 30, "rmsnorm": 4, "nearest_code": 2, "varlen_alibi": 18, "group_rational": 4}


# group_rational's backward kernel crashes Triton 3.9's LLVM lowering (make_llir segfaults) on the CPU machine;
# Triton 3.6 on the GPU machine compiles and runs it (its GPU tests pass). Kept visible as an expected failure.
@pytest.mark.parametrize("op", ["gla", "rmsnorm", "nearest_code", "varlen_alibi", pytest.param(
    "group_rational", marks=pytest.mark.xfail(reason="Triton 3.9 segfaults lowering the backward kernel"))])
def test_kernels_compile_for_hopper(op, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    r = subprocess.run([sys.executable, str(HARNESS), op], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    compiled = [line for line in r.stdout.splitlines() if line.startswith("ok ")]
    assert len(compiled) >= MIN_LAUNCHES[op], r.stdout
