"""Feed-forward blocks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class SwiGLUMLP(nn.Module):
    """SwiGLU: ``down(swish(gate(x)) * up(x))``; parameters ``gate_proj``, ``up_proj``, ``down_proj``."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


__all__ = ["SwiGLUMLP"]
