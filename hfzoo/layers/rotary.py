"""Rotary position embedding (non-interleaved halves, as in Llama and fla)."""

from __future__ import annotations

import torch


def rope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """``[head_dim / 2]`` fp32 inverse frequencies ``theta ** (-2i / head_dim)``."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, T, H, D]`` by ``positions`` ``[B, T]`` (angles computed in fp32)."""
    angles = positions[..., None].float() * inv_freq.to(x.device)        # [B, T, D/2]
    cos = torch.cat([angles.cos(), angles.cos()], -1)[:, :, None].to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], -1)[:, :, None].to(x.dtype)
    return x * cos + rotate_half(x) * sin


__all__ = ["apply_rotary", "rope_inv_freq", "rotate_half"]
