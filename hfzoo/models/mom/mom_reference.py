"""The MoM layer as a plain per-token loop: the readable definition, and the oracle of the tests.

Nothing here is fast or packed: every token of every row is visited in time order, routed, and each chosen
memory's state is decayed and written right there. The layer in ``modeling_mom.py`` must agree with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mom_layer_reference(layer, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Output of ``layer`` (a ``MixtureOfMemories`` with GLA memories) on ``hidden_states`` ``[B, T, d]``.

    ``attention_mask`` ``[B, T]``: tokens where it is 0 are skipped (they touch no state; their output is 0
    before the output norm). ``document_ids`` ``[B, T]``: every memory starts from zero where the document
    changes along a row (packed documents)."""
    B, T, _ = hidden_states.shape
    M, shared = layer.num_memories, layer.shared_mem
    H, Hkv, K, V = layer.num_heads, layer.num_kv_heads, layer.head_k_dim, layer.head_v_dim
    group, scale = H // Hkv, K ** -0.5

    def projections(m):
        if layer.single_kv_proj or m == M:
            return layer.shared_k, layer.shared_v, layer.shared_gk
        return layer.k_proj[m], layer.v_proj[m], layer.gk_proj[m]

    out = torch.zeros(B, T, H, V, dtype=torch.float32, device=hidden_states.device)
    for b in range(B):
        states = None
        previous_document = None
        for t in range(T):
            if attention_mask is not None and not bool(attention_mask[b, t]):
                continue
            document = None if document_ids is None else int(document_ids[b, t])
            if states is None or document != previous_document:
                states = [torch.zeros(Hkv, K, V, device=hidden_states.device) for _ in range(M + int(shared))]
                previous_document = document
            x = hidden_states[b, t]
            probs = torch.softmax(layer.gate.weight.float() @ x.float(), -1)
            top_w, top_m = probs.topk(layer.topk)
            chosen = [(int(m), w / top_w.sum()) for m, w in zip(top_m, top_w)]
            if shared:
                chosen.append((M, torch.ones((), device=x.device)))
            q = layer.q_proj(x).float().view(Hkv, group, K)
            o = torch.zeros(Hkv, group, V, device=x.device)
            for m, w in chosen:
                k_proj, v_proj, gk_proj = projections(m)
                k = k_proj(x).float().view(Hkv, K)
                v = v_proj(x).float().view(Hkv, V)
                g = F.logsigmoid(gk_proj(x).float()) / layer.gate_logit_normalizer
                if layer.clamp_min is not None:
                    g = g.clamp_min(layer.clamp_min)
                states[m] = states[m] * g.view(Hkv, K).exp()[..., None] + k[..., None] * v[:, None, :]
                o = o + w * scale * torch.einsum("hgk,hkv->hgv", q, states[m])
            out[b, t] = o.reshape(H, V)

    o = out.to(hidden_states.dtype)
    if layer.use_output_gate:
        g = layer.g_proj(hidden_states).view(B, T, H, V)
        o = layer.g_norm_swish_gate(o, g)
    else:
        o = layer.g_norm(o)
    return layer.o_proj(o.reshape(B, T, -1))


def load_balancing_reference(layer, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Per batch row, ``M * sum_m f_m P_m`` over its real tokens, written out with loops (fractions of tokens
    routed to each memory and mean router probabilities); ``[B]``."""
    M = layer.num_memories
    out = []
    for b in range(hidden_states.shape[0]):
        tokens = [hidden_states[b, t] for t in range(hidden_states.shape[1])
                  if attention_mask is None or bool(attention_mask[b, t])]
        counts, prob_sum = [0.0] * M, torch.zeros(M)
        for x in tokens:
            probs = torch.softmax(layer.gate.weight.float() @ x.float(), -1)
            prob_sum = prob_sum + probs
            for m in probs.topk(layer.topk).indices.tolist():
                counts[m] += 1
        n = max(len(tokens), 1)
        out.append(M * sum(counts[m] / n * prob_sum[m] / n for m in range(M)))
    return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in out])
