"""Cross-entropy of a linear head's logits, without the full logits: chunked over tokens.

A causal LM's loss needs ``logits = hidden @ weight^T`` only through ``logsumexp`` and the label's logit. With a
vocabulary of 32k and 32k tokens the fp32 logits are 4.2 GB (and their gradient as much again). Here the tokens
are processed ``chunk_size`` at a time: each chunk's logits are made, reduced to its loss, and turned at once into
that chunk's share of the gradients (``softmax - one_hot``, then ``@ weight`` for the hidden states and accumulated
``^T @ hidden`` for the weight), so at most one chunk of logits exists at a time. The gradients are computed in the
forward pass when any input needs one, kept, and scaled by the incoming gradient in the backward (the loss is a
scalar).

Two paths, chosen per call like every op (``hfzoo.ops.dispatch``):

* kernels (CUDA tensors of one kernel dtype, or ``backend="triton"``; under ``TRITON_INTERPRET=1`` also CPU
  tensors): a chunk's logits are one matmul in the inputs' dtype (bf16: fp32 accumulation, bf16 result) into a
  buffer reused by every chunk; ``softmax_cross_entropy``'s forward kernel reads them once (fp32 math in
  registers) for each row's loss and log-sum-exp, and its backward kernel overwrites them in place with
  ``softmax - one_hot`` (0 for ignored rows) in the same dtype. Then two matmuls: ``dh = grad @ weight``, and
  ``grad^T @ hidden`` added to an fp32 ``dW``.
* reference (everything else, e.g. CPU or fp64): plain PyTorch, each chunk's logits (the same matmul) upcast to
  fp32 (fp64 for fp64 inputs) and reduced with eager ops; the readable definition and the tests' oracle.

Memory beyond the inputs and the gradients it returns, with gradients: one chunk of logits (``chunk_size * V``
values in the inputs' dtype on the kernel path; on the reference path their fp32 copy too, and its gradient is
cast for the matmuls), ``dW`` in fp32 (``V * D * 4`` bytes) plus one ``[V, D]`` product in the weight's dtype per
chunk, and ``dh`` and ``db``. ``dW`` is summed over the chunks in fp32 so that many chunks do not round it many
times (summing with ``addmm_`` into a bf16 ``dW`` would save that product and a pass over ``dW`` per chunk).

Semantics are ``torch.nn.functional.cross_entropy(hidden @ weight.T + bias, target, ignore_index=...)`` in fp32
with ``reduction="mean"`` (over the targets that are not ``ignore_index``), ``"sum"``, or ``"sum"`` divided by a
given ``num_items_in_batch`` (transformers' gradient-accumulation convention). On both paths the logits come out of
the matmul in the inputs' dtype (as when a bf16 ``lm_head`` feeds transformers' loss) and ``softmax - one_hot`` is
rounded to it before the gradient matmuls; the kernel path also adds the bias inside the matmul and sums ``db``
from the rounded gradient. Shifting labels for next-token prediction is the caller's job, as with
``torch.nn.functional.cross_entropy``.
"""

from __future__ import annotations

import torch

from .softmax_cross_entropy import softmax_cross_entropy_bwd, softmax_cross_entropy_fwd
from .validate import check_shape, check_tensor, kernel_dtype_problem, pick_backend

_NAME = "linear_cross_entropy"


def _chunk_loss(h, weight, bias, target, ignore_index):
    """Loss sum and ``d(loss sum)/d(logits)`` (fp32, fp64 for fp64 inputs) of one chunk of tokens."""
    dt = torch.promote_types(h.dtype, torch.float32)
    logits = (h @ weight.t()).to(dt)
    if bias is not None:
        logits = logits + bias.to(dt)
    return _logits_loss(logits, target, ignore_index)


def _logits_loss(logits, target, ignore_index):
    """Loss sum and its gradient for fp32/fp64 ``logits`` that this function may overwrite (the gradient is made in
    them)."""
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, safe[:, None])[:, 0]
    loss = torch.where(valid, lse - picked, 0.0).sum()
    # softmax - one_hot, in place in the logits (no second [chunk, V] fp32 tensor; lse is reused)
    grad = logits.sub_(lse[:, None]).exp_()
    grad[torch.arange(len(safe), device=grad.device), safe] -= 1.0
    grad.mul_(valid[:, None])
    return loss, grad


