"""An independent, padded, layer-by-layer MosaicBERT forward written from the published formulas.

It reads a state dict in MosaicML's ``bert_layers.py`` naming and never imports hfzoo: the tests use it
as the oracle for the unpadded model and for converted checkpoints. Padding is handled the way the
original does it: an additive bias of ALiBi plus a large negative number on padded keys, per layer.
"""

import math

import torch
import torch.nn.functional as F


def published_slopes(n):
    """ALiBi slopes: 2^(-8 i / n), i = 1..n for a power of two; otherwise the nearest lower power of two's
    slopes followed by the odd-indexed (1st, 3rd, ...) slopes of twice that power."""
    if n & (n - 1) == 0:
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]
    m = 2 ** int(math.floor(math.log2(n)))
    return published_slopes(m) + published_slopes(2 * m)[0::2][: n - m]


def padded_forward(sd, cfg, input_ids, attention_mask, token_type_ids=None):
    """Returns ``(sequence_output [B, S, h], mlm_logits [B, S, V] or None)`` in fp64."""
    sd = {k: v.double() for k, v in sd.items()}
    h, H, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg.get("layer_norm_eps", 1e-12)
    D, inter = h // H, cfg["intermediate_size"]
    B, S = input_ids.shape
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)

    def ln(x, name):
        return F.layer_norm(x, (h,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

    def lin(x, name, bias=True):
        return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"] if bias else None)

    x = sd["bert.embeddings.word_embeddings.weight"][input_ids] + \
        sd["bert.embeddings.token_type_embeddings.weight"][token_type_ids]
    x = ln(x, "bert.embeddings.LayerNorm")
    pos = torch.arange(S)
    slopes = torch.tensor(published_slopes(H), dtype=torch.float64)
    alibi = -slopes[:, None, None] * (pos[None, :, None] - pos[None, None, :]).abs()       # [H, S, S]
    bias = alibi[None] + (1.0 - attention_mask.double())[:, None, None, :] * -10000.0      # [B, H, S, S]
    for i in range(cfg["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}"
        q, k, v = lin(x, f"{p}.attention.self.Wqkv").view(B, S, 3, H, D).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D) + bias
        ctx = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(B, S, h)
        a = ln(lin(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        g = F.linear(a, sd[f"{p}.mlp.gated_layers.weight"])
        y = lin(F.gelu(g[..., :inter]) * g[..., inter:], f"{p}.mlp.wo")
        x = ln(y + a, f"{p}.mlp.layernorm")
    logits = None
    if "cls.predictions.transform.dense.weight" in sd:
        t = F.gelu(lin(x, "cls.predictions.transform.dense"))
        t = ln(t, "cls.predictions.transform.LayerNorm")
        dec_w = sd.get("cls.predictions.decoder.weight", sd["bert.embeddings.word_embeddings.weight"])
        logits = F.linear(t, dec_w, sd["cls.predictions.decoder.bias"])
    return x, logits
