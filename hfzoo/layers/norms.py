"""Normalization layers."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.rmsnorm import rms_norm_gated


class GatedRMSNorm(nn.Module):
    """RMSNorm over the last dimension; with ``gate``, the output is multiplied by ``swish(gate)`` (fused).
    The parameter is ``weight`` (absent with ``elementwise_affine=False``)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size)) if elementwise_affine else None

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return rms_norm_gated(x, self.weight, gate, self.eps)


__all__ = ["GatedRMSNorm"]
