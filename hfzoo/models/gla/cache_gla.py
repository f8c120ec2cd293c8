"""The decoding state of a GLA model as a transformers ``Cache``.

A GLA layer carries a fixed-size recurrent state ``[B, Hkv, K, V]`` (fp32) and, with short convolutions, the
last ``conv_size`` inputs of its q/k/v convolutions ``[B, D, conv_size]``; a softmax-attention layer of a
hybrid model carries ordinary keys and values (a transformers ``DynamicLayer``).

transformers 5.x ships ``LinearAttentionLayer`` caches, but a ``Cache`` made only of them cannot answer
``get_seq_length()`` (it raises on 5.17 and 5.24 alike), which ``generate()`` calls every step, and it reports
itself compileable, which makes ``generate()`` replace the 2-D padding mask by a 4-D one. ``GLACache`` counts
tokens itself, keeps the 2-D mask, and otherwise behaves as any ``Cache`` (beam reordering, batch
repetition/selection, reset) on every transformers 5.x.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class RecurrentStateLayer:
    """One GLA layer's state: ``recurrent_state`` and a dict of convolution windows (``q``, ``k``, ``v``)."""

    is_compileable = False
    is_sliding = False
    is_croppable = False
    supports_early_init = False

    def __init__(self):
        self.recurrent_state: torch.Tensor | None = None
        self.conv_state: dict[str, torch.Tensor] = {}

    def __repr__(self):
        shape = None if self.recurrent_state is None else tuple(self.recurrent_state.shape)
        return f"RecurrentStateLayer(state={shape}, conv={sorted(self.conv_state)})"

    def _tensors(self):
        return ([("recurrent_state", self.recurrent_state)] if self.recurrent_state is not None else []) + \
            [(f"conv:{k}", v) for k, v in self.conv_state.items()]

    def _map(self, fn):
        if self.recurrent_state is not None:
            self.recurrent_state = fn(self.recurrent_state)
        self.conv_state = {k: fn(v) for k, v in self.conv_state.items()}

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices, ...])

    def reset(self) -> None:
        self.recurrent_state = None
        self.conv_state = {}

    def crop(self, tokens_to_remove: int) -> None:
        raise RuntimeError("a recurrent GLA state cannot be cropped back to an earlier position")

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return -1

    @property
    def batch_size(self) -> int | None:
        return None if self.recurrent_state is None else self.recurrent_state.shape[0]


class GLACache(Cache):
    """Per-layer GLA states (and key/value caches for hybrid softmax-attention layers).

    Layers read and write ``cache.layers[i].recurrent_state`` / ``.conv_state``; attention layers call
    ``cache.update(k, v, i)``. The model calls ``advance(num_tokens)`` once per forward.
    """

    def __init__(self, config=None, attention_layers: list[int] | None = None, num_layers: int | None = None):
        if config is not None:
            num_layers = config.num_hidden_layers
            attention_layers = [i for i in range(num_layers) if config.attention_spec(i) is not None]
        if num_layers is None:
            raise ValueError("GLACache needs a config or num_layers")
        self.attention_layers = set(attention_layers or [])
        super().__init__(layers=self._fresh_layers(num_layers))
        self.seen_tokens = 0

    def _fresh_layers(self, num_layers: int) -> list:
        return [DynamicLayer() if i in self.attention_layers else RecurrentStateLayer() for i in range(num_layers)]

    def advance(self, num_tokens: int) -> None:
        """Record that a forward pass consumed ``num_tokens`` more positions (padding included)."""
        self.seen_tokens += int(num_tokens)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def has_previous_state(self, layer_idx: int | None = None, state_idx: int | None = None) -> bool:
        return self.seen_tokens > 0

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False

    def reset(self):
        """Forget everything (a fresh cache of the same layout)."""
        self.layers = self._fresh_layers(len(self.layers))
        self.seen_tokens = 0
