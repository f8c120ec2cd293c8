"""Multi-query associative recall (MQAR): tiny GLA vs tiny MoM with the same per-memory state, on the CPU.

Each sequence first lists D key-value pairs, then asks for every key again in a random order and the model must
answer with its value:

    k1 v1 k2 v2 ... kD vD | q1 v(q1) q2 v(q2) ... qD v(qD)

Loss and accuracy count only the answers (the token after each query). Keys and values come from disjoint
ranges of the vocabulary and are drawn fresh for every sequence, so nothing can be memorised: the model has to
store the pairs in its state and read them back. The MoM paper's claim is that routing tokens to several
memories recalls better than one memory of the same size.

Both models: 2 layers, width 64, 2 heads (per-head state 16 x 32), no short convolution; 32 keys and 32 values. GLA has one such
state per head and layer; MoM has 4 routed memories (top-2) plus a shared one, each exactly GLA's size. Each
setting (number of pairs D; the sequence is 4D - 1 tokens) trains both models from the same seed for the same
number of steps on the same batches, then measures accuracy on 512 fresh sequences.

    python benchmarks/mqar.py --threads 1           # the committed run
    python benchmarks/mqar.py --steps 300 --pairs 4  # a quick look

The committed run took 24 minutes on one thread of a busy shared 2-core machine (GLA 88-112 s per setting, MoM
221-689 s: MoM trains 5 memory states per layer on the reference ops). At this budget both models are far from
solving the task (chance is 1/32): read the table as "which model starts learning first", not as recall capacity.

Writes benchmarks/results/mqar.json (+ mqar.png): cases ``mqar D<pairs> T<length>``, contenders ``hfzoo_gla``
and ``hfzoo`` (MoM), metrics ``accuracy`` and ``loss`` (final held-out answer loss), plus ``s`` (training time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, Results  # noqa: E402
from hfzoo.models.gla import GLAConfig, GLAForCausalLM  # noqa: E402
from hfzoo.models.mom import MoMConfig, MoMForCausalLM  # noqa: E402
from hfzoo.ops.dispatch import use_backend  # noqa: E402

NUM_KEYS = NUM_VALUES = 32
VOCAB = 1 + NUM_KEYS + NUM_VALUES      # 0 is unused (padding)


def mqar_batch(batch: int, pairs: int, generator: torch.Generator):
    """``(inputs [B, 4D-1], answer positions [B, D], answers [B, D])``."""
    keys = torch.stack([torch.randperm(NUM_KEYS, generator=generator)[:pairs] for _ in range(batch)]) + 1
    values = torch.randint(0, NUM_VALUES, (batch, pairs), generator=generator) + 1 + NUM_KEYS
    order = torch.stack([torch.randperm(pairs, generator=generator) for _ in range(batch)])
    queries, answers = keys.gather(1, order), values.gather(1, order)
    context = torch.stack([keys, values], -1).flatten(1)                 # k1 v1 k2 v2 ...
    asked = torch.stack([queries, answers], -1).flatten(1)               # q1 a1 q2 a2 ...
    seq = torch.cat([context, asked], 1)
    positions = 2 * pairs + 2 * torch.arange(pairs)                      # where each query sits
    return seq[:, :-1], positions.expand(batch, pairs), answers


def answer_logits(model, inputs, positions):
    """Logits at the answer positions ``[B, D, vocab]`` and MoM's balance loss (0 for GLA)."""
    out = model(inputs)
    logits = out.logits.gather(1, positions[..., None].expand(*positions.shape, out.logits.shape[-1]))
    aux = getattr(out, "aux_loss", None)
    return logits, 0.0 if aux is None else aux


def make_model(kind: str, seed: int):
    common = dict(vocab_size=VOCAB, hidden_size=64, expand_k=0.5, expand_v=1.0, num_heads=2, num_hidden_layers=2,
                  intermediate_size=128, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(seed)
    if kind == "gla":
        return GLAForCausalLM(GLAConfig(**common)).train()
    return MoMForCausalLM(MoMConfig(**common, num_memories=4, topk=2, shared_mem=True)).train()


def train_and_eval(kind: str, pairs: int, steps: int, batch: int, lr: float, seed: int):
    model = make_model(kind, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    data = torch.Generator().manual_seed(seed + 1)      # the same batches for both models
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20)
        inputs, positions, answers = mqar_batch(batch, pairs, data)
        logits, aux = answer_logits(model, inputs, positions)
        loss = F.cross_entropy(logits.flatten(0, 1), answers.flatten()) + aux    # MoM: plus its balance loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    model.eval()
    test = torch.Generator().manual_seed(10_000 + pairs)
    correct, total, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for _ in range(4):
            inputs, positions, answers = mqar_batch(128, pairs, test)
            logits, _ = answer_logits(model, inputs, positions)
            correct += int((logits.argmax(-1) == answers).sum())
            total += answers.numel()
            loss_sum += float(F.cross_entropy(logits.flatten(0, 1), answers.flatten(), reduction="sum"))
    return correct / total, loss_sum / total, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = Results("mqar")
    with use_backend("reference"):      # CPU: the PyTorch ops are the fast path
        for pairs in args.pairs:
            case = f"mqar D{pairs} T{4 * pairs - 1}"
            for kind, contender in (("gla", "hfzoo_gla"), ("mom", "hfzoo")):
                acc, loss, seconds = train_and_eval(kind, pairs, args.steps, args.batch, args.lr, args.seed)
                res.add(case, contender, "accuracy", acc, steps=args.steps, batch=args.batch)
                res.add(case, contender, "loss", loss)
                res.add(case, contender, "s", seconds)
    print(res.save(args.out, plot_metric="accuracy"))


if __name__ == "__main__":
    main()
