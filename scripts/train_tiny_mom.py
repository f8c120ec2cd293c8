"""Train the tiny Mixture-of-Memories language model shipped in hfzoo/checkpoints/tiny-mom (CPU, minutes).

Data and tokenizer are those of the tiny GLA: the Python language reference that ships with CPython
(``pydoc_data.topics``), every 8th topic in sorted order held out, and the byte-level BPE tokenizer saved in
``hfzoo/checkpoints/tiny-gla`` (reused, not retrained, so the two tiny models read the same tokens). The model:
2 layers of width 128, 4 GLA memories per layer with top-2 routing plus a shared memory, tied embeddings
(about 0.68M parameters, under 3 MB in fp32). Held-out loss/perplexity go to ``training_results.json``.

    python scripts/train_tiny_mom.py --minutes 10 --output hfzoo/checkpoints/tiny-mom
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

import torch
from pydoc_corpus import evaluate, split_topics, to_blocks
from transformers import GenerationConfig, PreTrainedTokenizerFast

from hfzoo.hub.atomic import save_pretrained_atomic
from hfzoo.models.mom import MoMConfig, MoMForCausalLM
from hfzoo.ops.dispatch import use_backend
from hfzoo.registry import checkpoint_path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="hfzoo/checkpoints/tiny-mom")
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps (if before the time budget)")
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)

    tokenizer = PreTrainedTokenizerFast.from_pretrained(checkpoint_path("tiny-gla"))
    train_texts, held_texts, held_names = split_topics()
    train_blocks = to_blocks(tokenizer, train_texts, args.block)
    held_blocks = to_blocks(tokenizer, held_texts, args.block)
    print(f"train {tuple(train_blocks.shape)} blocks, held-out {tuple(held_blocks.shape)} "
          f"({len(held_names)} topics)", flush=True)

    config = MoMConfig(vocab_size=len(tokenizer), hidden_size=128, expand_k=0.5, expand_v=1.0, num_heads=2,
                       num_hidden_layers=2, intermediate_size=256, num_memories=4, topk=2, shared_mem=True,
                       tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       max_position_embeddings=1024)
    model = MoMForCausalLM(config).train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    budget = args.minutes * 60
    start = time.time()
    step, losses, auxes, warmup = 0, [], [], 10
    with use_backend("reference"):   # the fastest CPU path
        initial = evaluate(model, held_blocks, 32)
        max_steps = args.steps or float("inf")
        while time.time() - start < budget and step < max_steps:
            frac = min(1.0, max((time.time() - start) / budget, step / max_steps))
            lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            for group in opt.param_groups:
                group["lr"] = lr
            x = train_blocks[torch.randint(0, len(train_blocks), (args.batch,))]
            out = model(x, labels=x)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(out.loss.item() - out.aux_loss.item())
            auxes.append(out.aux_loss.item())
            step += 1
            if step % 10 == 0:
                print(f"step {step} lm loss {sum(losses[-10:]) / 10:.3f} aux {sum(auxes[-10:]) / 10:.4f} "
                      f"lr {lr:.2e} {time.time() - start:.0f}s", flush=True)
        minutes = (time.time() - start) / 60
        held_loss = evaluate(model, held_blocks, 32)

    results = {
        "parameters": n_params, "steps": step, "batch": args.batch, "block": args.block,
        "tokens_seen": step * args.batch * args.block, "minutes": round(minutes, 2),
        "train_loss_last10": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
        "aux_loss_last10": round(sum(auxes[-10:]) / max(1, len(auxes[-10:])), 5),
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
