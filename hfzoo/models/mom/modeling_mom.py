"""Mixture-of-Memories language model (Du et al., 2025, https://arxiv.org/abs/2502.13685).

A MoM layer keeps ``M`` separate linear-attention memories instead of one. A router sends every token to its
top-k memories; a memory is written (and decays) only at the tokens routed to it, in time order, and the layer
reads each token's memories back mixed by the router weights:

    s_t = softmax(W_r x_t)                      router probabilities over the M memories (fp32)
    E_t = top-k(s_t),  w_{t,m} = s_{t,m} / sum_{m' in E_t} s_{t,m'}
    S^m_t = diag(alpha^m_t) S^m_{t-1} + k^m_t^T v^m_t     for m in E_t;   S^m_t = S^m_{t-1} otherwise
    o_t = sum_{m in E_t} w_{t,m} q_t S^m_t / sqrt(K)  (+ q_t S^shared_t / sqrt(K): a memory every token uses)

``q`` is shared by all memories; each memory has its own key, value and low-rank decay projections. The sum
is RMS-normalized per head, multiplied by ``swish(g_proj(x))`` and projected out, as in GLA.

How it runs: the routed tokens of every (memory, sequence) pair are sorted into ONE packed varlen batch
(deterministically: ``nonzero`` on a [memory, token] table, so in memory-major, time order), the recurrence runs
once over it with ``cu_seqlens`` (one kernel launch for every memory of every sequence), and the outputs are
gathered back and mixed. No token is ever dropped for capacity. The recurrence sits behind a small backend
seam (``GLAMemoryBackend``: parameters, per-memory projections, recurrence, state shape) so other memories
(gated DeltaNet) can be added without touching routing, packing, caching or mixing.

Padding and packed documents: a padded token is routed nowhere (it never touches any state); packed
documents (``cu_seqlens`` or ``position_ids`` restarts) become separate sequences of every memory.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ...layers.losses import causal_lm_loss, next_token_targets
from ...layers.mlp import SwiGLUMLP
from ...layers.norms import GatedRMSNorm
from ...layers.packing import Packing
from ...layers.pretrained_model import HfzooPreTrainedModel
from ...layers.recurrent_cache import RecurrentCache, cache_of, output_with_cache
from ...layers.recurrent_lm import (
    RecurrentBackboneMixin,
    RecurrentCausalLMMixin,
    logits_slice,
    recurrent_forward_inputs,
)
from ...ops.dispatch import resolve_backend
from ...ops.gla import chunk_gla, fused_recurrent_gla
from .configuration_mom import MoMConfig

# Up to this many new tokens (and without gradients) the step-by-step kernel runs; longer inputs the chunked one.
RECURRENT_MAX_LEN = 64


class MoMCache(RecurrentCache):
    """Per-layer MoM states: ``recurrent_state`` is a tuple of ``[B, Hkv, K, V]`` fp32 states, one per routed
    memory, then the shared memory's."""

    def __init__(self, config: MoMConfig | None = None, num_layers: int | None = None):
        super().__init__(config.num_hidden_layers if config is not None else num_layers)


# ------------------------------------------------------------------------------------------------------------
# Routing and packing (independent of what a memory computes)


@dataclass
class Routing:
    probs: torch.Tensor      # [B, T, M] router probabilities (fp32)
    memories: torch.Tensor   # [B, T, k] chosen memories (long)
    weights: torch.Tensor    # [B, T, k] weights renormalized over the chosen memories (fp32); 0 at padding
    keep: torch.Tensor       # [B, T] bool: real tokens


