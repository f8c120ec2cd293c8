"""Tiny class-conditional LiT on scikit-learn's digits, inherited from and distilled by a tiny DiT teacher.

    python scripts/train_tiny_lit.py [--out hfzoo/checkpoints/tiny-lit] [--teacher-steps 4000] [--steps 1500]

Pixel space: the 8x8 digits (values 0..16) scaled to [-1, 1], one channel, 2x2 patches (16 tokens).
1. Teacher: DiT (softmax attention, 4 heads), DiT's loss (noise MSE + VLB, learned sigma), --teacher-steps.
2. Student: LiT (linear attention + 5x5 depthwise conv, 2 heads) inheriting every teacher parameter but the
   attention's (hfzoo.convert.dit_lit.inherit), trained --steps with DiT's loss + the hybrid distillation loss
   (λ_noise 0.5, λ_var 0.05) from the teacher on the same noisy inputs.
3. Baseline: the same LiT from scratch, --steps with DiT's loss alone.
Sample quality proxies on 200 samples per model (20 per class, DDIM 50 steps, guidance 2): the accuracy of a
logistic-regression digits classifier (trained on the train split) at recognizing the requested class, and a
Fréchet distance between the 64-pixel statistics of the samples and of the test split.
Writes the student to --out (with training.json) and the comparison to benchmarks/results/lit_digits.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hfzoo.convert.dit_lit import inherit
from hfzoo.models.lit import LiTConfig, LiTModel
from hfzoo.models.lit.pipeline_lit import LiTPipeline
from hfzoo.models.lit.training_lit import DiffusionLoss, hybrid_distillation_loss

ROOT = Path(__file__).resolve().parent.parent


def digits_config(attention_type: str) -> LiTConfig:
    return LiTConfig(sample_size=8, patch_size=2, in_channels=1, learn_sigma=True, hidden_size=64,
                     num_hidden_layers=4, num_attention_heads=4 if attention_type == "softmax" else 2,
                     attention_type=attention_type, num_classes=10, class_dropout_prob=0.1)


def load_digits_split(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0) * 2 - 1
    return train_test_split(x, d.target, test_size=0.2, random_state=seed, stratify=d.target)


def train(model, x, y, steps, lr=1e-3, batch=64, seed=0, teacher=None, log=print):
    gen = torch.Generator().manual_seed(seed)
    loss_fn = DiffusionLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    X, Y = torch.tensor(x)[:, None], torch.tensor(y)
    model.train()
    t0, hist = time.time(), []
    for step in range(steps):
        idx = torch.randint(0, len(X), (batch,), generator=gen)
        out = loss_fn(model, X[idx], Y[idx], generator=gen)
        loss = out["loss"]
        if teacher is not None:
            with torch.no_grad():
                # the teacher sees the same noisy input and (possibly dropped) class as the student
                t_out = teacher(out["x_t"], out["t"], Y[idx]).sample
            loss = loss + hybrid_distillation_loss(out["output"], t_out, in_channels=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        hist.append(out["mse"].item())
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"  step {step + 1}/{steps}: noise mse {np.mean(hist[-100:]):.4f}  ({time.time() - t0:.0f} s)")
    model.eval()
    return {"steps": steps, "final_noise_mse": float(np.mean(hist[-100:])), "seconds": time.time() - t0}


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def evaluate(model, clf, x_test, per_class=20, steps=50, guidance=2.0, seed=0):
    labels = np.repeat(np.arange(10), per_class)
    imgs = LiTPipeline(model, scheduler="ddim")(labels.tolist(), num_inference_steps=steps, guidance_scale=guidance,
                                                 seed=seed, progress=False)
    flat = (imgs[:, 0].reshape(len(labels), 64).numpy() * 2 - 1)
    acc = float((clf.predict(flat) == labels).mean())
    return {"class_accuracy": acc, "frechet_pixels": frechet(flat, x_test.reshape(len(x_test), 64))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "hfzoo" / "checkpoints" / "tiny-lit"))
    ap.add_argument("--teacher-steps", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-per-class", type=int, default=20)
    ap.add_argument("--eval-steps", type=int, default=50)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "lit_digits.json"))
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    x_tr, x_te, y_tr, y_te = load_digits_split(args.seed)
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000).fit(x_tr.reshape(len(x_tr), 64), y_tr)
    print(f"digits classifier test accuracy on real digits: {clf.score(x_te.reshape(len(x_te), 64), y_te):.3f}")

    print("teacher (DiT, softmax attention)")
    torch.manual_seed(args.seed)
    teacher = LiTModel(digits_config("softmax"))
    t_stats = train(teacher, x_tr, y_tr, args.teacher_steps, seed=args.seed)

    print("student (LiT: inherited from the teacher, hybrid distillation)")
    student, report = inherit(teacher.state_dict(), digits_config("linear"), seed=args.seed)
    s_stats = train(student, x_tr, y_tr, args.steps, seed=args.seed + 1, teacher=teacher)

    print("baseline (LiT from scratch, no distillation)")
    torch.manual_seed(args.seed)
    scratch = LiTModel(digits_config("linear"))
    b_stats = train(scratch, x_tr, y_tr, args.steps, seed=args.seed + 1)

    results = {}
    for name, model, stats in (("dit_teacher", teacher, t_stats), ("lit_inherited_distilled", student, s_stats),
                               ("lit_scratch", scratch, b_stats)):
        results[name] = {**stats, **evaluate(model, clf, x_te, per_class=args.eval_per_class, steps=args.eval_steps,
                                             seed=args.seed),
                         "parameters": sum(p.numel() for p in model.parameters())}
        print(name, results[name])

    from hfzoo.hub.atomic import atomic_directory
    from hfzoo.utils.atomic_files import drop_remote_code

    student.config.id2label = {i: str(i) for i in range(10)}
    with atomic_directory(args.out, overwrite=True) as tmp:
        student.save_pretrained(tmp)
        drop_remote_code(tmp)   # shipped inside the package: loads through the installed hfzoo
        (tmp / "training.json").write_text(json.dumps({
            "data": "sklearn load_digits, 80/20 stratified split (seed 0), pixels scaled to [-1, 1]",
            "recipe": "DiT teacher trained first; LiT inherits all but attention (loaded "
                      f"{len(report['loaded'])} tensors, initialized {len(report['initialized'])}); DiT loss + "
                      "hybrid distillation (0.5 noise, 0.05 variance)",
            "teacher": results["dit_teacher"], "student": results["lit_inherited_distilled"],
            "baseline_scratch": results["lit_scratch"]}, indent=1) + "\n")
    Path(args.results).write_text(json.dumps({
        "benchmark": "lit_digits", "device": "cpu", "date": time.strftime("%Y-%m-%d"),
        "rows": [{"case": f"digits 8x8 ddim{args.eval_steps} cfg2", "contender": n, "metric": m, "value": r[k]}
                 for n, r in results.items()
                 for m, k in (("accuracy", "class_accuracy"), ("loss", "frechet_pixels"), ("s", "seconds"))],
        "notes": "accuracy: a logistic-regression digits classifier recognizes the requested class; loss row = "
                 "Frechet distance of 64-pixel statistics to the test split (lower is better); s = training seconds"},
        indent=1) + "\n")
    print(f"wrote {args.out} and {args.results}")


if __name__ == "__main__":
    main()
