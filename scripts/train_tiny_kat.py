"""Train the tiny KAT checkpoint on scikit-learn's digits (CPU, a minute or two) and save it with its processor.

    python scripts/train_tiny_kat.py [--out hfzoo/checkpoints/tiny-kat] [--epochs 30] [--seed 0]

The 8x8 digits are fed at their native resolution in 2x2 patches (16 patch tokens + the class token):
upsampling adds no information and would multiply the tokens. Pixel values 0..16 become uint8 images
(x 255/16) that go through the same KATImageProcessor a user's image goes through. Training augments with
random shifts of up to one pixel, which helps on hand-drawn input.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hfzoo.models.kat import KATConfig, KATForImageClassification, KATImageProcessor

ROOT = Path(__file__).resolve().parent.parent


def digits_config(mlp_type: str = "kan") -> KATConfig:
    return KATConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=48, num_hidden_layers=3,
                     num_attention_heads=3, mlp_ratio=4.0, mlp_type=mlp_type, rational_groups=8,
                     num_labels=10, id2label={i: str(i) for i in range(10)},
                     label2id={str(i): i for i in range(10)})


def digits_processor() -> KATImageProcessor:
    return KATImageProcessor(image_mode="L", size=8, crop_size=8, image_mean=[0.5], image_std=[0.5])


def load_digits_split(seed: int = 0):
    """80/20 stratified split of sklearn digits as uint8 8x8 images (fixed seed: the same split everywhere)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.clip(np.round(d.images * 255.0 / 16.0), 0, 255).astype(np.uint8)
    return train_test_split(images, d.target, test_size=0.2, random_state=seed, stratify=d.target)


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by -1..1 pixels per image, filling with the background value."""
    B = x.shape[0]
    bg = x.amin(dim=(1, 2, 3), keepdim=True)
    padded = F.pad(x - bg, (1, 1, 1, 1)) + bg
    dx, dy = torch.randint(0, 3, (2, B), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8] for i in range(B)])


def train(config: KATConfig, seed: int = 0, epochs: int = 30, batch_size: int = 64, lr: float = 2e-3,
          log=print):
    """Train on the digits split; returns (model, {"test_accuracy", "train_loss", "minutes", ...})."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_tr, x_te, y_tr, y_te = load_digits_split()
    proc = digits_processor()
    xtr = proc(list(x_tr), return_tensors="pt").pixel_values
    xte = proc(list(x_te), return_tensors="pt").pixel_values
    ytr, yte = torch.as_tensor(y_tr), torch.as_tensor(y_te)
    model = KATForImageClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(xtr) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (2 * steps_per_epoch)) * 0.5 * (1 + math.cos(math.pi * s / total)))
    t0 = time.time()
    loss_avg = float("nan")
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        losses = []
        for i in range(0, len(xtr), batch_size):
            idx = perm[i:i + batch_size]
            loss = model(pixel_values=_shift(xtr[idx], gen), labels=ytr[idx]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        loss_avg = float(np.mean(losses))
        if (epoch + 1) % 10 == 0 or epoch == epochs - 1:
            log(f"epoch {epoch + 1:3d}  train loss {loss_avg:.4f}  test acc {evaluate(model, xte, yte):.4f}  "
                f"{time.time() - t0:.0f}s")
    acc = evaluate(model, xte, yte)
    return model, {"test_accuracy": acc, "train_loss": loss_avg, "minutes": (time.time() - t0) / 60,
                   "epochs": epochs, "seed": seed, "train_size": len(xtr), "test_size": len(xte)}


@torch.no_grad()
def evaluate(model, x, y) -> float:
    model.eval()
    return (model(pixel_values=x).logits.argmax(-1) == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "hfzoo" / "checkpoints" / "tiny-kat"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)   # a shared, busy CPU: one thread avoids OpenMP spin contention
    model, metrics = train(digits_config(), seed=args.seed, epochs=args.epochs)
    from hfzoo.hub.atomic import save_pretrained_atomic

    save_pretrained_atomic(args.out, model, digits_processor(), overwrite=True, standalone=False,
                           files={"training.json": json.dumps(metrics, indent=1) + "\n"})
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
