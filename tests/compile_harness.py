"""Compile the Triton kernels an op launches for a Hopper GPU (sm_90) on a machine without one.

    python tests/compile_harness.py [--cubin] [--only KERNEL] [--skip KERNEL] [gla] [rmsnorm] [group_rational]
                                    [nearest_code] [varlen_alibi] [mosaicbert_ops] [rational_linear]
                                    [linear_attention]

Triton's interpreter (the CPU tests) runs kernels as Python and so misses what only the compiler checks:
types of loop-carried values, layouts, shared-memory limits. Here the op runs on CPU tensors with kernel
launches intercepted; each launch's arguments become a signature that is compiled to a cubin for sm_90 with
the launch's num_warps/num_stages. Prints one line per kernel (``ok OP KERNEL ...``) and exits non-zero on the first failure.
Must run without ``TRITON_INTERPRET`` (the tests start it in a subprocess).
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
          torch.int64: "i64", torch.uint8: "u8", torch.bool: "i1"}


def record(run_op):
    """Run ``run_op()`` with every kernel launch recorded instead of executed (each config of an autotuned one).

    The ops' dispatch is told that Triton can run on CPU tensors, so ``backend="triton"`` reaches the launchers;
    the interpreter stays off, so the launch settings are the GPU ones (``hfzoo.ops.launch.DEFAULTS``).
    """
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from hfzoo.ops import dispatch

    launches = []

    def fake_run(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    def fake_autotuned_run(self, *args, grid=None, warmup=False, **kwargs):
        for cfg in self.configs:
            launches.append((self.fn, args, {**kwargs, **cfg.all_kwargs()}))

    saved = JITFunction.run, Autotuner.run, dispatch.triton_unavailable_reason
    JITFunction.run, Autotuner.run = fake_run, fake_autotuned_run
    dispatch.triton_unavailable_reason = lambda *tensors: None
    try:
        run_op()
    finally:
        JITFunction.run, Autotuner.run, dispatch.triton_unavailable_reason = saved
    return launches


def _arg_type(value):
    if isinstance(value, torch.Tensor):
        return "*" + _TYPES[value.dtype]
    if value is None:
        return "constexpr"
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no signature type for {type(value).__name__}")


# Shared memory one block may use on an H100/H200 (227 KB): a launch asking for more compiles but fails to launch.
SHARED_LIMIT = 227 * 1024


def stop_before_ptxas():
    """Make ``triton.compile`` stop after the PTX stage (an empty cubin stands in for ptxas' output).

    Everything of Triton's own pipeline still runs (TTIR -> TTGIR -> LLVM IR -> PTX: types, layouts, shared
    memory); only NVIDIA's assembler is left out, about a third of the compile time. Call it only with a
    private ``TRITON_CACHE_DIR`` (``main`` makes one): the empty cubins must never reach a real cache.
    """
    from triton.backends.nvidia.compiler import CUDABackend

    add_stages = CUDABackend.add_stages

    def without_ptxas(self, stages, options, *args, **kwargs):
        add_stages(self, stages, options, *args, **kwargs)
        if "cubin" in stages:
            stages["cubin"] = lambda src, metadata: b""

    CUDABackend.add_stages = without_ptxas


def compile_launch(fn, args, kwargs, arch: int = 90):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    opts = {key: kwargs.pop(key) for key in ("num_warps", "num_stages", "maxnreg") if key in kwargs}
    values = dict(zip(fn.arg_names, args))
    values.update(kwargs)
    sig, const = {}, {}
    for i, name in enumerate(fn.arg_names):
        v = values[name]
        if i in fn.constexprs or v is None:
            sig[name] = "constexpr"
            const[(i,)] = v
        else:
            sig[name] = _arg_type(v)
    src = ASTSource(fn, sig, constexprs=const)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def _gla_cases():
    from hfzoo.ops.gla_chunk import chunk_gla_triton
    from hfzoo.ops.gla_recurrent import _fused_recurrent_fwd

    def run(B, T, H, Hkv, K, V, dtype, cu=None):
        q = torch.randn(B, T, H, K, dtype=dtype, requires_grad=True)
        k = torch.randn(B, T, Hkv, K, dtype=dtype, requires_grad=True)
        v = torch.randn(B, T, Hkv, V, dtype=dtype, requires_grad=True)
        g = torch.randn(B, T, Hkv, K).requires_grad_()
        N = B if cu is None else len(cu) - 1
        h0 = torch.randn(N, Hkv, K, V, requires_grad=True)
        cu = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
        o, ht = chunk_gla_triton(q, k, v, g, None, h0, True, cu)
        torch.autograd.grad((o.float().sum() + ht.sum()), (q, k, v, g, h0))
        with torch.no_grad():  # inference: no intra-chunk scores kept
            chunk_gla_triton(q, k, v, g, None, h0, True, cu)
            _fused_recurrent_fwd(q, k, v, g, K ** -0.5, h0, True, cu)

    # the benchmark shapes in bf16, GQA, fp32 with odd dims, fp16 varlen
    return [lambda: run(1, 64, 2, 2, 128, 128, torch.bfloat16),
            lambda: run(1, 64, 4, 2, 128, 128, torch.bfloat16),
            lambda: run(1, 64, 1, 1, 256, 512, torch.bfloat16),
            lambda: run(1, 70, 2, 2, 80, 24, torch.float32),
            lambda: run(1, 100, 2, 1, 64, 128, torch.float16, cu=[0, 30, 100])]


def _rmsnorm_cases():
    from hfzoo.ops.rmsnorm import rms_norm_gated

    def run(M, D, dtype):
        x = torch.randn(M, D, dtype=dtype, requires_grad=True)
        w = torch.randn(D, dtype=dtype, requires_grad=True)
        gate = torch.randn(M, D, dtype=dtype, requires_grad=True)
        y = rms_norm_gated(x, w, gate, backend="triton")
        torch.autograd.grad(y.float().sum(), (x, w, gate))

    return [lambda: run(64, 128, torch.bfloat16), lambda: run(33, 2048, torch.float32)]


def _group_rational_cases():
    from hfzoo.ops.group_rational import group_rational
    from hfzoo.ops.launch import tuning

    def run(M, D, G, dtype, form, max_chunk=None):
        x = torch.randn(M, D, dtype=dtype, requires_grad=True)
        a = torch.randn(G, 6, requires_grad=True)
        b = torch.randn(G, 4, requires_grad=True)
        fold = {"max_chunk": max_chunk} if max_chunk else {}
        with tuning({"group_rational.bwd_fp32": fold, "group_rational.bwd_16bit": fold}):
            y = group_rational(x, a, b, num_groups=G, denominator_form=form, backend="triton")
            torch.autograd.grad(y.float().sum(), (x, a, b))

    # default settings (chunks of 8 bf16 / 4 fp32 columns), and single-column chunks
    return [lambda: run(64, 768, 8, torch.bfloat16, "released"), lambda: run(50, 96, 4, torch.float32, "paper"),
            lambda: run(64, 768, 8, torch.bfloat16, "released", 1), lambda: run(50, 96, 4, torch.float32, "paper", 1)]


def _rational_linear_cases():
    from hfzoo.ops.rational_linear import grkan_mlp

    def run(M, D, H, dtype, form, autocast):
        x = torch.randn(M, D, requires_grad=True)
        params = [torch.randn(1, 6), torch.randn(8, 4), torch.randn(H, D), torch.randn(H),
                  torch.randn(1, 6), torch.randn(8, 4), torch.randn(D, H), torch.randn(D)]
        params = [p.to(dtype if p.dim() == 2 and p.shape[1] not in (4, 6) else torch.float32).requires_grad_()
                  for p in params]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = grkan_mlp(x if autocast else x.to(dtype), *params, num_groups=8, denominator_form=form,
                          backend="triton", fuse=(True, True), fuse_backward=(True, True))
        torch.autograd.grad(y.float().sum(), [x] + params)

    # KAT-S under autocast (fp32 input of fc1, bf16 matmuls: fc1 N = 1536 tiled, fc2 N = 384 = 256 + 128), fp16 paper
    return [lambda: run(256, 384, 1536, torch.float32, "released", True),
            lambda: run(64, 192, 768, torch.float16, "paper", False)]


def _nearest_code_cases():
    from hfzoo.ops.launch import tuning
    from hfzoo.ops.nearest_code import nearest_code

    quantize = _quantize_projected_case

    def run(N, K, D, dtype, precision=None, candidates="bf16x3"):
        with tuning({"nearest_code.exact": {"candidates": candidates}}):
            nearest_code(torch.randn(N, D, dtype=dtype), torch.randn(K, D, dtype=dtype), precision=precision,
                         backend="triton")

    # fp32 exact with bf16x3 and tf32 candidates (and wide rows), the fast fp32 forms, 16-bit plain and exact
    return [lambda: run(100, 300, 128, torch.float32), lambda: run(100, 300, 128, torch.float32, None, "tf32"),
            lambda: run(100, 300, 300, torch.float32), lambda: run(100, 300, 128, torch.float32, "tf32x3"),
            lambda: run(100, 300, 64, torch.bfloat16), lambda: run(100, 300, 128, torch.bfloat16, "exact"),
            lambda: run(100, 300, 300, torch.bfloat16), quantize]


def _quantize_projected_case():
    from hfzoo.ops.nearest_code import quantize_projected

    z = torch.randn(2, 128, 5, 7, requires_grad=True)
    w, b = torch.randn(128, 128, requires_grad=True), torch.randn(128, requires_grad=True)
    zq, _, loss = quantize_projected(z, torch.randn(300, 128), w, b, 0.25, 1.0, backend="triton")
    (zq.sum() + loss).backward()


def _varlen_alibi_cases():
    from hfzoo.ops.varlen_alibi_attention import alibi_slopes, varlen_alibi_attention

    def run(lengths, H, D, dtype):
        total = sum(lengths)
        q, k, v = (torch.randn(total, H, D, dtype=dtype, requires_grad=True) for _ in range(3))
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        slopes = torch.tensor(alibi_slopes(H))
        o = varlen_alibi_attention(q, k, v, cu, max(lengths), slopes, backend="triton")
        torch.autograd.grad(o.float().sum(), (q, k, v))

    return [lambda: run([5, 70, 200], 12, 64, torch.bfloat16), lambda: run([33], 2, 32, torch.float16)]


def _mosaicbert_ops_cases():
    from hfzoo.ops.geglu import geglu
    from hfzoo.ops.softmax_cross_entropy import softmax_cross_entropy

    def run_geglu(N, I, dtype, p):
        x = torch.randn(N, 2 * I, dtype=dtype, requires_grad=True)
        torch.autograd.grad(geglu(x, p, backend="triton").float().sum(), x)

    def run_ce(N, C, dtype):
        logits = torch.randn(N, C, dtype=dtype, requires_grad=True)
        loss = softmax_cross_entropy(logits, torch.randint(0, C, (N,)), backend="triton")
        torch.autograd.grad(loss.sum(), logits)

    def run_res_ln(N, H, dtype, p):
        from hfzoo.ops.residual_layernorm import residual_layernorm

        x, r = (torch.randn(N, H, dtype=dtype, requires_grad=True) for _ in range(2))
        w, b = (torch.randn(H, dtype=dtype, requires_grad=True) for _ in range(2))
        torch.autograd.grad(residual_layernorm(x, r, w, b, dropout_p=p, backend="triton").float().sum(), (x, r, w, b))

    return [lambda: run_geglu(64, 3072, torch.bfloat16, 0.1), lambda: run_geglu(5, 100, torch.float32, 0.0),
            lambda: run_ce(8, 30522, torch.bfloat16), lambda: run_ce(3, 100, torch.float32),
            lambda: run_res_ln(64, 768, torch.bfloat16, 0.1), lambda: run_res_ln(64, 768, torch.bfloat16, 0.0),
            lambda: run_res_ln(5, 37, torch.float32, 0.0)]


def _linear_attention_cases():
    from hfzoo.ops.linear_attention import linear_attention

    def run(B, N, H, D, dtype, conv):
        q, k, v = (torch.randn(B, N, H, D, dtype=dtype, requires_grad=True) for _ in range(3))
        kw = {}
        if conv:
            side = int(N ** 0.5)
            kw = dict(conv_weight=torch.randn(D, 1, 5, 5, requires_grad=True), conv_bias=torch.randn(D),
                      grid=(side, side))
        o = linear_attention(q, k, v, backend="triton", **kw)
        torch.autograd.grad(o.float().sum(), (q, k, v))

    # LiT's shapes (head dim 72 of DiT-XL, 16-bit) with the fused depthwise conv, and fp32 without it
    return [lambda: run(2, 64, 4, 72, torch.bfloat16, True), lambda: run(1, 50, 2, 32, torch.float32, False)]


CASES = {"gla": _gla_cases, "rmsnorm": _rmsnorm_cases, "group_rational": _group_rational_cases,
         "rational_linear": _rational_linear_cases,
         "nearest_code": _nearest_code_cases, "varlen_alibi": _varlen_alibi_cases,
         "mosaicbert_ops": _mosaicbert_ops_cases, "linear_attention": _linear_attention_cases}


def _launch_key(fn, args, kwargs):
    return (fn.__name__, tuple(_arg_type(a) if not isinstance(a, int) or isinstance(a, bool) else "int" for a in args),
            tuple(sorted(kwargs.items())))


def main(argv):
    """``compile_harness.py [--cubin] [--only KERNEL]... [--skip KERNEL]... OP...``

    ``--only``/``--skip`` select launches by kernel function name (e.g. ``_group_rational_bwd_kernel``).
    """
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run without TRITON_INTERPRET")
    if "--cubin" in argv:   # also run ptxas (slower; catches only assembler-level failures)
        argv = [a for a in argv if a != "--cubin"]
    else:
        import tempfile

        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="hfzoo-compile-check-")
        stop_before_ptxas()
    only, skip, names = set(), set(), []
    it = iter(argv)
    for arg in it:
        if arg in ("--only", "--skip"):
            (only if arg == "--only" else skip).add(next(it))
        else:
            names.append(arg)
    seen = set()
    for name in names or list(CASES):
        for case in CASES[name]():
            for fn, args, kwargs in record(case):
                key = _launch_key(fn, args, kwargs)
                if key in seen or (only and fn.__name__ not in only) or fn.__name__ in skip:
                    continue
                seen.add(key)
                print(f"compiling {fn.__name__} {kwargs}", flush=True)  # the last line if the compiler crashes
                try:
                    out = compile_launch(fn, args, dict(kwargs))
                except Exception as e:
                    print(f"FAILED {fn.__name__} {kwargs}: {type(e).__name__}: {str(e)[:2000]}")
                    raise SystemExit(1) from e
                if out.metadata.shared > SHARED_LIMIT:
                    print(f"FAILED {fn.__name__} {kwargs}: needs {out.metadata.shared} bytes of shared memory, "
                          f"more than the {SHARED_LIMIT} an sm_90 block has")
                    raise SystemExit(1)
                regs = f" regs={out.n_regs} spills={out.n_spills}" if getattr(out, "n_regs", None) is not None else ""
                print(f"ok {name} {fn.__name__} shared={out.metadata.shared}{regs} {kwargs}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
