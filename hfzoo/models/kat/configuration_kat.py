"""Configuration of KAT, the Kolmogorov-Arnold Transformer (Yang & Wang, arXiv 2409.10594).

KAT is a ViT whose MLPs are GR-KAN layers: ``rational -> fc1 -> rational -> fc2`` with group-rational
activations (``hfzoo.ops.group_rational``). With ``mlp_type="mlp"`` the same model is a plain ViT with a
``fc1 -> GELU -> fc2`` MLP, the baseline the paper compares against.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

# Sizes of the released models (patch 16, 224 px, mlp_ratio 4), as data. `KATConfig.from_preset(name)`.
KAT_PRESETS: dict[str, dict] = {
    "kat_tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3),
    "kat_small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "kat_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
}

MLP_TYPES = ("kan", "mlp")


class KATConfig(PreTrainedConfig):
    r"""
    Args:
        image_size (`int`): side of the (square) input images.
        patch_size (`int`): side of the square patches; `image_size` must be divisible by it.
        num_channels (`int`): input channels (3 for RGB, 1 for grayscale).
        hidden_size, num_hidden_layers, num_attention_heads: transformer width, depth and heads.
        mlp_ratio (`float`): MLP hidden width / `hidden_size`.
        mlp_type (`str`): `"kan"` (GR-KAN, KAT) or `"mlp"` (fc1 -> `hidden_act` -> fc2, a plain ViT).
        hidden_act (`str`): activation of the plain MLP (`mlp_type="mlp"` only).
        rational_groups (`int`): channel groups of each rational activation (must divide both MLP widths).
        rational_init (`str`): initial function of the second rational, `"swish"` (released models),
            `"gelu"` or `"identity"`; the first rational always starts as the identity.
        rational_denominator (`str`): `"released"` (Q = 1 + sum |b_i||x|^(i+1), what the released kernels and
            checkpoints use) or `"paper"` (Q = 1 + |sum b_i x^(i+1)|).
        rational_shared_numerator (`bool`): one numerator (1, 6) shared by all groups, as in the released
            checkpoints; otherwise one per group (G, 6). The denominator is always per group (G, 4).
        qkv_bias (`bool`): bias in the fused query/key/value projection.
        layer_norm_eps (`float`): LayerNorm epsilon.
        hidden_dropout_prob, attention_probs_dropout_prob (`float`): dropout rates (0 at inference).
        initializer_range (`float`): std of the truncated-normal init of linear layers and embeddings.
    """

    model_type = "hfzoo_kat"

    def __init__(self, image_size: int = 224, patch_size: int = 16, num_channels: int = 3, hidden_size: int = 192,
                 num_hidden_layers: int = 12, num_attention_heads: int = 3, mlp_ratio: float = 4.0,
                 mlp_type: str = "kan", hidden_act: str = "gelu", rational_groups: int = 8,
                 rational_init: str = "swish", rational_denominator: str = "released",
                 rational_shared_numerator: bool = True, qkv_bias: bool = True, layer_norm_eps: float = 1e-6,
                 hidden_dropout_prob: float = 0.0, attention_probs_dropout_prob: float = 0.0,
                 initializer_range: float = 0.02, **kwargs):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.mlp_type = mlp_type
        self.hidden_act = hidden_act
        self.rational_groups = rational_groups
        self.rational_init = rational_init
        self.rational_denominator = rational_denominator
        self.rational_shared_numerator = rational_shared_numerator
        self.qkv_bias = qkv_bias
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_kat()

    @property
    def intermediate_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate_kat(self) -> None:
        if self.mlp_type not in MLP_TYPES:
            raise ValueError(f"KATConfig: mlp_type must be one of {MLP_TYPES}, got {self.mlp_type!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"KATConfig: image_size ({self.image_size}) must be divisible by patch_size "
                             f"({self.patch_size})")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"KATConfig: hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.mlp_type == "kan":
            for name, width in (("hidden_size", self.hidden_size), ("intermediate size", self.intermediate_size)):
                if width % self.rational_groups:
                    raise ValueError(f"KATConfig: {name} ({width}) must be divisible by rational_groups "
                                     f"({self.rational_groups})")
            if self.rational_init not in ("swish", "gelu", "identity"):
                raise ValueError(f"KATConfig: rational_init must be swish, gelu or identity, got "
                                 f"{self.rational_init!r}")
            if self.rational_denominator not in ("released", "paper"):
                raise ValueError(f"KATConfig: rational_denominator must be 'released' or 'paper', got "
                                 f"{self.rational_denominator!r}")

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> KATConfig:
        """A released size (``kat_tiny``, ``kat_small``, ``kat_base``; patch 16, 224 px) with overrides."""
        if name not in KAT_PRESETS:
            raise ValueError(f"unknown KAT preset {name!r}; known: {', '.join(KAT_PRESETS)}")
        return cls(**{**KAT_PRESETS[name], **kwargs})
