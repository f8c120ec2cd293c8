"""The paper's claim at toy scale: KAT (GR-KAN MLPs) vs the same ViT with a GELU MLP, on sklearn digits.

    python scripts/kat_vs_vit_digits.py [--seeds 0 1 2] [--epochs 30]

Both contenders use the tiny checkpoint's size (width 48, 3 layers, 3 heads, 2x2 patches on the 8x8 images),
the same split, optimizer, schedule, augmentation and number of steps; only the MLP differs (KAT adds 76
rational coefficients per layer). Writes benchmarks/results/kat_digits.json (or $HFZOO_BENCH_OUT): test
accuracy per seed and the mean, contenders `hfzoo_kat` and `vit`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_tiny_kat import digits_config, train  # noqa: E402

from benchmarks.common import Results  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)   # a shared, busy CPU: one thread avoids OpenMP spin contention
    res = Results("kat_digits")
    accs = {"hfzoo_kat": [], "vit": []}
    for seed in args.seeds:
        for contender, mlp_type in (("hfzoo_kat", "kan"), ("vit", "mlp")):
            model, m = train(digits_config(mlp_type), seed=seed, epochs=args.epochs,
                             log=lambda s, c=contender: print(f"[{c}] {s}", flush=True))
            n_params = sum(p.numel() for p in model.parameters())
            accs[contender].append(m["test_accuracy"])
            res.add(f"digits test accuracy seed {seed}", contender, "accuracy", m["test_accuracy"],
                    train_loss=m["train_loss"], minutes=m["minutes"], epochs=args.epochs, parameters=n_params)
    for contender, values in accs.items():
        res.add(f"digits test accuracy mean of {len(values)} seeds", contender, "accuracy", float(np.mean(values)),
                std=float(np.std(values)), epochs=args.epochs)
    print(res.save(plot_metric="accuracy"))


if __name__ == "__main__":
    main()
