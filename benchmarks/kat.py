"""KAT: the group-rational activation (forward, backward) and a whole-model training step. GPU only.

    PYTHONPATH=. python benchmarks/kat.py

Rational on x of shape (64 * 1000, 768), 8 groups, numerator (1, 6) and denominator (8, 4) as in the released
models, bf16 and fp32. Contenders: `hfzoo` (Triton), `torch_reference` (eager PyTorch), `torch_compile` (of
the reference) and `rational_kat_cu` (the released Triton kernel, loaded from `.ext/rational_kat_cu/` when
present: a copy of its public `kat_rational/rational_triton.py`, used only for this comparison).
Bytes counted: forward reads x and writes y; backward reads x and dy and writes dx (the coefficient-gradient
partials, under 3 MB, are left out). Backward variants (rows `bwd ...` only): `hfzoo_two_kernels`,
`hfzoo_last_program` (the coefficient gradients summed by a second kernel / by the last program to finish, one
launch) and `flashkat_idea` (each program atomically adds its block sums: FlashKAT's scheme, in our kernel). Whole model: KAT-S (`hfzoo_kat`; `hfzoo_kat_modules`: its MLPs module by module) vs ViT-S (same model with a GELU MLP) training steps
(forward, backward, fused AdamW) under bf16 autocast, batch 128, 224 px; and inference (eval, no_grad, bf16
autocast) at batch 256.

GR-KAN MLP of KAT-S (`mlp`): 128 images x 197 tokens = 25,216 rows, D 384 -> 1536 -> 384, 8 groups, fp32 input (the
LayerNorm's output) and fp32 parameters under bf16 autocast, as in the training step. Contenders: `hfzoo_fused`
(`grkan_mlp`, both rationals inside the next matmul's kernel), `hfzoo_fused_fc1` / `hfzoo_fused_fc2` (one of the
two), `hfzoo_unfused` (the same single autograd node with the rational kernel + cuBLAS), `hfzoo_fused_bwd` /
`hfzoo_fused_bwd_fc2` (fused forward, and dF = dY @ W computed inside the rational's backward kernel for both linears
/ for fc2 only), `hfzoo_modules` (KATMLP
module by module: rational op, nn.Linear, rational op, nn.Linear, as before rational_linear), `vit_gelu_mlp` (ViT-S's
fc1 -> GELU -> fc2). Cases `mlp fwd ...` (no grad) and `mlp fwdbwd ...` (forward + backward of all parameters and the
input); metric `ms` (do_bench: host included) and `ms GPU kernels` (torch.profiler's kernel durations). Single
layers (`linear fwd fc1/fc2 ...`): fused kernel vs rational kernel + cuBLAS vs cuBLAS alone (no rational).

Parts (arguments; default `rational mlp model`): `rational` (all contenders), `rational-hfzoo`, `mlp`, `model` (KAT,
ViT, the eager-rational KAT; training and inference), `model-kat`, `sweep` (launch settings first, then the rest
with the best ones).
"""

import importlib.util
import os
import sys
import traceback
from pathlib import Path

import torch

from benchmarks.common import Results, bench_ms, device_ms, first_call_s, seconds_per_step
from hfzoo.ops.group_rational import RATIONAL_INITS, group_rational, group_rational_reference
from hfzoo.ops.launch import settings, tuning


