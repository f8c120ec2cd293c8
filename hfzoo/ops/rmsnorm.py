"""RMSNorm with an optional fused output gate: ``y = x / rms(x) * weight * swish(gate)``.

GLA and MoM normalize each head's output and multiply it by a swish gate; fusing both saves two full
reads and writes of the activations. Without ``gate`` this is a plain RMSNorm.

Ladder: reference (readable math) -> Triton forward/backward kernels -> autograd Function ->
``rms_norm_gated`` (the public op: checks its arguments with ``validate.py``, then dispatches per call, see
``dispatch.py``; launch settings ``rmsnorm.fwd`` / ``rmsnorm.bwd`` in ``launch.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import apply_function
from .launch import bucket, compile_options, launch, persistent_grid, settings
from .triton_shim import tl, triton
from .validate import check_shape, check_tensor, kernel_dtype_problem, make_contiguous, pick_backend


def rms_norm_gated_reference(x, weight=None, gate=None, eps: float = 1e-6):
    """Plain PyTorch definition; computes in fp32 (fp64 for fp64 inputs) and returns ``x.dtype``."""
    dt = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(dt)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(dt)
    if gate is not None:
        y = y * F.silu(gate.to(dt))
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------------
# Triton kernels. Rows are the flattened leading dimensions; one program normalizes BLOCK_M rows whose
# full width fits in BLOCK_D (a power of two >= D).


@triton.jit
def _rms_fwd_kernel(X, W, G, Y, RSTD, M, D, eps,
                    HAS_W: tl.constexpr, HAS_G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < M) & (cols[None, :] < D)
    offs = rows[:, None].to(tl.int64) * D + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + eps)
    y = x * rstd[:, None]
    if HAS_W:
        w = tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)
        y = y * w[None, :]
    if HAS_G:
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        y = y * g * tl.sigmoid(g)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=rows < M)


@triton.jit
def _rms_bwd_kernel(X, W, G, RSTD, DY, DX, DG, DW_PARTIAL, M, D, rows_per_program,
                    HAS_W: tl.constexpr, HAS_G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # Each program walks `rows_per_program` consecutive rows and keeps its weight gradient in registers,
    # writing one partial row at the end (summed on the host): no atomics.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    if HAS_W:
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = pid * rows_per_program
    for r0 in range(start, start + rows_per_program, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        rmask = (rows < M) & (rows < start + rows_per_program)
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * D + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = x * rstd[:, None]
        if HAS_W:
            yhat = xhat * w[None, :]
        else:
            yhat = xhat
        if HAS_G:
            g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(g)
            # d swish(g) / dg = sig * (1 + g * (1 - sig))
            tl.store(DG + offs, (dy * yhat * sig * (1.0 + g * (1.0 - sig))).to(DG.dtype.element_ty), mask=mask)
            dy = dy * g * sig
        if HAS_W:
            dw += tl.sum(dy * xhat, axis=0)
            dxhat = dy * w[None, :]
        else:
            dxhat = dy
        c = tl.sum(dxhat * xhat, axis=1) / D
        dx = (dxhat - xhat * c[:, None]) * rstd[:, None]
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
    if HAS_W:
        tl.store(DW_PARTIAL + pid * D + cols, dw, mask=cmask)


MAX_WIDTH = 65536  # widest row (BLOCK_D) one program holds


def _block_sizes(D: int, conf: dict):
    BLOCK_D = bucket(D, lo=1)
    BLOCK_M = max(1, min(conf["max_rows"], conf["tile"] // BLOCK_D))
    return BLOCK_M, BLOCK_D


class RMSNormGatedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, gate, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        g2 = gate.reshape(-1, shape[-1]).contiguous() if gate is not None else None
        M, D = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty(M, dtype=torch.float32, device=x.device)
        conf = settings("rmsnorm.fwd")
        BLOCK_M, BLOCK_D = _block_sizes(D, conf)
        launch("rmsnorm.fwd", _rms_fwd_kernel, (triton.cdiv(M, BLOCK_M),),
                      x2, weight, g2, y, rstd, M, D, eps, HAS_W=weight is not None, HAS_G=g2 is not None,
                      BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, **compile_options(conf))
        ctx.save_for_backward(x2, weight, g2, rstd)
        ctx.shape = shape
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, g2, rstd = ctx.saved_tensors
        M, D = x2.shape
        dy2 = dy.reshape(M, D).contiguous()
        dx = torch.empty_like(x2)
        dg = torch.empty_like(g2) if g2 is not None else None
        conf = settings("rmsnorm.bwd")
        BLOCK_M, BLOCK_D = _block_sizes(D, conf)
        programs = persistent_grid(triton.cdiv(M, BLOCK_M), x2.device, conf["programs_per_sm"])
        rows_per_program = triton.cdiv(triton.cdiv(M, programs), BLOCK_M) * BLOCK_M
        programs = triton.cdiv(M, rows_per_program)
        dw_partial = torch.empty(programs, D, dtype=torch.float32, device=x2.device) if weight is not None else None
        launch("rmsnorm.bwd", _rms_bwd_kernel, (programs,),
                      x2, weight, g2, rstd, dy2, dx, dg, dw_partial, M, D, rows_per_program,
                      HAS_W=weight is not None, HAS_G=g2 is not None, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D,
                      **compile_options(conf))
        dw = dw_partial.sum(0).to(weight.dtype) if weight is not None else None
        dg = dg.reshape(ctx.shape) if dg is not None else None
        return dx.reshape(ctx.shape), dw, dg, None


def rms_norm_gated(x: torch.Tensor, weight: torch.Tensor | None = None, gate: torch.Tensor | None = None,
                   eps: float = 1e-6, backend: str | None = None) -> torch.Tensor:
    """RMS-normalize the last dimension of ``x``, scale by ``weight``, multiply by ``swish(gate)``.

    Args:
        x: ``[..., D]`` activations (fp32, fp16 or bf16 on every path; fp64 on the reference). Statistics are
            computed in fp32. Other dtypes are a ``TypeError`` (see ``hfzoo.ops.validate``).
        weight: optional ``[D]`` scale.
        gate: optional tensor of ``x``'s shape; the output is multiplied by ``gate * sigmoid(gate)``.
        eps: added to the mean square before the square root.
        backend: ``"triton"``, ``"reference"`` or None (choose per ``hfzoo.ops.dispatch``).

    Returns:
        A tensor of ``x``'s shape and dtype. Differentiable in ``x``, ``weight`` and ``gate``.

    Example::

        >>> x, g = torch.randn(2, 7, 64), torch.randn(2, 7, 64)
        >>> rms_norm_gated(x, torch.ones(64), g).shape
        torch.Size([2, 7, 64])
    """
    op = "rms_norm_gated"
    check_tensor(op, "x", x, dims=(1, None))
    D = x.shape[-1]
    if weight is not None:
        check_tensor(op, "weight", weight, device=x.device)
        check_shape(op, "weight", weight, (D,))
    if gate is not None:
        check_tensor(op, "gate", gate, device=x.device)
        check_shape(op, "gate", gate, x.shape, "(x's shape)")
    tensors = [t for t in (x, weight, gate) if t is not None]
    problem, error = kernel_dtype_problem(*tensors), TypeError
    if problem is None and bucket(D, lo=1) > MAX_WIDTH:
        problem, error = f"the last dimension ({D}) is wider than the kernel's {MAX_WIDTH}", ValueError
    if pick_backend(op, tensors, backend, problem, error) == "reference" or x.numel() == 0:
        return rms_norm_gated_reference(x, weight, gate, eps)
    x, weight, gate = make_contiguous(x, weight, gate)
    return apply_function(RMSNormGatedFunction, x, weight, gate, float(eps))
