"""Post-LN residual step in one pass each way: ``z = Dropout(x) + residual``, ``y = LayerNorm(z)``.

BERT-style layers end each sub-block with it. Eagerly, forward is a dropout kernel (writing the output and a bool
mask), an add and a LayerNorm; backward is LayerNorm's input-gradient and weight-gradient kernels, the dropout's
gradient kernel and the column sum that gives the preceding linear layer's bias gradient. Here forward is one kernel
(writes ``y``, ``z`` and per-row ``mean`` / ``rstd``; the dropout mask is redrawn from a Philox seed, not stored),
and backward is one persistent kernel that writes ``dz`` (the residual's gradient), ``dx`` (``dz`` through the
dropout mask; ``dz`` itself without dropout) and per-program partial column sums of ``dy * zhat``, ``dy`` and
``dx`` -- LayerNorm's weight and bias gradients and the preceding bias's gradient -- which one ``sum`` finishes.

Ladder: ``residual_layernorm_reference`` (the definition) -> Triton kernels -> ``residual_layernorm_forward`` /
``residual_layernorm_backward`` (raw launchers, no checks: MosaicBERT's fused layer calls them) ->
``ResidualLayerNormFunction`` -> ``residual_layernorm`` (public: checks with ``validate.py``, dispatch per call).
The reference's dropout draws from torch's RNG, so its mask differs from the kernels' (same distribution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import apply_function
from .launch import is_interpreted, launch, persistent_grid
from .triton_shim import tl, triton
from .validate import check_tensor, kernel_dtype_problem, pick_backend

_FWD_CONFIG = [{"num_warps": 4}]
_BWD_CONFIG = [{"num_warps": 8}]   # ROWS x BLOCK_H tiles: 8 warps keep the values per thread low
_BWD_PROGRAMS_PER_SM = 4   # persistent backward: programs per SM, each walking blocks of _BWD_ROWS rows
_BWD_ROWS = 4               # (2 under the interpreter, so tests cross block and grid edges)


def residual_layernorm_reference(x, residual, weight, bias, eps: float = 1e-12, dropout_p: float = 0.0):
    """``LayerNorm(Dropout(x) + residual)`` over the last dimension, in fp32 (fp64 for fp64); x's dtype out."""
    dt = torch.promote_types(x.dtype, torch.float32)
    z = x.to(dt)
    if dropout_p > 0:
        z = F.dropout(z, dropout_p, training=True)
    z = z + residual.to(dt)
    w = weight.to(dt) if weight is not None else None
    b = bias.to(dt) if bias is not None else None
    return F.layer_norm(z, (x.shape[-1],), w, b, eps).to(x.dtype)


# ----------------------------------------------------------------------------------------------------
# Triton kernels. Rows of H contiguous features; math in fp32. Dropout keeps an element when its Philox draw at
# (seed, row * H + column) is >= p.


