"""MosaicBERT: a BERT encoder with ALiBi, a GeGLU feed-forward and padding-free execution.

Portes et al., "MosaicBERT: A Bidirectional Encoder Optimized for Fast Pretraining" (NeurIPS 2023).
Parameter names follow MosaicML's ``bert_layers.py`` so their checkpoints load by name.

Execution: the batch is unpadded ONCE, before the embeddings (only real tokens are embedded), every
layer runs on the packed ``[total_tokens, hidden]`` tensor with variable-length attention
(``cu_seqlens`` delimits the sequences), and the result is padded back once at the end. Attention uses
the symmetric ALiBi bias ``-slope_h * |i - j|`` inside the kernel (no bias tensor, so any length works).

Per layer (post-LayerNorm, like BERT):

    a = LayerNorm(x + Dropout(Dense(Attention(Wqkv x))))
    y = LayerNorm(a + Dropout(Wo(GELU(a W_gate) * (a W_lin))))          # GeGLU; [W_gate W_lin] = gated_layers

``attention_mask`` marks the real tokens of each row; they must form one contiguous run (right or left
padding): ALiBi distances are counted between the kept tokens.

Where the Triton kernels run, each layer is one autograd node (``fused_layer.py``: the same kernels without a graph
node, module call and argument check per op), and a padded batch is packed with one host read
(``padding_packing``). Both only cut host time; the step is host-bound at MosaicBERT-base's training batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_mod
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    ModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from ...layers.losses import classification_loss, cross_entropy
from ...layers.packing import PACKING_KWARGS, Packing, packed_documents
from ...layers.pretrained_model import HfzooPreTrainedModel
from ...ops.dispatch import resolve_backend
from ...ops.geglu import geglu
from ...ops.softmax_cross_entropy import softmax_cross_entropy
from ...ops.validate import kernel_dtype_problem, trusted
from ...ops.varlen_alibi_attention import alibi_slopes, varlen_alibi_attention_qkvpacked
from .configuration_mosaicbert import MosaicBertConfig
from .fused_layer import fused_layer

# ----------------------------------------------------------------------------------------------------
# Layers


class MosaicBertEmbeddings(nn.Module):
    """Word + token-type embeddings (no positions: ALiBi), LayerNorm, dropout. Works on packed tokens."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if token_type_ids is None:
            embeddings = inputs_embeds + self.token_type_embeddings.weight[0]
        else:
            embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


class MosaicBertSelfAttention(nn.Module):
    """Fused QKV projection + variable-length ALiBi attention on packed tokens."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout_p = config.attention_probs_dropout_prob
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden_states, cu_seqlens, max_seqlen: int, slopes) -> torch.Tensor:
        total = hidden_states.shape[0]
        qkv = self.Wqkv(hidden_states).view(total, 3, self.num_heads, self.head_dim)
        out = varlen_alibi_attention_qkvpacked(qkv, cu_seqlens, max_seqlen, slopes,
                                               dropout_p=self.dropout_p if self.training else 0.0)
        return out.reshape(total, self.num_heads * self.head_dim)


class MosaicBertSelfOutput(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class MosaicBertAttention(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.self = MosaicBertSelfAttention(config)
        self.output = MosaicBertSelfOutput(config)

    def forward(self, hidden_states, cu_seqlens, max_seqlen: int, slopes, subset_idx=None) -> torch.Tensor:
        attn = self.self(hidden_states, cu_seqlens, max_seqlen, slopes)
        if subset_idx is not None:  # last layer of MLM training: only the masked tokens go on
            attn, hidden_states = attn.index_select(0, subset_idx), hidden_states.index_select(0, subset_idx)
        return self.output(attn, hidden_states)


class MosaicBertGatedMLP(nn.Module):
    """GeGLU feed-forward with a post-LN residual: LN(x + Wo(Dropout(GELU(x Wg) * (x Wl)))).

    GELU, product and dropout run as one fused op (``hfzoo.ops.geglu``) on ``gated_layers``' output."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states) -> torch.Tensor:
        act = geglu(self.gated_layers(hidden_states), self.dropout.p if self.training else 0.0)
        return self.layernorm(self.wo(act) + hidden_states)


