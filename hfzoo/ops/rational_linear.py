"""A linear layer whose input passes through a group-rational activation first: ``y = F(x) @ W^T + b``.

This is the unit of KAT's GR-KAN MLP (``rational -> fc1 -> rational -> fc2``): ``F`` is
``hfzoo.ops.group_rational`` (same coefficients, groups, denominator forms), ``W`` an ``[N, K]`` weight.

Forward (Triton): a GEMM whose A operand is ``F(x)`` computed in the prologue -- each ``[BLOCK_M, BLOCK_K]`` tile of
``x`` is loaded, the rational is evaluated in registers (fp32) and rounded to the matmul dtype, then fed to
``tl.dot`` -- so ``F(x)`` is never written to memory. Where the K tiles fit inside one group (``DG % BLOCK_K == 0``,
e.g. KAT-S: groups of 48 and 192 columns) each tile's ten coefficients are ten uniform scalar loads; otherwise they
are gathered per column. The prologue is recomputed once per column block of the output, so for a narrow output
(``N <= 512``, KAT's fc2) one program covers all of ``N`` (two accumulators, e.g. 256 + 128 columns) and each
element of ``x`` goes through the rational once.

Backward: ``dF = dY @ W`` (cuBLAS); then ``group_rational``'s backward kernel on ``(x, dF)`` gives ``dx`` and the
coefficient gradients and, in the same pass, writes ``F(x)`` (it computes it anyway), which the weight gradient
``dW = dY^T F(x)`` (cuBLAS) reads. So ``F(x)`` is written once per step (in the backward, not in the forward) and
never kept between forward and backward; no pass over ``x`` is added for the recompute. Optionally
(``fused_backward``) ``dF`` is computed inside that backward kernel (a GEMM with the rational's backward as its
epilogue), so ``dF`` is never written either.

``grkan_mlp`` runs the whole MLP ``fc2(F2(fc1(F1(x))))`` as one autograd node (both linears forward, their backwards
in one ``backward``): fewer autograd nodes and less Python per step than four modules.

Measured on the H200 (benchmarks/NOTES.md, KAT-S shapes): the fused forward is slower than the rational kernel
followed by cuBLAS (fc1 0.199 vs 0.072 ms, fc2 0.124 vs 0.086 ms: the prologue's FP32 work, redone for every output
column block and not overlapped with the tensor cores, bounds it at 150-240 TFLOP/s), and so is the fused backward.
So by default (``launch.DEFAULTS["rational_linear.*"]``) both run unfused -- the rational kernel and cuBLAS -- and
``grkan_mlp`` keeps only its host-side gain (one node); the fused kernels stay available (``fuse=``,
``fuse_backward=``, the settings) and are measured by ``benchmarks/kat.py``.

Precision: the rational in fp32; the matmuls in ``dtype`` = the autocast dtype under autocast, else ``x``'s dtype,
with fp32 accumulation (fp32 matmuls follow ``torch.backends.cuda.matmul.allow_tf32``); ``W`` and the bias are
cast to ``dtype`` as ``F.linear`` under autocast does (the kernel adds the bias in fp32 before rounding).

Ladder: ``rational_linear_reference`` / ``grkan_mlp_reference`` (the eager composition) -> Triton forward kernel
-> ``RationalLinearFunction`` / ``GRKANMLPFunction`` -> ``rational_linear`` / ``grkan_mlp`` (checked with
``validate.py``, dispatched per call; launch settings ``rational_linear.*`` in ``launch.py``).

A narrow output keeps one accumulator per 128-256 columns in registers for all of N: at 64 x 384 that is 96 fp32
registers per thread (8 warps); K tiles of 16-64 columns still fit without spills (sm_90).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import group_rational as gr
from .dispatch import apply_function
from .launch import compile_options, is_interpreted, launch, settings, settings_token
from .triton_shim import tl, triton
from .validate import check_tensor, kernel_dtype_problem, pick_backend


def _matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The matmul's dtype: the autocast dtype where autocast is on for x's device, else x's dtype."""
    if x.dtype.is_floating_point and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def rational_linear_reference(x, numerator, denominator, weight, bias=None, num_groups: int = 8,
                              denominator_form: str = "released"):
    """``F.linear(group_rational(x), weight, bias)`` in plain PyTorch; under autocast the rational writes the
    autocast dtype (what the linear would cast it to)."""
    dtype = _matmul_dtype(x)
    r = gr.group_rational_reference(x, numerator, denominator, num_groups, denominator_form, out_dtype=dtype)
    return F.linear(r, weight.to(dtype), None if bias is None else bias.to(dtype))


