"""Train the tiny GLA language model shipped in hfzoo/checkpoints/tiny-gla (CPU, a few minutes).

Data: the Python language reference that ships with CPython (``pydoc_data.topics``, 79 topics). Topics are
split by name into train and held-out sets (every 8th topic in sorted order is held out), a byte-level BPE
tokenizer is trained on the training topics with ``tokenizers``, and a ~1M-parameter GLA is trained on
128-token blocks. The held-out loss and perplexity are written to ``training_results.json`` beside the weights.

    python scripts/train_tiny_gla.py --minutes 6 --output hfzoo/checkpoints/tiny-gla
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

import torch
from pydoc_corpus import evaluate, split_topics, to_blocks
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from hfzoo.hub.atomic import save_pretrained_atomic
from hfzoo.models.gla import GLAConfig, GLAForCausalLM

SPECIALS = ["<pad>", "<s>", "</s>"]   # ids 0, 1, 2


def train_tokenizer(texts, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   model_max_length=4096)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="hfzoo/checkpoints/tiny-gla")
    p.add_argument("--minutes", type=float, default=6.0, help="training time budget")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps (if before the time budget)")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)

    train_texts, held_texts, held_names = split_topics()
    tokenizer = train_tokenizer(train_texts, args.vocab_size)
    train_blocks = to_blocks(tokenizer, train_texts, args.block)
    held_blocks = to_blocks(tokenizer, held_texts, args.block)
    print(f"train {tuple(train_blocks.shape)} blocks, held-out {tuple(held_blocks.shape)} "
          f"({len(held_names)} topics)", flush=True)

    config = GLAConfig(vocab_size=len(tokenizer), hidden_size=128, expand_k=0.5, expand_v=1.0, num_heads=2,
                       num_hidden_layers=4, intermediate_size=256, use_short_conv=True, conv_size=4,
                       tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       max_position_embeddings=1024)
    model = GLAForCausalLM(config).train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    budget = args.minutes * 60
    start = time.time()
    step, losses, warmup = 0, [], 10
    initial = evaluate(model, held_blocks, 32)
    max_steps = args.steps or float("inf")
    while time.time() - start < budget and step < max_steps:
        frac = min(1.0, max((time.time() - start) / budget, step / max_steps))
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(train_blocks), (args.batch,))
        x = train_blocks[idx]
        loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step += 1
        if step % 10 == 0:
            print(f"step {step} loss {sum(losses[-10:]) / 10:.3f} lr {lr:.2e} "
                  f"{time.time() - start:.0f}s", flush=True)
    minutes = (time.time() - start) / 60
    held_loss = evaluate(model, held_blocks, 32)

    results = {
        "parameters": n_params, "steps": step, "batch": args.batch, "block": args.block,
        "tokens_seen": step * args.batch * args.block, "minutes": round(minutes, 2),
        "train_loss_last10": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
        "heldout_loss_initial": round(initial, 4), "heldout_loss": round(held_loss, 4),
        "heldout_perplexity": round(math.exp(held_loss), 2), "heldout_topics": held_names,
        "vocab_size": len(tokenizer), "device": "cpu", "threads": args.threads, "torch": torch.__version__,
    }
    print(json.dumps(results, indent=1), flush=True)

    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id, do_sample=True, temperature=0.8,
                                               top_p=0.9, max_new_tokens=64)
    save_pretrained_atomic(args.output, model, tokenizer, overwrite=True, standalone=False,
                           files={"training_results.json": json.dumps(results, indent=1) + "\n"})
    print(f"saved to {args.output}")


if __name__ == "__main__":
    main()