def rel_err(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()

ROOT = Path(__file__).resolve().parent.parent
M, D, G = 64 * 1000, 768, 8


def load_rational_kat_cu():
    path = ROOT / ".ext" / "rational_kat_cu" / "rational_triton.py"
    if not path.is_file():
        return None
    if not hasattr(torch.cuda.amp, "custom_fwd"):   # its decorators; gone from newer torch
        import functools

        torch.cuda.amp.custom_fwd = functools.partial(torch.amp.custom_fwd, device_type="cuda")
        torch.cuda.amp.custom_bwd = functools.partial(torch.amp.custom_bwd, device_type="cuda")
    spec = importlib.util.spec_from_file_location("rational_kat_cu_triton", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.RationalTriton1DGroup


def bench_rational(res: Results, only_hfzoo: bool = False, coldstart: bool = True):
    kat_cu = compiled = None
    if not only_hfzoo:
        try:
            kat_cu = load_rational_kat_cu()
        except Exception:
            traceback.print_exc()
        compiled = torch.compile(group_rational_reference)
    for dt in (torch.bfloat16, torch.float32):
        bench_rational_dtype(res, dt, kat_cu, compiled, coldstart)
        torch.cuda.empty_cache()


def rational_inputs(dt):
    """The benchmark's (M, D) input, its upstream gradient and swish-initialised coefficients (seeded)."""
    torch.manual_seed(0)
    x = torch.randn(M, D, device="cuda", dtype=dt, requires_grad=True)
    dy = torch.randn(M, D, device="cuda", dtype=dt)
    a = torch.tensor([RATIONAL_INITS["swish"][0]], device="cuda", requires_grad=True)
    b = torch.tensor([RATIONAL_INITS["swish"][1]] * G, device="cuda", requires_grad=True)
    return x, dy, a, b


def bench_rational_dtype(res: Results, dt, kat_cu, compiled, coldstart=True):
    case = f"({M},{D}) G{G} {'bf16' if dt == torch.bfloat16 else 'fp32'}"
    x, dy, a, b = rational_inputs(dt)
    nbytes = x.numel() * x.element_size()
    contenders = {"hfzoo": lambda: group_rational(x, a, b, G, backend="triton")}
    if compiled is not None:
        contenders["torch_reference"] = lambda: group_rational_reference(x, a, b, G)
        contenders["torch_compile"] = lambda: compiled(x, a, b, G)
    if kat_cu is not None:
        contenders["rational_kat_cu"] = lambda: kat_cu.apply(x, a.repeat(G, 1), b, G)

    def backward(y):
        return torch.autograd.grad(y, (x, a, b), dy, retain_graph=True)

    # backward variants (rows `bwd ...` / `bwd-device ...` only): how the coefficient gradients are summed over the
    # kernel's programs -- a second kernel, the last program to finish, or atomic adds (FlashKAT's scheme)
    variants = {"hfzoo_two_kernels": "kernel", "hfzoo_last_program": "last_program", "flashkat_idea": "atomic"}
    ref_grads = backward(group_rational_reference(x, a, b, G))
    for cname, reduce in variants.items():
        try:
            with tuning({"group_rational.coef_grad": {"reduce": reduce}}):
                y = group_rational(x, a, b, G, backend="triton")   # the backward's settings are read here
            err = max(rel_err(o, r) for o, r in zip(backward(y), ref_grads))
            ms = bench_ms(lambda y=y: backward(y))
            res.add(f"bwd {case}", cname, "ms", ms, max_rel_err_vs_reference=err)
            res.add(f"bwd {case}", cname, "GB/s", 3 * nbytes / ms / 1e6)
            ms = device_ms(lambda y=y: backward(y))
            res.add(f"bwd-device {case}", cname, "ms", ms)
            res.add(f"bwd-device {case}", cname, "GB/s", 3 * nbytes / ms / 1e6)
        except Exception:
            traceback.print_exc()
    del ref_grads

    if coldstart:   # first call at this shape: compiles the forward and backward kernels
        res.add(f"coldstart fwdbwd {case}", "hfzoo", "s", first_call_s(lambda: backward(contenders["hfzoo"]())))
    for cname, fn in contenders.items():
        try:
            ms = bench_ms(fn)
            res.add(f"fwd {case}", cname, "ms", ms)
            res.add(f"fwd {case}", cname, "GB/s", 2 * nbytes / ms / 1e6)
            y = fn()
            slow = cname == "rational_kat_cu"     # ~0.4 s per backward (per-element atomics)
            ms = bench_ms(lambda y=y: backward(y), warmup=5 if slow else 10, rep=20 if slow else 50)
            res.add(f"bwd {case}", cname, "ms", ms)
            res.add(f"bwd {case}", cname, "GB/s", 3 * nbytes / ms / 1e6)
            if not slow:   # GPU time alone (the rows above include the host's time to issue the call)
                for kind, f, nb in (("fwd", fn, 2 * nbytes), ("bwd", lambda y=y: backward(y), 3 * nbytes)):
                    ms = device_ms(f)
                    res.add(f"{kind}-device {case}", cname, "ms", ms)
                    res.add(f"{kind}-device {case}", cname, "GB/s", nb / ms / 1e6)
        except Exception:
            traceback.print_exc()


# Launch-setting candidates (hfzoo.ops.launch.DEFAULTS["group_rational.*"]), measured by
# `python benchmarks/kat.py sweep` inside hfzoo.ops.launch.tuning() blocks (nothing global is modified).
FWD_SWEEP = [dict(bytes_per_thread=64, num_warps=8), dict(bytes_per_thread=128, num_warps=8),
             dict(bytes_per_thread=128, num_warps=4), dict(bytes_per_thread=256, num_warps=8)]
BWD_SWEEP = [dict(values_per_thread=v, num_warps=w, programs_per_sm=p, prefetch=f)
             for v, w, p, f in [(8, 4, 8, True), (8, 4, 8, False), (8, 4, 16, True), (16, 4, 8, True),
                                (16, 8, 4, False), (8, 8, 8, True), (4, 8, 8, True), (8, 8, 4, False)]]


def sweep(res: Results):
    """Time each launch setting on the benchmark shape, check it against the reference, keep the best."""
    best = {}
    for dt in (torch.bfloat16, torch.float32):
        sweep_dtype(res, dt, best)
        torch.cuda.empty_cache()
    return best


def sweep_dtype(res: Results, dt, best: dict):
    name = "bf16" if dt == torch.bfloat16 else "fp32"
    x, dy, a, b = rational_inputs(dt)
    nbytes = x.numel() * x.element_size()

    def fwd():
        return group_rational(x, a, b, G, backend="triton")

    def bwd(y):
        return torch.autograd.grad(y, (x, a, b), dy, retain_graph=True)

    # every candidate is checked against the PyTorch reference on these inputs
    y_ref = group_rational_reference(x, a, b, G)
    refs = {"fwd": (y_ref,), "bwd": bwd(y_ref)}
    del y_ref
    tol = 2e-2 if dt == torch.bfloat16 else 1e-4
    bwd_kernel = "group_rational.bwd_16bit" if x.element_size() == 2 else "group_rational.bwd_fp32"
    fwd_candidates = FWD_SWEEP if dt == torch.bfloat16 else FWD_SWEEP[:1]
    for kind, kernel, candidates in (("fwd", "group_rational.fwd", fwd_candidates), ("bwd", bwd_kernel, BWD_SWEEP)):
        ref, scores = refs[kind], []
        for cand in candidates:
            try:
                with tuning({kernel: cand}):
                    y = fwd()
                    out = (y,) if kind == "fwd" else bwd(y)
                    err = max(rel_err(o, r) for o, r in zip(out, ref))
                    ms = bench_ms(fwd if kind == "fwd" else (lambda y=y: bwd(y)), warmup=5, rep=20)
                gbs = (2 if kind == "fwd" else 3) * nbytes / ms / 1e6
                label = ",".join(f"{k}={v}" for k, v in cand.items())
                res.add(f"sweep {kind} ({M},{D}) {name}", label, "GB/s", gbs, max_rel_err_vs_reference=err)
                if err < tol:
                    scores.append((gbs, cand))
            except Exception:
                traceback.print_exc()
        if scores:
            best[(kind, name)] = max(scores, key=lambda t: t[0])[1]
            print(f"best {kind} {name}: {best[(kind, name)]}", flush=True)


MLP_TOKENS, MLP_D, MLP_H = 128 * 197, 384, 1536


def bench_mlp(res: Results):
    """KAT-S's GR-KAN MLP: fused vs unfused vs module by module vs ViT's GELU MLP, forward and forward+backward."""
    from hfzoo.models.kat import KATConfig
    from hfzoo.models.kat.modeling_kat import KATMLP
    from hfzoo.ops.rational_linear import grkan_mlp

    torch.manual_seed(0)
    cfg = KATConfig.from_preset("kat_small")
    kan = KATMLP(cfg).cuda()
    vit = KATMLP(KATConfig.from_preset("kat_small", mlp_type="mlp")).cuda()
    with torch.no_grad():   # the trained-model regime rather than the identity init: both rationals as swish
        for act in (kan.act1, kan.act2):
            act.weight_numerator.copy_(torch.tensor([RATIONAL_INITS["swish"][0]]))
            act.weight_denominator.copy_(torch.tensor([RATIONAL_INITS["swish"][1]] * act.num_groups))
    x = torch.randn(MLP_TOKENS, MLP_D, device="cuda", requires_grad=True)
    dy = torch.randn(MLP_TOKENS, MLP_D, device="cuda", dtype=torch.bfloat16)
    a1, a2, f1, f2 = kan.act1, kan.act2, kan.fc1, kan.fc2

    def grkan(fuse, fuse_backward=(False, False)):
        return lambda: grkan_mlp(x, a1.weight_numerator, a1.weight_denominator, f1.weight, f1.bias,
                                 a2.weight_numerator, a2.weight_denominator, f2.weight, f2.bias, num_groups=G,
                                 fuse=fuse, fuse_backward=fuse_backward)

    modules = KATMLP(cfg).cuda()
    modules.load_state_dict(kan.state_dict())
    modules._fusable = lambda: False   # this instance runs module by module
    contenders = {"hfzoo_fused": grkan((True, True)), "hfzoo_fused_fc1": grkan((True, False)),
                  "hfzoo_fused_fc2": grkan((False, True)), "hfzoo_unfused": grkan((False, False)),
                  "hfzoo_fused_bwd": grkan((True, True), (True, True)),
                  "hfzoo_fused_bwd_fc2": grkan((True, True), (False, True)),
                  "hfzoo_modules": lambda: modules(x), "vit_gelu_mlp": lambda: vit(x)}
    params = {n: [x] + list(m.parameters()) for n, m in (("kan", kan), ("modules", modules), ("vit", vit))}
    case = f"KAT-S bs128 ({MLP_TOKENS},{MLP_D}->{MLP_H}) bf16"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = None
        for cname, fn in contenders.items():
            try:
                with torch.no_grad():
                    y = fn()
                    if cname.startswith("hfzoo"):
                        ref = y.float() if ref is None else ref
                        err = rel_err(y.float(), ref)
                    else:
                        err = None
                    ms = bench_ms(fn)
                    extra = {} if err is None else {"rel_err_vs_hfzoo_fused": err}
                    res.add(f"mlp fwd {case}", cname, "ms", ms, **extra)
                    res.add(f"mlp fwd {case} GPU kernels", cname, "ms", device_ms(fn))
                ps = params["vit" if cname == "vit_gelu_mlp" else "modules" if cname == "hfzoo_modules" else "kan"]

                def fwdbwd(fn=fn, ps=ps):
                    return torch.autograd.grad(fn(), ps, dy)

                res.add(f"mlp fwdbwd {case}", cname, "ms", bench_ms(fwdbwd))
                res.add(f"mlp fwdbwd {case} GPU kernels", cname, "ms", device_ms(fwdbwd))
            except Exception:
                traceback.print_exc()
        # launch settings of the fused backward kernel, on fc2 (the wide rational: groups of 192 columns)
        fn = grkan((True, True), (False, True))
        for cand in BWD_FUSED_SWEEP:
            try:
                with tuning({"rational_linear.bwd": cand}):
                    def fwdbwd(fn=fn):
                        return torch.autograd.grad(fn(), params["kan"], dy)

                    ms = device_ms(fwdbwd)
                res.add(f"sweep rational_linear.bwd mlp fwdbwd {case} GPU kernels",
                        ",".join(f"{k}={v}" for k, v in cand.items()), "ms", ms)
            except Exception:
                traceback.print_exc()
    bench_linears(res)


BWD_FUSED_SWEEP = [dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=3),
                   dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
                   dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=3)]


