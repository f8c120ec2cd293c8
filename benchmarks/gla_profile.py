"""Where a chunked-GLA forward+backward spends its time: GPU time per kernel (torch.profiler), per call.

    PYTHONPATH=. HFZOO_BENCH_OUT=$OUT python benchmarks/gla_profile.py [hfzoo] [fla] [--gate=logsigmoid] [--T=8192]

For each contender and shape (bf16, 32k tokens, T = 8192 and 16384) it runs a few warm-up calls, then
profiles ``ITERS`` forward+backward calls and prints each kernel's mean time per call, largest first.
Gates as ``benchmarks/gla.py``'s ``GATES`` (default ``logsigmoid/16``).
Rows go to ``gla_profile.json``: case ``kernels T.. H.. K.. V.. gate=..``, contender ``<name>:<kernel>``, metric ``ms``.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import Results  # noqa: E402

ITERS = 10
SHAPES = [(16, 128, 128), (4, 256, 512)]
LENGTHS = [8192, 16384]


def _contender(name):
    if name == "hfzoo":
        from hfzoo.ops.gla import chunk_gla

        return chunk_gla
    from fla.ops.gla import chunk_gla

    return chunk_gla


def kernel_times(fn, q, k, v, g, do):
    from torch.profiler import ProfilerActivity, profile

    def step():
        o = fn(q, k, v, g)[0]
        o.backward(do)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(ITERS):
            step()
        torch.cuda.synchronize()
    per = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name[:60]] += ev.device_time_total / 1e3 / ITERS  # us -> ms per call
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def main():
    from benchmarks.gla import GATES

    names = [a for a in sys.argv[1:] if not a.startswith("-")] or ["hfzoo"]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    gate = opts.get("gate", "logsigmoid/16")
    lengths = [int(t) for t in opts["T"].split(",")] if "T" in opts else LENGTHS
    res = Results("gla_profile")
    for name in names:
        fn = _contender(name)
        for H, K, V in SHAPES:
            for T in lengths:
                B = 32768 // T
                q = torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                k = torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                v = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                g = GATES[gate](torch.randn(B, T, H, K, device="cuda")).requires_grad_()
                do = torch.randn_like(v)
                case = f"kernels T{T} H{H} K{K} V{V} gate={gate}"
                times = kernel_times(fn, q, k, v, g, do)
                print(f"--- {name} {case}: total {sum(times.values()):.3f} ms")
                for kern, ms in times.items():
                    res.add(case, f"{name}:{kern}", "ms", ms)
                res.add(case, f"{name}:total", "ms", sum(times.values()))
                res.save(plot_metric=None)
    print("saved", res.save(plot_metric=None))


if __name__ == "__main__":
    main()