def grkan_mlp_reference(x, numerator1, denominator1, weight1, bias1, numerator2, denominator2, weight2, bias2,
                        num_groups: int = 8, denominator_form: str = "released"):
    """KAT's GR-KAN MLP ``fc2(F2(fc1(F1(x))))`` in plain PyTorch."""
    h = rational_linear_reference(x, numerator1, denominator1, weight1, bias1, num_groups, denominator_form)
    return rational_linear_reference(h, numerator2, denominator2, weight2, bias2, num_groups, denominator_form)


# ----------------------------------------------------------------------------------------------------
# Triton forward: Y[M, N] = F(X[M, K]) @ W[N, K]^T (+ bias). Programs in GROUP_M-row bands of output tiles (the
# W tiles stay in L2 across a band). An output tile is BN0 columns, or BN0 + BN1 when SPLIT (one program covers
# a non-power-of-two width such as 384 = 256 + 128 with two accumulators fed by the same prologue).


@triton.jit
def _coefficients(A, B, k0, rk, kmask, A_STRIDE, B_STRIDE, DG: tl.constexpr, BLOCK_K: tl.constexpr):
    """The ten fp32 coefficients (a0..a5, c0..c3) of the tile whose columns are rk (starting at k0): scalars when
    the tile lies in one group, else [1, BLOCK_K] rows gathered per column (masked columns get zeros)."""
    if DG % BLOCK_K == 0:   # the tile lies in one group: ten uniform scalar loads
        g = k0 // DG
        a0 = tl.load(A + g * A_STRIDE + 0).to(tl.float32)
        a1 = tl.load(A + g * A_STRIDE + 1).to(tl.float32)
        a2 = tl.load(A + g * A_STRIDE + 2).to(tl.float32)
        a3 = tl.load(A + g * A_STRIDE + 3).to(tl.float32)
        a4 = tl.load(A + g * A_STRIDE + 4).to(tl.float32)
        a5 = tl.load(A + g * A_STRIDE + 5).to(tl.float32)
        c0 = tl.load(B + g * B_STRIDE + 0).to(tl.float32)
        c1 = tl.load(B + g * B_STRIDE + 1).to(tl.float32)
        c2 = tl.load(B + g * B_STRIDE + 2).to(tl.float32)
        c3 = tl.load(B + g * B_STRIDE + 3).to(tl.float32)
    else:
        g = rk // DG
        a0 = tl.load(A + g * A_STRIDE + 0, mask=kmask, other=0.0).to(tl.float32)[None, :]
        a1 = tl.load(A + g * A_STRIDE + 1, mask=kmask, other=0.0).to(tl.float32)[None, :]
        a2 = tl.load(A + g * A_STRIDE + 2, mask=kmask, other=0.0).to(tl.float32)[None, :]
        a3 = tl.load(A + g * A_STRIDE + 3, mask=kmask, other=0.0).to(tl.float32)[None, :]
        a4 = tl.load(A + g * A_STRIDE + 4, mask=kmask, other=0.0).to(tl.float32)[None, :]
        a5 = tl.load(A + g * A_STRIDE + 5, mask=kmask, other=0.0).to(tl.float32)[None, :]
        c0 = tl.load(B + g * B_STRIDE + 0, mask=kmask, other=0.0).to(tl.float32)[None, :]
        c1 = tl.load(B + g * B_STRIDE + 1, mask=kmask, other=0.0).to(tl.float32)[None, :]
        c2 = tl.load(B + g * B_STRIDE + 2, mask=kmask, other=0.0).to(tl.float32)[None, :]
        c3 = tl.load(B + g * B_STRIDE + 3, mask=kmask, other=0.0).to(tl.float32)[None, :]
    return a0, a1, a2, a3, a4, a5, c0, c1, c2, c3