@triton.jit(do_not_specialize=["seed"])
def _res_ln_fwd_kernel(X, R, W, B, Y, Z, MEAN, RSTD, eps, p, seed, H: tl.constexpr, BLOCK_H: tl.constexpr,
                       DROPOUT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    x = tl.load(X + row * H + cols, mask=mask, other=0.0).to(tl.float32)
    if DROPOUT:
        keep = tl.rand(seed, row * H + cols) >= p
        x = tl.where(keep, x / (1.0 - p), 0.0)
    z = x + tl.load(R + row * H + cols, mask=mask, other=0.0).to(tl.float32)
    z_out = z.to(Z.dtype.element_ty)
    tl.store(Z + row * H + cols, z_out, mask=mask)
    z = z_out.to(tl.float32)       # normalise what the backward will read back
    mean = tl.sum(z, 0) / H
    zc = tl.where(mask, z - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, 0) / H + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * H + cols, (zc * rstd * w + b).to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit(do_not_specialize=["seed", "N"])
def _res_ln_bwd_kernel(DY, Z, W, MEAN, RSTD, DZ, DX, PART, N, p, seed, H: tl.constexpr, BLOCK_H: tl.constexpr,
                       ROWS: tl.constexpr, DROPOUT: tl.constexpr):
    # Persistent: program pid walks row blocks pid, pid + programs, ... of ROWS rows each (ROWS rows in flight per
    # step: more independent loads and reductions per program than one row at a time).
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_H)
    cmask = cols < H
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_H], dtype=tl.float32)
    db = tl.zeros([BLOCK_H], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_H], dtype=tl.float32)
    for blk in range(pid, tl.cdiv(N, ROWS), programs):
        rows = (blk * ROWS + tl.arange(0, ROWS)).to(tl.int64)
        rmask = rows < N
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None] * H + cols[None, :]
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=rmask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        zhat = tl.where(mask, (z - mean[:, None]) * rstd[:, None], 0.0)
        wdy = w[None, :] * dy
        c1 = tl.sum(zhat * wdy, 1) / H
        c2 = tl.sum(wdy, 1) / H
        dz = (wdy - (zhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        dz_out = dz.to(DZ.dtype.element_ty)
        tl.store(DZ + offs, dz_out, mask=mask)
        dx = dz_out.to(tl.float32)
        if DROPOUT:
            keep = tl.rand(seed, offs) >= p
            dx = tl.where(keep, dx / (1.0 - p), 0.0)
            dx_out = dx.to(DX.dtype.element_ty)
            tl.store(DX + offs, dx_out, mask=mask)
            dx = dx_out.to(tl.float32)
        dw += tl.sum(dy * zhat, 0)
        db += tl.sum(dy, 0)
        dbias += tl.sum(tl.where(mask, dx, 0.0), 0)
    base = PART + pid.to(tl.int64) * (3 * H)
    tl.store(base + cols, dw, mask=cmask)
    tl.store(base + H + cols, db, mask=cmask)
    tl.store(base + 2 * H + cols, dbias, mask=cmask)


def _block(H: int) -> int:
    return max(16, 1 << (H - 1).bit_length())   # next power of two (plain ints: cheaper per launch)


def residual_layernorm_forward(x2, r2, weight, bias, eps: float, dropout_p: float, seed: int):
    """Contiguous ``[N, H]`` ``x2``, ``r2`` -> ``(y, z, mean, rstd)`` (no checks, no autograd)."""
    N, H = x2.shape
    y = torch.empty_like(x2)
    z = torch.empty_like(x2)
    mean = torch.empty(N, dtype=torch.float32, device=x2.device)
    rstd = torch.empty(N, dtype=torch.float32, device=x2.device)
    if N > 0:
        launch("residual_ln.fwd", _res_ln_fwd_kernel, (N,), x2, r2, weight, bias, y, z, mean, rstd, float(eps),
               float(dropout_p), seed, configs=_FWD_CONFIG, H=H, BLOCK_H=_block(H), DROPOUT=dropout_p > 0)
    return y, z, mean, rstd


def residual_layernorm_backward(dy, z, weight, mean, rstd, dropout_p: float, seed: int, sum_dtype=torch.float32):
    """``(dz, dx, dweight, dbias, dx.sum(0))`` from a contiguous ``dy [N, H]`` (no checks). ``dz``: the residual's
    gradient; ``dx``: x's (``dz`` itself without dropout); the last three summed in fp32, returned in
    ``sum_dtype``."""
    N, H = z.shape
    dz = torch.empty_like(z)
    dx = torch.empty_like(z) if dropout_p > 0 else dz
    rows = _BWD_ROWS if not is_interpreted() else 2
    programs = persistent_grid(-(-N // rows), z.device, _BWD_PROGRAMS_PER_SM) if N > 0 else 1
    part = torch.empty(programs, 3, H, dtype=torch.float32, device=z.device)
    if N > 0:
        launch("residual_ln.bwd", _res_ln_bwd_kernel, (programs,), dy, z, weight, mean, rstd, dz, dx, part, N,
               float(dropout_p), seed, configs=_BWD_CONFIG, H=H, BLOCK_H=_block(H), ROWS=rows,
               DROPOUT=dropout_p > 0)
        sums = part.sum(0, dtype=sum_dtype)
    else:
        sums = part.new_zeros(3, H, dtype=sum_dtype)
    return dz, dx, sums[0], sums[1], sums[2]


class ResidualLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, dropout_p, seed):
        H = x.shape[-1]
        x2 = x.reshape(-1, H).contiguous()
        r2 = residual.reshape(-1, H).contiguous()
        y, z, mean, rstd = residual_layernorm_forward(x2, r2, weight.contiguous(), bias.contiguous(), eps, dropout_p,
                                                      seed)
        ctx.save_for_backward(z, weight, mean, rstd)
        ctx.dropout_p, ctx.seed, ctx.shape = dropout_p, seed, x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        z, weight, mean, rstd = ctx.saved_tensors
        dz, dx, dw, db, _ = residual_layernorm_backward(dy.reshape(z.shape).contiguous(), z, weight.contiguous(),
                                                        mean, rstd, ctx.dropout_p, ctx.seed, weight.dtype)
        return dx.view(ctx.shape), dz.view(ctx.shape), dw, db, None, None, None


def residual_layernorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       eps: float = 1e-12, dropout_p: float = 0.0, backend: str | None = None) -> torch.Tensor:
    """``LayerNorm(Dropout(x) + residual)`` over the last dimension (a post-LN residual step).

    Args:
        x, residual: ``[..., H]`` of one dtype (fp32, fp16 or bf16 for the kernels).
        weight, bias: ``[H]`` LayerNorm affine parameters.
        eps: LayerNorm epsilon. dropout_p: dropout on ``x`` (kept ones scaled by ``1 / (1 - p)``); 0 in eval.
        backend: ``"triton"``, ``"reference"`` or None (choose per ``hfzoo.ops.dispatch``).

    Returns ``[..., H]`` in x's dtype; differentiable in x, residual, weight and bias.

    Example::

        >>> x = r = torch.randn(3, 8)
        >>> residual_layernorm(x, r, torch.ones(8), torch.zeros(8), backend="reference").shape
        torch.Size([3, 8])
    """
    name = "residual_layernorm"
    check_tensor(name, "x", x, dims=(1, None))
    check_tensor(name, "residual", residual, device=x.device)
    check_tensor(name, "weight", weight, device=x.device, dims=1)
    check_tensor(name, "bias", bias, device=x.device, dims=1)
    H = x.shape[-1]
    if residual.shape != x.shape or weight.shape != (H,) or bias.shape != (H,):
        raise ValueError(f"{name}: residual must match x {tuple(x.shape)} and weight, bias must be ({H},); got "
                         f"{tuple(residual.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
    if residual.dtype != x.dtype:
        raise TypeError(f"{name}: x and residual must share a dtype; got {x.dtype}, {residual.dtype}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{name}: dropout_p must be a number in [0, 1); got {dropout_p!r}")
    problem = kernel_dtype_problem(x, residual, weight, bias)
    if problem is None and _block(H) > 8192:
        problem = f"{H} features are more than the kernels' 8192"
    choice = pick_backend(name, (x, residual, weight, bias), backend, problem)
    if choice == "reference":
        return residual_layernorm_reference(x, residual, weight, bias, eps, float(dropout_p))
    seed = int(torch.randint(0, 2 ** 31 - 1, ())) if dropout_p > 0 else 0  # CPU generator: no device sync
    return apply_function(ResidualLayerNormFunction, x, residual, weight, bias, float(eps), float(dropout_p), seed)


__all__ = ["ResidualLayerNormFunction", "residual_layernorm", "residual_layernorm_backward",
           "residual_layernorm_forward", "residual_layernorm_reference"]
