"""KAT: a Vision Transformer whose MLPs are group-rational Kolmogorov-Arnold layers (GR-KAN).

Patch embedding + class token + learned position embedding -> pre-norm blocks
``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` -> final LayerNorm -> the class token's state -> linear head.
The GR-KAN MLP is ``rational(identity init) -> fc1 -> rational(swish init) -> fc2``; each rational is
``P(x)/Q(x)`` with coefficients shared inside groups of channels (``hfzoo.ops.group_rational``).
``config.mlp_type = "mlp"`` swaps it for ``fc1 -> GELU -> fc2``: the same model is then a plain ViT.

Parameter names follow the released timm checkpoints closely (``mlp.act1.weight_numerator``, ``attn.qkv``),
so conversion is mostly a renaming (``hfzoo.convert.timm_kat``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from ...layers.losses import classification_loss
from ...layers.pretrained_model import HfzooPreTrainedModel
from ...layers.vision import PatchEmbedding, resize_position_grid
from ...ops.group_rational import RATIONAL_INITS, group_rational
from ...ops.rational_linear import grkan_mlp
from .configuration_kat import KATConfig

# Square of the gain that keeps activations' variance through a rational initialized as this function
# (E[f(z)^2] for z ~ N(0, 1)), used for fc2's kaiming-normal init: Var(w) = gain2 / fan_in.
RATIONAL_GAIN2 = {"swish": 2.8178205270359653, "gelu": 2.3567850379928976, "identity": 1.0}


class KATRational(nn.Module):
    """Group-rational activation with learnable coefficients: numerator (1 or G, 6), denominator (G, 4)."""

    def __init__(self, width: int, num_groups: int, init_name: str, denominator: str = "released",
                 shared_numerator: bool = True):
        super().__init__()
        self.num_groups = num_groups
        self.init_name = init_name
        self.denominator = denominator
        self.weight_numerator = nn.Parameter(torch.empty(1 if shared_numerator else num_groups, 6))
        self.weight_denominator = nn.Parameter(torch.empty(num_groups, 4))
        self.reset_parameters()

    def initial_coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Numerator and denominator that make the rational start as ``init_name`` (every group alike)."""
        a, b = RATIONAL_INITS[self.init_name]
        return (torch.tensor(a, dtype=torch.float32).expand_as(self.weight_numerator),
                torch.tensor(b, dtype=torch.float32).expand_as(self.weight_denominator))

    def reset_parameters(self) -> None:
        numerator, denominator = self.initial_coefficients()
        with torch.no_grad():
            self.weight_numerator.copy_(numerator)
            self.weight_denominator.copy_(denominator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast the result is what the next linear layer would cast it to anyway (the autocast dtype),
        # written directly: no separate cast pass forward, none for the gradient backward.
        out_dtype = None
        if x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
            out_dtype = torch.get_autocast_dtype(x.device.type)
        return group_rational(x, self.weight_numerator, self.weight_denominator, self.num_groups,
                              denominator_form=self.denominator, out_dtype=out_dtype)

    def extra_repr(self) -> str:
        return f"groups={self.num_groups}, init={self.init_name}, denominator={self.denominator}"


class KATEmbeddings(nn.Module):
    """Patches -> [CLS] + patch tokens + learned positions: [B, C, H, W] -> [B, 1 + N, D]."""

    def __init__(self, config: KATConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embeddings = PatchEmbedding(config.num_channels, config.hidden_size, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_positions(self, height: int, width: int) -> torch.Tensor:
        """Bicubically resize the patch-position grid for a (height, width) input."""
        pos = self.position_embeddings
        h, w = height // self.patch_size, width // self.patch_size
        if h * w == pos.shape[1] - 1 and h == w:
            return pos
        return torch.cat([pos[:, :1], resize_position_grid(pos[:, 1:], h, w)], dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        B, C, H, W = pixel_values.shape
        if C != self.patch_embeddings.in_channels:
            raise ValueError(f"pixel_values has {C} channels; the model expects {self.patch_embeddings.in_channels}")
        x = self.patch_embeddings(pixel_values)                               # [B, N, D]
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        if interpolate_pos_encoding:
            pos = self.interpolate_positions(H, W)
        else:
            pos = self.position_embeddings
            if pos.shape[1] != x.shape[1]:
                raise ValueError(f"pixel_values of size {H}x{W} give {x.shape[1] - 1} patches; the model was built "
                                 f"for {pos.shape[1] - 1}. Resize the input or pass interpolate_pos_encoding=True.")
        return self.dropout(x + pos)


class KATAttention(nn.Module):
    """Multi-head self-attention over all tokens (no mask), through SDPA."""

    def __init__(self, config: KATConfig):
        super().__init__()
        D = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = D // self.num_heads
        self.dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(D, 3 * D, bias=config.qkv_bias)
        self.proj = nn.Linear(D, D)
        # q, k and v initialized as three separate D x D Xavier-uniform matrices (as the KAT release does)
        self.qkv.init_bound = math.sqrt(6.0 / (2 * D))
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, T, hd]
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_dropout(self.proj(o.transpose(1, 2).reshape(B, T, D)))


class KATMLP(nn.Module):
    """GR-KAN: rational(identity) -> fc1 -> rational(swish) -> fc2; or fc1 -> act -> fc2 for a plain ViT.

    The GR-KAN form runs as one op (``hfzoo.ops.rational_linear.grkan_mlp``: one autograd node for the whole MLP;
    the rational kernels and cuBLAS by default, the rational fused into the matmul's kernel on request) when its four
    modules are the plain ones without hooks and no dropout is active; otherwise (an adapter such as peft's LoRA on
    fc1/fc2, hooks, dropout in training) the modules run one by one. Parameters and state dicts are the same either
    way.
    """

    def __init__(self, config: KATConfig):
        super().__init__()
        D, Hd = config.hidden_size, config.intermediate_size
        self.kan = config.mlp_type == "kan"
        self.fc1 = nn.Linear(D, Hd)
        self.fc2 = nn.Linear(Hd, D)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        if self.kan:
            opts = dict(num_groups=config.rational_groups, denominator=config.rational_denominator,
                        shared_numerator=config.rational_shared_numerator)
            self.act1 = KATRational(D, init_name="identity", **opts)
            self.act2 = KATRational(Hd, init_name=config.rational_init, **opts)
            # variance-preserving init: fc1 sees act1 = identity, fc2 sees act2 = swish (or gelu/identity)
            self.fc1.init_std = 1.0 / math.sqrt(D)
            self.fc2.init_std = math.sqrt(RATIONAL_GAIN2[config.rational_init] / Hd)
        else:
            self.act = ACT2FN[config.hidden_act]

    def _fusable(self) -> bool:
        fc1, fc2, act1, act2 = self.fc1, self.fc2, self.act1, self.act2
        return (type(fc1) is nn.Linear and type(fc2) is nn.Linear and type(act1) is KATRational
                and type(act2) is KATRational and not (self.training and self.dropout.p > 0)
                and act1.denominator == act2.denominator and act1.num_groups == act2.num_groups
                and not any(m._forward_hooks or m._forward_pre_hooks for m in (fc1, fc2, act1, act2, self.dropout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kan and self._fusable():
            a1, a2 = self.act1, self.act2
            return grkan_mlp(x, a1.weight_numerator, a1.weight_denominator, self.fc1.weight, self.fc1.bias,
                             a2.weight_numerator, a2.weight_denominator, self.fc2.weight, self.fc2.bias,
                             num_groups=a1.num_groups, denominator_form=a1.denominator)
        if self.kan:
            x = self.fc1(self.dropout(self.act1(x)))
            x = self.act2(x)
        else:
            x = self.act(self.fc1(x))
        return self.fc2(self.dropout(x))


class KATLayer(GradientCheckpointingLayer):
    def __init__(self, config: KATConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = KATAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = KATMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.dropout(self.mlp(self.norm2(x)))


class KATPreTrainedModel(HfzooPreTrainedModel):
    config_class = KATConfig
    base_model_prefix = "kat"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["KATLayer"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if hasattr(module, "init_std"):
                init.normal_(module.weight, mean=0.0, std=module.init_std)
            elif hasattr(module, "init_bound"):
                init.uniform_(module.weight, -module.init_bound, module.init_bound)
            else:
                init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, KATEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.normal_(module.cls_token, mean=0.0, std=1e-6)
        elif isinstance(module, KATRational):
            numerator, denominator = module.initial_coefficients()
            init.copy_(module.weight_numerator, numerator)
            init.copy_(module.weight_denominator, denominator)


class KATModel(KATPreTrainedModel):
    def __init__(self, config: KATConfig):
        super().__init__(config)
        self.embeddings = KATEmbeddings(config)
        self.layers = nn.ModuleList([KATLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def forward(self, pixel_values: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                interpolate_pos_encoding: bool = False, return_dict: bool | None = None, **kwargs):
        """pixel_values: [B, C, H, W] -> last_hidden_state [B, 1 + N, D], pooler_output [B, D] (the class token)."""
        if pixel_values is None:
            raise ValueError("KATModel: pixel_values is required")
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be [batch, channels, height, width], got {tuple(pixel_values.shape)}")
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        x = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden_states = (x,) if output_hidden_states else None
        for layer in self.layers:
            x = layer(x)
            if output_hidden_states:
                hidden_states += (x,)
        x = self.norm(x)
        out = BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=x[:, 0], hidden_states=hidden_states)
        return out if return_dict else out.to_tuple()


class KATForImageClassification(KATPreTrainedModel):
    def __init__(self, config: KATConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.kat = KATModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool = False,
                return_dict: bool | None = None, num_items_in_batch=None, **kwargs):
        """logits [B, num_labels] from the class token; cross-entropy (or per config.problem_type) with labels."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        out = self.kat(pixel_values, output_hidden_states=output_hidden_states,
                       interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True)
        logits = self.classifier(out.pooler_output)
        loss = classification_loss(self.config, logits, labels, num_items_in_batch) if labels is not None else None
        result = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return result if return_dict else result.to_tuple()