@triton.jit
def _rational_tile(x, A, B, k0, rk, kmask, A_STRIDE, B_STRIDE, DG: tl.constexpr, BLOCK_K: tl.constexpr,
                   PAPER: tl.constexpr):
    """F(x) of a [BLOCK_M, BLOCK_K] fp32 tile whose columns are rk (masked columns: F = 0)."""
    a0, a1, a2, a3, a4, a5, c0, c1, c2, c3 = _coefficients(A, B, k0, rk, kmask, A_STRIDE, B_STRIDE, DG, BLOCK_K)
    p = ((((a5 * x + a4) * x + a3) * x + a2) * x + a1) * x + a0
    if PAPER:
        q = 1.0 + tl.abs((((c3 * x + c2) * x + c1) * x + c0) * x)
    else:
        w = tl.abs(x)
        q = 1.0 + (((tl.abs(c3) * w + tl.abs(c2)) * w + tl.abs(c1)) * w + tl.abs(c0)) * w
    return tl.fdiv(p, q)


@triton.jit
def _rational_linear_fwd_kernel(X, A, B, W, BIAS, Y, M, N, K, A_STRIDE, B_STRIDE,
                                DG: tl.constexpr, PAPER: tl.constexpr, HAS_BIAS: tl.constexpr,
                                PRECISION: tl.constexpr, DOT_FP32: tl.constexpr, SPLIT: tl.constexpr,
                                BLOCK_M: tl.constexpr,
                                BN0: tl.constexpr, BN1: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    BN: tl.constexpr = BN0 + BN1 * SPLIT
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BN)
    band = GROUP_M * num_n
    first_m = (pid // band) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % band) % size_m
    pid_n = (pid % band) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = rm < M
    xrow = X + rm.to(tl.int64)[:, None] * K
    rn0 = pid_n * BN + tl.arange(0, BN0)
    nmask0 = rn0 < N
    acc0 = tl.zeros([BLOCK_M, BN0], dtype=tl.float32)
    rn1 = pid_n * BN + BN0 + tl.arange(0, BN1)
    nmask1 = rn1 < N
    acc1 = tl.zeros([BLOCK_M, BN1], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        kmask = rk < K
        x = tl.load(xrow + rk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        r = _rational_tile(x, A, B, k0, rk, kmask, A_STRIDE, B_STRIDE, DG, BLOCK_K, PAPER).to(W.dtype.element_ty)
        w0 = tl.load(W + rn0.to(tl.int64)[None, :] * K + rk[:, None], mask=kmask[:, None] & nmask0[None, :],
                     other=0.0)
        if DOT_FP32:   # exact products of the rounded operands (the interpreter's dot reads bf16 as integers)
            r = r.to(tl.float32)
            w0 = w0.to(tl.float32)
        acc0 = tl.dot(r, w0, acc0, input_precision=PRECISION)
        if SPLIT:
            w1 = tl.load(W + rn1.to(tl.int64)[None, :] * K + rk[:, None], mask=kmask[:, None] & nmask1[None, :],
                         other=0.0)
            if DOT_FP32:
                w1 = w1.to(tl.float32)
            acc1 = tl.dot(r, w1, acc1, input_precision=PRECISION)
    yrow = Y + rm.to(tl.int64)[:, None] * N
    if HAS_BIAS:
        acc0 += tl.load(BIAS + rn0, mask=nmask0, other=0.0).to(tl.float32)[None, :]
    tl.store(yrow + rn0[None, :], acc0.to(Y.dtype.element_ty), mask=mmask[:, None] & nmask0[None, :])
    if SPLIT:
        if HAS_BIAS:
            acc1 += tl.load(BIAS + rn1, mask=nmask1, other=0.0).to(tl.float32)[None, :]
        tl.store(yrow + rn1[None, :], acc1.to(Y.dtype.element_ty), mask=mmask[:, None] & nmask1[None, :])


@triton.jit
def _rational_linear_bwd_kernel(DY, W, X, A, B, DX, Y, PART, M, N, K, A_STRIDE, B_STRIDE, NC,
                                DG: tl.constexpr, PAPER: tl.constexpr, STORE_Y: tl.constexpr,
                                PRECISION: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr,
                                BLOCK_N: tl.constexpr,
                                BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr):
    # Program (i, j): dF = DY[rows i] @ W[:, cols j] (the GEMM over the N output features), then in the epilogue the
    # rational's backward on that tile of x: dx, F(x) (STORE_Y, for the weight gradient) and the ten coefficient-
    # gradient terms summed over the tile's rows -- over its columns as well when the tile lies in one group
    # (PART[i, k, j]), else per column (PART[i, k, column]). dF is never written.
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mmask = rm < M
    kmask = rk < K
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for n0 in tl.range(0, N, BLOCK_N, num_stages=NUM_STAGES):
        rn = n0 + tl.arange(0, BLOCK_N)
        nmask = rn < N
        dy = tl.load(DY + rm.to(tl.int64)[:, None] * N + rn[None, :], mask=mmask[:, None] & nmask[None, :], other=0.0)
        w = tl.load(W + rn.to(tl.int64)[:, None] * K + rk[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
        if DOT_FP32:
            dy = dy.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(dy, w, acc, input_precision=PRECISION)
    offs = rm.to(tl.int64)[:, None] * K + rk[None, :]
    mask = mmask[:, None] & kmask[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    g_dy = tl.where(mask, acc, 0.0)                       # dL/dF; 0 outside: no contribution
    UNIFORM: tl.constexpr = DG % BLOCK_K == 0
    a0, a1, a2, a3, a4, a5, c0, c1, c2, c3 = _coefficients(A, B, pid_k * BLOCK_K, rk, kmask, A_STRIDE, B_STRIDE,
                                                           DG, BLOCK_K)
    if not PAPER:
        c0, c1, c2, c3 = tl.abs(c0), tl.abs(c1), tl.abs(c2), tl.abs(c3)
    p = ((((a5 * x + a4) * x + a3) * x + a2) * x + a1) * x + a0
    dp = ((((5.0 * a5) * x + 4.0 * a4) * x + 3.0 * a3) * x + 2.0 * a2) * x + a1
    if PAPER:
        w_ = x
    else:
        w_ = tl.abs(x)
    t = (((c3 * w_ + c2) * w_ + c1) * w_ + c0) * w_
    dt = (((4.0 * c3) * w_ + 3.0 * c2) * w_ + 2.0 * c1) * w_ + c0
    if PAPER:
        s = tl.where(t < 0, -1.0, 1.0)
        q = 1.0 + tl.abs(t)
    else:
        s = tl.where(x < 0, -1.0, 1.0)
        q = 1.0 + t
    rq = 1.0 / q
    y = p * rq
    gp = g_dy * rq
    tl.store(DX + offs, (gp * (dp - y * (s * dt))).to(DX.dtype.element_ty), mask=mask)
    if STORE_Y:
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    gq = -gp * y
    if PAPER:
        gq = gq * s
    base = PART + pid_m.to(tl.int64) * 10 * NC
    u = gp          # dL/da_k = sum gp x^k (k = 0..5); dL/dc_k = sum gq w^(k+1) (k = 0..3)
    v = gq * w_
    for i in tl.static_range(10):
        if i < 6:
            term = u
            u = u * x
        else:
            term = v
            v = v * w_
        if UNIFORM:   # one partial per tile and coefficient
            tl.store(base + i * NC + pid_k, tl.sum(tl.sum(term, axis=1), axis=0))
        else:         # one partial per column and coefficient
            tl.store(base + i * NC + rk, tl.sum(term, axis=0), mask=kmask)


def fused_backward(x2, a, b, wc, dy2, num_groups: int, paper: bool, need_y: bool):
    """dx, d numerator, d denominator (and F(x) in wc's dtype when need_y) with dF = dY @ W computed in the same
    kernel as the rational's backward (dF never written); the coefficient partials summed by group_rational's
    coefficient kernel. Two launches."""
    M, K = x2.shape
    N = wc.shape[0]
    DG = K // num_groups
    conf = settings("rational_linear.bwd")
    bk = 1
    while bk * 2 <= conf["max_block_k"] and DG % (bk * 2) == 0:
        bk *= 2
    BLOCK_K = bk if bk >= conf["min_uniform_k"] else conf["max_block_k"]
    uniform = DG % BLOCK_K == 0
    NC = K // BLOCK_K if uniform else K          # partial "chunks": whole tiles, or single columns
    P = gr._cdiv(M, conf["BLOCK_M"])
    dx = torch.empty_like(x2)
    y = torch.empty((M, K), dtype=wc.dtype, device=x2.device) if need_y else None
    part = torch.empty(P, 10, NC, dtype=torch.float32, device=x2.device)
    a_stride, b_stride = gr._strides(a, b)
    launch("rational_linear.bwd", _rational_linear_bwd_kernel, (P, gr._cdiv(K, BLOCK_K)),
           dy2, wc, x2, a, b, dx, dx if y is None else y, part, M, N, K, a_stride, b_stride, NC,
           DG=DG, PAPER=paper, STORE_Y=need_y, PRECISION=_precision(wc.dtype),
           DOT_FP32=wc.dtype == torch.bfloat16 and is_interpreted(),
           BLOCK_M=conf["BLOCK_M"], BLOCK_N=conf["BLOCK_N"], BLOCK_K=BLOCK_K, NUM_STAGES=conf["num_stages"],
           **compile_options(conf))
    da, db = torch.empty_like(a), torch.empty_like(b)
    cconf = settings("group_rational.coef_grad")
    per_row = NC // min(a.shape[0], b.shape[0])
    launch("group_rational.coef_grad", gr._group_rational_coef_grad_kernel, (10, max(a.shape[0], b.shape[0])),
           part, b, da, db, P, NC, a.shape[0], b.shape[0], PAPER=paper, BLOCK_P=cconf["BLOCK_P"],
           BLOCK_K=min(cconf["BLOCK_K"], gr._next_pow2(per_row)), **compile_options(cconf))
    return dx, da, db, y


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and (is_interpreted() or not torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"


def fused_forward(x2, a, b, wc, bias, num_groups: int, paper: bool):
    """Y = F(x2) @ wc^T (+ bias) in wc's dtype, F(x) evaluated in the GEMM's prologue (one launch)."""
    M, K = x2.shape
    N = wc.shape[0]
    y = torch.empty((M, N), dtype=wc.dtype, device=x2.device)
    DG = K // num_groups
    a_stride, b_stride = gr._strides(a, b)
    wide_conf = settings("rational_linear.fwd_wide")
    if N <= wide_conf["max_n"]:   # one program covers all of N: the prologue runs once per element of x
        bn0 = max(16, min(256, gr._next_pow2(N)))
        rest = N - bn0
        split = rest > 0
        name, conf = "rational_linear.fwd_wide", wide_conf
        fixed = dict(BN0=bn0, BN1=max(16, gr._next_pow2(rest)) if split else 16, SPLIT=split)
    else:
        name, conf = "rational_linear.fwd", settings("rational_linear.fwd")
        fixed = dict(BN1=16, SPLIT=False)

    def grid(meta):
        bn = meta["BN0"] + (meta["BN1"] if meta["SPLIT"] else 0)
        return (gr._cdiv(M, meta["BLOCK_M"]) * gr._cdiv(N, bn),)

    launch(name, _rational_linear_fwd_kernel, grid, x2, a, b, wc, bias if bias is not None else wc, y,
           M, N, K, a_stride, b_stride, DG=DG, PAPER=paper, HAS_BIAS=bias is not None,
           PRECISION=_precision(wc.dtype), DOT_FP32=wc.dtype == torch.bfloat16 and is_interpreted(), GROUP_M=8, **fixed,
           configs=conf["configs"], key=("N", "K"))
    return y


def _unfused_forward(x2, a, b, wc, bias, num_groups: int, paper: bool, token=gr._UNSET):
    """The same result with F(x) written by group_rational's kernel and the matmul in cuBLAS (two launches)."""
    r = gr._forward(x2, a, b, num_groups, paper, wc.dtype, token)
    return F.linear(r, wc, bias if bias is None or bias.dtype == wc.dtype else bias.to(wc.dtype))


def _linear_forward(x2, a, b, wc, bias, num_groups, paper, fuse, token=gr._UNSET):
    if fuse:
        return fused_forward(x2, a, b, wc, bias, num_groups, paper)
    return _unfused_forward(x2, a, b, wc, bias, num_groups, paper, token)


_MM_OUT_DTYPE = [True]   # torch.mm(..., out_dtype=) works here (False after the first call where it does not)


def _weight_grad(dy2, r, w_dtype):
    """dW = dY^T F(x) in W's dtype: for fp32 weights and 16-bit operands one cuBLAS call that writes fp32 (no cast
    pass) where torch has ``mm(..., out_dtype=)`` for the device; else the 16-bit product cast, as autocast does."""
    if w_dtype == torch.float32 and r.dtype != torch.float32 and r.is_cuda and _MM_OUT_DTYPE[0]:
        try:
            return torch.mm(dy2.t(), r, out_dtype=torch.float32)
        except (RuntimeError, NotImplementedError, TypeError):
            _MM_OUT_DTYPE[0] = False
    return (dy2.t() @ r).to(w_dtype)


def _linear_backward(x2, a, b, wc, w_dtype, bias_dtype, dy2, num_groups, paper, conf, needs, fuse_bwd=False):
    """Gradients of (x, numerator, denominator, weight, bias) given dY (in the matmul dtype); ``needs`` flags.
    ``fuse_bwd``: dF = dY @ W inside the rational's backward kernel (``fused_backward``), else cuBLAS + that kernel."""
    need_x, need_a, need_b, need_w, need_bias = needs
    dx = da = db = dw = dbias = None
    if need_x or need_a or need_b or need_w:
        if fuse_bwd:
            out = fused_backward(x2, a, b, wc, dy2, num_groups, paper, need_w)
        else:
            dr = dy2 @ wc                                               # dL/dF(x): [M, K]
            out = gr._backward(x2, dr, a, b, num_groups, paper, conf, y_dtype=wc.dtype if need_w else None)
        dx, da, db = out[0], out[1], out[2]
        if need_w:
            dw = _weight_grad(dy2, out[3], w_dtype)                     # F(x) came from the backward kernel
    if need_bias:
        dbias = dy2.sum(0, dtype=torch.float32).to(bias_dtype)
    return dx, da, db, dw, dbias


class RationalLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, numerator, denominator, weight, bias, num_groups, denominator_form, dtype, fuse):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        a, b = numerator.contiguous(), denominator.contiguous()
        wc = weight.to(dtype).contiguous()
        paper = denominator_form == "paper"
        y = _linear_forward(x2, a, b, wc, bias.contiguous() if bias is not None else None, num_groups, paper, fuse)
        if any(ctx.needs_input_grad[:5]):
            ctx.save_for_backward(x2, a, b, wc)
            ctx.meta = (shape, num_groups, paper, weight.dtype, None if bias is None else bias.dtype)
            ctx.conf = gr._backward_settings(x2.dtype, dtype)
            ctx.fuse_bwd = settings("rational_linear.bwd")["fused"]
        return y.reshape(*shape[:-1], wc.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x2, a, b, wc = ctx.saved_tensors
        shape, num_groups, paper, w_dtype, bias_dtype = ctx.meta
        dy2 = dy.reshape(-1, dy.shape[-1]).to(wc.dtype).contiguous()
        dx, da, db, dw, dbias = _linear_backward(x2, a, b, wc, w_dtype, bias_dtype, dy2, num_groups, paper,
                                                 ctx.conf, ctx.needs_input_grad[:5], ctx.fuse_bwd)
        return (None if dx is None else dx.reshape(shape)), da, db, dw, dbias, None, None, None, None


class GRKANMLPFunction(torch.autograd.Function):
    """``fc2(F2(fc1(F1(x))))`` as one autograd node; ``fuse`` = (fc1 forward fused, fc2 forward fused, fc1 backward
    fused, fc2 backward fused) (else rational kernel + cuBLAS for that part)."""

    @staticmethod
    def forward(ctx, x, a1, b1, w1, c1, a2, b2, w2, c2, num_groups, denominator_form, dtype, fuse, token):
        # token: launch.settings_token(), read once by grkan_mlp for every settings-derived plan of this call
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        a1, b1, a2, b2 = a1.contiguous(), b1.contiguous(), a2.contiguous(), b2.contiguous()
        w1c = w1.contiguous() if w1.dtype == dtype else w1.to(dtype).contiguous()
        w2c = w2.contiguous() if w2.dtype == dtype else w2.to(dtype).contiguous()
        paper = denominator_form == "paper"
        h = _linear_forward(x2, a1, b1, w1c, c1, num_groups, paper, fuse[0], token)
        out = _linear_forward(h, a2, b2, w2c, c2, num_groups, paper, fuse[1], token)
        if any(ctx.needs_input_grad[:9]):
            ctx.save_for_backward(x2, h, a1, b1, w1c, a2, b2, w2c)
            ctx.meta = (shape, num_groups, paper, w1.dtype, w2.dtype, None if c1 is None else c1.dtype,
                        None if c2 is None else c2.dtype)
            conf2 = gr._backward_settings(dtype, dtype, token)
            conf1 = conf2 if x2.dtype == dtype else gr._backward_settings(x2.dtype, dtype, token)
            ctx.confs = (conf1, conf2)
            ctx.fuse_bwd = fuse[2:]
        return out.reshape(*shape[:-1], w2c.shape[0])

    @staticmethod
    def backward(ctx, dout):
        x2, h, a1, b1, w1c, a2, b2, w2c = ctx.saved_tensors
        shape, num_groups, paper, w1_dtype, w2_dtype, c1_dtype, c2_dtype = ctx.meta
        n = ctx.needs_input_grad
        dout2 = dout.reshape(-1, dout.shape[-1])
        dout2 = (dout2 if dout2.dtype == w2c.dtype else dout2.to(w2c.dtype)).contiguous()
        first = any(n[:5])   # anything below fc2's input needs a gradient
        dh, da2, db2, dw2, dc2 = _linear_backward(h, a2, b2, w2c, w2_dtype, c2_dtype, dout2, num_groups, paper,
                                                  ctx.confs[1], (first, n[5], n[6], n[7], n[8]), ctx.fuse_bwd[1])
        dx = da1 = db1 = dw1 = dc1 = None
        if first:
            dx, da1, db1, dw1, dc1 = _linear_backward(x2, a1, b1, w1c, w1_dtype, c1_dtype, dh, num_groups, paper,
                                                      ctx.confs[0], n[:5], ctx.fuse_bwd[0])
        return ((None if dx is None else dx.reshape(shape)), da1, db1, dw1, dc1, da2, db2, dw2, dc2,
                None, None, None, None, None)


# ----------------------------------------------------------------------------------------------------
# Public ops


def _check_coefficients(op, K, device, numerator, denominator, num_groups, denominator_form):
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"{op}: num_groups must be a positive int, got {num_groups!r}")
    if K % num_groups:
        raise ValueError(f"{op}: the input width {K} must be divisible by num_groups ({num_groups})")
    for name, t, n in (("numerator", numerator, gr.NUM_NUMERATOR), ("denominator", denominator, gr.NUM_DENOMINATOR)):
        check_tensor(op, name, t, device=device)
        if t.dim() != 2 or t.shape[1] != n or t.shape[0] not in (1, num_groups):
            raise ValueError(f"{op}: {name} must have shape (1, {n}) or ({num_groups}, {n}), got {tuple(t.shape)}")
    if denominator_form not in gr.DENOMINATORS:
        raise ValueError(f"{op}: denominator must be one of {gr.DENOMINATORS}, got {denominator_form!r}")


def _check_linear(op, x, numerator, denominator, weight, bias, num_groups, denominator_form, K):
    _check_coefficients(op, K, x.device, numerator, denominator, num_groups, denominator_form)
    check_tensor(op, "weight", weight, dims=2, device=x.device)
    if weight.shape[1] != K:
        raise ValueError(f"{op}: weight must have shape (N, {K}) for an input of width {K}, got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor(op, "bias", bias, dims=1, device=x.device)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def _kernel_problem(dtype, *tensors):
    problem = kernel_dtype_problem(*tensors)
    if problem is None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        problem = f"the matmul dtype {dtype} is not one the kernels take"
    return problem


def rational_linear(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None = None, num_groups: int = 8, denominator_form: str = "released",
                    backend: str | None = None, fuse: bool | None = None) -> torch.Tensor:
    """``F.linear(group_rational(x, numerator, denominator, num_groups, denominator_form), weight, bias)``.

    Args:
        x: ``[..., K]`` activations (fp32, fp16, bf16; fp64 runs the reference).
        numerator, denominator, num_groups, denominator_form: as in ``hfzoo.ops.group_rational``.
        weight: ``[N, K]``; bias: ``[N]`` or None.
        backend: ``"triton"``, ``"reference"`` or None (``hfzoo.ops.dispatch``).
        fuse: the fused forward kernel (True) or the rational kernel + cuBLAS (False); default
            ``settings("rational_linear.fwd")["fused"]`` (off: slower on the H200, see ``launch.DEFAULTS``). The
            backward follows ``settings("rational_linear.bwd")["fused"]``.

    Returns:
        ``[..., N]`` in the matmul dtype (the autocast dtype under autocast, else ``x``'s dtype). Differentiable in
        x, the coefficients, weight and bias.
    """
    op = "rational_linear"
    check_tensor(op, "x", x, dims=(1, None))
    _check_linear(op, x, numerator, denominator, weight, bias, num_groups, denominator_form, x.shape[-1])
    dtype = _matmul_dtype(x)
    tensors = (x, numerator, denominator, weight) + ((bias,) if bias is not None else ())
    if pick_backend(op, tensors, backend, _kernel_problem(dtype, *tensors)) == "reference" or x.numel() == 0:
        return rational_linear_reference(x, numerator, denominator, weight, bias, num_groups, denominator_form)
    if fuse is None:
        fuse = settings("rational_linear.fwd")["fused"]
    return apply_function(RationalLinearFunction, x, numerator, denominator, weight, bias, num_groups,
                          denominator_form, dtype, bool(fuse))


def grkan_mlp(x, numerator1, denominator1, weight1, bias1, numerator2, denominator2, weight2, bias2,
              num_groups: int = 8, denominator_form: str = "released", backend: str | None = None,
              fuse: tuple[bool, bool] | None = None, fuse_backward: tuple[bool, bool] | None = None) -> torch.Tensor:
    """KAT's GR-KAN MLP ``fc2(F2(fc1(F1(x))))``, ``F1``/``F2`` group-rational activations, as one op.

    ``fuse`` picks, per linear, the fused rational+linear kernel (True) or the rational kernel followed by cuBLAS
    (False); default ``settings("rational_linear.mlp")`` (``launch.DEFAULTS``; fp32 matmuls fuse only with its
    ``fuse_fp32``: Triton's fp32 dot is no match for cuBLAS's). ``fuse_backward``, per linear: dF = dY @ W inside the
    rational's backward kernel (``fused_backward``) instead of cuBLAS + that kernel (default: ``fuse_bwd_fc1`` /
    ``fuse_bwd_fc2`` of the same settings, under the same fp32 rule).
    Same dtypes and autocast behaviour as two ``rational_linear`` calls.
    """
    op = "grkan_mlp"
    check_tensor(op, "x", x, dims=(1, None))
    _check_linear(op, x, numerator1, denominator1, weight1, bias1, num_groups, denominator_form, x.shape[-1])
    _check_linear(op, x, numerator2, denominator2, weight2, bias2, num_groups, denominator_form, weight1.shape[0])
    dtype = _matmul_dtype(x)
    tensors = tuple(t for t in (x, numerator1, denominator1, weight1, bias1, numerator2, denominator2, weight2,
                                bias2) if t is not None)
    if pick_backend(op, tensors, backend, _kernel_problem(dtype, *tensors)) == "reference" or x.numel() == 0:
        return grkan_mlp_reference(x, numerator1, denominator1, weight1, bias1, numerator2, denominator2, weight2,
                                   bias2, num_groups, denominator_form)
    token = settings_token()
    if fuse is None or fuse_backward is None:
        default = _mlp_fuse_default(dtype == torch.float32, token)
        fuse = default[:2] if fuse is None else tuple(bool(f) for f in fuse)
        fuse_backward = default[2:] if fuse_backward is None else tuple(bool(f) for f in fuse_backward)
    else:
        fuse, fuse_backward = tuple(bool(f) for f in fuse), tuple(bool(f) for f in fuse_backward)
    return apply_function(GRKANMLPFunction, x, numerator1, denominator1, weight1, bias1, numerator2, denominator2,
                          weight2, bias2, num_groups, denominator_form, dtype, fuse + fuse_backward, token)


_mlp_defaults: dict = {}


def _mlp_fuse_default(fp32: bool, token) -> tuple:
    """(fc1 fwd, fc2 fwd, fc1 bwd, fc2 bwd) fused by default: ``settings("rational_linear.mlp")``, remembered per
    ``launch.settings_token()`` (read afresh inside ``tuning()`` blocks, where the token is None)."""
    hit = _mlp_defaults.get((fp32, token)) if token is not None else None
    if hit is None:
        conf = settings("rational_linear.mlp")
        ok = not fp32 or conf["fuse_fp32"]
        hit = tuple(bool(conf[k]) and ok for k in ("fuse_fc1", "fuse_fc2", "fuse_bwd_fc1", "fuse_bwd_fc2"))
        if token is not None:
            if len(_mlp_defaults) > 64:
                _mlp_defaults.clear()
            _mlp_defaults[(fp32, token)] = hit
    return hit


__all__ = ["GRKANMLPFunction", "RationalLinearFunction", "grkan_mlp", "grkan_mlp_reference", "rational_linear",
           "rational_linear_reference"]
