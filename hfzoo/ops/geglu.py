"""GeGLU with its dropout in one pass: ``y = dropout(GELU(x[..., :I]) * x[..., I:])``.

MosaicBERT's feed-forward projects to ``2 I`` features (``gated_layers``), multiplies the exact (erf) GELU of the
first half by the second half, and drops out the product before ``wo``. Eagerly that is four kernels forward
(GELU, product, dropout with its mask) and five backward (dropout, two products, GELU, concatenating the two
halves' gradients), each a full pass over ``[N, I]`` or ``[N, 2 I]`` activations. Here it is one kernel each way:
forward reads ``x`` (``2 I`` per row) and writes ``y`` (``I``); backward reads ``x`` and ``dy`` and writes ``dx``
(``2 I``) straight into one tensor. The dropout mask is never stored: both kernels draw it from the same Philox
stream (``tl.rand4x``: four draws per Philox call), the seed taken from torch's CPU generator per call (no sync).

Ladder: ``geglu_reference`` (the definition) -> Triton kernels -> ``GegluFunction`` -> ``geglu`` (public: checks its
arguments with ``validate.py``, dispatches per call, see ``dispatch.py``; launch settings ``geglu.*`` in ``launch.py``).
The reference path's dropout draws from torch's RNG, so its mask differs from the kernels' (same distribution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import apply_function
from .launch import launch, settings
from .triton_shim import tl, triton
from .validate import check_tensor, kernel_dtype_problem, pick_backend


def geglu_reference(x: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """``dropout(gelu(gate) * lin)`` with ``gate, lin = x.chunk(2, -1)``, computed in fp32 (fp64 for fp64)."""
    dt = torch.promote_types(x.dtype, torch.float32)
    gate, lin = x.to(dt).chunk(2, dim=-1)
    y = F.gelu(gate) * lin
    if dropout_p > 0:
        y = F.dropout(y, dropout_p, training=True)
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------------
# Triton kernels. Grid: (rows, column blocks of the I outputs). Math in fp32. x is a contiguous [rows, 2 I], y and
# dy contiguous [rows, I] (few arguments: host launch cost grows with them). Dropout keeps an element when its
# uniform draw is >= p; draws come four per Philox call (tl.rand4x on one counter per group of four columns, the
# four results interleaved back into column order), a quarter of the integer work of one call per element.


@triton.jit
def _keep_mask(seed, p, row, cb, I: tl.constexpr, BLOCK: tl.constexpr):
    group = (row * tl.cdiv(I, BLOCK) + cb) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)
    r0, r1, r2, r3 = tl.rand4x(seed, group)
    return tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), [BLOCK]) >= p


@triton.jit
def _gate_and_linear(X, I: tl.constexpr, BLOCK: tl.constexpr):
    """This program's row and column block, and its gate and linear halves of ``X`` (``[rows, 2 * I]``) in fp32."""
    row = tl.program_id(0)
    cb = tl.program_id(1)
    cols = cb * BLOCK + tl.arange(0, BLOCK)
    mask = cols < I
    x_row = X + row.to(tl.int64) * (2 * I)
    g = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    lin = tl.load(x_row + I + cols, mask=mask, other=0.0).to(tl.float32)
    return row, cb, cols, mask, g, lin