def bench_linears(res: Results):
    """One rational+linear layer forward (bf16 in the matmul): fused kernel, rational kernel + cuBLAS, cuBLAS alone."""
    torch.manual_seed(0)
    a = torch.tensor([RATIONAL_INITS["swish"][0]], device="cuda")
    b = torch.tensor([RATIONAL_INITS["swish"][1]] * G, device="cuda")
    for name, K, N, xdt in (("fc1", MLP_D, MLP_H, torch.float32), ("fc2", MLP_H, MLP_D, torch.bfloat16)):
        bench_linear_one(res, name, K, N, xdt, a, b)


def bench_linear_one(res: Results, name, K, N, xdt, a, b):
    import torch.nn.functional as F

    from hfzoo.ops.group_rational import _forward as rational_forward
    from hfzoo.ops.rational_linear import fused_forward

    x = torch.randn(MLP_TOKENS, K, device="cuda", dtype=xdt)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5
    bias = torch.zeros(N, device="cuda")
    bias16 = bias.to(torch.bfloat16)
    flops = 2 * MLP_TOKENS * K * N
    contenders = {
        "hfzoo_fused": lambda: fused_forward(x, a, b, w, bias, G, False),
        "hfzoo_rational_then_cublas": lambda: F.linear(rational_forward(x, a, b, G, False, torch.bfloat16), w, bias16),
        "cublas_only": lambda: F.linear(x.to(torch.bfloat16) if xdt != torch.bfloat16 else x, w, bias16)}
    case = f"linear fwd {name} ({MLP_TOKENS},{K}->{N}) {'fp32' if xdt == torch.float32 else 'bf16'} input"
    ref = contenders["hfzoo_rational_then_cublas"]().float()
    for cname, fn in contenders.items():
        try:
            err = rel_err(fn().float(), ref) if cname != "cublas_only" else None
            ms = bench_ms(fn)
            res.add(case, cname, "ms", ms, **({} if err is None else {"rel_err_vs_unfused": err}))
            dms = device_ms(fn)
            res.add(f"{case} GPU kernels", cname, "ms", dms)
            res.add(f"{case} GPU kernels", cname, "TFLOP/s", flops / dms / 1e9)
        except Exception:
            traceback.print_exc()


