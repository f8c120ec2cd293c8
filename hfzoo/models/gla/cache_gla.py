"""The decoding state of a GLA model: a ``RecurrentCache`` laid out from a ``GLAConfig``.

A GLA layer carries a fixed-size recurrent state ``[B, Hkv, K, V]`` (fp32) and, with short convolutions, the
last ``conv_size`` inputs of its q/k/v convolutions ``[B, D, conv_size]``; a softmax-attention layer of a
hybrid model carries ordinary keys and values. See ``hfzoo/layers/recurrent_cache.py``.
"""

from __future__ import annotations

from ...layers.recurrent_cache import RecurrentCache, RecurrentLayerState

# The per-layer state type under its earlier name.
RecurrentStateLayer = RecurrentLayerState


class GLACache(RecurrentCache):
    """Per-layer GLA states (and key/value caches for hybrid softmax-attention layers)."""

    def __init__(self, config=None, attention_layers: list[int] | None = None, num_layers: int | None = None):
        if config is not None:
            num_layers = config.num_hidden_layers
            attention_layers = [i for i in range(num_layers) if config.attention_spec(i) is not None]
        if num_layers is None:
            raise ValueError("GLACache needs a config or num_layers")
        super().__init__(num_layers, attention_layers)