class MosaicBertLayer(GradientCheckpointingLayer):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.attention = MosaicBertAttention(config)
        self.mlp = MosaicBertGatedMLP(config)

    def forward(self, hidden_states, cu_seqlens, slopes, max_seqlen: int = 0, subset_idx=None,
                fused: bool | str = False) -> torch.Tensor:
        if fused:  # the Triton path as one autograd node (fused_layer.py); the encoder checked that it can run
            return fused_layer(self, hidden_states, cu_seqlens, max_seqlen, slopes, subset_idx, fused == "resln")
        return self.mlp(self.attention(hidden_states, cu_seqlens, max_seqlen, slopes, subset_idx))


_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _plain_layer(layer) -> bool:
    """Whether ``layer`` is as built: plain ``nn.Linear`` / ``nn.LayerNorm`` / ``nn.Dropout`` submodules with no hooks
    (the fused node reads their parameters directly, so a wrapped projection -- a LoRA adapter, a quantised linear
    -- or a hook on a submodule must take the module path), and no module hooks registered globally. Reads the
    module dicts directly (``nn.Module.__getattr__`` per lookup would cost more host time than the check is worth)."""
    if any(getattr(_module_mod, name, None) for name in _GLOBAL_HOOKS):
        return False
    try:
        attention = layer._modules["attention"]
        attn, out, mlp = attention._modules["self"], attention._modules["output"], layer._modules["mlp"]
        wqkv, dense, ln1, drop1 = (attn._modules["Wqkv"], out._modules["dense"], out._modules["LayerNorm"],
                                   out._modules["dropout"])
        gated, wo, ln2, drop2 = (mlp._modules["gated_layers"], mlp._modules["wo"], mlp._modules["layernorm"],
                                 mlp._modules["dropout"])
    except KeyError:
        return False
    for m, kind in ((wqkv, nn.Linear), (dense, nn.Linear), (ln1, nn.LayerNorm), (drop1, nn.Dropout),
                    (gated, nn.Linear), (wo, nn.Linear), (ln2, nn.LayerNorm), (drop2, nn.Dropout),
                    (attn, MosaicBertSelfAttention), (out, MosaicBertSelfOutput), (attention, MosaicBertAttention),
                    (mlp, MosaicBertGatedMLP)):
        if type(m) is not kind or m._forward_hooks or m._forward_pre_hooks or m._backward_hooks \
                or m._backward_pre_hooks:
            return False
    p = lambda m, name: m._parameters.get(name)   # noqa: E731
    return (p(wqkv, "bias") is not None and p(dense, "bias") is not None and p(wo, "bias") is not None
            and p(gated, "bias") is None and p(ln1, "weight") is not None and p(ln1, "bias") is not None
            and p(ln2, "weight") is not None and p(ln2, "bias") is not None)


