"""Fused gated RMSNorm (GLA/MoM output norm) vs eager PyTorch and torch.compile. GPU only.

    PYTHONPATH=. python benchmarks/rmsnorm.py
"""

import torch

from benchmarks.common import Results, bench_ms, first_call_s
from hfzoo.ops.rmsnorm import rms_norm_gated, rms_norm_gated_reference


def bench_shape(res, rows, D, compiled):
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(rows, D, device=dev, dtype=dt, requires_grad=True)
    g = torch.randn(rows, D, device=dev, dtype=dt, requires_grad=True)
    w = torch.ones(D, device=dev, dtype=dt, requires_grad=True)
    dy = torch.randn_like(x)
    fwd_bytes = 3 * x.numel() * x.element_size()  # read x, g; write y
    bwd_bytes = 5 * x.numel() * x.element_size()  # read x, g, dy; write dx, dg
    contenders = {
        "hfzoo": lambda: rms_norm_gated(x, w, g, backend="triton"),
        "torch_reference": lambda: rms_norm_gated_reference(x, w, g),
        "torch_compile": lambda: compiled(x, w, g),
    }
    case = f"rows{rows} D{D} bf16"
    res.add(f"coldstart fwdbwd {case}", "hfzoo", "s", first_call_s(lambda: contenders["hfzoo"]().backward(dy)))
    for name, fn in contenders.items():
        ms = bench_ms(fn)
        res.add(f"fwd {case}", name, "ms", ms)
        res.add(f"fwd {case}", name, "GB/s", fwd_bytes / ms / 1e6)
        ms_fb = bench_ms(lambda fn=fn: torch.autograd.grad(fn(), (x, w, g), dy))
        res.add(f"fwdbwd {case}", name, "ms", ms_fb)
        res.add(f"fwdbwd {case}", name, "GB/s", (fwd_bytes + bwd_bytes) / ms_fb / 1e6)


def main():
    res = Results("rmsnorm")
    compiled = torch.compile(rms_norm_gated_reference)
    for rows, D in [(32768 * 16, 128), (32768 * 4, 512), (32768, 2048)]:
        bench_shape(res, rows, D, compiled)
    print(res.save(plot_metric="GB/s"))


if __name__ == "__main__":
    main()
