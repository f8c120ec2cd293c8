"""Configuration of the Mixture-of-Memories (MoM) language model.

Field names follow the MoM repository's ``MomGLAConfig`` (``num_memories``, ``topk``, ``shared_mem``,
``single_kv_proj``, ``aux_loss_scale``) and the GLA fields they share with hfzoo's GLA, so converted configs
read naturally. The ``model_type`` is prefixed (``hfzoo_mom``): fla registers ``mom`` and the MoM repository
``mom_gla``.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

from ...utils.linear_attention_sizes import LinearAttentionSizes

MEMORY_BACKENDS = ("gla",)


class MoMConfig(LinearAttentionSizes, PreTrainedConfig):
    r"""Configuration of [`MoMModel`] / [`MoMForCausalLM`].

    Args:
        vocab_size: number of tokens.
        hidden_size: model width ``d``.
        expand_k, expand_v: query/key and value widths over all heads are ``d * expand_k`` and ``d * expand_v``.
        num_heads: query heads; ``num_kv_heads``: key/value heads of each memory (default ``num_heads``).
        hidden_ratio, intermediate_size: SwiGLU MLP width (see [`mlp_width`]).
        num_hidden_layers: number of blocks.
        num_memories: routed memories per layer (``M``); each has its own key, value and decay projections.
        topk: memories each token is routed to (``1 <= topk <= num_memories``); weights renormalized over them.
        shared_mem: add a memory that every token writes to and reads from with weight 1.
        single_kv_proj: one key/value/decay projection (``shared_k``/``shared_v``/``shared_gk``) for every
            memory; the memories then differ only by the tokens routed to them.
        memory_backend: the recurrence each memory runs; ``"gla"`` (gated linear attention).
        aux_loss_scale: weight of the load-balancing loss added to the LM loss in training.
        use_output_gate: multiply the normalized output by ``swish(g_proj(x))``.
        gate_low_rank_dim, gate_logit_normalizer, clamp_min: the decay gate
            ``logsigmoid(gk_proj(x)) / gate_logit_normalizer`` (optionally clamped below) with a low-rank ``gk_proj``.
        hidden_act: MLP and output-gate activation (``swish`` / ``silu`` only).
        elementwise_affine, norm_eps: the per-head output RMSNorm.
        fuse_norm: kept for checkpoint compatibility (same math either way).
        initializer_range: std of the normal init of linear and embedding weights.
    """

    model_type = "hfzoo_mom"
    keys_to_ignore_at_inference = ["past_key_values", "cache", "aux_loss"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 1024,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        hidden_ratio: float | None = 4,
        intermediate_size: int | None = None,
        num_hidden_layers: int = 24,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        num_memories: int = 4,
        topk: int = 2,
        shared_mem: bool = True,
        single_kv_proj: bool = False,
        memory_backend: str = "gla",
        aux_loss_scale: float = 0.01,
        use_output_gate: bool = True,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16,
        clamp_min: float | None = None,
        hidden_act: str = "swish",
        max_position_embeddings: int = 2048,
        elementwise_affine: bool = True,
        norm_eps: float = 1e-6,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        fuse_norm: bool = True,
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
        self.num_memories = num_memories
        self.topk = topk
        self.shared_mem = shared_mem
        self.single_kv_proj = single_kv_proj
        self.memory_backend = memory_backend
        self.aux_loss_scale = aux_loss_scale
        self.use_output_gate = use_output_gate
        self.gate_low_rank_dim = gate_low_rank_dim
        self.gate_logit_normalizer = gate_logit_normalizer
        self.clamp_min = clamp_min
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.elementwise_affine = elementwise_affine
        self.norm_eps = norm_eps
        self.use_cache = use_cache
        self.initializer_range = initializer_range
        self.fuse_norm = fuse_norm
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self._validate_mom()

    # --- derived sizes (kv_heads, key_dim, head_k_dim, mlp_width, ...) come from LinearAttentionSizes --------

    @property
    def num_states(self) -> int:
        """Recurrent states per layer: the routed memories, plus the shared one."""
        return self.num_memories + int(self.shared_mem)

    def _validate_mom(self) -> None:
        self._validate_heads()
        name = type(self).__name__
        if int(self.num_memories) < 1:
            raise ValueError(f"{name}: num_memories must be >= 1; got {self.num_memories}")
        if not 1 <= int(self.topk) <= int(self.num_memories):
            raise ValueError(f"{name}: topk must be in [1, num_memories={self.num_memories}]; got {self.topk}")
        if self.memory_backend not in MEMORY_BACKENDS:
            raise ValueError(f"{name}: memory_backend must be one of {MEMORY_BACKENDS}; got {self.memory_backend!r}")
        if self.aux_loss_scale < 0:
            raise ValueError(f"{name}: aux_loss_scale must be >= 0; got {self.aux_loss_scale}")