class MosaicBertEncoder(nn.Module):
    """The layers. Where the Triton kernels run, each layer runs as one autograd node (``fused_layer.py``: same
    kernels and numerics, a fraction of the host time); ``fused_layers = False`` keeps the per-module path."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.layer = nn.ModuleList([MosaicBertLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.fused_layers = True
        self.fused_residual_ln = False   # fused layers: dropout + residual + LayerNorm as one Triton kernel each way

    def fused_path_ok(self, hidden_states: torch.Tensor) -> bool:
        """Whether the layers can run as fused nodes: the Triton backend is chosen for ``hidden_states`` (as each op
        would choose it, so forcing ``"triton"`` where it cannot run still raises), the kernels take its dtype, no
        autocast (the module path applies autocast's per-op casts), no attention dropout in training (the kernels
        have none), at least one token, and every layer as built (``_plain_layer``: no adapters, no hooks)."""
        if not self.fused_layers or hidden_states.shape[0] == 0 or hidden_states.dim() != 2:
            return False
        if torch.is_autocast_enabled(hidden_states.device.type):
            return False
        attention = self.layer[0].attention.self if len(self.layer) else None
        if attention is None or (self.training and attention.dropout_p > 0):
            return False
        head_dim = attention.head_dim
        problem = kernel_dtype_problem(hidden_states)
        if problem is None and max(16, 1 << (head_dim - 1).bit_length()) > 256:
            problem = f"head_dim {head_dim} is larger than the kernels' 256"
        if problem is not None:
            return False   # the module path's ops report a forced backend that cannot run
        if resolve_backend(hidden_states, op="MosaicBertEncoder") != "triton":
            return False
        return all(_plain_layer(layer) for layer in self.layer)

    def forward(self, hidden_states, cu_seqlens, max_seqlen: int, slopes, subset_idx=None,
                output_hidden_states: bool = False):
        all_states = [hidden_states] if output_hidden_states else None
        last = len(self.layer) - 1
        fused = self.fused_path_ok(hidden_states)
        if fused and self.fused_residual_ln:
            fused = "resln"
        if fused:
            cu_seqlens = cu_seqlens.to(device=hidden_states.device, dtype=torch.int32).contiguous()
            slopes = slopes.to(device=hidden_states.device, dtype=torch.float32).contiguous()
        for i, layer in enumerate(self.layer):
            hidden_states = layer(hidden_states, cu_seqlens, slopes, max_seqlen=max_seqlen,
                                  subset_idx=subset_idx if i == last else None, fused=fused)
            if output_hidden_states:
                all_states.append(hidden_states)
        return hidden_states, all_states


class MosaicBertPooler(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, first_token_states) -> torch.Tensor:
        return self.activation(self.dense(first_token_states))


# ----------------------------------------------------------------------------------------------------
# Packing a padded batch with one host read


_NONZERO_STATIC = [True]   # False once a device lacks torch.nonzero_static


def indices_of(flags: torch.Tensor, count: int) -> torch.Tensor:
    """``torch.nonzero(flags).flatten()`` of a 1-D bool tensor whose number of set entries (``count``) the caller
    already read: no device sync. ``nonzero_static``, or a cumulative sum and a scatter where that is missing."""
    if _NONZERO_STATIC[0]:
        try:
            return torch.nonzero_static(flags, size=count).flatten()
        except (NotImplementedError, RuntimeError):
            _NONZERO_STATIC[0] = False
    slot = torch.cumsum(flags, 0) - 1                      # where each set entry goes
    slot = torch.where(flags, slot, count)                 # the others: one spare slot past the end
    out = torch.empty(count + 1, dtype=torch.long, device=flags.device)
    out.scatter_(0, slot, torch.arange(flags.numel(), device=flags.device))
    return out[:count]


def padding_packing(attention_mask, batch: int, seqlen: int, device, labelled=None):
    """``(Packing, positions, subset_idx)`` of an ordinary padded batch (one document per row) with ONE host read.

    What needs the host -- the number of real tokens, the longest row and, with ``labelled`` (``[B, S]`` bool, the
    MLM targets), the number of labelled tokens -- is read back together in one small copy; the index lists are
    then built with their sizes known (``nonzero_static``: no further sync). ``positions``: flat ``b * S + s``
    indices of the labelled tokens; ``subset_idx``: their indices in the packed order (None without ``labelled``).
    Without a mask every token is real and only the labelled count is read (nothing without ``labels``).
    """
    if attention_mask is None:
        if seqlen == 0:
            return Packing.from_mask(torch.ones(batch, seqlen, dtype=torch.bool, device=device)), None, None
        cu = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device)
        packing = Packing(None, cu, batch, seqlen, max_seqlen=seqlen)
        if labelled is None:
            return packing, None, None
        flags = labelled.flatten()
        positions = indices_of(flags, int(flags.sum()))
        return packing, positions, positions
    mask = attention_mask.bool()
    lengths = mask.sum(1, dtype=torch.int32)
    cu = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
    parts = [cu[-1], lengths.max()]
    if labelled is not None:
        parts.append(labelled.sum(dtype=torch.int32))
    counts = torch.stack(parts).tolist()      # the one host read
    flat = mask.flatten()
    indices = indices_of(flat, counts[0])
    packing = Packing(indices, cu, batch, seqlen, max_seqlen=counts[1])
    if labelled is None:
        return packing, None, None
    flags = labelled.flatten()
    positions = indices_of(flags, counts[2])
    subset_idx = indices_of(flags.index_select(0, indices), counts[2])
    return packing, positions, subset_idx


# ----------------------------------------------------------------------------------------------------
# Models


class MosaicBertPreTrainedModel(HfzooPreTrainedModel):
    config_class = MosaicBertConfig
    base_model_prefix = "bert"
    _no_split_modules = ["MosaicBertLayer"]
    supports_gradient_checkpointing = True

    def _init_weights(self, module):
        super()._init_weights(module)  # normal(0, initializer_range) linears/embeddings, unit LayerNorms


@dataclass
class MosaicBertEncoderOutput(ModelOutput):
    """Packed output of ``MosaicBertModel.encode``.

    hidden: ``[total, hidden]`` real tokens row-major, or ``[n_subset, hidden]`` with ``subset_mask``.
    pooled: ``[B, hidden]`` pooler output of each row's first real token (None without a pooler).
    """

    hidden: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    unpadded: Packing | None = None


class MosaicBertModel(MosaicBertPreTrainedModel):
    """The MosaicBERT encoder. ``forward`` takes and returns padded ``[B, S]`` batches like ``BertModel``."""

    def __init__(self, config: MosaicBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = MosaicBertEmbeddings(config)
        self.encoder = MosaicBertEncoder(config)
        self.pooler = MosaicBertPooler(config) if add_pooling_layer else None
        self._slopes = alibi_slopes(config.num_attention_heads)
        self._slopes_cache: dict = {}
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def alibi_slopes(self, device) -> torch.Tensor:
        """``[H]`` fp32 ALiBi slopes on ``device`` (computed from the head count, not stored)."""
        key = str(device)
        if key not in self._slopes_cache:
            self._slopes_cache[key] = torch.tensor(self._slopes, dtype=torch.float32, device=device)
        return self._slopes_cache[key]

    def _check_inputs(self, input_ids, inputs_embeds, attention_mask, token_type_ids):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("MosaicBertModel: pass exactly one of input_ids and inputs_embeds")
        shape = tuple(input_ids.shape if input_ids is not None else inputs_embeds.shape[:2])
        if len(shape) != 2:
            raise ValueError(f"MosaicBertModel: input_ids must be [batch, seq_len]; got shape {shape}")
        if shape[0] == 0:
            raise ValueError("MosaicBertModel: empty batch (batch size 0)")
        if attention_mask is not None and tuple(attention_mask.shape) != shape:
            raise ValueError(f"MosaicBertModel: attention_mask must have shape {shape}; got "
                             f"{tuple(attention_mask.shape)}")
        if token_type_ids is not None and tuple(token_type_ids.shape) != shape:
            raise ValueError(f"MosaicBertModel: token_type_ids must have shape {shape}; got "
                             f"{tuple(token_type_ids.shape)}")
        return shape

    def find_packing(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                cu_seqlens=None, kwargs: dict | None = None) -> Packing | None:
        """The documents of a packed batch (``cu_seqlens``/``cu_seq_lens_q``, or ``position_ids`` restarting
        at each document, as ``DataCollatorWithFlattening`` makes them); None for an ordinary batch."""
        ids = input_ids if input_ids is not None else inputs_embeds
        if (input_ids is None) == (inputs_embeds is None) or ids.dim() < 2:
            return None   # encode() reports the bad input
        if cu_seqlens is None and position_ids is None and not any(k in (kwargs or {}) for k in PACKING_KWARGS):
            return None   # an ordinary batch (and no host read of the mask to rule packing out)
        B, S = ids.shape[:2]
        return packed_documents(B, S, cu_seqlens=cu_seqlens, position_ids=position_ids,
                                attention_mask=attention_mask, kwargs=kwargs)

    def encode(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
               subset_mask=None, output_hidden_states: bool = False,
               packing: Packing | None = None, subset_idx: torch.Tensor | None = None) -> MosaicBertEncoderOutput:
        """Run the encoder on packed tokens and return packed states (the heads build on this).

        ``subset_mask`` (``[B, S]`` bool): the last layer computes its attention output and feed-forward
        only for these tokens (MLM training: the masked ones), and ``hidden`` holds only them.
        A row with no real token (all padding) gets a zero pooled output. With ``packing`` (several documents
        per row), attention stays inside each document and ``pooled`` has one row per document. ``subset_idx``:
        the packed indices of ``subset_mask``'s tokens when the caller has them (``padding_packing``).
        """
        B, S = self._check_inputs(input_ids, inputs_embeds, attention_mask, token_type_ids)
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        if packing is not None:
            unpadded = packing
        else:
            unpadded = padding_packing(attention_mask, B, S, device)[0]
        limit = self.config.max_sequence_length
        if limit is not None and unpadded.max_seqlen > limit:
            raise ValueError(f"MosaicBertModel: a sequence has {unpadded.max_seqlen} tokens, more than "
                             f"config.max_sequence_length={limit}")
        # Unpad once, before the embeddings: only real tokens are embedded and encoded.
        hidden = self.embeddings(
            input_ids=unpadded.pack(input_ids) if input_ids is not None else None,
            token_type_ids=unpadded.pack(token_type_ids) if token_type_ids is not None else None,
            inputs_embeds=unpadded.pack(inputs_embeds) if inputs_embeds is not None else None)
        if subset_mask is not None and subset_idx is None:
            subset_idx = torch.nonzero(unpadded.pack(subset_mask), as_tuple=False).flatten()
        given_subset = subset_idx
        if output_hidden_states:  # every layer runs on every token; the subset is selected afterwards
            subset_idx = None
        # Packing built these offsets (or checked the caller's): the attention op need not read them back (a sync)
        with trusted():
            hidden, states = self.encoder(hidden, unpadded.cu_seqlens, unpadded.max_seqlen,
                                          self.alibi_slopes(hidden.device), subset_idx, output_hidden_states)
        if subset_mask is not None and subset_idx is None:  # hidden states were asked for: select afterwards
            hidden = hidden.index_select(0, given_subset)
        pooled = None
        if self.pooler is not None and subset_mask is None:
            lengths = unpadded.cu_seqlens.diff()
            first = unpadded.cu_seqlens[:-1].clamp(max=max(hidden.shape[0] - 1, 0)).long()
            if hidden.shape[0] > 0:
                firsts = hidden.index_select(0, first)
            else:
                firsts = hidden.new_zeros(lengths.numel(), hidden.shape[-1])
            firsts = firsts * (lengths > 0).to(firsts.dtype)[:, None]
            pooled = self.pooler(firsts)
        padded_states = tuple(unpadded.unpack(s) for s in states) if states is not None else None
        return MosaicBertEncoderOutput(hidden=hidden, pooled=pooled, hidden_states=padded_states, unpadded=unpadded)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states=None, output_attentions=None, return_dict=None,
                cu_seqlens=None, **kwargs) -> BaseModelOutputWithPooling:
        """Like ``BertModel.forward``. Positions come from ALiBi: ``position_ids`` matter only when they restart
        (packed documents, as do ``cu_seqlens``); attention weights are never materialized, so ``attentions``
        is always None. Padding positions of ``last_hidden_state`` are 0."""
        packing = self.find_packing(input_ids, inputs_embeds, attention_mask, position_ids, cu_seqlens, kwargs)
        out = self.encode(input_ids, attention_mask, token_type_ids, inputs_embeds,
                          output_hidden_states=bool(output_hidden_states), packing=packing)
        result = BaseModelOutputWithPooling(last_hidden_state=out.unpadded.unpack(out.hidden),
                                            pooler_output=out.pooled, hidden_states=out.hidden_states)
        return result if return_dict is not False else result.to_tuple()


class MosaicBertPredictionHeadTransform(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class MosaicBertLMPredictionHead(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.transform = MosaicBertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)  # weight tied to the word embeddings

    def forward(self, hidden_states) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class MosaicBertOnlyMLMHead(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.predictions = MosaicBertLMPredictionHead(config)

    def forward(self, sequence_output) -> torch.Tensor:
        return self.predictions(sequence_output)


@dataclass
class MosaicBertMaskedLMOutput(ModelOutput):
    """MLM output.

    loss: mean cross-entropy over the labelled tokens (``labels != -100``); 0 when none is labelled; with
        ``num_items_in_batch`` (Trainer gradient accumulation) the sum divided by it.
    logits: without ``labels``, ``[B, S, vocab]`` (zeros at padding). With ``labels``, only the labelled
        tokens' ``[n_labelled, vocab]`` in row-major order (``masked_positions`` says where), unless
        ``return_full_logits=True`` scatters them into a zero ``[B, S, vocab]`` tensor.
    masked_positions: ``[n_labelled]`` flat indices ``b * S + s`` of the rows of ``logits`` (with labels).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    masked_positions: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class MosaicBertForMaskedLM(MosaicBertPreTrainedModel):
    """MosaicBERT with the BERT MLM head; the decoder weight is tied to the word embeddings.

    With ``labels``, logits are computed only for labelled tokens (``labels != -100``) and the last
    layer's feed-forward runs only on them. MosaicML's own ``BertForMaskedLM`` selected ``labels > 0``
    instead; with the usual collator (``-100`` for unmasked tokens) the two agree except that id 0
    (``[PAD]`` in BERT vocabularies) could never be a target there. Converted checkpoints behave the
    same under either rule for real data.
    """

    _tied_weights_keys = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}

    def __init__(self, config: MosaicBertConfig):
        super().__init__(config)
        self.bert = MosaicBertModel(config, add_pooling_layer=False)
        self.cls = MosaicBertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None, output_attentions=None,
                return_dict=None, return_full_logits: bool = False, num_items_in_batch=None, cu_seqlens=None,
                **kwargs) -> MosaicBertMaskedLMOutput:
        packing = self.bert.find_packing(input_ids, inputs_embeds, attention_mask, position_ids, cu_seqlens, kwargs)
        masked = positions = None
        if labels is not None:
            shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
            if labels.shape != shape:
                raise ValueError(f"MosaicBertForMaskedLM: labels must have shape {tuple(shape)}; "
                                 f"got {tuple(labels.shape)}")
            masked = labels != -100
            if attention_mask is not None:
                masked = masked & attention_mask.bool()
        subset_idx = None
        if labels is not None and packing is None:
            # one host read before the encoder: the packing, the labelled positions and their packed indices
            packing, positions, subset_idx = padding_packing(attention_mask, *masked.shape, masked.device, masked)
        elif labels is not None:
            positions = torch.nonzero(masked.flatten(), as_tuple=False).flatten()
        out = self.bert.encode(input_ids, attention_mask, token_type_ids, inputs_embeds, subset_mask=masked,
                               output_hidden_states=bool(output_hidden_states), packing=packing,
                               subset_idx=subset_idx)
        logits = self.cls(out.hidden)
        loss = None
        if labels is not None:
            targets = labels.flatten().index_select(0, positions)
            loss = _mlm_loss(logits, targets, num_items_in_batch, count=positions.numel())
            if return_full_logits:
                B, S = masked.shape
                full = logits.new_zeros(B * S, logits.shape[-1]).index_copy(0, positions, logits)
                logits = full.view(B, S, -1)
        else:
            logits = out.unpadded.unpack(logits)
        result = MosaicBertMaskedLMOutput(loss=loss, logits=logits, masked_positions=positions,
                                          hidden_states=out.hidden_states)
        return result if return_dict is not False else result.to_tuple()


