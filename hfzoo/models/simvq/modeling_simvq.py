"""SimVQ: a VQ tokenizer whose codebook is ``W(C)`` -- a frozen random matrix ``C`` through one learnable linear
layer ``W`` (Zhu et al., arXiv:2411.02038).

Plain VQ updates only the codes that some encoder output picked, so most codes of a large codebook never move
and die ("representation collapse"). With ``W(C)`` every gradient reaching any selected code updates ``W``,
which moves the *whole* codebook (a rotation/scaling of the latent space), so all codes stay near the data.

Layout (module names follow the reference image tokenizer so its checkpoints map key for key):
encoder (conv, ResBlocks, stride-2 downsampling) -> quantize (nearest code of ``W(C)``) -> decoder (ResBlocks,
conv + depth-to-space upsampling). ``spatial_dims=2`` for images, ``1`` for sequences (Conv1d throughout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from ...layers.pretrained_model import HfzooPreTrainedModel
from ...ops.dispatch import resolve_backend
from ...ops.nearest_code import nearest_code, quantize_projected
from .configuration_simvq import SimVQConfig


def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv1d


def depth_to_space(x: torch.Tensor, block: int, dims: int) -> torch.Tensor:
    """Move channels into space, depth-column-row order (the reference's layout, not ``pixel_shuffle``'s).

    2D: ``[B, s*s*c, H, W] -> [B, c, H*s, W*s]`` with the channel index read as ``(row offset, column offset,
    c)``; 1D: ``[B, s*c, T] -> [B, c, T*s]`` with ``(offset, c)``.
    """
    if dims == 2:
        b, ch, h, w = x.shape
        c = ch // (block * block)
        x = x.view(b, block, block, c, h, w).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(b, c, h * block, w * block)
    b, ch, t = x.shape
    c = ch // block
    return x.view(b, block, c, t).permute(0, 2, 3, 1).reshape(b, c, t * block)


class SimVQResBlock(GradientCheckpointingLayer):
    """GroupNorm -> swish -> conv (no bias), twice, plus a 1x1 projection of the input when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, dims: int):
        super().__init__()
        conv = _conv(dims)
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=1e-6)
        self.conv1 = conv(in_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=1e-6)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1, bias=False)
        self.nin_shortcut = conv(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(x))


class SimVQLevel(nn.Module):
    """One resolution level: ``block`` (a list of ResBlocks) and an optional resampler."""


class SimVQUpsample(nn.Module):
    """3x3 conv to ``2**dims`` times the channels, then depth-to-space by 2."""

    def __init__(self, ch: int, dims: int):
        super().__init__()
        self.dims = dims
        self.conv1 = _conv(dims)(ch, ch * 2 ** dims, 3, padding=1)

    def forward(self, x):
        return depth_to_space(self.conv1(x), 2, self.dims)


