"""Host time of one GR-KAN MLP (``grkan_mlp``) forward+backward and no-grad forward, KAT-S's shapes.

CPU (default): tensors on the CPU, backend forced to "triton", every Triton launch replaced by a no-op, so the time
is the op's Python and torch dispatch alone (the GEMMs are real CPU matmuls on a tiny batch and subtracted out by
timing them alone). On a GPU (``--gpu``): the real launches, wall time per call with the stream synchronized once per
batch of calls, which is host time where the step is host-bound.

    PYTHONPATH=$PWD python benchmarks/kat_host.py [--gpu] [--bf16] [--n 2000]

``--bf16``: under bf16 autocast (fp32 parameters and input, bf16 matmuls), as KAT-S trains.
"""
from __future__ import annotations

import os
import sys
import time

import torch


def main():
    gpu = "--gpu" in sys.argv
    bf16 = "--bf16" in sys.argv
    if not gpu:
        os.environ["TRITON_INTERPRET"] = "1"   # lets the dispatch pick "triton" for CPU tensors (launches stubbed)
    n = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 2000
    from hfzoo.ops import group_rational as gr
    from hfzoo.ops import rational_linear as rl

    dev = "cuda" if gpu else "cpu"
    if not gpu:
        def _noop(*args, **kwargs):
            return None
        gr.launch = rl.launch = _noop
        torch.set_flush_denormal(True)   # the stubbed kernels leave outputs uninitialised: no slow denormal GEMMs
    D, H, G, M = (384, 1536, 8, 4) if gpu else (64, 256, 8, 4)   # small on the CPU: its GEMMs stay negligible
    torch.manual_seed(0)
    x = torch.randn(1, M, D, device=dev, requires_grad=True)
    a1 = torch.randn(1, 6, device=dev, requires_grad=True)
    b1 = torch.randn(G, 4, device=dev, requires_grad=True)
    w1 = torch.randn(H, D, device=dev, requires_grad=True)
    c1 = torch.randn(H, device=dev, requires_grad=True)
    a2 = torch.randn(G, 6, device=dev, requires_grad=True)
    b2 = torch.randn(G, 4, device=dev, requires_grad=True)
    w2 = torch.randn(D, H, device=dev, requires_grad=True)
    c2 = torch.randn(D, device=dev, requires_grad=True)
    args = (x, a1, b1, w1, c1, a2, b2, w2, c2)
    dout = torch.ones(1, M, D, device=dev)

    def fwd_bwd():
        out = rl.grkan_mlp(*args, num_groups=G, backend="triton")
        out.backward(dout)

    def fwd():
        with torch.no_grad():
            rl.grkan_mlp(*args, num_groups=G, backend="triton")

    def gemms():   # the same GEMMs and sums in eager torch: what the stubbed op still really computes
        with torch.no_grad():
            h = torch.nn.functional.linear(x, w1, c1)
            y = torch.nn.functional.linear(h, w2, c2)
            d2 = dout.reshape(-1, D)
            dh = d2 @ w2
            _ = d2.t() @ h.reshape(-1, H), d2.sum(0)
            _ = dh @ w1, dh.t() @ x.reshape(-1, D), dh.sum(0)
        return y

    def per_call_us(fn0):
        def fn():
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
                fn0()
        for _ in range(50):
            fn()
        best = float("inf")
        for _ in range(5):
            if gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter_ns()
            for _ in range(n // 5):
                fn()
            if gpu:
                torch.cuda.synchronize()
            best = min(best, (time.perf_counter_ns() - t0) / (n // 5) / 1e3)
        return best

    for p in args:
        p.grad = None
    r = {"fwd_bwd_us": per_call_us(fwd_bwd), "fwd_nograd_us": per_call_us(fwd)}
    if not gpu:
        r["eager_gemms_us"] = per_call_us(gemms)
    where = ("GPU, real launches" if gpu else "CPU, launches stubbed") + (", bf16 autocast" if bf16 else ", fp32")
    print(f"grkan_mlp host time ({where}; best of 5 batches of {n // 5}): " +
          ", ".join(f"{k} {v:.1f}" for k, v in r.items()))
    return r


if __name__ == "__main__":
    main()
