"""Configuration of LiT, the linear diffusion transformer (Wang et al., "LiT: Delving into a Simplified
Linear Diffusion Transformer for Image Generation").

LiT keeps DiT's macro and micro design (patch embedding, fixed sin-cos positions, timestep + class
conditioning through adaLN-Zero, learned sigma) and replaces every self-attention with ReLU linear
attention plus a 5×5 depthwise convolution on V, using few heads. ``attention_type="softmax"`` builds the
same network with DiT's softmax attention (SDPA): the teacher for distillation and the baseline of the
benchmarks, with DiT's parameter names, so DiT checkpoints load into it unchanged.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

# DiT's backbone sizes (hidden / depth), as data. Heads: LiT's "few heads". The paper's ablations give
# 2 heads for S and 4 for XL (XL/2 with 4 heads beat 16); B and L are not reported in what we could read,
# so we give them 4 heads too (head dims 192 and 256). `dit_heads` are DiT's own counts, for
# `attention_type="softmax"`.
LIT_SIZES: dict[str, dict] = {
    "S": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=2, dit_heads=6),
    "B": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=4, dit_heads=12),
    "L": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=4, dit_heads=16),
    "XL": dict(hidden_size=1152, num_hidden_layers=28, num_attention_heads=4, dit_heads=16),
}
# "LiT-XL/2" etc.: every size with patch 2, 4 and 8 on 32×32×4 latents (256 px images through a /8 VAE).
LIT_PRESETS: dict[str, dict] = {
    f"LiT-{size}/{patch}": dict(patch_size=patch, hidden_size=spec["hidden_size"],
                                num_hidden_layers=spec["num_hidden_layers"],
                                num_attention_heads=spec["num_attention_heads"])
    for size, spec in LIT_SIZES.items() for patch in (2, 4, 8)
}

ATTENTION_TYPES = ("linear", "softmax")
POS_EMBED_TYPES = ("sincos", "learned")


class LiTConfig(PreTrainedConfig):
    r"""
    Args:
        sample_size (`int`): side of the (square) input, in pixels or latent pixels (32 for 256 px via a /8 VAE).
        patch_size (`int`): side of the square patches; must divide `sample_size`.
        in_channels (`int`): input channels (4 for Stable Diffusion VAE latents, 1 or 3 for pixels).
        learn_sigma (`bool`): predict the variance too (DiT): the output has `2 * in_channels` channels, the
            noise prediction first and the variance interpolation values second.
        hidden_size, num_hidden_layers, num_attention_heads: transformer width, depth and heads.
        mlp_ratio (`float`): MLP hidden width / `hidden_size`.
        attention_type (`str`): `"linear"` (LiT: ReLU linear attention + depthwise conv on V) or `"softmax"` (DiT).
        conv_kernel_size (`int`): side of the depthwise convolution on V (odd); its weights have one channel per
            head dimension and are shared by all heads.
        attention_eps (`float`): ε in the linear attention's normalizer φ(q)·Σφ(k) + ε.
        num_classes (`int`): class labels; id `num_classes` is the null class of classifier-free guidance.
            0 makes the model unconditional.
        class_dropout_prob (`float`): in training, the probability of replacing a label by the null class.
        pos_embed_type (`str`): `"sincos"` (fixed 2D sin-cos, DiT) or `"learned"`.
        frequency_embedding_size (`int`): width of the sinusoidal timestep features.
        timestep_freq_shift (`float`): frequencies are `10000^(-i / (half - shift))`: 0 in the original DiT code,
            1 in diffusers' `DiTTransformer2DModel` (set by the converter to match its source).
        norm_eps (`float`): epsilon of the attention-side and final LayerNorms (no affine parameters).
        mlp_norm_eps (`float`, optional): epsilon of the MLP-side LayerNorm (diffusers uses 1e-5); default `norm_eps`.
        qkv_bias (`bool`): bias in the query/key/value projection.
        initializer_range (`float`): std of the class embedding and timestep MLP init (DiT: 0.02).
    """

    model_type = "hfzoo_lit"

    def __init__(self, sample_size: int = 32, patch_size: int = 2, in_channels: int = 4, learn_sigma: bool = True,
                 hidden_size: int = 1152, num_hidden_layers: int = 28, num_attention_heads: int = 4,
                 mlp_ratio: float = 4.0, attention_type: str = "linear", conv_kernel_size: int = 5,
                 attention_eps: float = 1e-6, num_classes: int = 1000, class_dropout_prob: float = 0.1,
                 pos_embed_type: str = "sincos", frequency_embedding_size: int = 256,
                 timestep_freq_shift: float = 0.0, norm_eps: float = 1e-6, mlp_norm_eps: float | None = None,
                 qkv_bias: bool = True, initializer_range: float = 0.02, **kwargs):
        self.sample_size = sample_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.learn_sigma = learn_sigma
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.attention_type = attention_type
        self.conv_kernel_size = conv_kernel_size
        self.attention_eps = attention_eps
        self.num_classes = num_classes
        self.class_dropout_prob = class_dropout_prob
        self.pos_embed_type = pos_embed_type
        self.frequency_embedding_size = frequency_embedding_size
        self.timestep_freq_shift = timestep_freq_shift
        self.norm_eps = norm_eps
        self.mlp_norm_eps = norm_eps if mlp_norm_eps is None else mlp_norm_eps
        self.qkv_bias = qkv_bias
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_lit()

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def intermediate_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def grid_size(self) -> int:
        return self.sample_size // self.patch_size

    def validate_lit(self) -> None:
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"LiTConfig: attention_type must be one of {ATTENTION_TYPES}, got {self.attention_type!r}")
        if self.pos_embed_type not in POS_EMBED_TYPES:
            raise ValueError(f"LiTConfig: pos_embed_type must be one of {POS_EMBED_TYPES}, got {self.pos_embed_type!r}")
        if self.sample_size % self.patch_size:
            raise ValueError(f"LiTConfig: sample_size ({self.sample_size}) must be divisible by patch_size "
                             f"({self.patch_size})")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"LiTConfig: hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                             f"({self.num_attention_heads})")
        if self.hidden_size % 4:
            raise ValueError(f"LiTConfig: hidden_size ({self.hidden_size}) must be divisible by 4 (2D sin-cos positions)")
        if self.conv_kernel_size < 1 or self.conv_kernel_size % 2 == 0:
            raise ValueError(f"LiTConfig: conv_kernel_size must be a positive odd number, got {self.conv_kernel_size}")
        if self.num_classes < 0:
            raise ValueError(f"LiTConfig: num_classes must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"LiTConfig: class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> LiTConfig:
        """A named size (``LiT-S/2`` … ``LiT-XL/8``; DiT's sizes on 32×32×4 latents) with overrides."""
        if name not in LIT_PRESETS:
            raise ValueError(f"unknown LiT preset {name!r}; known: {', '.join(LIT_PRESETS)}")
        return cls(**{**LIT_PRESETS[name], **kwargs})
