"""Task losses shared by every head, reduced the way ``transformers.Trainer`` expects.

Without ``num_items_in_batch`` a loss is the mean over the counted items (labels that are not
``ignore_index``). With it -- the Trainer passes the number of labelled items of the whole accumulated batch
when the model's forward takes ``**kwargs`` -- the loss is the *sum* over this micro-batch divided by that
number, so that gradient accumulation over micro-batches gives the same loss and gradients as one big batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.softmax_cross_entropy import softmax_cross_entropy


def _divide(total: torch.Tensor, num_items_in_batch) -> torch.Tensor:
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _reduce(total: torch.Tensor, targets: torch.Tensor, ignore_index: int, num_items_in_batch) -> torch.Tensor:
    """A summed loss divided by ``num_items_in_batch`` when given, else by the counted targets (at least 1)."""
    if num_items_in_batch is not None:
        return _divide(total, num_items_in_batch)
    return total / (targets != ignore_index).sum().clamp_min(1)


def next_token_targets(labels: torch.Tensor | None, ignore_index: int = -100,
                       shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """The target of each position of a causal LM: ``shift_labels`` when given (transformers' pre-shifted labels),
    else ``labels`` shifted left by one, with ``ignore_index`` at the last position (same shape as ``labels``)."""
    if shift_labels is not None:
        return shift_labels
    if labels is None:
        raise ValueError("causal_lm_loss: pass labels or shift_labels")
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch=None,
                  ignore_index: int = -100) -> torch.Tensor:
    """``logits [N, C]`` (any float dtype; computed in fp32), ``targets [N]``. Items whose target is
    ``ignore_index`` do not count; with none counted the mean is 0 (not NaN) and still has a gradient path."""
    logits = logits.float()
    targets = targets.to(logits.device)
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    return _reduce(total, targets, ignore_index, num_items_in_batch)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor | None = None, num_items_in_batch=None,
                   ignore_index: int = -100, shift_labels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM: transformers' ``ForCausalLMLoss`` without an fp32 copy of the logits.

    Args:
        logits: ``[..., T, V]`` in any float dtype (the lm_head's; bf16 stays bf16). Used whole: when they were
            cut by ``logits_to_keep``, matching labels are the caller's concern, as in transformers.
        labels: ``[..., T]`` token ids, ``ignore_index`` where nothing is to be predicted. Shifted as transformers
            does: padded with one ``ignore_index`` on the right and taken from position 1, so the logits at
            position ``t`` predict ``labels[t + 1]`` and the last position predicts nothing (no ``logits[:, :-1]``
            copy is made).
        num_items_in_batch: when given (an int or a tensor on any device: the Trainer's count of labelled tokens
            over the accumulated batch), the loss is the sum divided by it; else the mean over counted targets.
        shift_labels: ``[..., T]`` labels already shifted (as transformers' ``shift_labels``, e.g. under context
            parallelism); when given, ``labels`` is not used.
        kwargs: ignored (``vocab_size`` and the like, which transformers' loss functions take).

    Returns:
        A 0-d fp32 tensor (fp64 for fp64 logits). With no counted target the mean is 0 with a gradient path (as
        ``cross_entropy`` above; ``ForCausalLMLoss`` gives NaN there); everything else as ``ForCausalLMLoss``.

    Each row's loss is ``hfzoo.ops.softmax_cross_entropy``: on CUDA its kernels read the 16-bit logits with fp32
    math in registers and write the gradient in the logits' dtype; on the CPU the reference
    (``F.cross_entropy`` in fp32, ``ForCausalLMLoss``'s numbers).
    """
    what = "labels" if shift_labels is None else "shift_labels"
    shift_labels = next_token_targets(labels, ignore_index, shift_labels)
    logits = logits.reshape(-1, logits.shape[-1])  # a view of contiguous logits
    if shift_labels.numel() != logits.shape[0]:  # transformers flattens both; so do we
        raise ValueError(f"causal_lm_loss: {what} must have one entry per row of logits ({logits.shape[0]}); got "
                         f"shape {tuple(shift_labels.shape)}")
    targets = shift_labels.reshape(-1).to(logits.device)
    total = softmax_cross_entropy(logits, targets, ignore_index=ignore_index).sum()
    return _reduce(total, targets, ignore_index, num_items_in_batch)


def classification_loss(config, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Sequence/image classification loss chosen by ``config.problem_type`` (inferred and stored on first use,
    as transformers does): regression (MSE), single-label (cross-entropy) or multi-label (BCE with logits)."""
    num_labels = logits.shape[-1]
    labels = labels.to(logits.device)
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    logits = logits.float()
    if config.problem_type == "single_label_classification":
        return cross_entropy(logits.view(-1, num_labels), labels.view(-1), num_items_in_batch)
    if config.problem_type == "regression":
        pred = logits.squeeze(-1) if num_labels == 1 else logits
        total = F.mse_loss(pred, labels.float().view_as(pred), reduction="sum")
    elif config.problem_type == "multi_label_classification":
        total = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum")
    else:
        raise ValueError(f"unknown config.problem_type {config.problem_type!r}; expected regression, "
                         "single_label_classification or multi_label_classification")
    if num_items_in_batch is not None:
        return _divide(total, num_items_in_batch)
    return total / max(labels.numel(), 1)


__all__ = ["causal_lm_loss", "classification_loss", "cross_entropy", "next_token_targets"]