@triton.jit(do_not_specialize=["seed"])  # a new seed compiles nothing
def _geglu_fwd_kernel(X, Y, seed, p, I: tl.constexpr, DROPOUT: tl.constexpr, BLOCK: tl.constexpr):
    row, cb, cols, mask, g, lin = _gate_and_linear(X, I, BLOCK)
    y = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476)) * lin
    if DROPOUT:
        y = tl.where(_keep_mask(seed, p, row, cb, I, BLOCK), y / (1.0 - p), 0.0)
    tl.store(Y + row.to(tl.int64) * I + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed"])
def _geglu_bwd_kernel(X, DY, DX, seed, p, I: tl.constexpr, DROPOUT: tl.constexpr, BLOCK: tl.constexpr):
    row, cb, cols, mask, g, lin = _gate_and_linear(X, I, BLOCK)
    dy = tl.load(DY + row.to(tl.int64) * I + cols, mask=mask, other=0.0).to(tl.float32)
    if DROPOUT:
        dy = tl.where(_keep_mask(seed, p, row, cb, I, BLOCK), dy / (1.0 - p), 0.0)
    cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
    dlin = dy * g * cdf
    dgate = dy * lin * (cdf + g * tl.exp(-0.5 * g * g) * 0.3989422804014327)
    dx_row = DX + row.to(tl.int64) * (2 * I)
    tl.store(dx_row + cols, dgate.to(DX.dtype.element_ty), mask=mask)
    tl.store(dx_row + I + cols, dlin.to(DX.dtype.element_ty), mask=mask)


def _launch(name, kernel, rows, I, *args, dropout: bool):
    conf = settings(name)
    launch(name, kernel, (rows, -(-I // conf["BLOCK"])), *args, configs=[conf], I=I, DROPOUT=dropout)


def geglu_forward(x2: torch.Tensor, dropout_p: float, seed: int) -> torch.Tensor:
    """The forward kernel on a contiguous ``[rows, 2 I]`` tensor: ``[rows, I]`` (no checks, no autograd; the seed
    draws the dropout mask, pass the same one to ``geglu_backward``)."""
    rows, I = x2.shape[0], x2.shape[1] // 2
    y = torch.empty(rows, I, dtype=x2.dtype, device=x2.device)
    if rows > 0 and I > 0:
        _launch("geglu.fwd", _geglu_fwd_kernel, rows, I, x2, y, seed, dropout_p, dropout=dropout_p > 0)
    return y


def geglu_backward(x2: torch.Tensor, dy2: torch.Tensor, dropout_p: float, seed: int) -> torch.Tensor:
    """``dx [rows, 2 I]`` from the forward's input ``x2`` and a contiguous ``dy2 [rows, I]`` (no checks)."""
    rows, I = x2.shape[0], x2.shape[1] // 2
    dx = torch.empty_like(x2)
    if rows > 0 and I > 0:
        _launch("geglu.bwd", _geglu_bwd_kernel, rows, I, x2, dy2, dx, seed, dropout_p, dropout=dropout_p > 0)
    return dx


class GegluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dropout_p, seed):
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        y = geglu_forward(x2, dropout_p, seed)
        ctx.save_for_backward(x2)
        ctx.dropout_p, ctx.seed, ctx.shape = dropout_p, seed, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        (x2,) = ctx.saved_tensors
        dy2 = dy.reshape(x2.shape[0], x2.shape[1] // 2).contiguous()
        dx = geglu_backward(x2, dy2, ctx.dropout_p, ctx.seed)
        return dx.view(ctx.shape), None, None


def geglu(x: torch.Tensor, dropout_p: float = 0.0, backend: str | None = None) -> torch.Tensor:
    """``dropout(GELU(gate) * lin)`` where ``gate, lin = x.chunk(2, dim=-1)`` (exact, erf-based GELU).

    Args:
        x: ``[..., 2 I]`` (fp32, fp16 or bf16 for the kernels; fp64 runs the reference), e.g. the output of a
            ``Linear(h, 2 I)``; the first half is the gate.
        dropout_p: probability of zeroing each output (kept ones are scaled by ``1 / (1 - p)``); pass 0 in eval.
        backend: ``"triton"``, ``"reference"`` or None (choose per ``hfzoo.ops.dispatch``).

    Returns:
        ``[..., I]`` in x's dtype; differentiable in x (the backward writes ``dx`` as one ``[..., 2 I]`` tensor).

    Example::

        >>> x = torch.randn(5, 8)
        >>> geglu(x, backend="reference").shape
        torch.Size([5, 4])
    """
    name = "geglu"
    check_tensor(name, "x", x, dims=(1, None))
    if x.shape[-1] % 2:
        raise ValueError(f"{name}: the last dimension of x holds gate and linear halves and must be even; "
                         f"got shape {tuple(x.shape)}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{name}: dropout_p must be a number in [0, 1); got {dropout_p!r}")
    choice = pick_backend(name, (x,), backend, kernel_dtype_problem(x))
    if choice == "reference":
        return geglu_reference(x, float(dropout_p))
    seed = int(torch.randint(0, 2 ** 31 - 1, ())) if dropout_p > 0 else 0  # CPU generator: no device sync
    return apply_function(GegluFunction, x, float(dropout_p), seed)


__all__ = ["GegluFunction", "geglu", "geglu_backward", "geglu_forward", "geglu_reference"]
