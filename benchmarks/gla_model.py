"""GLA as users run it: a training step and ``generate`` of hfzoo's GLAForCausalLM against fla's, same weights.

Run on the GPU machine (fla's pure-Python wheels carried, see benchmarks/NOTES.md):
    PYTHONPATH=. HFZOO_BENCH_OUT=$OUT python benchmarks/gla_model.py [--no-fla] [--no-generate] [--no-train]
        [--hidden 1024,2048] [--generate-hidden 2048] [--name gla_model]
``--dry-run`` runs the whole script on the CPU at toy sizes (Triton interpreter; fla too when it is installed, in
its ``fused_recurrent`` mode: fla's chunked kernels do not run under the interpreter) to check its logic.
fla's kernels autotune on their first call (minutes on a bare machine); ``benchmarks/gla_fla_warm.py`` fills the
Triton cache for exactly these cases beforehand (see ``gpu/gla.sh`` in the worktree and benchmarks/NOTES.md).

Models: fla-hub's 340M and 1.3B layer shapes (hidden 1024 / 2048, 4 heads, expand_k 0.5, expand_v 1, hidden_ratio
4, vocab 32000) with ``LAYERS`` layers; fla's ``GLAForCausalLM`` is built first and hfzoo's is converted from its
weights (``hfzoo.convert.fla_gla``), bf16 weights, no autocast.

Cases and contenders (results in ``gla_model.json``):
* ``train h<hidden> L<layers> B<b> T<t>``: forward with labels + backward, no optimizer step; metrics ``ms`` and
  ``peak_gb`` (peak allocated above the model and inputs). ``hfzoo`` (its default loss, transformers'
  ``ForCausalLMLoss`` on the full logits), ``hfzoo_fused_ce`` (the same model with ``fuse_linear_cross_entropy``:
  ``hfzoo.ops.linear_cross_entropy``, no full logits),
  ``fla`` (its default fused cross-entropy) and ``fla_unfused`` (``fuse_cross_entropy=False``).
* ``generate B<b> prompt<p> new<n>``: greedy ``generate`` of exactly n new tokens after a p-token prompt at the
  1.3B layer shape (hidden 2048; the row's ``hidden``/``layers`` keys say so); ``tokens/s`` = B * n / seconds
  (prefill included, one timed call after a short warm-up call), ``hfzoo`` and ``fla``.
"""

# ruff: noqa: B023  (the closures below are timed on the spot, inside their loop iteration)
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

DRY = "--dry-run" in sys.argv
if DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported

import torch  # noqa: E402

if DRY:  # the interpreter cannot benchmark: fla's autotuned kernels take their first config
    from triton.runtime import autotuner

    _init = autotuner.Autotuner.__init__
    autotuner.Autotuner.__init__ = lambda self, fn, names, configs, *a, **kw: _init(self, fn, names, list(configs)[:1],
                                                                                    *a, **kw)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.common import Results  # noqa: E402

LAYERS = 4
if DRY:
    DEV, DT, VOCAB, HIDDENS, GEN_HIDDEN = "cpu", torch.float32, 64, [32], 32
    TRAIN, GEN = [(2, 40)], [(1, 20, 4), (2, 20, 4)]
else:
    DEV, DT, VOCAB, HIDDENS, GEN_HIDDEN = "cuda", torch.bfloat16, 32000, [2048, 1024], 2048
    TRAIN, GEN = [(4, 4096)], [(1, 2048, 256), (64, 2048, 256)]


bench_ms, _, peak_gb = common.timers(DRY, warmup=3, rep=20)


def fla_config(hidden):
    # fla-hub/gla-340M-15B and gla-1.3B-100B shapes (config.json of each), with LAYERS layers
    return dict(model_type="gla", hidden_size=hidden, num_heads=4 if not DRY else 2, expand_k=0.5, expand_v=1,
                hidden_ratio=4, num_hidden_layers=LAYERS, vocab_size=VOCAB,
                attn_mode="fused_recurrent" if DRY else "chunk", use_short_conv=False,
                use_output_gate=True, fuse_norm=True, tie_word_embeddings=False, norm_eps=1e-6)