def _chunk_kernels(h, weight, bias, target, ignore_index, logits, loss, lse, dloss):
    """One chunk on the kernel path: the loss of each row into ``loss``, and (when ``dloss`` is given: ones)
    ``d(loss sum)/d(logits)`` in the input dtype, made in place of the chunk's logits in the buffer ``logits``."""
    if bias is None:
        torch.mm(h, weight.t(), out=logits)
    else:
        torch.addmm(bias, h, weight.t(), out=logits)
    softmax_cross_entropy_fwd(logits, target, ignore_index, loss=loss, lse=lse)
    if dloss is not None:
        softmax_cross_entropy_bwd(logits, target, lse, dloss, ignore_index, dlogits=logits)
    return logits


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, ignore_index, divisor, chunk_size, need_grads, kernels):
        N = hidden.shape[0]
        acc = torch.promote_types(hidden.dtype, torch.float32)  # sums in fp32 (fp64 for fp64 inputs)
        dh = torch.empty_like(hidden) if need_grads[0] else None
        dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_grads[1] else None
        db = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_grads[2] else None
        if kernels:  # buffers reused by every chunk; the per-row losses are summed once at the end
            rows = min(chunk_size, N)
            logits_buf = torch.empty(rows, weight.shape[0], dtype=hidden.dtype, device=hidden.device)
            lse_buf = torch.empty(rows, dtype=torch.float32, device=hidden.device)
            losses = torch.empty(N, dtype=torch.float32, device=hidden.device)
            # dloss = 1 for every row: one value, read with stride 0
            ones = torch.ones(1, dtype=torch.float32, device=hidden.device).expand(rows) if any(need_grads) else None
        else:
            total = torch.zeros((), dtype=acc, device=hidden.device)
        for s in range(0, N, chunk_size):
            h, t = hidden[s:s + chunk_size], target[s:s + chunk_size]
            n = len(t)
            if kernels:
                grad = _chunk_kernels(h, weight, bias, t, ignore_index, logits_buf[:n], losses[s:s + n],
                                      lse_buf[:n], None if ones is None else ones[:n])
            else:
                loss, grad = _chunk_loss(h, weight, bias, t, ignore_index)
                total += loss
            if dh is not None:
                if kernels:
                    torch.mm(grad, weight, out=dh[s:s + n])
                else:
                    dh[s:s + n] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            if dw is not None:  # in the matmul dtype (fp32 operands would run ~10x slower), summed in fp32
                dw.add_(grad.to(h.dtype).t() @ h)   # the add reads the 16-bit product: no fp32 copy of it
            if db is not None:
                db += grad.sum(0, dtype=acc)
        if kernels:
            total = losses.sum()
        ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in (dh, dw, db)))
        ctx.has = tuple(x is not None for x in (dh, dw, db))
        ctx.divisor = divisor
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total / divisor

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        scale = grad_out / ctx.divisor
        out = []
        for has, g, dt in zip(ctx.has, saved, ctx.dtypes):
            out.append((g.to(scale.dtype) * scale).to(dt) if has else None)
        return out[0], out[1], out[2], None, None, None, None, None, None


def _divisor(target, ignore_index, reduction, num_items_in_batch, device):
    # a 0-d fp32 tensor on the device (no host sync): 1, num_items_in_batch, or the count of the counted targets
    if reduction == "sum":
        return torch.ones((), dtype=torch.float32, device=device)
    if num_items_in_batch is not None:
        return torch.as_tensor(num_items_in_batch, dtype=torch.float32).to(device)
    return (target != ignore_index).sum().clamp_min(1).float()


def linear_cross_entropy(hidden, weight, target, bias=None, ignore_index=-100, reduction="mean",
                         num_items_in_batch=None, chunk_size=4096, backend=None):
    """Cross-entropy of ``hidden @ weight.T (+ bias)`` against ``target``, never holding all the logits.

    Args:
        hidden: ``[..., D]`` hidden states (fp32, fp16, bf16, or fp64 on the reference path).
        weight: ``[V, D]`` output projection (an LM head's ``weight``); the kernel path needs ``hidden``'s dtype.
        target: ``[...]`` integer class indices (same leading shape as ``hidden``); ``ignore_index`` entries
            count nowhere.
        bias: optional ``[V]``.
        reduction: ``"mean"`` over the counted targets (0 when there are none, like a sum), or ``"sum"``.
        num_items_in_batch: with ``reduction="mean"``, divide the sum by this count instead (transformers'
            convention for gradient accumulation); an int or a 0-d tensor.
        chunk_size: tokens per chunk (one chunk of logits is held at a time; see the module docstring).
        backend: ``"triton"`` (the kernel path), ``"reference"`` or None (per ``hfzoo.ops.dispatch``: the kernel
            path for CUDA tensors of one kernel dtype).

    Returns:
        A 0-d fp32 tensor (fp64 for fp64 inputs on the reference path), differentiable in ``hidden``, ``weight`` and
        ``bias`` (gradients in their dtypes).

    Example::

        >>> h, w = torch.randn(10, 16), torch.randn(50, 16)
        >>> t = torch.randint(0, 50, (10,))
        >>> loss = linear_cross_entropy(h, w, t, chunk_size=4)
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(h @ w.T, t))
        True
    """
    check_tensor(_NAME, "hidden", hidden)
    check_tensor(_NAME, "weight", weight, dims=2, device=hidden.device)
    if bias is not None:
        check_tensor(_NAME, "bias", bias, dims=1, device=hidden.device)
        check_shape(_NAME, "bias", bias, (weight.shape[0],), "[V]")
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex():
        raise TypeError(f"{_NAME}: target must be an integer tensor of class indices")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"{_NAME}: hidden's last dim ({hidden.shape[-1]}) must equal weight's second dim "
                         f"({weight.shape[1]})")
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"{_NAME}: target must have hidden's leading shape {tuple(hidden.shape[:-1])}; "
                         f"got {tuple(target.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{_NAME}: reduction must be 'mean' or 'sum'; got {reduction!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{_NAME}: chunk_size must be a positive int; got {chunk_size!r}")
    tensors = (hidden, weight) if bias is None else (hidden, weight, bias)
    problem = kernel_dtype_problem(*tensors)
    if problem is None and len({t.dtype for t in tensors}) > 1:
        problem = (f"the kernel path needs hidden, weight and bias of one dtype; got "
                   f"{', '.join(str(t.dtype) for t in tensors)}")
    kernels = pick_backend(_NAME, tensors, backend, problem) == "triton"
    hidden = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    target = target.reshape(-1).to(device=hidden.device, dtype=torch.long).contiguous()
    divisor = _divisor(target, ignore_index, reduction, num_items_in_batch, hidden.device)
    need = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    need = need if torch.is_grad_enabled() else (False, False, False)
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, int(ignore_index), divisor, chunk_size, need,
                                     kernels)
