"""Vision pieces: patch embedding, resizing a learned position grid, patchify/unpatchify."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbedding(nn.Conv2d):
    """Non-overlapping patches through one strided convolution: ``[B, C, H, W] -> [B, (H/p)(W/p), D]``.
    Its parameters are the convolution's own ``weight`` and ``bias`` (timm's ``patch_embed.proj``)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int, bias: bool = True):
        super().__init__(in_channels, hidden_size, patch_size, stride=patch_size, bias=bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.in_channels:
            raise ValueError(f"pixel_values must be [batch, {self.in_channels}, height, width]; got shape "
                             f"{tuple(pixel_values.shape)}")
        x = super().forward(pixel_values.to(self.weight.dtype))
        return x.flatten(2).transpose(1, 2)


def resize_position_grid(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubically resize a square grid of learned positions ``[1, side*side, D]`` to ``[1, height*width, D]``
    (computed in fp32, returned in the grid's dtype)."""
    side = int(math.isqrt(grid.shape[1]))
    if side * side != grid.shape[1]:
        raise ValueError(f"position grid of {grid.shape[1]} tokens is not square")
    if (height, width) == (side, side):
        return grid
    g = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    g = F.interpolate(g.float(), size=(height, width), mode="bicubic", align_corners=False).to(grid.dtype)
    return g.permute(0, 2, 3, 1).reshape(1, height * width, -1)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, (H/p)(W/p), p*p*C]`` (row-major patches, channels last inside a patch)."""
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Inverse of ``patchify``: ``[B, (H/p)(W/p), p*p*C] -> [B, C, H, W]``."""
    B, N, F_ = tokens.shape
    p = patch_size
    h, w = height // p, width // p
    if h * w != N or F_ % (p * p):
        raise ValueError(f"{N} tokens of {F_} features do not form a {height}x{width} image of {p}x{p} patches")
    C = F_ // (p * p)
    x = tokens.reshape(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, height, width)


__all__ = ["PatchEmbedding", "patchify", "resize_position_grid", "unpatchify"]