def models(hidden, want_fla):
    """``{name: model}``: fla's (if wanted and importable) and hfzoo's converted from the same weights."""
    from hfzoo.convert import fla_gla
    from hfzoo.models.gla.modeling_gla import GLAForCausalLM

    cfg = fla_config(hidden)
    out = {}
    torch.manual_seed(0)
    if want_fla:
        try:
            import fla.models as fla_models

            fields = {k: v for k, v in cfg.items() if k != "model_type"}
            fla_model = fla_models.GLAForCausalLM(fla_models.GLAConfig(**fields)).to(DEV, DT)
            fla_unfused = fla_models.GLAForCausalLM(fla_models.GLAConfig(**fields, fuse_cross_entropy=False))
            fla_unfused.load_state_dict(fla_model.state_dict())
            out["fla"], out["fla_unfused"] = fla_model, fla_unfused.to(DEV, DT)
        except Exception as e:  # fla not carried: its rows are left out
            print("fla unavailable:", repr(e)[:300])
    config = fla_gla.convert_config(cfg)
    ours = GLAForCausalLM(config)
    if "fla" in out:
        ours.load_state_dict(fla_gla.convert_state_dict(
            {k: v.float().cpu() for k, v in out["fla"].state_dict().items()}, config))
    out["hfzoo"] = ours.to(DEV, DT)
    return out


def fused_ce_loss(model, ids, labels):
    """hfzoo's model with ``fuse_linear_cross_entropy``: the loss from the hidden states through the chunked
    linear + cross-entropy op (no full logits)."""
    model.config.fuse_linear_cross_entropy = True
    try:
        return model(input_ids=ids, labels=labels).loss
    finally:
        model.config.fuse_linear_cross_entropy = False


def _ratio(res, case, metric, ours="hfzoo", theirs="fla"):
    pick = {r["contender"]: r["value"] for r in res.rows if r["case"] == case and r["metric"] == metric}
    if pick.get(ours) and pick.get(theirs):
        res.add(case, ours, f"x_{theirs}" if metric == "ms" else f"x_{theirs}_{metric}", pick[ours] / pick[theirs])


def train_cases(res, hidden, ms, save, contenders):
    for B, T in TRAIN:
        case = f"train h{hidden} L{LAYERS} B{B} T{T}"
        torch.manual_seed(1)
        ids = torch.randint(3, VOCAB, (B, T), device=DEV)
        steps = {"hfzoo": lambda: ms["hfzoo"](input_ids=ids, labels=ids).loss.backward(),
                 "hfzoo_fused_ce": lambda: fused_ce_loss(ms["hfzoo"], ids, ids).backward()}
        steps.update({name: (lambda m=m: m(input_ids=ids, labels=ids).loss.backward())
                      for name, m in ms.items() if name != "hfzoo"})
        for name, step in steps.items():
            if name not in contenders:
                continue
            try:
                t0 = time.perf_counter()
                step()  # compile / autotune outside the timing
                if not DRY:
                    torch.cuda.synchronize()
                print(f"{case} {name}: first step {time.perf_counter() - t0:.1f} s", flush=True)
                for m in ms.values():
                    m.zero_grad(set_to_none=True)
                res.add(case, name, "ms", bench_ms(step))
                for m in ms.values():
                    m.zero_grad(set_to_none=True)
                res.add(case, name, "peak_gb", peak_gb(step))
                for m in ms.values():
                    m.zero_grad(set_to_none=True)
                with torch.no_grad():  # (the fused path needs training mode, which the models are in)
                    loss = (fused_ce_loss(ms["hfzoo"], ids, ids) if name == "hfzoo_fused_ce" else
                            ms[name](input_ids=ids, labels=ids).loss).item()
                res.add(case, name, "loss", loss)
            except Exception as e:
                print(f"{case} {name} failed: {repr(e)[:300]}")
            if not DRY:
                torch.cuda.empty_cache()
            save()