def bench_model(res: Results, only_kat: bool = False, coldstart: bool = True, infer: bool = True):
    B = 128
    pixels = torch.randn(B, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 1000, (B,), device="cuda")
    runs = [("hfzoo_kat", dict(), "triton"), ("hfzoo_kat_modules", dict(), "triton"),
            ("vit", dict(mlp_type="mlp"), "triton"), ("kat_torch_reference", dict(), "reference")]
    for cname, cfg, backend in runs[:2] if only_kat else runs:
        bench_model_one(res, cname, cfg, backend, pixels, labels, coldstart)
        torch.cuda.empty_cache()
    if infer:
        pixels = torch.randn(2 * B, 3, 224, 224, device="cuda")
        for cname, cfg, backend in runs[:2] if only_kat else runs[:3]:
            bench_infer_one(res, cname, cfg, backend, pixels)
            torch.cuda.empty_cache()


def _model(cfg, cname=""):
    """KAT-S / ViT-S; `hfzoo_kat_modules`: KAT-S whose MLPs run module by module (rational op, nn.Linear, ...) instead
    of through grkan_mlp (the code path before rational_linear)."""
    from hfzoo.models.kat import KATConfig, KATForImageClassification

    torch.manual_seed(0)
    model = KATForImageClassification(KATConfig.from_preset("kat_small", num_labels=1000, **cfg)).cuda()
    if cname == "hfzoo_kat_modules":
        for layer in model.kat.layers:
            layer.mlp._fusable = lambda: False
    return model


