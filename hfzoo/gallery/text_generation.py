"""What the text-generation tabs (GLA, MoM) share: the caps on a visitor's prompt and request, and the prompt ids."""

from __future__ import annotations

import torch

MAX_PROMPT_TOKENS = 256     # longer prompts keep their last tokens
MAX_NEW_TOKENS = 200


def generation_kwargs(temperature: float, top_p: float, max_new_tokens: int) -> dict:
    """``generate()`` arguments: greedy at temperature 0, else sampling with ``top_p`` kept in [0.05, 1];
    ``max_new_tokens`` clamped to [1, MAX_NEW_TOKENS]."""
    max_new_tokens = int(min(max(1, max_new_tokens), MAX_NEW_TOKENS))
    if temperature <= 0:
        return {"do_sample": False, "max_new_tokens": max_new_tokens}
    return {"do_sample": True, "temperature": float(temperature), "top_p": float(min(max(top_p, 0.05), 1.0)),
            "max_new_tokens": max_new_tokens}


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """``[1, n]`` ids: BOS, then the prompt's last ``MAX_PROMPT_TOKENS`` tokens."""
    ids = tokenizer(prompt or "", return_tensors="pt")["input_ids"][:, -MAX_PROMPT_TOKENS:]
    return torch.cat([torch.tensor([[tokenizer.bos_token_id]]), ids], dim=1)
