"""The paper's claim at small scale: with a large codebook, plain VQ leaves most codes unused while SimVQ's
reparameterized codebook W(C) keeps them in use -- and reconstructs better.

Same encoder/decoder, data, initial codebook values, optimizer and number of steps; the only difference is the
quantizer: ``vq`` learns the codebook C directly; ``hfzoo_simvq`` freezes C and learns W (Linear with bias),
searching W(C). Both use the loss beta*||sg(z_q) - z||^2 + ||z_q - sg(z)||^2 (beta 0.25) and straight-through
gradients, plus an MSE reconstruction loss.

Metrics per codebook size: ``utilization`` = fraction of codes used when encoding every crop of a dense grid over
all photos (~300k tokens, several times the codebook size), ``loss`` = reconstruction MSE on crops of the held-out
photo. Writes benchmarks/results/simvq_utilization.json (the benchmarks' results format).

    .venv/bin/python scripts/simvq_vs_vq.py [--steps 400] [--sizes 8192 65536]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from simvq_data import EVAL_PHOTOS, TRAIN_PHOTOS, grid_crops, random_crops  # noqa: E402

from hfzoo.models.simvq import SimVQConfig, SimVQModel, SimVQQuantizer  # noqa: E402
from hfzoo.models.simvq.modeling_simvq import codebook_utilization  # noqa: E402


class PlainVQ(SimVQQuantizer):
    """The baseline: the codebook C itself is the parameter (no W)."""

    def __init__(self, codebook_size, dim, beta=0.25):
        super().__init__(codebook_size, dim, beta)
        del self.embedding_proj
        self.embedding.weight.requires_grad_(True)

    def codebook(self):
        return self.embedding.weight


def build(kind: str, codebook_size: int, seed: int, ch: int = 32) -> SimVQModel:
    torch.manual_seed(seed)
    cfg = SimVQConfig(ch=ch, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=32, codebook_size=codebook_size,
                      norm_num_groups=8, resolution=16)
    model = SimVQModel(cfg)
    if kind == "vq":
        c = model.quantize.embedding.weight.detach().clone()  # the same initial code values as SimVQ's C
        model.quantize = PlainVQ(codebook_size, cfg.z_channels, cfg.beta)
        model.quantize.embedding.weight.data.copy_(c)
    return model


@torch.no_grad()
def evaluate(model, pool, held_out):
    model.eval()
    idx = torch.cat([model.encode(pool[i:i + 2048]) for i in range(0, len(pool), 2048)])
    util = codebook_utilization(idx, model.config.codebook_size)
    rec = torch.cat([model(pixel_values=held_out[i:i + 2048]).reconstruction for i in range(0, len(held_out), 2048)])
    model.train()
    return util, F.mse_loss(rec, held_out).item(), idx.numel()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--sizes", type=int, nargs="+", default=[8192, 65536])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (more threads than free cores is much slower)")
    p.add_argument("--ch", type=int, default=32, help="base width of encoder/decoder (16 for a quick CPU run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default=None, help="crops saved by --save-data (for machines without scikit-image)")
    p.add_argument("--save-data", default=None, help="write the crops (uint8) to this file and exit")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "simvq_utilization.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    if args.data:
        saved = torch.load(args.data, weights_only=True)
        pool, held_out = (saved[k].float() / 127.5 - 1.0 for k in ("pool", "held_out"))
        train = pool[:int(saved["n_train"])]
    else:
        train = grid_crops(TRAIN_PHOTOS, 16, 4)
        pool = torch.cat([train, grid_crops(EVAL_PHOTOS, 16, 4)])
        held_out = grid_crops(EVAL_PHOTOS, 16, 8)
    if args.save_data:
        to_u8 = lambda x: ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        torch.save({"pool": to_u8(pool), "n_train": len(train), "held_out": to_u8(held_out)}, args.save_data)
        return
    pool, held_out = pool.to(dev), held_out.to(dev)
    print(f"train crops {len(train)}, utilization pool {len(pool)} crops, held-out {len(held_out)} crops", flush=True)
    rows = []
    for k in args.sizes:
        for kind in ("vq", "hfzoo_simvq"):
            model = build(kind, k, args.seed, args.ch).to(dev)
            opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=args.lr, betas=(0.5, 0.9))
            gen = torch.Generator().manual_seed(args.seed)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.time()
            for step in range(args.steps):
                out = model(pixel_values=random_crops(train, args.batch, gen).to(dev))
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                if step % 100 == 0:
                    print(f"K={k} {kind} step {step} loss {out.loss.item():.4f} "
                          f"batch utilization {out.codebook_utilization.item():.4f}", flush=True)
            minutes = (time.time() - t0) / 60
            util, loss, tokens = evaluate(model, pool, held_out)
            print(f"K={k} {kind}: utilization {util:.4f} held-out MSE {loss:.5f} ({minutes:.1f} min)", flush=True)
            case = f"codebook {k}, {args.steps} steps"
            extra = {"steps": args.steps, "batch": args.batch, "ch": args.ch, "lr": args.lr,
                     "minutes": round(minutes, 2), "tokens": tokens}
            rows.append({"case": case, "contender": kind, "metric": "utilization", "value": util, **extra})
            rows.append({"case": case, "contender": kind, "metric": "loss", "value": loss,
                         "note": "reconstruction MSE on held-out photo crops, pixels in [-1, 1]", **extra})
    device = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    doc = {"benchmark": "simvq_utilization", "device": device, "date": datetime.date.today().isoformat(),
           "versions": {"torch": torch.__version__}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