class SimVQEncoder(nn.Module):
    def __init__(self, config: SimVQConfig):
        super().__init__()
        dims, ch, mult, g = config.spatial_dims, config.ch, config.ch_mult, config.norm_num_groups
        conv = _conv(dims)
        self.conv_in = conv(config.in_channels, ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        block_in = ch
        for i, m in enumerate(mult):
            level = SimVQLevel()
            level.block = nn.ModuleList()
            for _ in range(config.num_res_blocks):
                level.block.append(SimVQResBlock(block_in, ch * m, g, dims))
                block_in = ch * m
            if i < len(mult) - 1:
                level.downsample = conv(block_in, block_in, 3, stride=2, padding=1)
            self.down.append(level)
        self.mid_block = nn.ModuleList(SimVQResBlock(block_in, block_in, g, dims) for _ in range(config.num_res_blocks))
        self.norm_out = nn.GroupNorm(g, block_in, eps=1e-6)
        self.conv_out = conv(block_in, config.z_channels, 1)

    def forward(self, x):
        x = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                x = block(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class SimVQDecoder(nn.Module):
    def __init__(self, config: SimVQConfig):
        super().__init__()
        dims, ch, mult, g = config.spatial_dims, config.ch, config.ch_mult, config.norm_num_groups
        conv = _conv(dims)
        block_in = ch * mult[-1]
        self.conv_in = conv(config.z_channels, block_in, 3, padding=1)
        self.mid_block = nn.ModuleList(SimVQResBlock(block_in, block_in, g, dims) for _ in range(config.num_res_blocks))
        # up[i] works at level i (up[0] is the finest); built coarse-to-fine, stored fine-to-coarse like the reference
        levels = [None] * len(mult)
        for i in reversed(range(len(mult))):
            level = SimVQLevel()
            level.block = nn.ModuleList()
            for _ in range(config.num_res_blocks):
                level.block.append(SimVQResBlock(block_in, ch * mult[i], g, dims))
                block_in = ch * mult[i]
            if i > 0:
                level.upsample = SimVQUpsample(block_in, dims)
            levels[i] = level
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(g, block_in, eps=1e-6)
        self.conv_out = conv(block_in, config.out_channels, 3, padding=1)

    def forward(self, z):
        x = self.conv_in(z)
        for block in self.mid_block:
            x = block(x)
        for level in reversed(self.up):
            for block in level.block:
                x = block(x)
            if hasattr(level, "upsample"):
                x = level.upsample(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class _QuantizerStep(torch.autograd.Function):
    """The quantizer's differentiable part in one node, given the indices of the nearest codes.

    Forward: ``z_q = W(C)[idx]`` (laid out like ``z``, channels second) and
    ``loss = w_z ||sg(z_q) - z||^2 + w_q ||z_q - sg(z)||^2`` (means). Backward, with the straight-through
    estimator: ``dz = d z_q_out - w_z * 2 (z_q - z) dloss / n``; the codebook term's gradient reaches ``W`` only
    through the picked codes: ``dW = G^T C[idx]``, ``db = sum G`` with ``G = w_q * 2 (z_q - z) dloss / n``.
    Autograd through ``F.embedding(idx, W(C))`` would build a dense ``[K, D]`` gradient and push it back through
    the linear layer (two ``K x D x D`` products) and keep five intermediate tensors; this saves one difference
    and launches about half as many kernels.
    """

    @staticmethod
    def forward(ctx, z, idx, codebook, frozen, weight, bias, w_z: float, w_q: float):
        dim = z.shape[1]
        zt = z.movedim(1, -1)  # [B, *spatial, D] view
        picked = F.embedding(idx, codebook)  # [B, *spatial, D]
        diff = (picked - zt).reshape(-1, dim)
        flat = diff.view(-1)
        loss = torch.dot(flat, flat).mul_((w_z + w_q) / flat.numel())
        ctx.save_for_backward(diff, idx, frozen)
        ctx.meta = (w_z, w_q, bias is not None, tuple(zt.shape))
        return picked.movedim(-1, 1).contiguous(), loss

    @staticmethod
    def backward(ctx, grad_out, grad_loss):
        diff, idx, frozen = ctx.saved_tensors
        w_z, w_q, has_bias, shape = ctx.meta
        scaled = diff * (grad_loss * (2.0 / diff.numel()))  # d mean||diff||^2, times the loss's gradient
        grad_z = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_z = torch.add(grad_out, scaled.view(shape).movedim(-1, 1), alpha=-w_z)
        if ctx.needs_input_grad[4]:
            picked = F.embedding(idx.reshape(-1), frozen).to(scaled.dtype)
            grad_w = torch.mm(scaled.t(), picked).mul_(w_q)  # [D_out, D_in], the Linear's weight layout
        if has_bias and ctx.needs_input_grad[5]:
            grad_b = scaled.sum(0).mul_(w_q)
        return grad_z, None, None, None, grad_w, grad_b, None, None


class SimVQQuantizer(nn.Module):
    """Nearest-code quantizer over the projected codebook ``W(C)``.

    ``embedding.weight`` is ``C`` (``[K, D]``, drawn from N(0, D^-1/2) and frozen); ``embedding_proj`` is ``W``
    (Linear with bias). Loss (non-legacy): ``beta * ||sg(z_q) - z||^2 + ||z_q - sg(z)||^2``; gradients reach the
    encoder through the straight-through estimator and ``W`` through ``z_q``.

    The training step is written for speed. fp32 on the Triton backend (D <= 128, C frozen): one autograd node,
    ``quantize_projected``, whose kernels project the codebook, search it exactly without distances, gather the
    codes with both loss terms and the straight-through output, and in the backward write dz, db and the two
    factors of ``dW`` (one matmul): six launches per step. Otherwise the codebook ``W(C)`` is computed without
    autograd, the search is ``nearest_code`` and the gather, losses, straight-through estimator and ``W``'s
    gradient through the picked codes are one eager node (``_QuantizerStep``). No host syncs either way.

    Decoding from indices (``lookup``) uses the *projected* codebook, as the forward pass does. The reference's
    ``get_codebook_entry`` reads the unprojected ``embedding`` instead, so decoding its tokens that way does not
    reproduce its own reconstructions; hfzoo does not copy that.
    """

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, legacy: bool = False):
        super().__init__()
        self.codebook_size, self.dim, self.beta, self.legacy = codebook_size, dim, beta, legacy
        self.embedding = nn.Embedding(codebook_size, dim)
        self.embedding.weight.requires_grad_(False)
        self.embedding_proj = nn.Linear(dim, dim)

    def codebook(self) -> torch.Tensor:
        """The effective codebook ``W(C)``, ``[K, D]``."""
        return self.embedding_proj(self.embedding.weight)

    def forward(self, z: torch.Tensor):
        """``z``: ``[B, D, *spatial]`` -> ``(z_q [B, D, *spatial], indices [B, *spatial], loss scalar)``."""
        if z.shape[1] != self.dim:
            raise ValueError(f"SimVQQuantizer: expected {self.dim} channels, got shape {tuple(z.shape)}")
        zt = z.movedim(1, -1)  # [B, *spatial, D]
        proj, frozen = self.embedding_proj, self.embedding.weight
        w_z, w_q = (1.0, self.beta) if self.legacy else (self.beta, 1.0)  # weights of ||sg(z_q)-z||^2, ||z_q-sg(z)||^2
        if (torch.is_grad_enabled() and not frozen.requires_grad and (proj.weight.requires_grad or z.requires_grad)
                and self._fused(z)):
            return quantize_projected(z, frozen, proj.weight, proj.bias, w_z, w_q)  # _fused chose the kernels
        with torch.no_grad():
            codebook = self.codebook().to(zt.dtype)
        indices = nearest_code(zt, codebook)
        if torch.is_grad_enabled() and frozen.requires_grad:  # C unfrozen by the user: autograd through all of W(C)
            z_q = F.embedding(indices, self.codebook()).to(zt.dtype)
            loss = w_z * F.mse_loss(zt, z_q.detach()) + w_q * F.mse_loss(z_q, zt.detach())
            z_q = (zt + (z_q - zt).detach()).movedim(-1, 1).contiguous()  # straight-through
        elif torch.is_grad_enabled() and (proj.weight.requires_grad or z.requires_grad):
            z_q, loss = _QuantizerStep.apply(z, indices, codebook, frozen, proj.weight, proj.bias, w_z, w_q)
        else:
            z_q = F.embedding(indices, codebook)
            loss = (w_z + w_q) * F.mse_loss(zt, z_q)
            z_q = z_q.movedim(-1, 1).contiguous()
        return z_q, indices, loss

    def _fused(self, z: torch.Tensor) -> bool:
        """Whether the training step runs as ``quantize_projected``'s kernels (Triton backend, float32, D <= 128)."""
        proj = self.embedding_proj
        return (self.dim <= 128 and z.dtype == proj.weight.dtype == self.embedding.weight.dtype == torch.float32
                and resolve_backend(z, proj.weight, op="quantize_projected") == "triton")

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """``indices [B, *spatial]`` -> code vectors ``[B, D, *spatial]`` from the projected codebook."""
        if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"SimVQQuantizer.lookup: indices must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"SimVQQuantizer.lookup: indices must lie in [0, {self.codebook_size}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return F.embedding(indices.long(), self.codebook()).movedim(-1, 1).contiguous()


def codebook_utilization(indices: torch.Tensor, codebook_size: int) -> float:
    """Fraction of the codebook that appears at least once in ``indices``."""
    if indices.numel() == 0:
        return 0.0
    used = torch.zeros(codebook_size, dtype=torch.bool, device=indices.device)
    used[indices.reshape(-1)] = True
    return used.float().mean().item()


@dataclass
class SimVQModelOutput(ModelOutput):
    """
    loss: ``reconstruction_loss + quantizer_loss`` (the training objective of hfzoo's tiny checkpoints; the paper
        adds LPIPS and a GAN loss on top of an L1 reconstruction term). Computed in training mode or with
        ``return_loss=True``.
    quantized: the decoder's input ``z_q``, ``[B, D, h, w]`` / ``[B, D, t]`` -- the image's features (first
        after the loss, so ``pipeline("image-feature-extraction")`` returns them).
    reconstruction: decoded output, same shape as the input.
    indices: code indices, ``[B, h, w]`` (images) or ``[B, t]`` (sequences).
    reconstruction_loss: mean squared error between reconstruction and input (with the loss).
    quantizer_loss: ``beta * commitment + codebook`` term (with the loss).
    codebook_utilization: fraction of the codebook used by this batch (a float tensor).
    """

    loss: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    indices: torch.LongTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    quantizer_loss: torch.FloatTensor | None = None
    codebook_utilization: torch.FloatTensor | None = None


class SimVQPreTrainedModel(HfzooPreTrainedModel):
    config_class = SimVQConfig
    base_model_prefix = "simvq"
    main_input_name = "pixel_values"
    _no_split_modules = ["SimVQResBlock"]
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            # PyTorch's default (what the reference trains from)
            init.kaiming_uniform_(module.weight, a=5 ** 0.5)
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = fan_in ** -0.5
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):  # the frozen codebook C ~ N(0, D^-1/2)
            init.normal_(module.weight, mean=0.0, std=module.embedding_dim ** -0.5)


class SimVQModel(SimVQPreTrainedModel):
    """Tokenizer: ``encode(pixel_values) -> indices``, ``decode(indices) -> pixels``; ``forward`` does both and
    returns the reconstruction with its losses."""

    def __init__(self, config: SimVQConfig):
        super().__init__(config)
        self.encoder = SimVQEncoder(config)
        self.quantize = SimVQQuantizer(config.codebook_size, config.z_channels, config.beta, config.legacy_loss)
        self.decoder = SimVQDecoder(config)
        self.post_init()

    def _check_input(self, x: torch.Tensor, name: str = "pixel_values") -> None:
        c = self.config
        want = 2 + c.spatial_dims
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != want or x.shape[1] != c.in_channels:
            layout = "[B, C, H, W]" if c.spatial_dims == 2 else "[B, C, T]"
            raise ValueError(f"{name} must be {layout} with C={c.in_channels}, got shape {tuple(x.shape)}")
        f = c.downsample_factor
        if any(s % f for s in x.shape[2:]):
            raise ValueError(f"{name}: spatial size {tuple(x.shape[2:])} must be divisible by the downsampling "
                             f"factor {f}")

    def quantize_latents(self, pixel_values: torch.Tensor):
        """Encoder + quantizer: ``(z_q, indices, quantizer_loss)``. Float inputs are cast to the model's dtype."""
        self._check_input(pixel_values)
        if pixel_values.is_floating_point():
            pixel_values = pixel_values.to(self.dtype)
        return self.quantize(self.encoder(pixel_values))

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """Images ``[B, C, H, W]`` (or sequences ``[B, C, T]``) in [-1, 1] -> token indices ``[B, h, w]``/``[B, t]``."""
        return self.quantize_latents(pixel_values)[1]

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices ``[B, h, w]`` (or ``[B, t]``) -> reconstruction ``[B, C, H, W]`` (or ``[B, C, T]``)."""
        if indices.dim() != 1 + self.config.spatial_dims:
            raise ValueError(f"indices must have {1 + self.config.spatial_dims} dimensions (batch + spatial), "
                             f"got shape {tuple(indices.shape)}")
        return self.decoder(self.quantize.lookup(indices.to(self.device)).to(self.dtype))

    def forward(self, pixel_values: torch.Tensor | None = None, input_values: torch.Tensor | None = None,
                return_dict: bool | None = None, return_loss: bool | None = None, **kwargs):
        """``pixel_values`` (images) or ``input_values`` (1D sequences) -> ``SimVQModelOutput``.

        Inputs are cast to the model's dtype (image processors give fp32; a bf16 model gets bf16). The losses
        are computed (in fp32) in training mode, or whenever ``return_loss=True``; ``return_loss=False`` skips
        them."""
        if (pixel_values is None) == (input_values is None):
            raise ValueError("pass exactly one of pixel_values (images) or input_values (sequences)")
        x = pixel_values if pixel_values is not None else input_values
        z_q, indices, q_loss = self.quantize_latents(x)
        rec = self.decoder(z_q)
        with_loss = self.training if return_loss is None else bool(return_loss)
        rec_loss = F.mse_loss(rec.float(), x.float()) if with_loss else None
        q_loss = q_loss.float() if with_loss else None
        util = torch.tensor(codebook_utilization(indices, self.config.codebook_size))
        out = SimVQModelOutput(loss=rec_loss + q_loss if with_loss else None, quantized=z_q, reconstruction=rec,
                               indices=indices, reconstruction_loss=rec_loss, quantizer_loss=q_loss,
                               codebook_utilization=util)
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        return out if return_dict else out.to_tuple()
