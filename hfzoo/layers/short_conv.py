"""Short causal depthwise convolution (the token-shift of linear-attention models)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConvolution(nn.Conv1d):
    """Causal depthwise convolution over time followed by SiLU. ``weight`` is ``[D, 1, W]`` as in fla.

    The state is the last ``W`` inputs ``[B, D, W]``; positions where ``mask`` is 0 are read as zeros, so a
    left-padded sequence convolves exactly as if it started at its first real token. With ``document_ids``
    (``[B, T]``, packed documents) the window never reaches into the previous document.
    """

    def __init__(self, hidden_size: int, kernel_size: int, bias: bool = False):
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None):
        # x: [B, T, D] -> (y [B, T, D], new state [B, D, W]; None for packed documents)
        B, T, D = x.shape
        W = self.kernel_size[0]
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        if document_ids is not None:
            if state is not None:
                raise ValueError("ShortConvolution: packed documents start fresh; pass no state with document_ids")
            return self._packed(x, document_ids), None
        xt = x.transpose(1, 2)
        if state is None:
            state = xt.new_zeros(B, D, W)
        window = torch.cat([state.to(xt.dtype), xt], dim=-1)           # [B, D, W + T]
        y = F.conv1d(window[..., 1:], self.weight, self.bias, groups=D)  # [B, D, T]
        return F.silu(y).transpose(1, 2), window[..., -W:]

    def _packed(self, x: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
        # y_t = sum_s w[W-1-s] * x_{t-s}, with x_{t-s} read as 0 when it belongs to another document
        W = self.kernel_size[0]
        weight = self.weight[:, 0]                                        # [D, W]
        y = x * weight[:, W - 1]
        for s in range(1, min(W, x.shape[1])):
            same = (document_ids[:, s:] == document_ids[:, :-s])[..., None].to(x.dtype)
            shifted = F.pad(x[:, :-s] * same, (0, 0, s, 0))
            y = y + shifted * weight[:, W - 1 - s]
        if self.bias is not None:
            y = y + self.bias
        return F.silu(y)


__all__ = ["ShortConvolution"]