def _mlm_loss(logits, targets, num_items_in_batch=None, count: int | None = None) -> torch.Tensor:
    """``layers.losses.cross_entropy``'s reduction (mean over labelled tokens, or sum / ``num_items_in_batch``) over
    ``softmax_cross_entropy``: fp32 math on the bf16 logits, no fp32 copy of ``[n_labelled, vocab]``. ``count``:
    how many targets are labelled, when the caller knows (every target is: no count on the device)."""
    total = softmax_cross_entropy(logits, targets.to(logits.device)).sum()
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    if count is not None:
        return total / max(count, 1)
    return total / (targets != -100).sum().clamp_min(1)


def _classifier_head(config: MosaicBertConfig):
    """Dropout (classifier_dropout, else hidden_dropout_prob) and the linear classifier of the task heads."""
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(p), nn.Linear(config.hidden_size, config.num_labels)


class MosaicBertForSequenceClassification(MosaicBertPreTrainedModel):
    """Pooler (first real token of each row) -> dropout -> linear classifier, as MosaicML's."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = MosaicBertModel(config)
        self.dropout, self.classifier = _classifier_head(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None, output_attentions=None,
                return_dict=None, num_items_in_batch=None, cu_seqlens=None, **kwargs) -> SequenceClassifierOutput:
        if self.bert.find_packing(input_ids, inputs_embeds, attention_mask, position_ids, cu_seqlens, kwargs) is not None:
            raise ValueError("MosaicBertForSequenceClassification classifies whole rows; pass one sequence per row "
                             "(padding, not packed documents)")
        out = self.bert.encode(input_ids, attention_mask, token_type_ids, inputs_embeds,
                               output_hidden_states=bool(output_hidden_states))
        logits = self.classifier(self.dropout(out.pooled))
        loss = (classification_loss(self.config, logits, labels, num_items_in_batch) if labels is not None
                else None)
        result = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return result if return_dict is not False else result.to_tuple()


class MosaicBertForTokenClassification(MosaicBertPreTrainedModel):
    """Dropout -> linear classifier on every real token; padding positions get zero logits."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = MosaicBertModel(config, add_pooling_layer=False)
        self.dropout, self.classifier = _classifier_head(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None, output_attentions=None,
                return_dict=None, num_items_in_batch=None, cu_seqlens=None, **kwargs) -> TokenClassifierOutput:
        packing = self.bert.find_packing(input_ids, inputs_embeds, attention_mask, position_ids, cu_seqlens, kwargs)
        out = self.bert.encode(input_ids, attention_mask, token_type_ids, inputs_embeds,
                               output_hidden_states=bool(output_hidden_states), packing=packing)
        packed_logits = self.classifier(self.dropout(out.hidden))
        loss = None
        if labels is not None:
            targets = out.unpadded.pack(labels)  # padding never counts
            loss = cross_entropy(packed_logits, targets, num_items_in_batch)
        result = TokenClassifierOutput(loss=loss, logits=out.unpadded.unpack(packed_logits),
                                       hidden_states=out.hidden_states)
        return result if return_dict is not False else result.to_tuple()


__all__ = [
    "MosaicBertPreTrainedModel",
    "MosaicBertModel",
    "MosaicBertForMaskedLM",
    "MosaicBertForSequenceClassification",
    "MosaicBertForTokenClassification",
]