def route(router_logits: torch.Tensor, topk: int, keep: torch.Tensor) -> Routing:
    """Softmax over memories in fp32, top-k, weights renormalized over the top-k (0 at padded tokens)."""
    probs = router_logits.float().softmax(-1)
    weights, memories = probs.topk(topk, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    return Routing(probs, memories, weights * keep[..., None], keep)


@dataclass
class MemoryBatch:
    """The tokens of every (state, sequence) pair as one packed varlen batch; states are the routed memories
    ``0..M-1`` then the shared memory ``M``. Entries are ordered by state, then sequence, then time."""
    tokens: torch.Tensor      # [E] flat index b * T + t of each entry's token
    lengths: list[int]        # [S * N] entries per (state, sequence) segment, state-major (host ints)
    cu_seqlens: torch.Tensor  # [S * N + 1] int32 offsets of the segments
    slots: torch.Tensor       # [S, B * T] entry index of token in state, -1 where it is not routed there
    num_sequences: int        # N

    @property
    def num_entries(self) -> int:
        return self.tokens.numel()

    def host_cu_seqlens(self) -> torch.Tensor:
        """The offsets as a CPU tensor built from the host lengths: the ops read it without a device sync."""
        return torch.tensor([0, *itertools.accumulate(self.lengths)], dtype=torch.int32)

    @property
    def counts(self) -> list[int]:
        """Entries per state."""
        N = self.num_sequences
        return [sum(self.lengths[s * N:(s + 1) * N]) for s in range(len(self.lengths) // N)]

    def dense_index(self) -> tuple[torch.Tensor, int]:
        """Where each entry goes in a zero-padded ``[S * N, L]`` layout (flattened), and ``L`` (longest segment)."""
        L = max(self.lengths) if self.lengths else 0
        device = self.cu_seqlens.device
        lengths = torch.tensor(self.lengths, device=device)
        segment = torch.repeat_interleave(torch.arange(len(self.lengths), device=device), lengths)
        offset = torch.arange(self.num_entries, device=device) - self.cu_seqlens.long()[segment]
        return segment * L + offset, L


def pack_memories(routing: Routing, sequence_ids: torch.Tensor, num_sequences: int, num_memories: int,
                  shared: bool) -> MemoryBatch:
    """Sort the routed tokens into one varlen batch. ``sequence_ids`` ``[B, T]``: the sequence (batch row or
    packed document) of each kept token, rising along the flattened batch. ``nonzero`` enumerates in row-major
    order, so the order (state, token) is the same on every device -- no sort, no tie to break."""
    B, T = routing.keep.shape
    M, S, N = num_memories, num_memories + int(shared), num_sequences
    keep = routing.keep.reshape(B * T)
    chosen = F.one_hot(routing.memories.reshape(B * T, -1), M).amax(1).bool() & keep[:, None]   # [BT, M]
    member = torch.cat([chosen.T, keep[None]]) if shared else chosen.T                         # [S, BT]
    state, tokens = member.nonzero(as_tuple=True)
    segment = state * N + sequence_ids.reshape(B * T)[tokens]
    lengths = torch.bincount(segment, minlength=S * N)
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    slots = torch.full((S, B * T), -1, dtype=torch.long, device=keep.device)
    slots[state, tokens] = torch.arange(tokens.numel(), device=keep.device)
    return MemoryBatch(tokens, lengths.tolist(), cu_seqlens, slots, N)


def mix_outputs(o: torch.Tensor, batch: MemoryBatch, routing: Routing, shared: bool) -> torch.Tensor:
    """``o`` ``[E, H, V]`` per entry -> ``[B * T, H, V]``: sum over each token's memories weighted by the router,
    plus the shared memory with weight 1. A gather per token (no atomics): the same sums on every device."""
    B, T = routing.keep.shape
    k = routing.memories.shape[-1]
    if o.shape[0] == 0:
        return o.new_zeros(B * T, *o.shape[1:])
    M = routing.probs.shape[-1]
    idx = batch.slots[:M].T.gather(1, routing.memories.reshape(B * T, k))          # [BT, k]
    w = routing.weights.reshape(B * T, k)
    out = (o[idx.clamp_min(0)].float() * w[..., None, None]).sum(1)
    if shared:
        keep = routing.keep.reshape(B * T)
        out = out + o[batch.slots[M].clamp_min(0)].float() * keep[:, None, None]
    return out.to(o.dtype)


def load_balancing_loss(routing: Routing) -> torch.Tensor:
    """Switch-style balance of each batch row ``[B]``: ``M * sum_m f_m * P_m`` over the row's real tokens, with
    ``f_m`` the fraction of them routed to memory m (``sum_m f_m = k``) and ``P_m`` their mean router probability
    (the gradient path); 0 for a row without real tokens. Per row, so that the loss of a batch is a token-weighted
    sum over rows: gradient accumulation over micro-batches then gives the big batch's loss exactly."""
    M = routing.probs.shape[-1]
    keep = routing.keep.float()                                                     # [B, T]
    count = keep.sum(1).clamp_min(1.0)
    chosen = F.one_hot(routing.memories, M).amax(2).float() * keep[..., None]       # [B, T, M]
    probs = routing.probs * keep[..., None]
    return M * ((chosen.sum(1) / count[:, None]) * (probs.sum(1) / count[:, None])).sum(-1)


# ------------------------------------------------------------------------------------------------------------
# Memory backends: what a memory computes from its tokens


class GLAMemoryBackend:
    """Gated-linear-attention memories. Each memory ``m`` has ``k_proj[m]``, ``v_proj[m]`` and a low-rank
    ``gk_proj[m]`` (the shared memory ``shared_k``/``shared_v``/``shared_gk``); its state is ``[Hkv, K, V]``
    and its recurrence ``hfzoo.ops.gla``. A new backend implements the same four methods."""

    @staticmethod
    def build(layer: nn.Module, config: MoMConfig) -> None:
        d, r = config.hidden_size, config.gate_low_rank_dim
        kdim, vdim = config.kv_heads * config.head_k_dim, config.kv_heads * config.head_v_dim

        def gate():
            return nn.Sequential(nn.Linear(d, r, bias=False), nn.Linear(r, kdim, bias=True))

        if not config.single_kv_proj:
            layer.k_proj = nn.ModuleList(nn.Linear(d, kdim, bias=False) for _ in range(config.num_memories))
            layer.v_proj = nn.ModuleList(nn.Linear(d, vdim, bias=False) for _ in range(config.num_memories))
            layer.gk_proj = nn.ModuleList(gate() for _ in range(config.num_memories))
        if config.shared_mem or config.single_kv_proj:
            layer.shared_k = nn.Linear(d, kdim, bias=False)
            layer.shared_v = nn.Linear(d, vdim, bias=False)
            layer.shared_gk = gate()

    @staticmethod
    def project(layer: nn.Module, x: torch.Tensor, state: int) -> tuple[torch.Tensor, ...]:
        """Inputs of memory ``state`` (``num_memories`` = the shared one) for its tokens ``x`` ``[n, d]``:
        keys ``[n, Hkv, K]``, values ``[n, Hkv, V]``, log decays ``[n, Hkv, K]`` (fp32, <= 0)."""
        if layer.single_kv_proj or state == layer.num_memories:
            k_proj, v_proj, gk_proj = layer.shared_k, layer.shared_v, layer.shared_gk
        else:
            k_proj, v_proj, gk_proj = layer.k_proj[state], layer.v_proj[state], layer.gk_proj[state]
        n = x.shape[0]
        g = F.logsigmoid(gk_proj(x).float()) / layer.gate_logit_normalizer
        if layer.clamp_min is not None:
            g = g.clamp_min(layer.clamp_min)
        return (k_proj(x).view(n, layer.num_kv_heads, layer.head_k_dim),
                v_proj(x).view(n, layer.num_kv_heads, layer.head_v_dim),
                g.view(n, layer.num_kv_heads, layer.head_k_dim))

    @staticmethod
    def recurrence(q, inputs, initial_state, batch: MemoryBatch, output_final_state, step):
        """One call over the packed batch: ``q`` ``[E, H, K]``, ``inputs`` from ``project`` concatenated over
        states, ``initial_state`` ``[S * N, Hkv, K, V]`` or None. ``step``: few tokens, no gradients (decoding).

        Kernels (GPU, or forced): one varlen launch with ``cu_seqlens``. Reference ops (CPU): the segments are
        zero-padded at their ends into one dense batch instead -- a padded step has a zero key and a zero log
        decay, so it changes no state and the results are the same -- because the reference loops over varlen
        segments in Python, which is slow with many (memory, sequence) pairs."""
        k, v, g = inputs
        if batch.num_entries == 0:       # nothing routed anywhere (an all-padding call): states stay as they are
            rows, (_, Hkv, K), V = len(batch.lengths), k.shape, v.shape[-1]
            final = None
            if output_final_state:
                final = initial_state if initial_state is not None else q.new_zeros(rows, Hkv, K, V, dtype=torch.float32)
            return v.new_zeros(0, q.shape[1], V), final
        if resolve_backend(q, k, v, g, op="chunk_gla") == "triton":
            op = fused_recurrent_gla if step else chunk_gla
            o, final = op(q[None], k[None], v[None], g[None], initial_state=initial_state,
                          output_final_state=output_final_state, cu_seqlens=batch.host_cu_seqlens())
            return o[0], final
        index, L = batch.dense_index()
        rows = len(batch.lengths)
        dense = [t.new_zeros(rows * L, *t.shape[1:]).index_copy(0, index, t).view(rows, L, *t.shape[1:])
                 for t in (q, k, v, g)]
        o, final = chunk_gla(*dense, initial_state=initial_state, output_final_state=output_final_state)
        return o.flatten(0, 1)[index], final

    @staticmethod
    def state_shape(layer: nn.Module) -> tuple[int, ...]:
        return (layer.num_kv_heads, layer.head_k_dim, layer.head_v_dim)


MEMORY_BACKENDS = {"gla": GLAMemoryBackend}


# ------------------------------------------------------------------------------------------------------------
# The mixture-of-memories layer


class MixtureOfMemories(nn.Module):
    """Router ``gate``, shared ``q_proj``, the memories of the chosen backend, output gate ``g_proj``, per-head
    gated RMSNorm and ``o_proj``. Returns ``(output, load-balancing loss)``."""

    def __init__(self, config: MoMConfig, layer_idx: int):
        super().__init__()
        d = config.hidden_size
        self.layer_idx = layer_idx
        self.num_memories, self.topk = config.num_memories, config.topk
        self.shared_mem, self.single_kv_proj = config.shared_mem, config.single_kv_proj
        self.num_heads, self.num_kv_heads = config.num_heads, config.kv_heads
        self.head_k_dim, self.head_v_dim = config.head_k_dim, config.head_v_dim
        self.gate_logit_normalizer, self.clamp_min = config.gate_logit_normalizer, config.clamp_min
        self.use_output_gate = config.use_output_gate
        self.backend = MEMORY_BACKENDS[config.memory_backend]

        self.q_proj = nn.Linear(d, config.key_dim, bias=False)
        self.gate = nn.Linear(d, config.num_memories, bias=False)        # the router
        self.backend.build(self, config)
        if config.use_output_gate:
            self.g_proj = nn.Linear(d, config.value_dim, bias=False)
        self.o_proj = nn.Linear(config.value_dim, d, bias=False)
        norm = GatedRMSNorm(self.head_v_dim, config.norm_eps, config.elementwise_affine)
        if config.use_output_gate:
            self.g_norm_swish_gate = norm
        else:
            self.g_norm = norm

    @property
    def num_states(self) -> int:
        return self.num_memories + int(self.shared_mem)

    def forward(self, hidden_states, attention_mask=None, cache: MoMCache | None = None,
                packing: Packing | None = None):
        B, T, d = hidden_states.shape
        S = self.num_states
        state = cache.layers[self.layer_idx] if cache is not None else None
        keep, sequence_ids, N = self._sequences(attention_mask, packing, B, T, hidden_states.device)

        # route (router in fp32), then one packed batch of every (memory, sequence) pair
        routing = route(F.linear(hidden_states.float(), self.gate.weight.float()), self.topk, keep)
        batch = pack_memories(routing, sequence_ids, N, self.num_memories, self.shared_mem)

        x = hidden_states.reshape(B * T, d)
        q = self.q_proj(x).view(B * T, self.num_heads, self.head_k_dim)[batch.tokens]
        parts = x[batch.tokens].split(batch.counts)
        per_state = [self.backend.project(self, part, s) for s, part in enumerate(parts)]
        inputs = tuple(torch.cat(t) for t in zip(*per_state))

        initial = None
        if state is not None and state.recurrent_state is not None:
            initial = torch.stack(state.recurrent_state).flatten(0, 1)     # [S * B, ...], state-major
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, *inputs))
        step = T <= RECURRENT_MAX_LEN and not needs_grad
        o, final = self.backend.recurrence(q, inputs, initial, batch, state is not None, step)
        if state is not None:
            state.recurrent_state = tuple(final.view(S, N, *final.shape[1:]).unbind(0))

        o = mix_outputs(o, batch, routing, self.shared_mem).view(B, T, self.num_heads, self.head_v_dim)
        if self.use_output_gate:
            g = self.g_proj(hidden_states).view(B, T, self.num_heads, self.head_v_dim)
            o = self.g_norm_swish_gate(o, g)
        else:
            o = self.g_norm(o)
        return self.o_proj(o.reshape(B, T, -1)), load_balancing_loss(routing)

    @staticmethod
    def _sequences(attention_mask, packing, B, T, device):
        """Real tokens ``[B, T]``, the sequence of each (rows, or packed documents) and the number of sequences."""
        if packing is not None:
            ids = packing.document_ids()
            return ids >= 0, ids.clamp_min(0), packing.lengths.numel()
        rows = torch.arange(B, device=device)[:, None].expand(B, T)
        if attention_mask is None:
            return torch.ones(B, T, dtype=torch.bool, device=device), rows, B
        return attention_mask[:, -T:].bool(), rows, B


# ------------------------------------------------------------------------------------------------------------
# MLP and block


class MoMMLP(SwiGLUMLP):
    """SwiGLU: ``down(swish(gate(x)) * up(x))``."""

    def __init__(self, config: MoMConfig):
        super().__init__(config.hidden_size, config.mlp_width)


class MoMBlock(GradientCheckpointingLayer):
    """Pre-norm block: ``x + mom(norm(x))``, then ``x + mlp(norm(x))``; also returns the layer's balance loss."""

    def __init__(self, config: MoMConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = GatedRMSNorm(config.hidden_size, config.norm_eps)
        self.attn = MixtureOfMemories(config, layer_idx)
        self.mlp_norm = GatedRMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = MoMMLP(config)

    def forward(self, hidden_states, attention_mask=None, cache=None, packing=None):
        h, aux = self.attn(self.attn_norm(hidden_states), attention_mask, cache, packing)
        hidden_states = hidden_states + h
        return hidden_states + self.mlp(self.mlp_norm(hidden_states)), aux


# ------------------------------------------------------------------------------------------------------------
# Outputs, pretrained model, base model, head


@dataclass
class MoMModelOutputWithPast(BaseModelOutputWithPast):
    """``aux_loss``: the load-balancing loss (per row: mean over layers times ``aux_loss_scale``; rows weighted by
    their real tokens); ``aux_loss_per_row`` ``[B]``: the rows' values."""
    aux_loss: torch.FloatTensor | None = None
    aux_loss_per_row: torch.FloatTensor | None = None


@dataclass
class MoMCausalLMOutputWithPast(CausalLMOutputWithPast):
    """``loss`` includes the balance loss in training; ``aux_loss`` (and ``aux_loss_per_row``) always returned."""
    aux_loss: torch.FloatTensor | None = None
    aux_loss_per_row: torch.FloatTensor | None = None


class MoMPreTrainedModel(HfzooPreTrainedModel):
    config_class = MoMConfig
    base_model_prefix = "model"
    _no_split_modules = ["MoMBlock"]
    supports_gradient_checkpointing = True
    _is_stateful = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, GatedRMSNorm) and module.weight is not None:
            init.ones_(module.weight)


class MoMModel(RecurrentBackboneMixin, MoMPreTrainedModel):
    def __init__(self, config: MoMConfig):
        super().__init__(config)
        self._init_trunk(config, MoMBlock)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_hidden_states=None, return_dict=None, cache=None,
                cu_seqlens=None, **kwargs):
        """Packed documents (``DataCollatorWithFlattening``): pass ``cu_seqlens`` (``[N + 1]`` offsets over the
        ``batch * length`` tokens; also accepted as ``cu_seq_lens_q``) or ``position_ids`` restarting at 0 at each
        document; every memory then keeps the documents apart. No cache is kept for packed documents."""
        output_hidden_states, return_dict = self._output_flags(output_hidden_states, return_dict)
        B, T, cache, packing = recurrent_forward_inputs(
            self, MoMCache, input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            position_ids=position_ids, past_key_values=past_key_values, cache=cache, use_cache=use_cache,
            cu_seqlens=cu_seqlens, kwargs=kwargs)

        hidden_states = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        all_hidden = () if output_hidden_states else None
        aux = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states, layer_aux = layer(hidden_states, attention_mask=attention_mask, cache=cache, packing=packing)
            aux.append(layer_aux)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        if cache is not None:
            cache.advance(T)
        aux_rows = aux_loss = None
        if aux:
            aux_rows = torch.stack(aux).mean(0) * self.config.aux_loss_scale                  # [B]
            tokens = (attention_mask[:, -T:].float() if attention_mask is not None and packing is None
                      else torch.ones(B, T, device=aux_rows.device)).sum(1)
            aux_loss = (aux_rows * tokens).sum() / tokens.sum().clamp_min(1.0)

        if not return_dict:
            return tuple(x for x in (hidden_states, cache, all_hidden, aux_loss, aux_rows) if x is not None)
        return output_with_cache(MoMModelOutputWithPast, cache, last_hidden_state=hidden_states,
                                 hidden_states=all_hidden, aux_loss=aux_loss, aux_loss_per_row=aux_rows)


