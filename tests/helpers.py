"""Shared test utilities."""

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative RMS error ||out - ref|| / ||ref||, computed in fp64."""
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def pad_batch(seqs, side: str = "left"):
    """The 1-D token tensors ``seqs`` as one zero-padded ``[B, T]`` batch (padding on ``side``) and its 0/1 mask."""
    T = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), T, dtype=torch.long, device=seqs[0].device)
    mask = torch.zeros_like(x)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        x[i, sl], mask[i, sl] = s, 1
    return x, mask


def assert_padded_batch_matches_each_sequence(model, seqs, side: str):
    """A causal LM's logits on a padded batch equal, at the real tokens, each sequence's logits alone."""
    x, mask = pad_batch(seqs, side)
    with torch.no_grad():
        batched = model(x, attention_mask=mask).logits
        for i, s in enumerate(seqs):
            single = model(s[None]).logits[0]
            assert rel_err(batched[i][mask[i].bool()], single) < 1e-5, (i, side)


def assert_left_padded_generate_matches(model, seqs, max_new_tokens):
    """Greedy generate on a left-padded batch gives each sequence's own continuation."""
    x, mask = pad_batch(seqs, "left")
    T = x.shape[1]
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    batched = model.generate(x, attention_mask=mask, **kw)
    for i, s in enumerate(seqs):
        single = model.generate(s[None], attention_mask=torch.ones_like(s)[None], **kw)
        assert batched[i, T:].tolist() == single[0, len(s):].tolist(), i


def assert_token_by_token_decoding_matches(model, x, prefix: int):
    """A causal LM fed ``x[:, :prefix]`` and then one token at a time through its cache gives the logits of one
    full forward; returns the final cache (which has seen every token)."""
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :prefix], use_cache=True)
        logits = [out.logits]
        for t in range(prefix, x.shape[1]):
            out = model(x[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            logits.append(out.logits)
    assert out.past_key_values.get_seq_length() == x.shape[1]
    assert rel_err(torch.cat(logits, 1), full) < 1e-5
    return out.past_key_values
