"""LiT: a DiT whose self-attention is ReLU linear attention with a depthwise convolution on V.

noisy input [B, C, H, W] -> patches + 2D sin-cos positions -> N tokens; condition c = t_emb(t) + y_emb(y)
-> blocks: x += gate_msa · mixer(modulate(LN(x), shift_msa, scale_msa)),
           x += gate_mlp · mlp(modulate(LN(x), shift_mlp, scale_mlp))    (shift/scale/gate from c: adaLN-Zero)
-> final: linear(modulate(LN(x), shift, scale)) -> unpatchify -> [B, 2C, H, W] (noise, then variance values).

The mixer (``LiTAttention``): q, k, v = qkv(x) split into few heads; o = linear_attention(q, k, v) (the
fused kernel of ``hfzoo.ops.linear_attention``) + dwconv5×5(v) over the token grid, one kernel per head
dimension shared by all heads; then the output projection. ``attention_type="softmax"`` uses DiT's
softmax attention instead (no convolution): the teacher for distillation and the benchmarks' baseline.

Parameter names follow the original DiT code (``x_embedder.proj``, ``t_embedder.mlp.0``,
``y_embedder.embedding_table``, ``blocks.{i}.adaLN_modulation.1``, ``blocks.{i}.attn.qkv``, ``final_layer.linear``)
so that inheriting a DiT checkpoint is loading it with the attention keys left out (``hfzoo.convert.dit_lit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .pretrained_model import HfzooPreTrainedModel
from .vision import PatchEmbedding, unpatchify
from .linear_attention import linear_attention
from .configuration_lit import LiTConfig


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """DiT's fixed 2D sin-cos positions, [grid_h * grid_w, embed_dim] in fp32, tokens in row-major order.

    The first half of the channels encodes the column (x), the second half the row (y); each half is
    [sin(pos·ω), cos(pos·ω)] with ω_i = 10000^(-i / (D/4)).
    """
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                            indexing="ij")

    def one_axis(pos):
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one_axis(xs), one_axis(ys)], dim=1).float()


def timestep_features(t: torch.Tensor, dim: int, shift: float = 0.0, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps: [B] -> [B, dim] = [cos(t·f), sin(t·f)]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


# ----------------------------------------------------------------------------------------------------
# Embeddings


class LiTPatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, (H/p)·(W/p), D] patch tokens plus positions (fixed sin-cos, or learned)."""

    def __init__(self, config: LiTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.grid = config.grid_size
        self.proj = PatchEmbedding(config.in_channels, config.hidden_size, config.patch_size)
        n = config.grid_size ** 2
        if config.pos_embed_type == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, n, config.hidden_size))
        else:
            # Computed, not stored: checkpoints do not carry it and any grid size works.
            self.register_buffer("pos_embed", sincos_2d(config.hidden_size, self.grid, self.grid)[None],
                                 persistent=False)

    def positions(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        if isinstance(self.pos_embed, nn.Parameter):
            raise ValueError(f"input gives a {h}x{w} token grid; learned positions exist only for "
                             f"{self.grid}x{self.grid}")
        return sincos_2d(self.pos_embed.shape[-1], h, w)[None].to(self.pos_embed.device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.proj(x)                                                        # [B, h*w, D]
        return x + self.positions(h, w).to(x.dtype), (h, w)


class LiTTimestepEmbedder(nn.Module):
    """t -> sinusoidal features -> Linear -> SiLU -> Linear (DiT's t_embedder)."""

    def __init__(self, config: LiTConfig):
        super().__init__()
        self.dim = config.frequency_embedding_size
        self.shift = config.timestep_freq_shift
        D = config.hidden_size
        self.mlp = nn.Sequential(nn.Linear(self.dim, D), nn.SiLU(), nn.Linear(D, D))
        self.mlp[0].init_rule = self.mlp[2].init_rule = "normal"

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(t, self.dim, self.shift)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class LiTLabelEmbedder(nn.Module):
    """Class labels -> vectors; row `num_classes` is the null class, used for classifier-free guidance.

    In training, each label is replaced by the null class with probability `class_dropout_prob`.
    """

    def __init__(self, config: LiTConfig):
        super().__init__()
        self.num_classes = config.num_classes
        self.dropout_prob = config.class_dropout_prob
        self.embedding_table = nn.Embedding(config.num_classes + 1, config.hidden_size)

    def forward(self, labels: torch.Tensor, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        if labels.min() < 0 or labels.max() > self.num_classes:
            raise ValueError(f"class_labels must be in [0, {self.num_classes}] ({self.num_classes} = the null class), "
                             f"got values in [{labels.min().item()}, {labels.max().item()}]")
        drop = None
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
        if force_drop is not None:
            drop = force_drop.bool() if drop is None else drop | force_drop.bool()
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


# ----------------------------------------------------------------------------------------------------
# Token mixers


class LiTAttention(nn.Module):
    """ReLU linear attention over all tokens of an image, plus a depthwise k×k convolution of V.

    x [B, N, D] -> q, k, v [B, N, H, d] -> linear_attention(q, k, v) + dwconv(v) -> proj -> [B, N, D].
    The convolution sees each head's v as a d-channel image on the token grid and uses one d-channel
    kernel for every head.
    """

    def __init__(self, config: LiTConfig):
        super().__init__()
        D = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.eps = config.attention_eps
        self.qkv = nn.Linear(D, 3 * D, bias=config.qkv_bias)
        self.conv = nn.Conv2d(self.head_dim, self.head_dim, config.conv_kernel_size,
                              padding=config.conv_kernel_size // 2, groups=self.head_dim)
        self.proj = nn.Linear(D, D)
        self.backend: str | None = None      # None: per hfzoo.ops.dispatch; benchmarks pin "reference"/"triton"
        self.fused_conv: bool | None = None  # None: fused when no gradient is needed (see fuse_conv)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).unbind(2)   # [B, N, H, d] views
        if self.fuse_conv(x):
            # attention + depthwise conv of v in one op (its reference path runs nn.functional.conv2d)
            o = linear_attention(q, k, v, eps=self.eps, conv_weight=self.conv.weight, conv_bias=self.conv.bias,
                                 grid=grid, backend=self.backend)
        else:
            o = linear_attention(q, k, v, eps=self.eps, backend=self.backend) + self.depthwise_conv_v(v, grid)
        return self.proj(o.reshape(B, N, D))

    def fuse_conv(self, x: torch.Tensor) -> bool:
        """Fuse the convolution into the attention kernel when no gradient is needed (sampling).

        Measured on the H200 (benchmarks/results/lit.json, LiT-XL mixer, 32k tokens): fused, the forward
        takes 1.75 ms against 2.09 ms with cuDNN's convolution; but the fused backward is slower than
        cuDNN's (fwd+bwd 7.4 ms against 5.95 ms), so training keeps the convolution separate.
        ``fused_conv = True/False`` on the module overrides this."""
        if self.fused_conv is not None:
            return self.fused_conv
        return not (torch.is_grad_enabled() and (x.requires_grad or self.conv.weight.requires_grad))

    def depthwise_conv_v(self, v: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """v [B, N, H, d] -> the shared depthwise conv over each head's (h, w) grid -> [B, N, H, d]."""
        B, N, H, d = v.shape
        img = v.permute(0, 2, 3, 1).reshape(B * H, d, *grid)
        out = self.conv(img.contiguous(memory_format=torch.channels_last))
        return out.reshape(B, H, d, N).permute(0, 3, 1, 2)


class DiTAttention(nn.Module):
    """DiT's multi-head softmax self-attention over all tokens (SDPA)."""

    def __init__(self, config: LiTConfig):
        super().__init__()
        D = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(D, 3 * D, bias=config.qkv_bias)
        self.proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, N, d]
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, N, D))


class LiTMLP(nn.Module):
    """fc1 -> GELU (tanh approximation) -> fc2."""

    def __init__(self, config: LiTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


# ----------------------------------------------------------------------------------------------------
# Blocks


class LiTBlock(GradientCheckpointingLayer):
    """adaLN-Zero block: the condition sets shift, scale and gate of both branches (gates start at 0)."""

    def __init__(self, config: LiTConfig):
        super().__init__()
        D = config.hidden_size
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=config.norm_eps)
        self.attn = LiTAttention(config) if config.attention_type == "linear" else DiTAttention(config)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=config.mlp_norm_eps)
        self.mlp = LiTMLP(config)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.adaLN_modulation[1].init_rule = "zero"

    def forward(self, x: torch.Tensor, c: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), grid)
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class LiTFinalLayer(nn.Module):
    def __init__(self, config: LiTConfig):
        super().__init__()
        D = config.hidden_size
        self.norm_final = nn.LayerNorm(D, elementwise_affine=False, eps=config.norm_eps)
        self.linear = nn.Linear(D, config.patch_size ** 2 * config.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.adaLN_modulation[1].init_rule = self.linear.init_rule = "zero"

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ----------------------------------------------------------------------------------------------------
# Model


@dataclass
class LiTOutput(ModelOutput):
    """sample: [B, out_channels, H, W] — predicted noise (first `in_channels`), then variance values if learned."""

    sample: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None    # token states: after the embedding, after each block


class LiTPreTrainedModel(HfzooPreTrainedModel):
    config_class = LiTConfig
    base_model_prefix = "lit"
    main_input_name = "sample"
    input_modalities = ("image",)
    _no_split_modules = ["LiTBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module):
        # DiT's initialization: Xavier-uniform linears with zero bias, N(0, 0.02) for the class table and the
        # timestep MLP, zero for every adaLN modulation and the output layer (so each block starts as identity).
        # Linears that differ from the default carry an `init_rule` attribute set where they are built.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            rule = getattr(module, "init_rule", "xavier")
            if rule == "zero":
                init.zeros_(module.weight)
            elif rule == "normal":
                init.normal_(module.weight, std=std)
            else:
                init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, nn.Conv2d):
            if isinstance(module, PatchEmbedding):                   # Xavier-uniform of the flattened kernel (DiT)
                bound = math.sqrt(6.0 / (module.weight.shape[0] + module.weight[0].numel()))
            else:                                                    # the depthwise conv on V: PyTorch's default
                bound = 1.0 / math.sqrt(module.weight[0].numel())
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, LiTPatchEmbed):
            if isinstance(module.pos_embed, nn.Parameter):
                init.trunc_normal_(module.pos_embed, std=std)
            else:
                init.copy_(module.pos_embed, sincos_2d(module.pos_embed.shape[-1], module.grid, module.grid)[None])


