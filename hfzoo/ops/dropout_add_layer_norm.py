"""Post-LN residual step in one pass: ``y = LayerNorm(dropout(x) + residual) * weight + bias``.

BERT-style blocks end every sub-layer with ``LayerNorm(Dropout(sublayer) + residual)``. Eagerly that is a dropout
kernel (writing the output and a mask), an add and the LayerNorm forward; backward the LayerNorm's input gradient,
its weight/bias reduction and the dropout's mask product. Here the forward is one kernel (reads ``x`` and
``residual``, writes ``y`` and two fp32 statistics per row) and the backward one kernel plus a tiny sum of per-program
weight/bias partials (no atomics). The dropout mask is redrawn in the backward from the same Philox stream
(``tl.rand(seed, row * D + column)``; the seed comes from torch's CPU generator, no sync), and the sum
``dropout(x) + residual`` is recomputed from ``x`` and ``residual`` in fp32 rather than stored.

Ladder: ``dropout_add_layer_norm_reference`` (the eager composition, in the inputs' dtype) -> Triton kernels ->
``DropoutAddLayerNormFunction`` -> ``dropout_add_layer_norm`` (public: checks with ``validate.py``, dispatches per
call; launch settings ``dropout_add_ln.*`` in ``launch.py``). The reference's dropout draws from torch's RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .launch import bucket, compile_options, launch, persistent_grid, settings
from .triton_shim import tl, triton
from .validate import check_shape, check_tensor, kernel_dtype_problem, pick_backend


def dropout_add_layer_norm_reference(x, residual, weight, bias, eps: float = 1e-12, dropout_p: float = 0.0):
    """``F.layer_norm(F.dropout(x, dropout_p) + residual, ...)``: the eager composition BERT layers run."""
    z = (F.dropout(x, dropout_p, training=True) if dropout_p > 0 else x) + residual
    return F.layer_norm(z, (x.shape[-1],), weight, bias, eps)


# ----------------------------------------------------------------------------------------------------
# Triton kernels. Rows are the flattened leading dimensions; a row's D features fit in BLOCK_D (power of two).


@triton.jit(do_not_specialize=["M", "seed"])  # a new token count or seed compiles nothing
def _dal_fwd_kernel(X, R, W, B, Y, MEAN, RSTD, M, D, eps, seed, p, scale,
                DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    rmask = rows < M
    mask = rmask[:, None] & cmask[None, :]
    offs = rows[:, None].to(tl.int64) * D + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if DROPOUT:
        keep = tl.rand(seed, rows[:, None] * D + cols[None, :]) >= p
        x = tl.where(keep, x * scale, 0.0)
    z = x + tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(z, axis=1) / D
    zc = tl.where(mask, z - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, axis=1) / D + eps)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
    y = zc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=rmask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit(do_not_specialize=["M", "rows_per_program", "seed"])
def _dal_bwd_kernel(X, R, W, MEAN, RSTD, DY, DX, DR, DW_PARTIAL, DB_PARTIAL, M, D, rows_per_program, seed, p, scale,
                DROPOUT: tl.constexpr, SEPARATE_DX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # Each program walks rows_per_program rows and keeps its weight/bias gradients in registers, writing one
    # partial row of each at the end (summed on the host): no atomics.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    db = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = pid * rows_per_program
    for r0 in range(start, start + rows_per_program, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        rmask = (rows < M) & (rows < start + rows_per_program)
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * D + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if DROPOUT:
            keep = tl.rand(seed, rows[:, None] * D + cols[None, :]) >= p
            x = tl.where(keep, x * scale, 0.0)
        z = x + tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=rmask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = tl.where(mask, (z - mean[:, None]) * rstd[:, None], 0.0)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
        dxhat = dy * w[None, :]
        c1 = tl.sum(dxhat * xhat, axis=1) / D
        c2 = tl.sum(dxhat, axis=1) / D
        dz = (dxhat - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        tl.store(DR + offs, dz.to(DR.dtype.element_ty), mask=mask)
        if DROPOUT:
            tl.store(DX + offs, tl.where(keep, dz * scale, 0.0).to(DX.dtype.element_ty), mask=mask)
        elif SEPARATE_DX:
            tl.store(DX + offs, dz.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid * D + cols, dw, mask=cmask)
    tl.store(DB_PARTIAL + pid * D + cols, db, mask=cmask)


MAX_WIDTH = 16384  # widest row one program holds


def _block_sizes(D: int, conf: dict):
    BLOCK_D = bucket(D, lo=16)
    BLOCK_M = max(1, min(conf["max_rows"], conf["tile"] // BLOCK_D))
    return BLOCK_M, BLOCK_D


class DropoutAddLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, dropout_p, seed):
        shape = x.shape
        D = shape[-1]
        x2, r2 = x.reshape(-1, D).contiguous(), residual.reshape(-1, D).contiguous()
        M = x2.shape[0]
        # eager's type promotion (under autocast a bf16 sub-layer output meets an fp32 residual stream)
        y = torch.empty(M, D, dtype=torch.promote_types(x.dtype, residual.dtype), device=x.device)
        mean = torch.empty(M, dtype=torch.float32, device=x.device)
        rstd = torch.empty(M, dtype=torch.float32, device=x.device)
        conf = settings("dropout_add_ln.fwd")
        BLOCK_M, BLOCK_D = _block_sizes(D, conf)
        if M > 0:
            launch("dropout_add_ln.fwd", _dal_fwd_kernel, (triton.cdiv(M, BLOCK_M),), x2, r2, weight, bias, y, mean, rstd,
                   M, D, eps, seed, dropout_p, 1.0 / (1.0 - dropout_p), DROPOUT=dropout_p > 0,
                   BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, **compile_options(conf))
        ctx.save_for_backward(x2, r2, weight, mean, rstd)
        ctx.shape, ctx.dropout_p, ctx.seed, ctx.bias_dtype = shape, dropout_p, seed, bias.dtype
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, r2, weight, mean, rstd = ctx.saved_tensors
        M, D = x2.shape
        dy2 = dy.reshape(M, D).contiguous()
        p = ctx.dropout_p
        dr = torch.empty_like(r2)
        dx = torch.empty_like(x2) if p > 0 or x2.dtype != r2.dtype else dr
        conf = settings("dropout_add_ln.bwd")
        BLOCK_M, BLOCK_D = _block_sizes(D, conf)
        programs = persistent_grid(triton.cdiv(max(M, 1), BLOCK_M), x2.device, conf["programs_per_sm"])
        rows_per_program = triton.cdiv(triton.cdiv(max(M, 1), programs), BLOCK_M) * BLOCK_M
        programs = triton.cdiv(max(M, 1), rows_per_program)
        dw_partial = torch.zeros(programs, D, dtype=torch.float32, device=x2.device)
        db_partial = torch.zeros(programs, D, dtype=torch.float32, device=x2.device)
        if M > 0:
            launch("dropout_add_ln.bwd", _dal_bwd_kernel, (programs,), x2, r2, weight, mean, rstd, dy2, dx, dr,
                   dw_partial, db_partial, M, D, rows_per_program, ctx.seed, p, 1.0 / (1.0 - p), DROPOUT=p > 0,
                   SEPARATE_DX=dx is not dr, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, **compile_options(conf))
        dw = dw_partial.sum(0).to(weight.dtype)
        db = db_partial.sum(0).to(ctx.bias_dtype)
        return dx.view(ctx.shape), dr.view(ctx.shape), dw, db, None, None, None


def dropout_add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           eps: float = 1e-12, dropout_p: float = 0.0, backend: str | None = None) -> torch.Tensor:
    """``LayerNorm(dropout(x) + residual)`` over the last dimension, with affine ``weight`` and ``bias``.

    Args:
        x: ``[..., D]`` the sub-layer's output (dropped out with probability ``dropout_p``, kept ones scaled by
            ``1 / (1 - p)``); fp32, fp16 or bf16 for the kernels (statistics in fp32), fp64 on the reference.
        residual: the residual stream, ``x``'s shape (its dtype may differ: the output takes the promoted dtype,
            as eager addition does, e.g. a bf16 sub-layer output and an fp32 residual under autocast).
        weight, bias: ``[D]`` LayerNorm scale and shift.
        eps: added to the variance.
        dropout_p: pass 0 in eval.
        backend: ``"triton"``, ``"reference"`` or None (choose per ``hfzoo.ops.dispatch``).

    Returns:
        ``x``'s shape, ``promote_types(x.dtype, residual.dtype)``; differentiable in ``x``, ``residual``,
        ``weight`` and ``bias``.

    Example::

        >>> x, r = torch.randn(3, 8), torch.randn(3, 8)
        >>> dropout_add_layer_norm(x, r, torch.ones(8), torch.zeros(8), backend="reference").shape
        torch.Size([3, 8])
    """
    op = "dropout_add_layer_norm"
    check_tensor(op, "x", x, dims=(1, None))
    D = x.shape[-1]
    check_tensor(op, "residual", residual, device=x.device)
    check_shape(op, "residual", residual, x.shape, "(x's shape)")
    for name, t in (("weight", weight), ("bias", bias)):
        check_tensor(op, name, t, device=x.device)
        check_shape(op, name, t, (D,))
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p must be a number in [0, 1); got {dropout_p!r}")
    problem, error = kernel_dtype_problem(x, residual, weight, bias), TypeError
    if problem is None and bucket(D, lo=16) > MAX_WIDTH:
        problem, error = f"the last dimension ({D}) is wider than the kernel's {MAX_WIDTH}", ValueError
    if pick_backend(op, (x, residual, weight, bias), backend, problem, error) == "reference":
        return dropout_add_layer_norm_reference(x, residual, weight, bias, eps, float(dropout_p))
    seed = int(torch.randint(0, 2 ** 31 - 1, ())) if dropout_p > 0 else 0  # CPU generator: no device sync
    return DropoutAddLayerNormFunction.apply(x, residual, weight.contiguous(), bias.contiguous(), float(eps),
                                             float(dropout_p), seed)


__all__ = ["DropoutAddLayerNormFunction", "dropout_add_layer_norm", "dropout_add_layer_norm_reference"]
