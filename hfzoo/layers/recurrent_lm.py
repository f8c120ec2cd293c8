"""The plumbing every recurrent language model shares around its layers.

``RecurrentBackboneMixin`` is the base model's trunk (embeddings, blocks, final norm) and its embedding
accessors; ``recurrent_forward_inputs`` checks a base model's inputs and decides its cache and packing (a cache continues
sequences; packed documents take none; gradient checkpointing keeps none). ``RecurrentCausalLMMixin`` is the
causal-LM head's part that does not depend on the model: embedding accessors (the head is ``lm_head``, the
base model ``model`` with ``embeddings``), no default ``DynamicCache`` from ``generate()``, and the call of the
base model with the packing keywords passed through.
"""

from __future__ import annotations

import torch
from torch import nn

from .norms import GatedRMSNorm
from .packing import PACKING_KWARGS, packed_documents
from .recurrent_cache import pick_cache


class RecurrentBackboneMixin:
    """Put it before the model's ``PreTrainedModel`` base in a recurrent base model (``XModel``): the trunk
    ``embeddings -> layers -> norm`` built by ``_init_trunk`` (parameter names as the checkpoints have them), the
    input-embedding accessors, and the ``output_hidden_states`` / ``return_dict`` defaults of a forward."""

    def _init_trunk(self, config, block_class) -> None:
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([block_class(config, i) for i in range(config.num_hidden_layers)])
        self.norm = GatedRMSNorm(config.hidden_size, config.norm_eps)
        self.gradient_checkpointing = False

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def _output_flags(self, output_hidden_states, return_dict) -> tuple[bool, bool]:
        """``(output_hidden_states, return_dict)`` with the config's defaults filled in."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        return output_hidden_states, return_dict


def recurrent_forward_inputs(model, cache_class, *, input_ids, inputs_embeds, attention_mask, position_ids,
                             past_key_values, cache, use_cache, cu_seqlens, kwargs):
    """Check a recurrent base model's inputs; returns ``(batch, length, cache, packing)``.

    ``cache`` is the one to read and update (a new ``cache_class(model.config)`` when caching starts here), or
    ``None`` when no state is kept; ``packing`` is a ``Packing`` for packed documents, else ``None``."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    cache = pick_cache(past_key_values, cache, cache_class)
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be a [batch, length] 0/1 padding mask; got shape "
                         f"{tuple(attention_mask.shape)}")
    B, T = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
    packing = None
    if cache is None:   # a cache continues sequences; generate()'s position_ids are not packing
        packing = packed_documents(B, T, cu_seqlens=cu_seqlens, position_ids=position_ids,
                                   attention_mask=attention_mask, kwargs=kwargs)
    elif cu_seqlens is not None or kwargs.get("cu_seq_lens_q") is not None:
        raise ValueError("packed documents (cu_seqlens) take no cache")
    use_cache = use_cache if use_cache is not None else (model.config.use_cache and not model.training)
    if (model.gradient_checkpointing and model.training) or packing is not None:
        use_cache = False   # a replayed forward would update the state twice; packed documents end in the batch
    if not use_cache:
        cache = None
    elif cache is None:
        cache = cache_class(model.config)
    return B, T, cache, packing


class RecurrentCausalLMMixin:
    """Put it before the model's ``PreTrainedModel`` base: ``class XForCausalLM(RecurrentCausalLMMixin,
    XPreTrainedModel, GenerationMixin)``. Expects ``self.model`` (with ``embeddings``) and ``self.lm_head``."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not build a DynamicCache: the model creates its recurrent cache on the first call.
        return False

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def _base_model_outputs(self, kwargs, **inputs):
        """Run ``self.model`` with ``inputs`` and the packing keywords taken out of ``kwargs`` (the rest, such as
        ``num_items_in_batch``, stays there for the loss); always returns the dict-like output."""
        packing_kwargs = {k: kwargs.pop(k) for k in PACKING_KWARGS if k in kwargs}
        return self.model(**inputs, return_dict=True, **packing_kwargs)


def logits_slice(logits_to_keep: int | torch.Tensor):
    """The positions to compute logits for: the last ``logits_to_keep`` (all for 0), or the given indices."""
    return slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
