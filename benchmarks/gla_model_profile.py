"""Where a GLA training step spends its GPU time, per part of the model: hfzoo's GLAForCausalLM (and fla's with --fla).

    PYTHONPATH=. HFZOO_BENCH_OUT=$OUT python benchmarks/gla_model_profile.py [--fla] [--hidden 2048] [--dry-run]

The step is ``benchmarks/gla_model.py``'s (``train h<hidden> L4 B4 T4096``, loss + backward, same weights for both
models). CUDA events around every call of the parts below, forward and backward (module hooks), summed over
``STEPS`` steps and divided: ``embeddings``, ``attn_norm``, ``attn`` (the whole token mixer: projections, gate,
recurrence, output norm and gate, output projection), ``mlp_norm``, ``mlp``, ``norm`` (final), ``lm_head``, and
``loss`` (what the step spends outside those parts: the loss and the autograd glue). Rows
``profile train h.. L4 B4 T4096 part=<part>``, metric ``ms`` (per step), plus ``step`` (the whole step, timed
without hooks). fla's kernels compile and autotune for minutes on a fresh machine: ``--fla`` only after
``benchmarks/gla_fla_warm.py`` (see benchmarks/NOTES.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict

DRY = "--dry-run" in sys.argv
if DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import gla_model as gm  # noqa: E402
from benchmarks.common import Results  # noqa: E402

PARTS = ("embeddings", "attn_norm", "attn", "mlp_norm", "mlp", "norm", "lm_head")
STEPS = 2 if DRY else 5


class _Timer:
    """Start/stop marks per part: CUDA events on the GPU, synchronised wall clock on the CPU."""

    def __init__(self):
        self.open = defaultdict(list)
        self.done = defaultdict(list)

    def start(self, part):
        if DRY:
            self.open[part].append(time.perf_counter())
        else:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.open[part].append(ev)

    def stop(self, part):
        if not self.open[part]:
            return
        t0 = self.open[part].pop()
        if DRY:
            self.done[part].append(1e3 * (time.perf_counter() - t0))
        else:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.done[part].append((t0, ev))

    def totals(self):
        if not DRY:
            torch.cuda.synchronize()
        return {p: sum(v) if DRY else sum(a.elapsed_time(b) for a, b in v) for p, v in self.done.items()}


def _hook(model, timer):
    """Forward and backward hooks on the parts of every block (matched by their fla/hfzoo names)."""
    handles = []
    for name, mod in model.named_modules():
        part = name.rsplit(".", 1)[-1]
        if part not in PARTS:
            continue
        handles.append(mod.register_forward_pre_hook(lambda m, a, p=part: timer.start(p)))
        handles.append(mod.register_forward_hook(lambda m, a, o, p=part: timer.stop(p)))
        if part != "embeddings":  # (its input, the token ids, has no gradient: no backward hook fires)
            handles.append(mod.register_full_backward_pre_hook(lambda m, g, p=part: timer.start(p + " (bwd)")))
            handles.append(mod.register_full_backward_hook(lambda m, gi, go, p=part: timer.stop(p + " (bwd)")))
    return handles


def profile(res, name, model, hidden):
    B, T = gm.TRAIN[0]
    case = f"profile train h{hidden} L{gm.LAYERS} B{B} T{T}"
    torch.manual_seed(1)
    ids = torch.randint(3, gm.VOCAB, (B, T), device=gm.DEV)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # compile (and, for fla, autotune) outside the timing
    whole = gm.bench_ms(step)
    res.add(case + " part=step", name, "ms", whole)
    timer = _Timer()
    handles = _hook(model, timer)
    try:
        for _ in range(STEPS):
            step()
        totals = {p: t / STEPS for p, t in timer.totals().items()}
    finally:
        for h in handles:
            h.remove()
    for part, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        res.add(f"{case} part={part}", name, "ms", ms)
    res.add(f"{case} part=loss and rest", name, "ms", max(whole - sum(totals.values()), 0.0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fla", action="store_true", help="also profile fla's model (after gla_fla_warm.py)")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU, rows not kept")
    args = ap.parse_args()
    hidden = gm.GEN_HIDDEN if DRY else args.hidden
    res = Results("gla_model_profile_dryrun" if DRY else "gla_model_profile")
    out_dir = tempfile.mkdtemp() if DRY else None
    ms = gm.models(hidden, want_fla=args.fla or DRY)
    for name in ("hfzoo", "fla"):
        if name in ms:
            try:
                profile(res, name, ms[name].train(), hidden)
            except Exception as e:
                print(f"{name} failed: {repr(e)[:300]}")
            res.save(out_dir, plot_metric=None)
    print("saved", res.save(out_dir, plot_metric=None))


if __name__ == "__main__":
    main()