def bench_model_one(res: Results, cname, cfg, backend, pixels, labels, coldstart=True):
    from hfzoo.ops.dispatch import use_backend

    model = _model(cfg, cname).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with use_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if cname == "hfzoo_kat" and coldstart:
        res.add("coldstart KAT-S train step bs128 bf16", cname, "s", first_call_s(step))
    dt = seconds_per_step(step)
    case = "train step KAT-S/ViT-S bs128 224px bf16"
    res.add(case, cname, "ms", dt * 1e3)
    res.add(case, cname, "images/s", len(pixels) / dt)
    if backend == "triton":   # the GPU's share of the step (kernel durations): where wall time > this, the host bounds
        res.add(f"{case} GPU kernels", cname, "ms", device_ms(step, n=3))


def bench_infer_one(res: Results, cname, cfg, backend, pixels):
    """Inference: the classifier's forward under bf16 autocast and no_grad (eval mode), batch 256."""
    from hfzoo.ops.dispatch import use_backend

    model = _model(cfg, cname).eval()

    def step():
        with torch.no_grad(), use_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16):
            model(pixel_values=pixels)

    dt = seconds_per_step(step, n=20)
    case = "infer KAT-S/ViT-S bs256 224px bf16"
    res.add(case, cname, "ms", dt * 1e3)
    res.add(case, cname, "images/s", len(pixels) / dt)
    res.add(f"{case} GPU kernels", cname, "ms", device_ms(step, n=3))


