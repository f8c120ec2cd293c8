"""Task losses shared by every head, reduced the way ``transformers.Trainer`` expects.

Without ``num_items_in_batch`` a loss is the mean over the counted items (labels that are not
``ignore_index``). With it -- the Trainer passes the number of labelled items of the whole accumulated batch
when the model's forward takes ``**kwargs`` -- the loss is the *sum* over this micro-batch divided by that
number, so that gradient accumulation over micro-batches gives the same loss and gradients as one big batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _divide(total: torch.Tensor, num_items_in_batch) -> torch.Tensor:
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch=None,
                  ignore_index: int = -100) -> torch.Tensor:
    """``logits [N, C]`` (any float dtype; computed in fp32), ``targets [N]``. Items whose target is
    ``ignore_index`` do not count; with none counted the mean is 0 (not NaN) and still has a gradient path."""
    logits = logits.float()
    targets = targets.to(logits.device)
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    if num_items_in_batch is not None:
        return _divide(total, num_items_in_batch)
    return total / (targets != ignore_index).sum().clamp_min(1)


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


__all__ = ["classification_loss", "cross_entropy"]
