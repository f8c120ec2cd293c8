"""Train the tiny MosaicBERT shipped in hfzoo/checkpoints/tiny-mosaicbert (CPU, a few minutes).

Data: the Python language reference that ships with CPython (``pydoc_data.topics``, 79 topics). Every 8th
topic (sorted by name) is held out. A lowercasing WordPiece tokenizer (BERT's normalizer, pre-tokenizer
and [CLS]/[SEP] template) is trained on the training topics with ``tokenizers`` and saved as
``BertTokenizerFast`` files. Training chunks have random lengths 24..94 tokens (so every batch is
padded and exercises the unpadded path); 30% of the tokens are masked (MosaicBERT's rate; of those 80%
become [MASK], 10% a random token, 10% stay). AdamW, betas (0.9, 0.98), linear warmup and decay.
Held-out masked-token loss and accuracy go to ``training_results.json`` beside the weights.

    python scripts/train_tiny_mosaicbert.py --steps 500 --output hfzoo/checkpoints/tiny-mosaicbert
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pydoc_data.topics import topics

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast

from hfzoo.hub.atomic import save_pretrained_atomic
from hfzoo.models.mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4


def split_topics(every: int = 8):
    names = sorted(topics)
    held = names[::every]
    return [topics[n] for n in names if n not in held], [topics[n] for n in held], held


def train_tokenizer(texts, vocab_size: int) -> BertTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", model_max_length=512)


def chunk(tokenizer, texts, rng: random.Random, lo: int = 24, hi: int = 126) -> list[list[int]]:
    """Token ids of each text cut into pieces of random length, each wrapped as [CLS] ... [SEP]."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        i = 0
        while i < len(ids):
            n = rng.randint(lo, hi)
            piece = ids[i:i + n]
            if len(piece) >= 8:
                out.append([tokenizer.cls_token_id] + piece + [tokenizer.sep_token_id])
            i += n
    return out


def collate(seqs, tokenizer, gen: torch.Generator, mask_rate: float = 0.3):
    S = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), S), tokenizer.pad_token_id)
    attn = torch.zeros(len(seqs), S, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s)
        attn[b, :len(s)] = 1
    special = (ids == tokenizer.cls_token_id) | (ids == tokenizer.sep_token_id) | (attn == 0)
    chosen = (torch.rand(ids.shape, generator=gen) < mask_rate) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=gen)
    inputs = ids.clone()
    inputs[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    rand = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[rand] = torch.randint(len(SPECIALS), len(tokenizer), (int(rand.sum()),), generator=gen)
    return {"input_ids": inputs, "attention_mask": attn, "labels": labels}


@torch.no_grad()
def evaluate(model, batches) -> tuple[float, float]:
    model.eval()
    loss_sum = correct = count = 0.0
    for batch in batches:
        out = model(**batch)
        n = out.logits.shape[0]
        targets = batch["labels"].flatten()[out.masked_positions]
        loss_sum += out.loss.item() * n
        correct += (out.logits.argmax(-1) == targets).sum().item()
        count += n
    model.train()
    return loss_sum / count, correct / count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default="hfzoo/checkpoints/tiny-mosaicbert")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--vocab", type=int, default=3072)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-chunk", type=int, default=94, help="longest training chunk (tokens, before [CLS]/[SEP])")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = random.Random(args.seed)
    train_texts, held_texts, held_names = split_topics()
    tokenizer = train_tokenizer(train_texts, args.vocab)
    train_seqs = chunk(tokenizer, train_texts, rng, hi=args.max_chunk)
    held_seqs = chunk(tokenizer, held_texts, random.Random(1))
    eval_gen = torch.Generator().manual_seed(123)
    eval_batches = [collate(held_seqs[i:i + 64], tokenizer, eval_gen) for i in range(0, len(held_seqs), 64)]
    print(f"vocab {len(tokenizer)}, {len(train_seqs)} training chunks, {len(held_seqs)} held-out chunks")

    config = MosaicBertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                              intermediate_size=256, hidden_dropout_prob=0.1, alibi_starting_size=128,
                              max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    model = MosaicBertForMaskedLM(config).train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (args.steps - s) / (args.steps - warmup))))
    gen = torch.Generator().manual_seed(args.seed)
    init_loss, init_acc = evaluate(model, eval_batches)
    t0, order, pos, recent = time.time(), list(range(len(train_seqs))), len(train_seqs), []
    for step in range(args.steps):
        if pos + args.batch > len(order):
            rng.shuffle(order)
            pos = 0
        batch = collate([train_seqs[i] for i in order[pos:pos + args.batch]], tokenizer, gen)
        pos += args.batch
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent.append(loss.item())
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: train loss {sum(recent) / len(recent):.3f} ({time.time() - t0:.0f} s)",
                  flush=True)
            recent = []
    eval_loss, eval_acc = evaluate(model, eval_batches)
    minutes = (time.time() - t0) / 60
    results = {
        "data": "pydoc_data.topics (CPython); every 8th topic held out: " + ", ".join(held_names),
        "tokenizer": f"WordPiece, {len(tokenizer)} tokens, lowercase",
        "parameters": n_params, "steps": args.steps, "batch": args.batch, "mask_rate": 0.3,
        "chunk_lengths": f"24-{args.max_chunk} tokens + [CLS]/[SEP] (held out: 24-126)",
        "heldout_masked_loss": round(eval_loss, 4), "heldout_masked_accuracy": round(eval_acc, 4),
        "heldout_masked_loss_untrained": round(init_loss, 4), "heldout_masked_accuracy_untrained": round(init_acc, 4),
        "train_minutes_cpu": round(minutes, 2), "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(results, indent=1))
    save_pretrained_atomic(args.output, model, tokenizer, overwrite=True, standalone=False,
                           files={"training_results.json": json.dumps(results, indent=1) + "\n"})
    print(f"saved to {args.output}")


if __name__ == "__main__":
    main()
