"""Feed-forward blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLUDownFunction(torch.autograd.Function):
    """``down(silu(gate) * up)`` that keeps only ``gate`` and ``up`` for the backward.

    Eager autograd keeps four ``[tokens, intermediate]`` tensors per MLP for the backward: ``gate`` (SiLU's),
    ``silu(gate)`` and ``up`` (the product's) and the product itself (the down projection's weight gradient).
    Here the backward recomputes ``silu(gate)`` and the product from ``gate`` and ``up`` with the same ops, so
    the values and gradients are those of the eager form, and two of the four tensors are not kept: 2 * 176 MB
    per layer for 16k tokens at intermediate 5632 in bf16, for two elementwise passes more in the backward.
    """

    @staticmethod
    def forward(ctx, gate, up, weight):
        ctx.save_for_backward(gate, up, weight)
        return F.linear(F.silu(gate) * up, weight)

    @staticmethod
    def backward(ctx, dout):
        gate, up, weight = ctx.saved_tensors
        act = F.silu(gate)
        dh = dout @ weight                                              # [..., I]
        dweight = None
        if ctx.needs_input_grad[2]:
            h = act * up
            dweight = dout.reshape(-1, dout.shape[-1]).t() @ h.reshape(-1, h.shape[-1])
            del h
        dup = dh * act if ctx.needs_input_grad[1] else None
        dgate = torch.ops.aten.silu_backward(dh * up, gate) if ctx.needs_input_grad[0] else None
        return dgate, dup, dweight


class SwiGLUMLP(nn.Module):
    """SwiGLU: ``down(swish(gate(x)) * up(x))``; parameters ``gate_proj``, ``up_proj``, ``down_proj``.

    In training the down projection runs through ``SwiGLUDownFunction`` (less activation memory, same numbers)
    when it is a plain ``nn.Linear`` without hooks, the dtypes agree and autocast is off; otherwise, and in
    inference, the eager form.
    """

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)
        down = self.down_proj
        # a plain Linear only: an adapter (peft's LoRA), a quantized layer or a hook on down_proj keeps the eager form
        if (type(down) is nn.Linear and down.bias is None and not down._forward_hooks
                and not down._forward_pre_hooks and torch.is_grad_enabled()
                and (gate.requires_grad or down.weight.requires_grad)
                and gate.dtype == up.dtype == down.weight.dtype and not torch.is_autocast_enabled(x.device.type)):
            return SwiGLUDownFunction.apply(gate, up, down.weight)
        return down(F.silu(gate) * up)


__all__ = ["SwiGLUDownFunction", "SwiGLUMLP"]
