"""PiSSA vs LoRA at equal rank and steps: fine-tune the shipped tiny GLA on text it has not seen.

The base is ``hfzoo/checkpoints/tiny-gla`` (trained on the Python language reference from
``pydoc_data.topics`` with every 8th topic held out). Here the held-out topics are cut into blocks; every 5th
block is the evaluation set, the rest is fine-tuned on. Both adapters target the architecture's default
modules (all projections of every block) with the same rank, alpha (= rank), optimizer, learning rate, batch
order and number of steps; only ``init_lora_weights`` differs (``True``: Kaiming A, zero B; ``"pissa"``).
Several seeds (the seed sets LoRA's random A and the batch order). Writes ``results/pissa_vs_lora.json``
(metric ``loss``: evaluation cross-entropy per step and seed, plus the mean over seeds) and a PNG of the
loss curves.

    python benchmarks/peft_pissa_vs_lora.py --steps 40 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from pydoc_corpus import evaluate, split_topics, to_blocks  # noqa: E402


def run(base, method: str, seed: int, train, evalset, args) -> list[tuple[int, float]]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    init = "pissa" if method == "pissa" else True
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights=init))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    curve = [(0, evaluate(model, evalset, 16))]
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(train), (args.batch,), generator=order)
        x = train[idx]
        model(x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, evaluate(model, evalset, 16)))
            print(f"{method:>5} seed {seed} step {step:4d} eval loss {curve[-1][1]:.4f}", flush=True)
    return curve


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, color in (("lora", "tab:blue"), ("pissa", "tab:orange")):
        runs = curves[method]
        steps = [s for s, _ in runs[0]]
        vals = torch.tensor([[v for _, v in run] for run in runs])
        for run in vals:
            ax.plot(steps, run, color=color, alpha=0.25, lw=1)
        ax.plot(steps, vals.mean(0), color=color, lw=2, label=f"{method} (mean of {len(runs)} seeds)")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("held-out eval loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-blocks", type=int, default=16, help="evaluation blocks (of every 5th block)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    folder = hfzoo.checkpoint_path("tiny-gla")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base, _ = load_model(folder)
    blocks = to_blocks(tokenizer, split_topics()[1], args.block)   # the topics tiny-gla did not train on
    is_eval = torch.arange(len(blocks)) % 5 == 4
    train, evalset = blocks[~is_eval], blocks[is_eval][: args.eval_blocks]
    print(f"fine-tune {tuple(train.shape)}, eval {tuple(evalset.shape)}", flush=True)
    res = Results("pissa_vs_lora")
    curves = {"lora": [], "pissa": []}
    start = time.time()
    with use_backend("reference"):  # the fastest CPU path
        for seed in args.seeds:
            for method in ("lora", "pissa"):
                curve = run(base, method, seed, train, evalset, args)
                curves[method].append(curve)
                for step, loss in curve:
                    res.add(f"eval loss step {step}", method, "loss", loss, seed=seed, step=step)
    for method, runs in curves.items():
        for i, (step, _) in enumerate(runs[0]):
            mean = sum(run[i][1] for run in runs) / len(runs)
            res.add(f"eval loss step {step} (mean)", method, "loss", mean, step=step, seeds=len(runs))
    setup = {"base": "tiny-gla", "rank": args.rank, "alpha": args.rank, "lr": args.lr, "batch": args.batch,
             "block": args.block, "steps": args.steps, "seeds": args.seeds, "targets": "architecture defaults",
             "train_blocks": len(train), "eval_blocks": len(evalset), "minutes": round((time.time() - start) / 60, 1)}
    out = Path(args.out)
    path = res.save(out, plot_metric=None)
    doc = json.loads(path.read_text())
    doc["setup"] = setup
    doc["versions"]["peft"] = __import__("peft").__version__
    path.write_text(json.dumps(doc, indent=1) + "\n")
    plot(curves, out / "pissa_vs_lora.png", f"PiSSA vs LoRA on tiny-gla, rank {args.rank}, lr {args.lr}, "
         f"{len(args.seeds)} seeds")
    print(json.dumps(setup))


if __name__ == "__main__":
    main()
