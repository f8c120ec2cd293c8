"""Fill the Triton cache with fla's compiled kernels for the GLA benchmarks, several processes side by side.

fla's kernels autotune on their first call: Triton compiles every config of every kernel one after the other
(minutes on a bare machine: more than 4.5 minutes for one ``chunk_gla`` shape in the device run of 2026-12-01) and
then times each. Compiling is the long part and it only needs a CPU core. Here process ``i`` of ``n`` runs the same
fla workloads as ``benchmarks/gla_model.py`` and ``benchmarks/gla.py`` with every autotuned kernel restricted to
its configs ``i, i + n, ...``, so ``n`` processes compile all configs in parallel into the shared cache
(``TRITON_CACHE_DIR``). The benchmark that follows autotunes over fla's full config lists as usual: its compiles are
cache hits and it only times the configs, on a GPU it has to itself. Nothing here is timed or recorded.

    TRITON_CACHE_DIR=/tmp/tc python benchmarks/gla_fla_warm.py --part 0 --of 5 [--what train2048,generate,kernels,train1024]

The workloads use the benchmarks' dtypes, head layouts, lengths and (where fla's kernels specialise on them)
batch sizes; the training steps run at batch 2 instead of 4 (Triton specialises integer arguments on divisibility
by 16 and on being 1, so 2 and 4 compile the same code) to leave GPU memory for the other processes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--part", type=int, required=True)
ap.add_argument("--of", type=int, required=True)
ap.add_argument("--what", default="train2048,generate,kernels,train1024")
ap.add_argument("--dry-run", action="store_true", help="the CPU check of gla_model.py's --dry-run (hidden 32)")
args = ap.parse_args()
if args.dry_run:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from triton.runtime import autotuner  # noqa: E402  (patched before fla defines its kernels)

_init = autotuner.Autotuner.__init__


def _subset_init(self, fn, arg_names, configs, *a, **kw):
    configs = list(configs)
    mine = configs[args.part::args.of] or configs[args.part % len(configs):][:1]
    if args.dry_run:  # the interpreter cannot benchmark: one config each
        mine = mine[:1]
    _init(self, fn, arg_names, mine, *a, **kw)


autotuner.Autotuner.__init__ = _subset_init

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _log(msg, t0):
    print(f"[warm {args.part}/{args.of}] {msg} {time.perf_counter() - t0:.1f} s", flush=True)


def train(hidden):
    import fla.models as fla_models

    from benchmarks import gla_model as gm

    fields = {k: v for k, v in gm.fla_config(hidden).items() if k != "model_type"}
    for fused in (True, False):
        torch.manual_seed(0)
        m = fla_models.GLAForCausalLM(fla_models.GLAConfig(**fields, fuse_cross_entropy=fused)).to(gm.DEV, gm.DT)
        ids = torch.randint(3, gm.VOCAB, (2, gm.TRAIN[0][1]), device=gm.DEV)
        try:
            m(input_ids=ids, labels=ids).loss.backward()
        except Exception as e:
            print(f"[warm {args.part}/{args.of}] train{hidden} fused_ce={fused} failed: {repr(e)[:300]}", flush=True)
        _sync()
        if fused:  # generate reuses this model's kernels (2048 only)
            yield m
        del m


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def generate(model):
    from benchmarks import gla_model as gm

    model.eval()
    for B, P, _ in gm.GEN:
        ids = torch.randint(3, gm.VOCAB, (B, P), device=gm.DEV)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, min_new_tokens=3,
                           do_sample=False, pad_token_id=0)
    _sync()


def kernels():
    from fla.ops.gla import chunk_gla, fused_recurrent_gla

    from benchmarks import gla as gb

    T = 8192
    for H, K, V in gb.SHAPES:
        B = gb.TOKENS // T
        q, k, v, g = gb._inputs(B, T, H, K, V, gate="logsigmoid")
        with torch.no_grad():
            chunk_gla(q, k, v, g)
        chunk_gla(q, k, v, g)[0].backward(torch.randn_like(v))
    H, K, V = gb.SHAPES[0]  # gla.py's cold-start shapes (B1, two lengths)
    for T in (32 * gb.TOKENS // 256, 32 * gb.TOKENS // 256 + 1000):
        q, k, v, g = gb._inputs(1, T, H, K, V, gate="logsigmoid")
        chunk_gla(q, k, v, g)[0].backward(torch.randn_like(v))
    H, K, V = gb.DECODE
    for B in (1, 64):
        q, k, v, g = gb._inputs(B, 1, H, K, V, grad=False)
        fused_recurrent_gla(q, k, v, gk=g, initial_state=torch.randn(B, H, K, V, device="cuda"),
                            output_final_state=True)
    torch.cuda.synchronize()


def gm_gen_hidden():
    from benchmarks import gla_model as gm

    return gm.GEN_HIDDEN


def main():
    t0 = time.perf_counter()
    if args.dry_run:
        args.what = "train32,generate"
    for what in args.what.split(","):
        try:
            if what.startswith("train"):
                hidden = int(what[5:])
                for m in train(hidden):
                    if hidden == gm_gen_hidden() and "generate" in args.what:
                        generate(m)
                        _log("generate", t0)
            elif what == "kernels":
                kernels()
            elif what != "generate":
                raise ValueError(f"unknown workload {what!r}")
            _log(what, t0)
        except Exception as e:  # keep warming the others
            print(f"[warm {args.part}/{args.of}] {what} failed: {repr(e)[:300]}", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