def kernel_registers(res: Results):
    """Registers and spills of the compiled KAT kernels in this process (Triton's cache of compiled kernels)."""
    import hfzoo.ops.group_rational as gr
    import hfzoo.ops.rational_linear as rl

    for fn in (rl._rational_linear_fwd_kernel, rl._rational_linear_bwd_kernel, gr._group_rational_fwd_kernel,
               gr._group_rational_bwd_kernel, gr._group_rational_coef_grad_kernel):
        for entry in getattr(fn, "device_caches", {}).values():
            for key, kernel in entry[0].items():
                try:
                    kernel._init_handles()
                    md = kernel.metadata
                    label = f"{fn.__name__} warps={md.num_warps} stages={md.num_stages} {str(key)[-400:]}"
                    res.add("registers", label, "regs", float(kernel.n_regs), spills=int(kernel.n_spills),
                            shared=int(md.shared))
                    print("registers", kernel.n_regs, "spills", kernel.n_spills, label, flush=True)
                except Exception:
                    traceback.print_exc()


def main():
    res = Results("kat")
    out = os.environ.get("HFZOO_BENCH_OUT")
    parts = sys.argv[1:] or ["rational", "mlp", "model"]
    overrides = {}
    if "sweep" in parts:   # measure launch settings first, then run the rest with the best ones
        best = sweep(res)
        for key, kernel in ((("fwd", "bf16"), "group_rational.fwd"), (("bwd", "bf16"), "group_rational.bwd_16bit"),
                            (("bwd", "fp32"), "group_rational.bwd_fp32")):
            if key in best:
                overrides[kernel] = best[key]
        print("using", {k: settings(k) for k in overrides} if overrides else "the defaults", flush=True)
        res.save(out, plot_metric=None)
    with tuning(overrides):
        run_parts(res, parts, out)
    if "regs" in parts:
        kernel_registers(res)
    print(res.save(out, plot_metric="GB/s"))


def run_parts(res: Results, parts, out):
    if "rational" in parts or "rational-hfzoo" in parts:
        bench_rational(res, only_hfzoo="rational" not in parts, coldstart="sweep" not in parts)
        res.save(out, plot_metric="GB/s")
    if "mlp" in parts:
        try:
            bench_mlp(res)
        except Exception:
            traceback.print_exc()
        res.save(out, plot_metric="GB/s")
    if "model" in parts or "model-kat" in parts:
        try:
            bench_model(res, only_kat="model" not in parts, coldstart="sweep" not in parts)
        except Exception:
            traceback.print_exc()


if __name__ == "__main__":
    main()
