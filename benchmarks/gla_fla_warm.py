"""Fill the Triton cache with fla's compiled kernels for the GLA benchmarks, several processes side by side.

fla's kernels autotune on their first call: Triton compiles every config of every kernel one after the other
(minutes on a bare machine: more than 4.5 minutes for one ``chunk_gla`` shape in the device run of 2026-12-01) and
then times each. Compiling is the long part and it only needs a CPU core. Here process ``i`` of ``n`` runs the same
fla workloads as ``benchmarks/gla_model.py`` and ``benchmarks/gla.py`` with every autotuned kernel restricted to
its configs ``i, i + n, ...``, so ``n`` processes compile all configs in parallel into the shared cache
(``TRITON_CACHE_DIR``). The benchmark that follows autotunes over fla's full config lists as usual: its compiles are
cache hits and it only times the configs, on a GPU it has to itself. Nothing here is timed or recorded.

    TRITON_CACHE_DIR=/tmp/tc python benchmarks/gla_fla_warm.py --parallel 12 --seconds 300
        [--what kernels,train2048,generate,train1024]

runs 12 such processes for at most 300 s, then (in what is left of the time) one process over the full config lists,
which times the configs and stores fla's picks in the cache (Triton's ``cache_results``, on by default in fla), so
the benchmarks that follow neither compile nor autotune. ``--part i --of n`` is one process.

The workloads use the benchmarks' dtypes, head layouts, lengths and (where fla's kernels specialise on them)
batch sizes; in the parallel parts the training steps run at batch 1 instead of 4 to leave GPU memory for the other
processes (fla's chunked kernels take B only inside B*T, except the small cumsum kernels, which compile in seconds);
the full pass runs the benchmarks' batch, so fla's picks are made on the benchmarked problem.
Measured on the H200 (2026-12-01): 6 processes for 85 s plus one for 100 s did not get through the compile of one
``GLAForCausalLM`` training step at hidden 2048 (fla's forward kernels were done, its backward ones not).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--part", type=int, default=0)
ap.add_argument("--of", type=int, default=1)
ap.add_argument("--parallel", type=int, default=0, help="run this many parts side by side, then one full pass")
ap.add_argument("--seconds", type=float, default=300.0, help="with --parallel: time limit of the whole")
ap.add_argument("--what", default="kernels,train2048,generate,train1024")
ap.add_argument("--dry-run", action="store_true", help="the CPU check of gla_model.py's --dry-run (hidden 32)")
if len(sys.argv) == 1:  # e.g. benchmarks/run_all.py, which runs every script here: not a benchmark, no device time
    print(__doc__.split("\n\n")[0] + "\nNothing to do without arguments; see --help.")
    sys.exit(0)
args = ap.parse_args()
if args.dry_run:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _parallel():
    """``--parallel N``: N parts side by side, then one pass over the full config lists, within ``--seconds``."""
    import subprocess

    t0 = time.perf_counter()
    base = [sys.executable, os.path.abspath(__file__), "--what", args.what] + (["--dry-run"] if args.dry_run else [])
    procs = [subprocess.Popen(base + ["--part", str(i), "--of", str(args.parallel)]) for i in range(args.parallel)]
    full_share = 0.35  # of the time, kept for the pass that times fla's configs
    for p in procs:
        try:
            p.wait(timeout=max(1.0, (1 - full_share) * args.seconds - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    print(f"[warm] {args.parallel} parts done after {time.perf_counter() - t0:.0f} s", flush=True)
    full = subprocess.Popen(base + ["--part", "0", "--of", "1"])
    try:
        full.wait(timeout=max(1.0, args.seconds - (time.perf_counter() - t0)))
    except subprocess.TimeoutExpired:
        full.kill()
        full.wait()
    print(f"[warm] full pass rc={full.returncode} after {time.perf_counter() - t0:.0f} s", flush=True)


if args.parallel:
    _parallel()
    sys.exit(0)

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
        # batch 1 in the parallel parts (memory); the full pass, which picks fla's configs, at the benchmark's batch
        B = gm.TRAIN[0][0] if args.of == 1 else 1
        ids = torch.randint(3, gm.VOCAB, (B, gm.TRAIN[0][1]), device=gm.DEV)
        try:
            loss = m(input_ids=ids, labels=ids).loss
            _sync()
            _log(f"train{hidden} fused_ce={fused} forward", T0)
            loss.backward()
            _log(f"train{hidden} fused_ce={fused} backward", T0)
        except Exception as e:
            print(f"[warm {args.part}/{args.of}] train{hidden} fused_ce={fused} failed: {repr(e)[:300]}", flush=True)
        _sync()
        if fused:  # generate reuses this model's kernels (2048 only)
            yield m
        del m


def generate_model():
    """fla's model as ``benchmarks/gla_model.py`` generates with (its default options, the generate cases' hidden
    size), for ``--what generate`` without the training workload of that size."""
    import fla.models as fla_models

    from benchmarks import gla_model as gm

    fields = {k: v for k, v in gm.fla_config(gm.GEN_HIDDEN).items() if k != "model_type"}
    torch.manual_seed(0)
    return fla_models.GLAForCausalLM(fla_models.GLAConfig(**fields)).to(gm.DEV, gm.DT)


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
        _sync()
        _log(f"kernels H{H} K{K} V{V}", T0)
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


T0 = time.perf_counter()


def main():
    t0 = T0
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
            elif what == "generate":
                if f"train{gm_gen_hidden()}" not in args.what.split(","):   # else done with that model above
                    generate(generate_model())
            else:
                raise ValueError(f"unknown workload {what!r}")
            _log(what, t0)
        except Exception as e:  # keep warming the others
            print(f"[warm {args.part}/{args.of}] {what} failed: {repr(e)[:300]}", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
