"""Configuration of the Gated Linear Attention language model.

Field names follow flash-linear-attention's ``GLAConfig`` so that configs and checkpoints carry over; the
``model_type`` is prefixed (``hfzoo_gla``) so it never collides with fla's ``gla`` when both are installed.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

from ...utils.linear_attention_sizes import LinearAttentionSizes


class GLAConfig(LinearAttentionSizes, PreTrainedConfig):
    r"""Configuration of [`GLAModel`] / [`GLAForCausalLM`].

    Args:
        vocab_size: number of tokens.
        hidden_size: model width ``d``.
        expand_k, expand_v: key / value widths are ``d * expand_k`` and ``d * expand_v`` (over all heads).
        num_heads: query heads. ``num_kv_heads``: key/value heads (grouped-query; default ``num_heads``).
        hidden_ratio, intermediate_size: MLP width (see [`mlp_width`]).
        num_hidden_layers: number of blocks.
        use_short_conv, conv_size, conv_bias: causal depthwise convolution (with SiLU) on q, k, v.
        use_output_gate: multiply the normalized output by ``swish(g_proj(x))``.
        gate_low_rank_dim: rank of the decay projection ``gk_proj``.
        gate_logit_normalizer: the log decay is ``logsigmoid(gk_proj(x)) / gate_logit_normalizer``.
        clamp_min: optional lower bound of the log decay.
        hidden_act: MLP and output-gate activation (only ``swish`` / ``silu``).
        elementwise_affine: learnable weight in the per-head output norm.
        norm_eps: RMSNorm epsilon.
        attn: optional softmax-attention layers for hybrid models, e.g.
            ``{"layers": [1], "num_heads": 4, "num_kv_heads": 4, "window_size": None, "rope_theta": 10000.0}``
            (a dict or a list of dicts, fla's format).
        fuse_norm: fla's switch for its fused norm modules; kept for checkpoint compatibility (the math is
            the same either way).
        initializer_range: std of the normal init of linear and embedding weights.
        fuse_linear_cross_entropy: in training with ``labels``, compute the loss from the hidden states with
            ``hfzoo.ops.linear_cross_entropy`` (chunked over tokens, no full fp32 logits) and return
            ``logits=None``; same loss and gradients as the default path.
    """

    model_type = "hfzoo_gla"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 2048,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        hidden_ratio: float | None = 4,
        intermediate_size: int | None = None,
        num_hidden_layers: int = 24,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        use_short_conv: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        use_output_gate: bool = True,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16,
        clamp_min: float | None = None,
        hidden_act: str = "swish",
        max_position_embeddings: int = 2048,
        elementwise_affine: bool = True,
        norm_eps: float = 1e-6,
        attn: dict | list | None = None,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        fuse_norm: bool = True,
        fuse_linear_cross_entropy: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.conv_bias = conv_bias
        self.use_output_gate = use_output_gate
        self.gate_low_rank_dim = gate_low_rank_dim
        self.gate_logit_normalizer = gate_logit_normalizer
        self.clamp_min = clamp_min
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.elementwise_affine = elementwise_affine
        self.norm_eps = norm_eps
        self.attn = attn
        self.use_cache = use_cache
        self.initializer_range = initializer_range
        self.fuse_norm = fuse_norm
        self.fuse_linear_cross_entropy = fuse_linear_cross_entropy
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self._validate_gla()

    # --- derived sizes (kv_heads, key_dim, head_k_dim, mlp_width, ...) come from LinearAttentionSizes --------

    def attention_spec(self, layer_idx: int) -> dict | None:
        """The softmax-attention settings of layer ``layer_idx`` (defaults filled in), or None for a GLA layer."""
        if self.attn is None:
            return None
        for spec in [self.attn] if isinstance(self.attn, dict) else self.attn:
            if layer_idx in spec["layers"]:
                out = {"num_kv_heads": None, "qkv_bias": False, "window_size": None, "rope_theta": 10000.0, **spec}
                if out["num_kv_heads"] is None:
                    out["num_kv_heads"] = out["num_heads"]
                return out
        return None

    def _validate_gla(self) -> None:
        self._validate_heads()
        if self.attn is not None:
            specs = [self.attn] if isinstance(self.attn, dict) else self.attn
            if not isinstance(specs, (list, tuple)):
                raise ValueError(f"GLAConfig: attn must be None, a dict or a list of dicts; got {self.attn!r}")
            for spec in specs:
                if not isinstance(spec, dict) or "layers" not in spec or "num_heads" not in spec:
                    raise ValueError(f"GLAConfig: each attn spec needs 'layers' and 'num_heads'; got {spec!r}")
                if self.hidden_size % spec["num_heads"]:
                    raise ValueError(f"GLAConfig: hidden_size ({self.hidden_size}) must be divisible by the attention "
                                     f"num_heads ({spec['num_heads']})")
                bad = [i for i in spec["layers"] if not 0 <= i < self.num_hidden_layers]
                if bad:
                    raise ValueError(f"GLAConfig: attn layers {bad} are outside [0, {self.num_hidden_layers})")