class MoMForCausalLM(RecurrentCausalLMMixin, MoMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: MoMConfig):
        super().__init__(config)
        self.model = MoMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_hidden_states=None, return_dict=None,
                logits_to_keep: int | torch.Tensor = 0, cache=None, cu_seqlens=None, **kwargs):
        """In training (``model.train()``) with ``labels`` the loss is the LM loss plus the balance loss, its rows
        weighted by their counted labels and divided like the LM loss (by ``num_items_in_batch`` when the Trainer
        passes it, else by this batch's counted labels): accumulated micro-batches give the big batch's loss."""
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        outputs = self._base_model_outputs(
            kwargs, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_hidden_states=output_hidden_states, cu_seqlens=cu_seqlens)
        hidden_states = outputs.last_hidden_state
        keep = logits_slice(logits_to_keep)
        logits = self.lm_head(hidden_states[:, keep, :])
        aux_loss = outputs.aux_loss
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, **kwargs)  # transformers' causal-LM loss, no fp32 logits copy
            if self.training and outputs.aux_loss_per_row is not None:
                rows = outputs.aux_loss_per_row
                ignore = kwargs.get("ignore_index", -100)
                targets = next_token_targets(labels, ignore, kwargs.get("shift_labels"))        # the LM loss's
                counted = (targets != ignore).sum(-1).to(rows.device, rows.dtype)              # [B]
                items = kwargs.get("num_items_in_batch")
                total = counted.sum().clamp_min(1.0) if items is None else torch.as_tensor(items, device=rows.device)
                loss = loss + (rows * counted).sum() / total
        cache = cache_of(outputs)
        if not return_dict:
            out = tuple(x for x in (logits, cache, outputs.hidden_states, aux_loss, outputs.aux_loss_per_row)
                        if x is not None)
            return (loss, *out) if loss is not None else out
        return output_with_cache(MoMCausalLMOutputWithPast, cache, loss=loss, logits=logits,
                                 hidden_states=outputs.hidden_states, aux_loss=aux_loss,
                                 aux_loss_per_row=outputs.aux_loss_per_row)


__all__ = ["MoMCache", "MoMForCausalLM", "MoMModel", "MoMPreTrainedModel", "MixtureOfMemories",
           "GLAMemoryBackend", "MEMORY_BACKENDS"]
