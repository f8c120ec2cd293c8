"""The text corpus of the tiny language models: the Python language reference that ships with CPython
(``pydoc_data.topics``), split by topic name, cut into token blocks, and the held-out loss on such blocks.

Used by ``train_tiny_gla.py``, ``train_tiny_mom.py`` and ``benchmarks/peft_pissa_vs_lora.py`` (which put this
folder on ``sys.path``).
"""

from __future__ import annotations

from pydoc_data.topics import topics

import torch


def split_topics(every: int = 8):
    """``(train texts, held-out texts, held-out names)``: every ``every``-th topic in sorted order is held out."""
    names = sorted(topics)
    held = names[::every]
    train = [n for n in names if n not in held]
    return [topics[n] for n in train], [topics[n] for n in held], held


def to_blocks(tokenizer, texts, block: int) -> torch.Tensor:
    """The texts as one stream (each wrapped in BOS ... EOS) cut into ``[n, block]`` token blocks; the tail
    that does not fill a block is dropped."""
    ids = []
    for text in texts:
        ids += [tokenizer.bos_token_id] + tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    n = len(ids) // block
    return torch.tensor(ids[: n * block]).view(n, block)


@torch.no_grad()
def evaluate(model, blocks, batch: int) -> float:
    """Next-token cross-entropy per predicted token over ``blocks`` (in batches of ``batch``); leaves the model
    in training mode."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch):
        x = blocks[i:i + batch]
        logits = model(x).logits[:, :-1]
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                   reduction="sum").item()
        count += x[:, 1:].numel()
    model.train()
    return total / count
