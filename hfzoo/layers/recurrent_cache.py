"""The decoding state of a linear-attention (recurrent) model as a transformers ``Cache``, and the shims that
let a model run on every transformers 5.x.

Each recurrent layer keeps a ``RecurrentLayerState``: ``recurrent_state`` (one tensor, e.g. GLA's
``[B, H, K, V]``, or a tuple of tensors for a layer with several memories, e.g. MoM) and ``conv_state``, a dict
of short-convolution windows (``"q"``, ``"k"``, ``"v"`` ...). Softmax-attention layers of hybrid models keep
ordinary keys and values (a transformers ``DynamicLayer``).

transformers 5.x ships ``LinearAttentionLayer`` caches, but a ``Cache`` made only of them cannot answer
``get_seq_length()`` (it raises on 5.17 and 5.24 alike), which ``generate()`` calls every step, and it reports
itself compileable, which makes ``generate()`` replace the 2-D padding mask by a 4-D one. ``RecurrentCache``
counts tokens itself, keeps the 2-D mask, and otherwise behaves as any ``Cache`` (beam reordering, batch
repetition/selection, reset) on every transformers 5.x.

Version shims: transformers 5.24 renamed the forward keyword and output field ``past_key_values`` to
``cache`` (accepting the old keyword); ``pick_cache``, ``output_with_cache`` and ``cache_of`` accept and
produce whichever the installed version uses.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class RecurrentLayerState:
    """One recurrent layer's state: ``recurrent_state`` (a tensor or a tuple of tensors) and a dict of
    convolution windows."""

    is_compileable = False
    is_sliding = False
    is_croppable = False
    supports_early_init = False

    def __init__(self):
        self.recurrent_state: torch.Tensor | tuple[torch.Tensor | None, ...] | None = None
        self.conv_state: dict[str, torch.Tensor] = {}

    def __repr__(self):
        state = self.recurrent_state
        if isinstance(state, tuple):
            shape = tuple(None if t is None else tuple(t.shape) for t in state)
        else:
            shape = None if state is None else tuple(state.shape)
        return f"{type(self).__name__}(state={shape}, conv={sorted(self.conv_state)})"

    def _map(self, fn):
        state = self.recurrent_state
        if isinstance(state, tuple):
            self.recurrent_state = tuple(None if t is None else fn(t) for t in state)
        elif state is not None:
            self.recurrent_state = fn(state)
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
        raise RuntimeError("a recurrent state cannot be cropped back to an earlier position")

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return -1

    @property
    def batch_size(self) -> int | None:
        state = self.recurrent_state
        if isinstance(state, tuple):
            state = next((t for t in state if t is not None), None)
        return None if state is None else state.shape[0]


class RecurrentCache(Cache):
    """Per-layer recurrent states (and key/value caches for the softmax-attention layers of hybrid models).

    Layers read and write ``cache.layers[i].recurrent_state`` / ``.conv_state``; attention layers call
    ``cache.update(k, v, i)``. The model calls ``advance(num_tokens)`` once per forward.
    """

    def __init__(self, num_layers: int, attention_layers=()):
        if num_layers is None or int(num_layers) < 0:
            raise ValueError(f"RecurrentCache needs a number of layers; got {num_layers!r}")
        self.attention_layers = set(attention_layers or ())
        super().__init__(layers=self._fresh_layers(int(num_layers)))
        self.seen_tokens = 0

    def _fresh_layers(self, num_layers: int) -> list:
        return [DynamicLayer() if i in self.attention_layers else RecurrentLayerState() for i in range(num_layers)]

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


def pick_cache(past_key_values, cache, cache_class: type = RecurrentCache):
    """transformers 5.24 passes ``cache=``, earlier 5.x ``past_key_values=``; accept either (not both)."""
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError("pass either `cache` or `past_key_values`, not both")
    cache = cache if cache is not None else past_key_values
    if cache is not None and not isinstance(cache, cache_class):
        raise TypeError(f"this model keeps its state in a {cache_class.__name__}; got {type(cache).__name__} "
                        "(let the model create it: pass use_cache=True and no cache)")
    return cache


def _cache_field(output_cls) -> str:
    return "cache" if "cache" in getattr(output_cls, "__dataclass_fields__", {}) else "past_key_values"


def output_with_cache(output_cls, cache, **fields):
    """Build a model output; its cache field is ``cache`` from transformers 5.24 on, ``past_key_values`` before."""
    return output_cls(**{_cache_field(output_cls): cache}, **fields)


def cache_of(outputs):
    """The cache of a model output (``cache`` from transformers 5.24 on, ``past_key_values`` before)."""
    return getattr(outputs, _cache_field(type(outputs)))


__all__ = ["RecurrentCache", "RecurrentLayerState", "cache_of", "output_with_cache", "pick_cache"]