def generate_cases(res, hidden, ms, save, contenders):
    for B, P, N in GEN:
        case = f"generate B{B} prompt{P} new{N}"
        torch.manual_seed(2)
        ids = torch.randint(3, VOCAB, (B, P), device=DEV)
        for name in ("hfzoo", "fla"):
            if name not in ms or name not in contenders:
                continue
            model = ms[name].eval()

            def gen(n):
                with torch.no_grad():
                    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                          min_new_tokens=n, do_sample=False, pad_token_id=0)

            try:
                t0 = time.perf_counter()
                out = gen(min(N, 4))  # warm-up: compiles the prefill and the decoding step
                if out.shape[1] != P + min(N, 4):
                    raise RuntimeError(f"generate returned {out.shape[1] - P} new tokens, not {min(N, 4)}")
                if not DRY:
                    torch.cuda.synchronize()
                print(f"{case} {name}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
                s = common.wall_s(lambda: (gen(N), None if DRY else torch.cuda.synchronize()))
                res.add(case, name, "tokens/s", B * N / s, hidden=hidden, layers=LAYERS)
            except Exception as e:
                print(f"{case} {name} failed: {repr(e)[:300]}")
            model.train()
            save()


def add_ratios(res):
    """hfzoo over fla for every case measured by both: ``x_<peer>`` (ms), ``x_<peer>_peak_gb``, ``x_fla_tokens/s``."""
    for case in dict.fromkeys(r["case"] for r in res.rows):
        if case.startswith("train"):
            for ours in ("hfzoo", "hfzoo_fused_ce"):
                for theirs in ("fla", "fla_unfused"):
                    _ratio(res, case, "ms", ours, theirs)
                    _ratio(res, case, "peak_gb", ours, theirs)
        else:
            pick = {r["contender"]: r for r in res.rows if r["case"] == case and r["metric"] == "tokens/s"}
            if "hfzoo" in pick and "fla" in pick:
                res.add(case, "hfzoo", "x_fla_tokens/s", pick["hfzoo"]["value"] / pick["fla"]["value"],
                        hidden=pick["hfzoo"]["hidden"], layers=LAYERS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-fla", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-generate", action="store_true")
    ap.add_argument("--hidden", default=None, help="comma-separated hidden sizes of the train cases (default 2048,1024)")
    ap.add_argument("--generate-hidden", type=int, default=None, help="hidden size of the generate cases (2048)")
    ap.add_argument("--name", default="gla_model", help="results file name (default gla_model)")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU, rows not kept")
    args = ap.parse_args()
    hiddens = [int(h) for h in args.hidden.split(",")] if args.hidden and not DRY else HIDDENS
    gen_hidden = args.generate_hidden if args.generate_hidden and not DRY else GEN_HIDDEN
    res = Results(f"{args.name}_dryrun" if DRY else args.name)
    out_dir = tempfile.mkdtemp() if DRY else None

    def save():
        return res.save(out_dir, plot_metric=None)

    todo = [] if args.no_train else list(hiddens)
    if not args.no_generate and gen_hidden not in todo:
        todo.append(gen_hidden)
    # every hfzoo row first, fla's after them: fla's kernels compile and autotune for minutes on a fresh machine,
    # and a time limit must not cost hfzoo's rows. The models are rebuilt per hidden size (same seed, same
    # weights; fla's model is built in both passes, as hfzoo's weights are converted from it).
    passes = [("hfzoo", "hfzoo_fused_ce")] + ([] if args.no_fla else [("fla", "fla_unfused")])
    for contenders in passes:
        for hidden in todo:
            ms = models(hidden, want_fla=not args.no_fla)
            if hidden in hiddens and not args.no_train:
                train_cases(res, hidden, ms, save, contenders)
            if hidden == gen_hidden and not args.no_generate:
                generate_cases(res, hidden, ms, save, contenders)
            ms = None
            if not DRY:
                torch.cuda.empty_cache()
    add_ratios(res)
    print("saved", res.save(out_dir, plot_metric=None if DRY else "ms"))


if __name__ == "__main__":
    main()
