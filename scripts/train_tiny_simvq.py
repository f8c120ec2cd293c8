"""Train the tiny SimVQ tokenizer on crops of scikit-image's photos (CPU, about ten minutes on two busy cores) and save it with its
image processor.

    python scripts/train_tiny_simvq.py [--out hfzoo/checkpoints/tiny-simvq] [--steps 800] [--seed 0]

Data (nothing downloaded): 16x16 crops (``--crop``) of ``astronaut``, ``coffee``, ``chelsea`` and ``camera`` (downscaled by 2,
random flips) for training; the ``rocket`` photo is held out for evaluation (32x32 crops). Objective: MSE reconstruction +
SimVQ's quantizer loss (beta 0.25). The model downsamples by 4 (a 128 px image becomes 32 x 32 tokens) over a
1,024-code codebook of 32-dimensional codes. Metrics (held-out MSE and PSNR, codebook utilization over every
token of a dense crop grid of all five photos) go to ``training.json`` beside the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from simvq_data import EVAL_PHOTOS, TRAIN_PHOTOS, grid_crops, random_crops  # noqa: E402

from hfzoo.hub.atomic import save_pretrained_atomic  # noqa: E402
from hfzoo.models.simvq import SimVQConfig, SimVQImageProcessor, SimVQModel  # noqa: E402
from hfzoo.models.simvq.modeling_simvq import codebook_utilization  # noqa: E402


def tiny_config() -> SimVQConfig:
    return SimVQConfig(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=32, codebook_size=1024,
                       norm_num_groups=8, resolution=128)


@torch.no_grad()
def evaluate(model, pool, held_out):
    model.eval()
    idx = torch.cat([model.encode(pool[i:i + 1024]) for i in range(0, len(pool), 1024)])
    rec = torch.cat([model(pixel_values=held_out[i:i + 1024]).reconstruction for i in range(0, len(held_out), 1024)])
    model.train()
    mse = F.mse_loss(rec.clamp(-1, 1), held_out).item()
    psnr = 10 * math.log10(4.0 / mse)  # pixels span [-1, 1]: peak-to-peak 2
    return {"held_out_mse": round(mse, 5), "held_out_psnr_db": round(psnr, 2),
            "codebook_utilization": round(codebook_utilization(idx, model.config.codebook_size), 4),
            "utilization_tokens": idx.numel()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(ROOT / "hfzoo" / "checkpoints" / "tiny-simvq"))
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=int, default=16, help="training crop side (multiple of 4)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (more threads than free cores is much slower)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    train = grid_crops(TRAIN_PHOTOS, args.crop, 4)
    held_out = grid_crops(EVAL_PHOTOS, 32, 16)
    pool = grid_crops(TRAIN_PHOTOS + EVAL_PHOTOS, 32, 16)
    model = SimVQModel(tiny_config())
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=args.lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.steps):
        out = model(pixel_values=random_crops(train, args.batch, gen))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {out.loss.item():.4f} rec {out.reconstruction_loss.item():.4f} "
                  f"batch utilization {out.codebook_utilization.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    minutes = (time.time() - t0) / 60
    metrics = evaluate(model, pool, held_out)
    metrics.update(steps=args.steps, batch=args.batch, crop=args.crop, train_minutes=round(minutes, 2),
                   final_train_loss=round(out.loss.item(), 5), seed=args.seed,
                   train_photos=list(TRAIN_PHOTOS), eval_photos=list(EVAL_PHOTOS),
                   parameters=sum(q.numel() for q in model.parameters()))
    save_pretrained_atomic(args.out, model, SimVQImageProcessor(size=128), overwrite=True, standalone=False,
                           files={"training.json": json.dumps(metrics, indent=1) + "\n"})
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
