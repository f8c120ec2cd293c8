"""LoRA-LEGO vs peft's merges: several LoRAs trained on distinct tasks on one tiny base, merged, scored.

Base: the shipped tiny GLA (``hfzoo/checkpoints/tiny-gla``). Tasks are generated in code, one per LoRA: a
task marker token, then pairs ``x y`` of digit tokens where ``y = f(x)``, with ``f`` one of

    copy: y = x      next: y = x + 1 mod 10      mirror: y = 9 - x      double: y = 2x mod 10

The base model knows none of them (it was trained on English prose about Python). One LoRA per task (rank 8,
the architecture's default targets) is trained for the same number of steps; then the adapters are merged
with ``hfzoo merge lego`` (contender ``hfzoo``, default options, merged rank 8) and with peft's
``add_weighted_adapter`` types (contenders ``peft_<type>``, weights 1, density 0.5 where used, svd rank 8),
every merge written as an adapter folder and loaded back with stock peft. Each merged adapter is scored on
every task: accuracy of the ``y`` tokens (greedy, teacher-forced). Rows for the base model and each task's own
adapter give the floor and the ceiling. Writes ``results/lora_merge.json`` and a PNG.

    python benchmarks/lora_merge.py --steps 40
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

import hfzoo
from hfzoo.hub.export import load_model
from hfzoo.ops.dispatch import use_backend

try:
    from benchmarks.common import RESULTS, Results
except ImportError:  # run as a script from the benchmarks folder
    from common import RESULTS, Results

TASKS = {"copy": lambda x: x, "next": lambda x: (x + 1) % 10, "mirror": lambda x: 9 - x,
         "double": lambda x: (2 * x) % 10}


class TaskData:
    def __init__(self, tokenizer, pairs: int):
        self.digits = torch.tensor([tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)])
        # one single-character token per task as its marker (capital letters, none of them digits)
        self.markers = {name: tokenizer.convert_tokens_to_ids(ch) for name, ch in zip(TASKS, "CNMD")}
        self.bos = tokenizer.bos_token_id
        self.pairs = pairs

    def batch(self, task: str, n: int, gen: torch.Generator):
        x = torch.randint(0, 10, (n, self.pairs), generator=gen)
        y = TASKS[task](x)
        seq = torch.stack([x, y], -1).reshape(n, -1)
        ids = torch.cat([torch.full((n, 1), self.bos), torch.full((n, 1), self.markers[task]), self.digits[seq]], 1)
        is_y = torch.zeros_like(ids, dtype=torch.bool)
        is_y[:, 3::2] = True  # positions of the y tokens
        labels = torch.where(is_y, ids, torch.full_like(ids, -100))
        return ids, labels, is_y


@torch.no_grad()
def accuracy(model, ids, is_y) -> float:
    model.eval()
    pred = model(ids).logits[:, :-1].argmax(-1)
    target, mask = ids[:, 1:], is_y[:, 1:]
    return (pred[mask] == target[mask]).float().mean().item()


def train_lora(base, data, task, args, out: Path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(args.seed)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                                           init_lora_weights=True))
    model.peft_config["default"].base_model_name_or_path = str(hfzoo.checkpoint_path("tiny-gla"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + 1)
    model.train()
    for step in range(1, args.steps + 1):
        ids, labels, _ = data.batch(task, args.batch, gen)
        loss = model(ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0:
            print(f"{task:>6} step {step:4d} loss {loss.item():.3f}", flush=True)
    model.save_pretrained(out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--eval", type=int, default=128, help="evaluation sequences per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["linear", "cat", "svd", "ties", "dare_ties"])
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from peft import PeftModel
    from transformers import AutoTokenizer

    from hfzoo.peft.lego import merge_adapters

    folder = hfzoo.checkpoint_path("tiny-gla")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base, _ = load_model(folder)
    data = TaskData(tokenizer, args.pairs)
    evalsets = {t: data.batch(t, args.eval, torch.Generator().manual_seed(1000 + i)) for i, t in enumerate(TASKS)}
    res = Results("lora_merge")
    start = time.time()

    def score(model, contender):
        for task, (ids, _, is_y) in evalsets.items():
            res.add(f"task {task}", contender, "accuracy", accuracy(model, ids, is_y))

    with use_backend("reference"), tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        score(base, "base")
        adapters = {}
        for task in TASKS:
            adapters[task] = train_lora(base, data, task, args, tmp / task)
        for task, path in adapters.items():  # each adapter on its own task (the ceiling) and on the others
            model = PeftModel.from_pretrained(copy.deepcopy(base), path)
            ids, _, is_y = evalsets[task]
            res.add(f"task {task}", "own_adapter", "accuracy", accuracy(model, ids, is_y))
        paths = list(adapters.values())
        merges = {"hfzoo": dict(method="lego", rank=args.rank)}
        for m in args.methods:
            merges[f"peft_{m}"] = dict(method=m, rank=args.rank if m.endswith("svd") else None)
        merge_seconds = {}
        for contender, kw in merges.items():
            if kw["method"] != "lego":
                kw = {**kw, "base": copy.deepcopy(base)}  # peft's merges load the adapters onto the base
            t0 = time.time()
            out = merge_adapters(paths, tmp / f"merged_{contender}", **kw)
            merge_seconds[contender] = round(time.time() - t0, 2)
            model = PeftModel.from_pretrained(copy.deepcopy(base), out)
            score(model, contender)
    cases = list(dict.fromkeys(r["case"] for r in res.rows))
    for contender in dict.fromkeys(r["contender"] for r in res.rows):
        vals = [r["value"] for r in res.rows if r["contender"] == contender and r["case"] in cases]
        if len(vals) == len(cases):
            res.add("mean over tasks", contender, "accuracy", sum(vals) / len(vals))
    setup = {"base": "tiny-gla", "tasks": list(TASKS), "rank": args.rank, "alpha": 2 * args.rank,
             "steps": args.steps, "batch": args.batch, "lr": args.lr, "pairs": args.pairs, "eval": args.eval,
             "peft_weights": 1.0, "peft_density": 0.5, "lego_options": "defaults (param l2, output rank_ratio, k=8)",
             "merge_seconds": merge_seconds, "minutes": round((time.time() - start) / 60, 1)}
    out = Path(args.out)
    path = res.save(out, plot_metric="accuracy")
    doc = json.loads(path.read_text())
    doc["setup"] = setup
    doc["versions"]["peft"] = __import__("peft").__version__
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(setup))


if __name__ == "__main__":
    main()
