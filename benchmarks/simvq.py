"""Nearest-code search, the quantizer's hot path: hfzoo's streaming Triton kernel vs the usual PyTorch forms.

Case: N vectors against a K x D codebook (65,536 x 65,536 x 128, the size of SimVQ's 65k-code tokenizer with a
256-image batch of 16x16 tokens), fp32 and bf16 inputs. Contenders:
  hfzoo          nearest_code (fp32: tf32x3 dots; bf16: exact products, fp32 accumulation)
  hfzoo_ieee     nearest_code(precision="ieee") (fp32 only: plain fp32 FMA)
  cdist          torch.cdist(z, c).argmin(1)
  matmul_argmin  (|z|^2 + |c|^2 - 2 z c^T).argmin(1) in the input dtype (what the SimVQ reference does)
  torch_compile  torch.compile of matmul_argmin
Metrics: ms (median), GB (peak memory above the inputs), accuracy (fraction of indices equal to the fp32
reference of the same input values), s (first call at a new shape: compile + autotune).

    PYTHONPATH=. HFZOO_BENCH_OUT=/tmp/out python benchmarks/simvq.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import Results, bench_ms, first_call_s, peak_gb  # noqa: E402
from hfzoo.ops.nearest_code import nearest_code, nearest_code_reference  # noqa: E402


def matmul_argmin(z, c):
    d = (z * z).sum(1, keepdim=True) + (c * c).sum(1)[None, :] - 2 * (z @ c.t())
    return d.argmin(1)


def cdist_argmin(z, c):
    return torch.cdist(z, c).argmin(1)


def run_case(res: Results, n: int, k: int, d: int, dtype: torch.dtype, compile_too: bool, coldstart: bool):
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    case = f"N{n} K{k} D{d} {name}"
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(n, d, device="cuda", generator=g).to(dtype)
    c = (torch.randn(k, d, device="cuda", generator=g) / d ** 0.5).to(dtype)
    ref, _ = nearest_code_reference(z, c)  # fp32 arithmetic on the same input values
    contenders = {"hfzoo": lambda: nearest_code(z, c)}
    if dtype == torch.float32:
        contenders["hfzoo_ieee"] = lambda: nearest_code(z, c, precision="ieee")
    contenders["cdist"] = lambda: cdist_argmin(z, c)
    contenders["matmul_argmin"] = lambda: matmul_argmin(z, c)
    if compile_too:
        compiled = torch.compile(matmul_argmin, dynamic=False)
        contenders["torch_compile"] = lambda: compiled(z, c)
    for cname, fn in contenders.items():
        try:
            if coldstart or cname == "torch_compile":
                res.add(f"coldstart {case}", cname, "s", first_call_s(fn))
            idx = fn()
            res.add(case, cname, "accuracy", (idx == ref).float().mean().item())
            res.add(case, cname, "GB", peak_gb(fn))
            res.add(case, cname, "ms", bench_ms(fn, warmup=3, rep=30))
        except Exception as e:  # e.g. cdist has no bf16 kernel; one contender failing must not end the run
            torch.cuda.synchronize()
            print(f"{case} {cname}: skipped ({type(e).__name__}: {str(e)[:120]})", flush=True)
        torch.cuda.empty_cache()
    torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="only the small case")
    args = parser.parse_args()
    res = Results("simvq")
    t0 = time.time()
    cases = [(65536, 65536, 128, torch.float32, True, True), (65536, 65536, 128, torch.bfloat16, True, True),
             (16384, 8192, 128, torch.float32, False, False), (16384, 8192, 128, torch.bfloat16, False, False)]
    if args.quick:
        cases = cases[2:]
    for case in cases:
        run_case(res, *case)
        res.save()  # keep what was measured if the run is cut short
        print(f"elapsed {time.time() - t0:.1f} s", flush=True)
    for r in res.rows:  # ratios for the notes
        if r["metric"] == "ms" and r["contender"] == "hfzoo":
            for o in res.rows:
                if o["case"] == r["case"] and o["metric"] == "ms" and o["contender"] != "hfzoo":
                    print(f"{r['case']}: {o['contender']} / hfzoo = {o['value'] / r['value']:.2f}x")


if __name__ == "__main__":
    main()
