"""Per-row softmax cross-entropy of 16-bit logits, in fp32 arithmetic, without an fp32 copy of the logits.

``F.cross_entropy(logits.float(), ...)`` on bf16 logits first writes an fp32 copy (twice the logits' bytes), then
its log-softmax (as much again), and backward writes the fp32 gradient, reads it back through the log-softmax
backward and casts it to bf16: five or six full passes over ``[N, C]`` fp32. Here the forward reads the logits
once (online max / sum of exponentials per row, in fp32 registers) and keeps only ``lse [N]``; the backward
reads them once more and writes ``(softmax - one_hot) * dloss`` in the logits' dtype. An MLM head with
30k classes is where this matters.

Semantics: ``F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="none")``: one fp32
loss per row, 0 (and no gradient) where the target is ``ignore_index``. A target outside ``[0, C)`` that is
not ``ignore_index`` gives a NaN loss on the kernel path (the reference raises), never a read out of bounds.

Ladder: ``softmax_cross_entropy_reference`` -> Triton kernels -> their launchers ``softmax_cross_entropy_fwd`` /
``softmax_cross_entropy_bwd`` (also used by ``linear_cross_entropy``, whose backward writes the gradient in place
of a chunk's logits) -> ``SoftmaxCrossEntropyFunction`` -> ``softmax_cross_entropy`` (public; launch settings
``softmax_ce.*`` in ``launch.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import apply_function
from .launch import launch, settings
from .triton_shim import tl, triton
from .validate import check_tensor, kernel_dtype_problem, pick_backend


def softmax_cross_entropy_reference(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100):
    """``[N]`` losses: ``F.cross_entropy`` in fp32 (fp64 for fp64 logits), ``reduction="none"``."""
    dt = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.to(dt), targets, ignore_index=ignore_index, reduction="none")


# ----------------------------------------------------------------------------------------------------
# Triton kernels: one program per row, walking the classes in BLOCK-wide tiles.


@triton.jit
def _ce_fwd_kernel(LOGITS, TARGETS, LOSS, LSE, C, stride, ignore_index, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = LOGITS + row.to(tl.int64) * stride
    offs = tl.arange(0, BLOCK)
    m_vec = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    s_vec = tl.zeros([BLOCK], dtype=tl.float32)
    for c0 in range(0, C, BLOCK):
        cols = c0 + offs
        x = tl.load(base + cols, mask=cols < C, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m_vec, x)
        # lanes still at -inf contribute 0 (and not -inf - -inf = NaN)
        alpha = tl.where(m_vec == float("-inf"), 0.0, tl.exp(m_vec - m_new))
        s_vec = s_vec * alpha + tl.where(x == float("-inf"), 0.0, tl.exp(x - m_new))
        m_vec = m_new
    m = tl.max(m_vec, 0)
    s = tl.sum(tl.where(m_vec == float("-inf"), 0.0, s_vec * tl.exp(m_vec - m)), 0)
    lse = m + tl.log(s)
    t = tl.load(TARGETS + row)
    in_range = (t >= 0) & (t < C)
    picked = tl.load(base + tl.where(in_range, t, 0)).to(tl.float32)
    loss = tl.where(in_range, lse - picked, float("nan"))
    loss = tl.where(t == ignore_index, 0.0, loss)
    tl.store(LOSS + row, loss)
    tl.store(LSE + row, lse)


@triton.jit
def _ce_bwd_kernel(LOGITS, TARGETS, LSE, DLOSS, DLOGITS, C, stride, stride_dloss, stride_d, ignore_index,
                   BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = LOGITS + row.to(tl.int64) * stride
    out = DLOGITS + row.to(tl.int64) * stride_d
    t = tl.load(TARGETS + row)
    lse = tl.load(LSE + row)
    g = tl.load(DLOSS + row * stride_dloss).to(tl.float32)
    g = tl.where(t == ignore_index, 0.0, g)
    offs = tl.arange(0, BLOCK)
    for c0 in range(0, C, BLOCK):
        cols = c0 + offs
        mask = cols < C
        x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        d = (tl.exp(x - lse) - tl.where(cols == t, 1.0, 0.0)) * g
        tl.store(out + cols, d.to(DLOGITS.dtype.element_ty), mask=mask)


def softmax_cross_entropy_fwd(logits, targets, ignore_index, loss=None, lse=None):
    """Launch the forward kernel: ``(loss [N], lse [N])`` (fp32) of ``logits [N, C]`` against ``targets [N]``.

    ``logits`` must have unit column stride, ``targets`` (int64 or int32), ``loss`` and ``lse`` must be contiguous;
    ``loss``/``lse`` may be given (e.g. slices of larger buffers), else they are allocated. For callers that
    manage their own buffers (``linear_cross_entropy``); ``softmax_cross_entropy`` is the public op.
    """
    N, C = logits.shape
    _check_rows("logits", logits)
    loss = torch.empty(N, dtype=torch.float32, device=logits.device) if loss is None else loss
    lse = torch.empty(N, dtype=torch.float32, device=logits.device) if lse is None else lse
    if N > 0:
        launch("softmax_ce.fwd", _ce_fwd_kernel, (N,), logits, targets, loss, lse, C, logits.stride(0),
               ignore_index, configs=[settings("softmax_ce.fwd")])
    return loss, lse


def softmax_cross_entropy_bwd(logits, targets, lse, dloss, ignore_index, dlogits=None):
    """Launch the backward kernel: ``dlogits [N, C] = (softmax(logits) - one_hot(targets)) * dloss[:, None]``, 0 in
    rows whose target is ``ignore_index``; written in ``dlogits``' dtype and returned.

    ``dloss [N]`` may have any stride, 0 included (one value for every row: ``torch.ones(1).expand(N)``).
    ``dlogits`` may be ``logits`` itself (the gradient then replaces the logits in place): each program owns one
    row and reads each tile of it before writing that tile. Allocated like ``logits`` when not given.
    """
    N, C = logits.shape
    dlogits = torch.empty_like(logits) if dlogits is None else dlogits
    _check_rows("logits", logits)
    _check_rows("dlogits", dlogits)
    if N > 0:
        launch("softmax_ce.bwd", _ce_bwd_kernel, (N,), logits, targets, lse, dloss, dlogits, C,
               logits.stride(0), dloss.stride(0), dlogits.stride(0), ignore_index,
               configs=[settings("softmax_ce.bwd")])
    return dlogits


def _check_rows(name, t):
    # the kernels walk each row with unit stride
    if t.dim() != 2 or (t.shape[1] > 1 and t.stride(1) != 1):
        raise ValueError(f"softmax_cross_entropy: {name} must be [N, C] with unit column stride; got shape "
                         f"{tuple(t.shape)}, strides {t.stride()}")


class SoftmaxCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        loss, lse = softmax_cross_entropy_fwd(logits, targets, ignore_index)
        ctx.save_for_backward(logits, targets, lse)
        ctx.ignore_index = ignore_index
        return loss

    @staticmethod
    def backward(ctx, dloss):
        logits, targets, lse = ctx.saved_tensors
        return softmax_cross_entropy_bwd(logits, targets, lse, dloss, ctx.ignore_index), None, None


def softmax_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                          backend: str | None = None) -> torch.Tensor:
    """Cross-entropy of each row of ``logits`` against its target class, computed in fp32.

    Args:
        logits: ``[N, C]`` (fp32, fp16 or bf16 for the kernels; fp64 runs the reference).
        targets: ``[N]`` integer class indices; rows whose target is ``ignore_index`` get loss 0.
        ignore_index: the target value that does not count.
        backend: ``"triton"``, ``"reference"`` or None (choose per ``hfzoo.ops.dispatch``).

    Returns:
        ``[N]`` fp32 losses (fp64 for fp64 logits); differentiable in ``logits`` (gradient in logits' dtype).

    Example::

        >>> logits, targets = torch.randn(4, 10), torch.tensor([1, -100, 3, 9])
        >>> softmax_cross_entropy(logits, targets, backend="reference").shape
        torch.Size([4])
    """
    name = "softmax_cross_entropy"
    check_tensor(name, "logits", logits, dims=2)
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex() \
            or targets.dtype == torch.bool:
        raise TypeError(f"{name}: targets must be an integer tensor; got {getattr(targets, 'dtype', type(targets))}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"{name}: targets must have shape ({logits.shape[0]},); got {tuple(targets.shape)}")
    if targets.device != logits.device:
        raise ValueError(f"{name}: targets is on {targets.device} but logits are on {logits.device}")
    choice = pick_backend(name, (logits,), backend, kernel_dtype_problem(logits))
    if choice == "reference":
        return softmax_cross_entropy_reference(logits, targets, ignore_index)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    return apply_function(SoftmaxCrossEntropyFunction, logits, targets.contiguous(), int(ignore_index))


__all__ = ["SoftmaxCrossEntropyFunction", "softmax_cross_entropy", "softmax_cross_entropy_bwd",
           "softmax_cross_entropy_fwd", "softmax_cross_entropy_reference"]
