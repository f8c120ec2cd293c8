"""Gated Linear Attention Transformer (Yang et al., 2023, https://arxiv.org/abs/2312.06635).

The model is a pre-norm Transformer whose token mixer is gated linear attention: per head, a matrix state
``S`` (``K x V``) decays along the key dimension by a data-dependent factor and accumulates ``k^T v``,

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,        o_t = q_t S_t / sqrt(K),
    alpha_t = exp(logsigmoid(W2 W1 x_t) / 16)       (a low-rank gate, close to 1),

so a layer costs O(T) in time and O(1) memory per generated token. The output of each head is RMS-normalized
and multiplied by a swish output gate. Optionally, q/k/v pass a short causal depthwise convolution first, and
some layers may be ordinary softmax attention (hybrid models). Parameter names follow flash-linear-attention,
so its checkpoints load after a config conversion.

Padding: left-padded tokens must not touch the recurrent state. Padded batches are packed into one varlen
sequence (``cu_seqlens``) for the recurrence; the short convolution sees zeros at padded positions, exactly
as at the start of a sequence.

Packed documents (``DataCollatorWithFlattening``): ``cu_seqlens`` (or ``cu_seq_lens_q``) or ``position_ids``
that restart at each document make every document start from a zero state, a fresh convolution window and,
in softmax-attention layers, attend only within itself -- as if it ran alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)

from ...layers.losses import causal_lm_loss, classification_loss, next_token_targets
from ...layers.mlp import SwiGLUMLP
from ...layers.norms import GatedRMSNorm
from ...layers.packing import PACKING_KWARGS, Packing
from ...layers.pretrained_model import HfzooPreTrainedModel
from ...layers.recurrent_cache import cache_of, output_with_cache
from ...layers.recurrent_lm import (
    RecurrentBackboneMixin,
    RecurrentCausalLMMixin,
    logits_slice,
    recurrent_forward_inputs,
)
from ...layers.rotary import apply_rotary, rope_inv_freq
from ...layers.short_conv import ShortConvolution
from ...ops.gla import chunk_gla, fused_recurrent_gla
from ...ops.linear_cross_entropy import linear_cross_entropy
from .cache_gla import GLACache
from .configuration_gla import GLAConfig

# Up to this many new tokens, the step-by-step kernel is used (decoding, short prompts); longer inputs use
# the chunked kernel.
RECURRENT_MAX_LEN = 64

# The norm of GLA checkpoints (a name kept for code that refers to it).
GLARMSNorm = GatedRMSNorm


# ------------------------------------------------------------------------------------------------------------
# Gated linear attention


class GatedLinearAttention(nn.Module):
    """q, k, v projections (optionally short-convolved), a low-rank decay gate, the recurrence, then a per-head
    RMSNorm times ``swish(g_proj(x))`` and the output projection. With ``num_kv_heads < num_heads``, key, value
    and decay heads are shared by groups of query heads (the ops take them unrepeated)."""

    def __init__(self, config: GLAConfig, layer_idx: int):
        super().__init__()
        d = config.hidden_size
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_heads, config.kv_heads
        self.head_k_dim, self.head_v_dim = config.head_k_dim, config.head_v_dim
        self.gate_logit_normalizer = config.gate_logit_normalizer
        self.clamp_min = config.clamp_min
        self.use_output_gate = config.use_output_gate
        kv_key_dim = self.num_kv_heads * self.head_k_dim
        kv_value_dim = self.num_kv_heads * self.head_v_dim

        self.q_proj = nn.Linear(d, config.key_dim, bias=False)
        self.k_proj = nn.Linear(d, kv_key_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_value_dim, bias=False)
        if config.use_output_gate:
            self.g_proj = nn.Linear(d, config.value_dim, bias=False)
        self.use_short_conv = config.use_short_conv
        if config.use_short_conv:
            self.q_conv1d = ShortConvolution(config.key_dim, config.conv_size, config.conv_bias)
            self.k_conv1d = ShortConvolution(kv_key_dim, config.conv_size, config.conv_bias)
            self.v_conv1d = ShortConvolution(kv_value_dim, config.conv_size, config.conv_bias)
        # low-rank decay gate: d -> r -> key dim (one decay per key channel of each key/value head)
        self.gk_proj = nn.Sequential(nn.Linear(d, config.gate_low_rank_dim, bias=False),
                                     nn.Linear(config.gate_low_rank_dim, kv_key_dim, bias=True))
        self.o_proj = nn.Linear(config.value_dim, d, bias=False)
        norm = GLARMSNorm(self.head_v_dim, config.norm_eps, config.elementwise_affine)
        if config.use_output_gate:
            self.g_norm_swish_gate = norm
        else:
            self.g_norm = norm

    def forward(self, hidden_states, attention_mask=None, cache: GLACache | None = None,
                packing: Packing | None = None):
        B, T, _ = hidden_states.shape
        state = cache.layers[self.layer_idx] if cache is not None else None
        mask = None
        documents = packing.document_ids() if packing is not None else None
        if attention_mask is not None and packing is None:
            mask = attention_mask[:, -T:].bool()
            if bool(mask.all()):
                mask = None

        q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        if self.use_short_conv:
            conv = state.conv_state if state is not None else {}
            q, cq = self.q_conv1d(q, conv.get("q"), mask, documents)
            k, ck = self.k_conv1d(k, conv.get("k"), mask, documents)
            v, cv = self.v_conv1d(v, conv.get("v"), mask, documents)
            if state is not None:
                state.conv_state = {"q": cq, "k": ck, "v": cv}

        # log decay in fp32: logsigmoid(.) / normalizer  (<= 0; the state is multiplied by its exp)
        gk = F.logsigmoid(self.gk_proj(hidden_states).float()) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            gk = gk.clamp_min(self.clamp_min)

        q = q.view(B, T, self.num_heads, self.head_k_dim)
        k = k.view(B, T, self.num_kv_heads, self.head_k_dim)
        v = v.view(B, T, self.num_kv_heads, self.head_v_dim)
        gk = gk.view(B, T, self.num_kv_heads, self.head_k_dim)

        initial = state.recurrent_state if state is not None else None
        o, final = self._recurrence(q, k, v, gk, initial, mask, packing, output_final_state=state is not None)
        if state is not None:
            state.recurrent_state = final

        # per-head RMSNorm, times swish(g) (fused)
        if self.use_output_gate:
            g = self.g_proj(hidden_states).view(B, T, self.num_heads, self.head_v_dim)
            o = self.g_norm_swish_gate(o, g)
        else:
            o = self.g_norm(o)
        return self.o_proj(o.reshape(B, T, -1))

    @staticmethod
    def _recurrence(q, k, v, g, initial_state, mask, packing, output_final_state):
        B, T = q.shape[:2]
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, g))
        op = fused_recurrent_gla if (T <= RECURRENT_MAX_LEN and not needs_grad) else chunk_gla
        if packing is None and mask is None:
            return op(q, k, v, g, initial_state=initial_state, output_final_state=output_final_state)
        if packing is None:
            packing = Packing.from_mask(mask)
            if bool((packing.lengths == 0).any()):
                # A row with no real token in this call: a zero key and a zero log decay leave its state unchanged.
                m = mask[..., None, None]
                return op(q, k * m.to(k.dtype), v, g * m, initial_state=initial_state,
                          output_final_state=output_final_state)
        # One varlen sequence: pads never enter the recurrence, packed documents never see each other.
        o, final = op(*(packing.pack(t).unsqueeze(0) for t in (q, k, v, g)), initial_state=initial_state,
                      output_final_state=output_final_state, cu_seqlens=packing.cu_seqlens)
        return packing.unpack(o[0]), final


# ------------------------------------------------------------------------------------------------------------
# Softmax attention (hybrid layers)


class Attention(nn.Module):
    """Causal softmax attention with rotary positions (non-interleaved) and an optional sliding window."""

    def __init__(self, config: GLAConfig, layer_idx: int, spec: dict):
        super().__init__()
        d = config.hidden_size
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = spec["num_heads"], spec["num_kv_heads"]
        self.head_dim = d // self.num_heads
        self.window_size = spec["window_size"]
        self.q_proj = nn.Linear(d, d, bias=spec["qkv_bias"])
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=spec["qkv_bias"])
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=spec["qkv_bias"])
        self.o_proj = nn.Linear(d, d, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(self.head_dim, spec["rope_theta"]), persistent=False)

    def forward(self, hidden_states, attention_mask=None, cache: GLACache | None = None, position_ids=None,
                packing: Packing | None = None):
        B, T, _ = hidden_states.shape
        past = cache.layers[self.layer_idx].get_seq_length() if cache is not None else 0
        S = past + T
        device = hidden_states.device
        if attention_mask is not None and attention_mask.shape[-1] < S:
            attention_mask = F.pad(attention_mask, (S - attention_mask.shape[-1], 0), value=1)
        key_mask = attention_mask[:, -S:].bool() if attention_mask is not None else None
        if packing is not None:
            position_ids = packing.positions()
        elif position_ids is None:
            if key_mask is not None:   # count real tokens only, so left padding does not shift positions
                position_ids = (key_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -T:]
            else:
                position_ids = torch.arange(past, S, device=device).expand(B, T)

        q = self.q_proj(hidden_states).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(B, T, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(q, position_ids, self.inv_freq), apply_rotary(k, position_ids, self.inv_freq)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))       # [B, heads, T, D]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)

        q_pos = torch.arange(past, S, device=device)[:, None]
        k_pos = torch.arange(S, device=device)[None, :]
        allowed = k_pos <= q_pos
        if self.window_size is not None:
            allowed = allowed & (k_pos > q_pos - self.window_size)
        allowed = allowed[None, None]
        if packing is not None:   # packed documents: attend within one's own document only
            documents = packing.document_ids()
            allowed = allowed & (documents[:, None, :, None] == documents[:, None, None, :])
        if key_mask is not None:
            # padded keys are never read; a padded query reads itself only (its output is discarded anyway)
            allowed = (allowed & key_mask[:, None, None, :]) | (k_pos == q_pos)[None, None]
        if self.num_kv_heads != self.num_heads:
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))


# ------------------------------------------------------------------------------------------------------------
# MLP and block


class GLAMLP(SwiGLUMLP):
    """SwiGLU: ``down(swish(gate(x)) * up(x))``."""

    def __init__(self, config: GLAConfig):
        super().__init__(config.hidden_size, config.mlp_width)


class GLABlock(GradientCheckpointingLayer):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: GLAConfig, layer_idx: int):
        super().__init__()
        spec = config.attention_spec(layer_idx)
        self.is_softmax_attention = spec is not None
        self.attn_norm = GLARMSNorm(config.hidden_size, config.norm_eps)
        if spec is not None:
            self.attn = Attention(config, layer_idx, spec)
        else:
            self.attn = GatedLinearAttention(config, layer_idx)
        self.mlp_norm = GLARMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = GLAMLP(config)

    def forward(self, hidden_states, attention_mask=None, cache=None, position_ids=None, packing=None):
        residual = hidden_states
        h = self.attn_norm(hidden_states)
        if self.is_softmax_attention:
            h = self.attn(h, attention_mask, cache, position_ids, packing)
        else:
            h = self.attn(h, attention_mask, cache, packing)
        hidden_states = residual + h
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))


# ------------------------------------------------------------------------------------------------------------
# Pretrained model, base model, heads


class GLAPreTrainedModel(HfzooPreTrainedModel):
    config_class = GLAConfig
    base_model_prefix = "model"
    _no_split_modules = ["GLABlock"]
    supports_gradient_checkpointing = True
    _is_stateful = True
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, GLARMSNorm) and module.weight is not None:
            init.ones_(module.weight)
        elif isinstance(module, Attention):
            theta = self.config.attention_spec(module.layer_idx)["rope_theta"]
            init.copy_(module.inv_freq, rope_inv_freq(module.head_dim, theta))


class GLAModel(RecurrentBackboneMixin, GLAPreTrainedModel):
    def __init__(self, config: GLAConfig):
        super().__init__(config)
        self._init_trunk(config, GLABlock)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_hidden_states=None, return_dict=None, cache=None,
                cu_seqlens=None, **kwargs):
        """Packed documents (several sequences flattened into one row, as ``DataCollatorWithFlattening`` makes
        them): pass ``cu_seqlens`` (``[N + 1]`` offsets over the ``batch * length`` tokens; also accepted as
        ``cu_seq_lens_q``), or ``position_ids`` that restart at 0 at each document. Each document then runs as
        if alone; no cache is kept."""
        output_hidden_states, return_dict = self._output_flags(output_hidden_states, return_dict)
        B, T, cache, packing = recurrent_forward_inputs(
            self, GLACache, input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            position_ids=position_ids, past_key_values=past_key_values, cache=cache, use_cache=use_cache,
            cu_seqlens=cu_seqlens, kwargs=kwargs)

        hidden_states = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is not None and packing is None and bool(attention_mask.bool().all()):
            attention_mask = None  # no padding (generate's usual mask): checked once here, not once per layer
        all_hidden = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states = layer(hidden_states, attention_mask=attention_mask, cache=cache, position_ids=position_ids,
                                  packing=packing)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        if cache is not None:
            cache.advance(hidden_states.shape[1])

        if not return_dict:
            return tuple(x for x in (hidden_states, cache, all_hidden) if x is not None)
        return output_with_cache(BaseModelOutputWithPast, cache, last_hidden_state=hidden_states, hidden_states=all_hidden)


class GLAForCausalLM(RecurrentCausalLMMixin, GLAPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: GLAConfig):
        super().__init__(config)
        self.model = GLAModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_hidden_states=None, return_dict=None,
                logits_to_keep: int | torch.Tensor = 0, cache=None, cu_seqlens=None, **kwargs):
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        outputs = self._base_model_outputs(
            kwargs, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_hidden_states=output_hidden_states, cu_seqlens=cu_seqlens)
        hidden_states = outputs.last_hidden_state
        keep = logits_slice(logits_to_keep)
        loss = logits = None
        if labels is not None and self.training and self.config.fuse_linear_cross_entropy:
            # the loss straight from the hidden states, chunked over tokens: all the logits are never made
            ignore = kwargs.get("ignore_index", -100)
            target = next_token_targets(labels, ignore, kwargs.get("shift_labels"))
            loss = linear_cross_entropy(hidden_states[:, keep, :], self.lm_head.weight,
                                        target.to(hidden_states.device), ignore_index=ignore,
                                        num_items_in_batch=kwargs.get("num_items_in_batch"))
        else:
            logits = self.lm_head(hidden_states[:, keep, :])
        if labels is not None and loss is None:
            # transformers' causal-LM loss on the logits as returned (lm_head's dtype): per-row cross-entropy with
            # fp32 math in the kernel's registers on CUDA, no fp32 copy of the logits or of their gradient
            loss = causal_lm_loss(logits, labels, **kwargs)
        cache = cache_of(outputs)
        if not return_dict:
            out = tuple(x for x in (logits, cache, outputs.hidden_states) if x is not None)
            return (loss, *out) if loss is not None else out
        return output_with_cache(CausalLMOutputWithPast, cache, loss=loss, logits=logits,
                           hidden_states=outputs.hidden_states)


class GLAForSequenceClassification(GLAPreTrainedModel):
    """Classifies a sequence from the hidden state of its last real token (left or right padding)."""

    def __init__(self, config: GLAConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = GLAModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None,
                output_hidden_states=None, return_dict=None, num_items_in_batch=None, **kwargs):
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        unknown = sorted(set(kwargs) & ({"position_ids", "cu_seqlens"} | set(PACKING_KWARGS)))
        if unknown:
            raise TypeError(f"GLAForSequenceClassification classifies whole rows; packed inputs ({unknown}) "
                            "are not supported")
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                             use_cache=False, output_hidden_states=output_hidden_states, return_dict=True)
        hidden = outputs.last_hidden_state
        B, T = hidden.shape[:2]
        positions = torch.arange(T, device=hidden.device)
        if attention_mask is not None:
            last = (attention_mask.bool() * positions).argmax(-1)
        elif input_ids is not None and self.config.pad_token_id is not None:
            last = ((input_ids != self.config.pad_token_id) * positions).argmax(-1)
        else:
            last = torch.full((B,), T - 1, device=hidden.device)
        logits = self.score(hidden[torch.arange(B, device=hidden.device), last])

        loss = None
        if labels is not None:
            loss = classification_loss(self.config, logits, labels, num_items_in_batch)
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = ["GLAModel", "GLAForCausalLM", "GLAForSequenceClassification", "GLAPreTrainedModel"]
