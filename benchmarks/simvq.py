"""Nearest-code search, the quantizer's hot path: hfzoo's streaming Triton kernel vs the usual PyTorch forms.

Case: N vectors against a K x D codebook (65,536 x 65,536 x 128, the size of SimVQ's 65k-code tokenizer with a
256-image batch of 16x16 tokens), fp32 and bf16 inputs. Contenders:
  hfzoo          nearest_code (fp32: precision="exact", the exact argmin; bf16: exact products, fp32 accumulation)
  hfzoo_tf32x3   nearest_code(precision="tf32x3") (fp32 only: the former default, about fp32 accuracy)
  hfzoo_ieee     nearest_code(precision="ieee") (fp32 only: plain fp32 FMA)
  cdist          torch.cdist(z, c).argmin(1)
  matmul_argmin  (|z|^2 + |c|^2 - 2 z c^T).argmin(1) in the input dtype (what the SimVQ reference does)
  torch_compile  torch.compile of matmul_argmin
Metrics: ms (median), GB (peak memory above the inputs), accuracy (fraction of indices equal to the exact argmin:
the fp64 reference on the same input values), s (first call at a new shape: compile + autotune); hfzoo's fp32
accuracy rows carry an extra key `unsettled` (share of rows the first pass could not certify: the fp64 stage's).

Quantizer step, case `vq step B.. HxW K.. D.. fp32`: forward + backward of the SimVQ quantizer on an encoder
output [B, D, H, W] (project the codebook through the linear layer, nearest code, commitment and codebook
losses, straight-through estimator), then a loss on the quantized output; contenders `hfzoo`
(hfzoo.models.simvq.SimVQQuantizer: fp32 training runs `quantize_projected`, five kernels and one matmul),
`hfzoo_unfused` (the same module on its previous path: cuBLAS projection, `nearest_code`, one autograd node of
eager ops) and `vqtorch_simvq` (vector_quantize_pytorch.SimVQ with the same codebook size, dim, a biased Linear
transform, the same two loss terms and weights, rotation trick off). Step metrics beside ms (wall, do_bench):
`device ms` (the summed durations of the step's GPU kernels, torch.profiler) and `launches` (GPU kernels per
step, the profiler's count: Triton, aten and cuBLAS alike).

    PYTHONPATH=. HFZOO_BENCH_OUT=/tmp/out python benchmarks/simvq.py [--quick] [--only search|step|sweep]

The step cases need vector_quantize_pytorch 1.32.0 and its pure-Python dependencies (einx, einops, frozendict,
loguru, torch_einops_utils) importable; without them the vqtorch_simvq rows are skipped with a message.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import Results, bench_ms, cuda_kernels, first_call_s, peak_gb  # noqa: E402
from hfzoo.ops import nearest_code as nc  # noqa: E402
from hfzoo.ops.launch import tuning  # noqa: E402
from hfzoo.ops.nearest_code import nearest_code, nearest_code_reference  # noqa: E402


def matmul_argmin(z, c):
    d = (z * z).sum(1, keepdim=True) + (c * c).sum(1)[None, :] - 2 * (z @ c.t())
    return d.argmin(1)


def cdist_argmin(z, c):
    return torch.cdist(z, c).argmin(1)


def run_case(res: Results, n: int, k: int, d: int, dtype: torch.dtype, compile_too: bool, coldstart: bool,
             ieee: bool = False):
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    case = f"N{n} K{k} D{d} {name}"
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(n, d, device="cuda", generator=g).to(dtype)
    c = (torch.randn(k, d, device="cuda", generator=g) / d ** 0.5).to(dtype)
    ref, _ = nearest_code_reference(z, c, exact=True)  # the exact argmin of the same input values
    contenders = {"hfzoo": lambda: nearest_code(z, c)}
    if dtype == torch.float32:
        contenders["hfzoo_tf32x3"] = lambda: nearest_code(z, c, precision="tf32x3")
        if ieee:
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
    if dtype == torch.float32:  # after the contenders: the first call above is the cold start
        share = unsettled_share(z, c)
        print(f"{case}: hfzoo settled {share:.2%} of the rows in fp64", flush=True)
        for r in res.rows:  # an extra key on hfzoo's accuracy row (not a metric of its own)
            if r["case"] == case and r["contender"] == "hfzoo" and r["metric"] == "accuracy":
                r["unsettled"] = share
    torch.cuda.empty_cache()


def unsettled_share(z, c, candidates=None):
    """Share of rows whose first-pass winner the error bound cannot certify (they go to the fp64 stage)."""
    with tuning({"nearest_code.exact": {"candidates": candidates}} if candidates else {}):
        flag = nc._exact_first_pass(z, c)[3]
    return (flag != 0).float().mean().item()


def sweep(res: Results):
    """Exact-mode variants (candidates pass; per config) and the bf16 configs one by one, each checked."""
    g = torch.Generator(device="cuda").manual_seed(0)
    n = k = 65536
    z = torch.randn(n, 128, device="cuda", generator=g)
    c = torch.randn(k, 128, device="cuda", generator=g) / 128 ** 0.5
    ref, _ = nearest_code_reference(z, c, exact=True)
    case = f"sweep N{n} K{k} D128 fp32"
    for cand in ("bf16x3", "tf32"):
        with tuning({"nearest_code.exact": {"candidates": cand}}):
            fn = lambda z=z, c=c: nearest_code(z, c)  # noqa: E731
            res.add(case, f"exact_{cand}", "ms", bench_ms(fn, warmup=3, rep=30))
            res.add(case, f"exact_{cand}", "accuracy", (fn() == ref).float().mean().item(),
                    unsettled=unsettled_share(z, c))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            print(f"exact_{cand} kernels:\n" + prof.key_averages().table(sort_by="cuda_time_total", row_limit=12),
                  flush=True)
            for conf in nc.settings("nearest_code.candidates")["configs"]:
                name = f"pass1_{cand}_" + "_".join(f"{v}" for v in conf.values())
                with tuning({"nearest_code.candidates": {"configs": [conf]}}):
                    try:
                        res.add(case, name, "ms", bench_ms(lambda z=z, c=c: nc._exact_first_pass(z, c), warmup=2,
                                                           rep=20))
                    except Exception as e:
                        print(f"{case} {name}: failed ({type(e).__name__}: {str(e)[:120]})", flush=True)
    zb, cb = z.bfloat16(), c.bfloat16()
    refb, _ = nearest_code_reference(zb, cb)
    case = f"sweep N{n} K{k} D128 bf16"
    for conf in nc.settings("nearest_code.fwd_16bit")["configs"]:
        name = "bf16_" + "_".join(f"{v}" for v in conf.values())
        with tuning({"nearest_code.fwd_16bit": {"configs": [conf]}}):
            fn = lambda zb=zb, cb=cb: nearest_code(zb, cb)  # noqa: E731
            try:
                res.add(case, name, "ms", bench_ms(fn, warmup=2, rep=20))
                res.add(case, name, "accuracy", (fn() == refb).float().mean().item())
            except Exception as e:
                print(f"{case} {name}: failed ({type(e).__name__}: {str(e)[:120]})", flush=True)
    res.save()


def _vqtorch_quantizer(k, d):
    from torch import nn
    from vector_quantize_pytorch import SimVQ

    # same codebook size and dim, a biased Linear as hfzoo's W, the same loss terms: ||sg(x) - q||^2 weight 1,
    # ||x - sg(q)||^2 weight 0.25 (vqtorch's input_to_quantize_commit_loss_weight), straight-through
    return SimVQ(dim=d, codebook_size=k, codebook_transform=nn.Linear(d, d, bias=True), channel_first=True,
                 rotation_trick=False, input_to_quantize_commit_loss_weight=0.25, commitment_weight=1.0)


def device_profile(fn, n: int = 10):
    """(GPU-kernel milliseconds, kernels launched) per call of ``fn``: summed from torch.profiler's CUDA events,
    without the gaps where the GPU waits for the host (do_bench's wall time includes them)."""
    kernels = cuda_kernels(fn, n)
    for e in kernels:
        print(f"  {e.count / n:5.1f} x {e.self_device_time_total / max(e.count, 1):8.1f} us  {e.key[:90]}")
    total_us = sum(e.self_device_time_total for e in kernels)
    return total_us / n / 1e3, sum(e.count for e in kernels) / n


def run_step_case(res: Results, b: int, hw: int, k: int, d: int):
    from hfzoo.models.simvq.modeling_simvq import SimVQQuantizer

    case = f"vq step B{b} {hw}x{hw} K{k} D{d} fp32"
    torch.manual_seed(0)
    ours = SimVQQuantizer(k, d, beta=0.25).cuda()
    nn_init = torch.nn.init
    nn_init.normal_(ours.embedding.weight, std=d ** -0.5)
    unfused = SimVQQuantizer(k, d, beta=0.25).cuda()
    unfused.load_state_dict(ours.state_dict())
    unfused._fused = lambda z: False  # the previous path: cuBLAS projection, nearest_code, _QuantizerStep
    contenders = {"hfzoo": ours, "hfzoo_unfused": unfused}
    try:
        peer = _vqtorch_quantizer(k, d).cuda()
        with torch.no_grad():  # the same frozen codes and W, b
            peer.frozen_codebook.copy_(ours.embedding.weight)
            peer.code_transform.weight.copy_(ours.embedding_proj.weight)
            peer.code_transform.bias.copy_(ours.embedding_proj.bias)
        contenders["vqtorch_simvq"] = peer
    except Exception as e:
        print(f"{case} vqtorch_simvq: unavailable ({type(e).__name__}: {str(e)[:120]})", flush=True)
    x = torch.randn(b, d, hw, hw, device="cuda", requires_grad=True)
    target = torch.randn(b, d, hw, hw, device="cuda")
    outs = {}
    for cname, q in contenders.items():
        params = [p for p in q.parameters() if p.requires_grad]

        def step(q=q, params=params):
            for p in params:
                p.grad = None
            x.grad = None
            zq, idx, loss = q(x)
            total = loss + (zq - target).square().mean()  # stands in for the decoder's reconstruction loss
            total.backward()
            return idx, loss

        try:
            res.add(f"coldstart {case}", cname, "s", first_call_s(step))
            idx, loss = step()
            outs[cname] = (idx.clone(), loss.item(), x.grad.clone(), params[0].grad.clone())
            res.add(case, cname, "loss", loss.item())
            res.add(case, cname, "GB", peak_gb(step))
            res.add(case, cname, "ms", bench_ms(step, warmup=3, rep=50))
            dev_ms, kernels = device_profile(step)
            res.add(case, cname, "device ms", dev_ms)
            res.add(case, cname, "launches", kernels)
        except Exception as e:
            torch.cuda.synchronize()
            print(f"{case} {cname}: skipped ({type(e).__name__}: {str(e)[:200]})", flush=True)
        torch.cuda.empty_cache()
    if "hfzoo" in outs and "hfzoo_unfused" in outs:
        ia, la, ga, wa = outs["hfzoo"]
        ib, lb, gb, wb = outs["hfzoo_unfused"]
        print(f"{case}: fused vs unfused: index agreement {(ia == ib).float().mean().item():.6f}, loss {la:.6g} vs "
              f"{lb:.6g}; grad x rel diff {((ga - gb).norm() / gb.norm()).item():.3g}; grad W rel diff "
              f"{((wa - wb).norm() / wb.norm()).item():.3g}", flush=True)
    if "hfzoo" in outs and "vqtorch_simvq" in outs:
        (ia, la, ga, wa), (ib, lb, gb, wb) = outs["hfzoo"], outs["vqtorch_simvq"]
        res.add(case, "vqtorch_simvq", "accuracy", (ia == ib).float().mean().item())  # index agreement with hfzoo
        print(f"{case}: loss {la:.6g} vs {lb:.6g}; grad x rel diff {((ga - gb).norm() / gb.norm()).item():.3g}; "
              f"grad W rel diff {((wa - wb).norm() / wb.norm()).item():.3g}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="only the small cases")
    parser.add_argument("--only", choices=("search", "step", "sweep"), default=None)
    args = parser.parse_args()
    res = Results("simvq" if args.only != "sweep" else "simvq_sweep")
    t0 = time.time()
    if args.only == "sweep":
        sweep(res)
        res.save()
        return
    cases = [(65536, 65536, 128, torch.float32, True, True), (65536, 65536, 128, torch.bfloat16, True, True),
             (16384, 8192, 128, torch.float32, False, False), (16384, 8192, 128, torch.bfloat16, False, False)]
    # B256 16x16 is the batch of the search cases (N = 65,536 latents); B64 shows the small-batch end, where
    # launch overheads (tens of kernels per step) weigh as much as the search
    steps = [(64, 16, 8192, 128), (256, 16, 8192, 128), (64, 16, 65536, 128), (256, 16, 65536, 128)]
    if args.quick:
        cases, steps = cases[2:], steps[:1]
    if args.only != "step":
        for case in cases:
            run_case(res, *case)
            res.save()  # keep what was measured if the run is cut short
            print(f"elapsed {time.time() - t0:.1f} s", flush=True)
    if args.only != "search":
        for case in steps:
            run_step_case(res, *case)
            res.save()
            print(f"elapsed {time.time() - t0:.1f} s", flush=True)
    for r in res.rows:  # ratios for the notes
        if r["metric"] == "ms" and r["contender"] == "hfzoo":
            for o in res.rows:
                if o["case"] == r["case"] and o["metric"] == "ms" and o["contender"] != "hfzoo":
                    print(f"{r['case']}: hfzoo / {o['contender']} = {r['value'] / o['value']:.3f}")


if __name__ == "__main__":
    main()