class LiTModel(LiTPreTrainedModel):
    """Denoiser: (noisy sample, timestep, class) -> predicted noise and variance values."""

    def __init__(self, config: LiTConfig):
        super().__init__(config)
        self.x_embedder = LiTPatchEmbed(config)
        self.t_embedder = LiTTimestepEmbedder(config)
        self.y_embedder = LiTLabelEmbedder(config) if config.num_classes > 0 else None
        self.blocks = nn.ModuleList([LiTBlock(config) for _ in range(config.num_hidden_layers)])
        self.final_layer = LiTFinalLayer(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.x_embedder.proj

    def condition(self, timestep: torch.Tensor, class_labels: torch.Tensor | None,
                  force_drop: torch.Tensor | None = None) -> torch.Tensor:
        """c = t_embedder(t) + y_embedder(y): [B, D]."""
        c = self.t_embedder(timestep)
        if self.y_embedder is not None:
            if class_labels is None:
                raise ValueError("LiTModel: class_labels is required (the model is class-conditional; pass "
                                 f"{self.config.num_classes}, the null class, for unconditional outputs)")
            c = c + self.y_embedder(class_labels, force_drop)
        elif class_labels is not None:
            raise ValueError("LiTModel: the model is unconditional (num_classes=0) but class_labels were given")
        return c

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[B, h·w, p·p·C] -> [B, C, h·p, w·p] (DiT's patch layout: channels last inside a patch)."""
        p = self.config.patch_size
        return unpatchify(x, grid[0] * p, grid[1] * p, p)

    def forward(self, sample: torch.Tensor | None = None, timestep: torch.Tensor | float | None = None,
                class_labels: torch.Tensor | None = None, force_drop_ids: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **kwargs) -> LiTOutput | tuple:
        """
        Args:
            sample: ``[B, in_channels, H, W]`` noisy images or latents; H and W divisible by the patch size.
            timestep: ``[B]`` (or a scalar) diffusion timesteps, integer or fractional.
            class_labels: ``[B]`` ints in ``[0, num_classes]``; ``num_classes`` is the null (unconditional) class.
            force_drop_ids: optional ``[B]`` bools/ints: replace those labels by the null class.
            output_hidden_states: also return the ``[B, N, D]`` token states after the embedding and each block.

        Returns:
            ``LiTOutput(sample=[B, out_channels, H, W])``: noise prediction, then (learned sigma) variance values.
        """
        if sample is None or timestep is None:
            raise ValueError("LiTModel: sample and timestep are required")
        if sample.dim() != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(f"sample must be [batch, {self.config.in_channels}, height, width], "
                             f"got {tuple(sample.shape)}")
        p = self.config.patch_size
        if sample.shape[-2] % p or sample.shape[-1] % p:
            raise ValueError(f"sample's height and width ({sample.shape[-2]}x{sample.shape[-1]}) must be divisible "
                             f"by patch_size {p}")
        B = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.dim() == 0:
            timestep = timestep.expand(B)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        x, grid = self.x_embedder(sample)
        c = self.condition(timestep, class_labels, force_drop_ids).to(x.dtype)
        hidden_states = (x,) if output_hidden_states else None
        for block in self.blocks:
            x = block(x, c, grid)
            if output_hidden_states:
                hidden_states += (x,)
        x = self.final_layer(x, c)
        out = LiTOutput(sample=self.unpatchify(x, grid), hidden_states=hidden_states)
        return out if return_dict else out.to_tuple()

    def forward_with_cfg(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor,
                         guidance_scale: float) -> torch.Tensor:
        """Classifier-free guidance in one batched call: eps = eps_u + s·(eps_c − eps_u) on the noise channels;
        the variance channels are the conditional ones. Returns ``[B, out_channels, H, W]``."""
        null = torch.full_like(class_labels, self.config.num_classes)
        out = self(torch.cat([sample, sample]), torch.cat([timestep, timestep]),
                   torch.cat([class_labels, null])).sample
        cond, uncond = out.chunk(2)
        C = self.config.in_channels
        eps = uncond[:, :C] + guidance_scale * (cond[:, :C] - uncond[:, :C])
        return torch.cat([eps, cond[:, C:]], dim=1)


__all__ = ["DiTAttention", "LiTAttention", "LiTBlock", "LiTModel", "LiTOutput", "LiTPreTrainedModel",
           "modulate", "sincos_2d", "timestep_features"]
