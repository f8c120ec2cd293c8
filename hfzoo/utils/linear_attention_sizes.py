"""Sizes and head checks shared by the configs of gated linear-attention models (GLA, MoM).

A config using ``LinearAttentionSizes`` has ``hidden_size``, ``expand_k``, ``expand_v``, ``num_heads``,
``num_kv_heads`` (``None`` for ``num_heads``), ``hidden_ratio``, ``intermediate_size`` and ``hidden_act``.
"""

from __future__ import annotations


def mlp_width(hidden_size: int, hidden_ratio: float | None, intermediate_size: int | None) -> int:
    """Width of the SwiGLU MLP: ``intermediate_size`` if given, else 2/3 of ``hidden_ratio * hidden_size``
    rounded up to a multiple of 256 (the rule of fla-style checkpoints, so the parameter count is about
    ``hidden_ratio * hidden_size**2``; hidden 256 with ratio 4 gives 768)."""
    if intermediate_size is not None:
        return int(intermediate_size)
    ratio = 4 if hidden_ratio is None else hidden_ratio
    width = int(hidden_size * ratio * 2 / 3)
    return 256 * ((width + 255) // 256)


class LinearAttentionSizes:
    """Derived sizes (``kv_heads``, ``key_dim``, ``value_dim``, ``head_k_dim``, ``head_v_dim``, ``mlp_width``)
    and ``_validate_heads()``; put it before ``PreTrainedConfig`` among the config's bases."""

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def key_dim(self) -> int:
        return int(self.hidden_size * self.expand_k)

    @property
    def value_dim(self) -> int:
        return int(self.hidden_size * self.expand_v)

    @property
    def head_k_dim(self) -> int:
        return self.key_dim // self.num_heads

    @property
    def head_v_dim(self) -> int:
        return self.value_dim // self.num_heads

    @property
    def mlp_width(self) -> int:
        return mlp_width(self.hidden_size, self.hidden_ratio, self.intermediate_size)

    def _validate_heads(self) -> None:
        """Key/value widths split evenly over the heads, query heads group over key/value heads, SwiGLU's act."""
        name = type(self).__name__
        if self.key_dim % self.num_heads or self.value_dim % self.num_heads:
            raise ValueError(f"{name}: key dim {self.key_dim} (hidden_size * expand_k) and value dim "
                             f"{self.value_dim} (hidden_size * expand_v) must be divisible by num_heads={self.num_heads}")
        if self.kv_heads < 1 or self.num_heads % self.kv_heads:
            raise ValueError(f"{name}: num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.kv_heads})")
        if self.hidden_act not in ("swish", "silu"):
            raise ValueError(f"{name}: hidden_act must be 'swish' (or 'silu'); got {self.hidden_act!r}")
