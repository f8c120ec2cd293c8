"""GLA kernels on the GPU: hfzoo's chunk_gla / fused_recurrent_gla vs fla's and vs SDPA flash attention.

Run on the GPU machine (fla's pure-Python wheels carried, see benchmarks/NOTES.md):
    PYTHONPATH=. HFZOO_BENCH_OUT=$OUT python benchmarks/gla.py [--quick] [--no-fla] [--sweep]
``--dry-run`` runs the whole script on the CPU at toy sizes (fp32, Triton interpreter) to check its logic;
its rows go to a temporary folder, never to results/.

Cases (bf16, 32k tokens per batch): ``fwd``/``fwdbwd B.. T.. H.. K.. V.. bf16 gate=<regime>`` for T =
2048/8192/16384, (H, K, V) = (16, 128, 128), (4, 256, 512) and three gate regimes (``GATES``): fla's layer
default ``logsigmoid/16``, the strong ``logsigmoid`` (no normaliser) and a per-channel ``mixed`` one;
``decode B.. H4 K256 V512`` (one token with a state); cold start rows (first call, compilation included, and
the first call at a new length). Rows with metric ``x_fla`` are hfzoo time / fla time,
``x_floor`` the forward's time over its memory floor (bytes of q, k, v, g, o at 4.27 TB/s).
"""

# ruff: noqa: B023  (the lambdas below are timed on the spot, inside their loop iteration)
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
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.common import Results  # noqa: E402
from hfzoo.ops.gla import chunk_gla, fused_recurrent_gla  # noqa: E402
from hfzoo.ops.launch import tuning  # noqa: E402

COPY_TBPS = 4.27  # measured H200 device-to-device copy rate (ARCHITECTURE.md)
if DRY:
    DEV, DT, TOKENS = "cpu", torch.float32, 128
    SHAPES, LENGTHS, DECODE = [(2, 16, 16), (1, 32, 64)], [64, 128], (2, 16, 32)
else:
    DEV, DT, TOKENS = "cuda", torch.bfloat16, 32768
    SHAPES, LENGTHS, DECODE = [(16, 128, 128), (4, 256, 512)], [2048, 8192, 16384], (4, 256, 512)


bench_ms, first_call_s, peak_gb = common.timers(DRY)
_OUT = tempfile.mkdtemp() if DRY else None


def _save(res):
    return res.save(_OUT, plot_metric=None if DRY else "ms")


def _fla():
    try:
        from fla.ops.gla import chunk_gla as fla_chunk
        from fla.ops.gla import fused_recurrent_gla as fla_recurrent

        return fla_chunk, fla_recurrent
    except Exception as e:  # fla not carried: its rows are left out
        print("fla unavailable:", repr(e)[:200])
        return None, None


def _mixed(x):
    # per key channel a normaliser between 1 and 16 (log-spaced, channels shuffled): fast- and slow-forgetting
    # channels side by side, as in trained models
    K = x.shape[-1]
    tau = 16.0 ** torch.linspace(0, 1, K)[torch.randperm(K, generator=torch.Generator().manual_seed(0))]
    return F.logsigmoid(x) / tau.to(x.device)


# gate regimes: log decays from fla's layer (logsigmoid / 16), without its normaliser (per-token log decay to
# about -10; ~-0.8 on average, so a 64-token chunk decays ~e^-50), and a per-channel mixture of the two
GATES = {"logsigmoid/16": lambda x: F.logsigmoid(x) / 16, "logsigmoid": F.logsigmoid, "mixed": _mixed,
         # stronger still (beyond the regimes): ~-1.6 and ~-3.2 per token, every chunk past e^-80, so the
         # sub-chunk matmuls run (x2: diagonal blocks by matmul too; x4: diagonal blocks elementwise)
         "logsigmoid*2": lambda x: 2 * F.logsigmoid(x), "logsigmoid*4": lambda x: 4 * F.logsigmoid(x)}


def _inputs(B, T, H, K, V, dt=DT, grad=True, gate="logsigmoid/16"):
    dev = DEV
    q = torch.randn(B, T, H, K, device=dev, dtype=dt, requires_grad=grad)
    k = torch.randn(B, T, H, K, device=dev, dtype=dt, requires_grad=grad)
    v = torch.randn(B, T, H, V, device=dev, dtype=dt, requires_grad=grad)
    g = GATES[gate](torch.randn(B, T, H, K, device=dev)).requires_grad_(grad)
    return q, k, v, g


def _fwd_bytes(B, T, H, K, V):
    # q, k, v and o in bf16, g in fp32: what the forward must read and write at least
    return B * T * H * (2 * K * 2 + V * 2 + K * 4 + V * 2)


def _time_pair(res, case_fwd, case_fb, name, fn, q, k, v, g, do):
    def fwd():
        with torch.no_grad():
            return fn(q, k, v, g)[0]

    def fb():
        o = fn(q, k, v, g)[0]
        o.backward(do)

    try:
        t_f = bench_ms(fwd)
        res.add(case_fwd, name, "ms", t_f)
        t_fb = bench_ms(fb)
        res.add(case_fb, name, "ms", t_fb)
        return t_f, t_fb
    except Exception as e:
        print(f"{name} failed: {repr(e)[:300]}")
        return None, None


def _tag(H, K, V, T):
    B = max(1, TOKENS // T)
    return B, f"B{B} T{T} H{H} K{K} V{V} {str(DT)[6:].replace('bfloat16', 'bf16')}"


def cold_start(res, name, fn):
    # the first call in this process: compilation (and autotuning, for fla) of the forward and backward; then the
    # first call at a new length (what a user meets at every new sequence length). For hfzoo also each kernel's
    # first launch (its compile), measured by synchronising around it.
    (H, K, V) = SHAPES[0]
    per_kernel = {}
    restore = _time_first_launches(per_kernel) if name == "hfzoo" else None
    try:
        for T in (32 * TOKENS // 256, 32 * TOKENS // 256 + 1000):
            q, k, v, g = _inputs(1, T, H, K, V, gate="logsigmoid")
            do = torch.randn_like(v)
            per_kernel.clear()
            res.add(f"coldstart fwdbwd T{T} H{H} K{K} V{V}", name, "s",
                    first_call_s(lambda: fn(q, k, v, g)[0].backward(do)))
            for kernel, s in per_kernel.items():
                res.add(f"coldstart fwdbwd T{T} H{H} K{K} V{V} kernel={kernel}", name, "s", s)
    finally:
        if restore:
            restore()


def cold_start_fresh(res):
    """hfzoo's cold start in a new process with an empty Triton cache (this process's cache may hold its kernels
    already, e.g. from the GPU tests); its rows are added to ``res``."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(tmp, "cache"), HFZOO_BENCH_OUT=tmp)
        cmd = [sys.executable, os.path.abspath(__file__), "--parts", "cold", "--no-fla", "--cold-here",
               "--name", "gla_cold"] + (["--dry-run"] if DRY else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        print(proc.stdout[-3000:], proc.stderr[-3000:] if proc.returncode else "", flush=True)
        path = os.path.join(tmp, "gla_dryrun.json" if DRY else "gla_cold.json")
        if not DRY and os.path.exists(path):
            for row in json.load(open(path))["rows"]:
                res.add(**row)


def _time_first_launches(out):
    """Time (synchronised) the first launch of each hfzoo GLA kernel with a new key into ``out``; returns undo."""
    from hfzoo.ops import gla_chunk

    orig = gla_chunk.launch
    seen = set()

    def timed(name, kernel, grid, *args, **kwargs):
        key = (name, tuple(sorted((k, v) for k, v in kwargs.items() if isinstance(v, (bool, int, str)))))
        if key in seen or DRY:
            return orig(name, kernel, grid, *args, **kwargs)
        seen.add(key)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = orig(name, kernel, grid, *args, **kwargs)
        torch.cuda.synchronize()
        label = name.split(".", 1)[1]
        if label == "prep":
            label += "_from_gc" if kwargs.get("FROM_GC") else "_from_g"
        if kwargs.get("FORMS"):  # the pairs of intra-chunk kernels: 1 whole-chunk form, 2 sub-chunk forms
            label += "_whole" if kwargs["FORMS"] == 1 else "_sub"
        out[label] = out.get(label, 0.0) + time.perf_counter() - t0
        return r

    gla_chunk.launch = timed
    return lambda: setattr(gla_chunk, "launch", orig)


def chunk_cases(res, name, fn, lengths, shapes, gates, sdpa=False):
    times = {}
    for H, K, V in shapes:
        for T, gate in ((T, gate) for T in lengths for gate in gates):
            B, tag = _tag(H, K, V, T)
            tag = f"{tag} gate={gate}"
            q, k, v, g = _inputs(B, T, H, K, V, gate=gate)
            do = torch.randn_like(v)
            times[tag] = _time_pair(res, f"fwd {tag}", f"fwdbwd {tag}", name, fn, q, k, v, g, do)
            if name == "hfzoo":
                floor = _fwd_bytes(B, T, H, K, V) / (COPY_TBPS * 1e12) * 1e3
                res.add(f"fwd {tag}", "memory_floor", "ms", floor)
                if times[tag][0]:
                    res.add(f"fwd {tag}", "hfzoo", "x_floor", times[tag][0] / floor)
            res.add(f"fwdbwd {tag}", name, "peak_gb", peak_gb(lambda: fn(q, k, v, g)[0].backward(do)))
            q = k = v = g = do = None
            if sdpa and (H, K, V) == SHAPES[0] and gate == gates[0]:  # no gates: once per length
                # flash attention at the same tokens and width: 16 heads x 128
                qs, ks, vs = (torch.randn(B, 16, T, 128, device=DEV, dtype=DT,
                                          requires_grad=True) for _ in range(3))
                dos = torch.randn_like(qs)
                sd = lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
                _time_pair(res, f"fwd {tag}", f"fwdbwd {tag}", "sdpa", lambda a, b, c, d: (sd(),),
                           None, None, None, None, dos)
                qs = ks = vs = dos = None
            if not DRY:
                torch.cuda.empty_cache()
            _save(res)
    return times


def ratios(res, ours, theirs):
    for tag, (f1, fb1) in ours.items():
        f2, fb2 = theirs.get(tag, (None, None))
        for kind, a, b in (("fwd", f1, f2), ("fwdbwd", fb1, fb2)):
            if a and b:
                res.add(f"{kind} {tag}", "hfzoo", "x_fla", a / b)


def decode_cases(res, name, fn):
    H, K, V = DECODE
    times = {}
    for B in (1, 64):
        case = f"decode B{B} H{H} K{K} V{V}"
        q, k, v, g = _inputs(B, 1, H, K, V, grad=False)
        s = torch.randn(B, H, K, V, device=DEV)
        t = bench_ms(lambda: fn(q, k, v, g, s))
        res.add(case, name, "ms", t)
        res.add(case, name, "tokens/s", B / t * 1e3)
        times[case] = t
    return times


def accuracy(res, name, fn, gate):
    # relative RMS error of the output and every gradient against the chunked reference in fp64
    from hfzoo.ops.gla import chunk_gla_torch

    B, T, (H, K, V) = 2, 1024 if not DRY else 100, SHAPES[0]
    torch.manual_seed(0)
    q, k, v, g = _inputs(B, T, H, K, V, gate=gate)
    do = torch.randn_like(v)
    outs = []
    for f, ins in ((fn, (q, k, v, g)), (chunk_gla_torch, [t.detach().double().requires_grad_() for t in (q, k, v, g)])):
        o = f(*ins)[0]
        grads = torch.autograd.grad(o, ins, do.to(o.dtype))
        outs.append([o, *grads])
    for what, a, b in zip(["o", "dq", "dk", "dv", "dg"], *outs):
        err = ((a.double() - b).norm() / b.norm()).item()
        res.add(f"accuracy vs fp64 B{B} T{T} H{H} K{K} V{V} gate={gate} {what}", name, "rel_err", err)


# Launch settings tried by --sweep, by group (one kernel or a pair each); "default" is the library's setting.
# Device runs 4 and 6 tried prep 8 warps / BK 32 / 2 warps, scans 8 warps (BV 64/128) and 2 stages, o BV=64 /
# 4 warps / 1 stage / BK 128, the A kernel with 8 warps, dv BV=64/4 warps, dqk 8 warps / BV=128 / 1 stage
# (results/gla_sweep.json, NOTES.md). Now the dq/dk kernel only: 8 warps, BK 32, and one kernel per intra form
# ("split": the whole-chunk kernel without the sub-chunk code, and a sub-chunk kernel, "sub_BK" its own key
# block), at ordinary and strong gates.
SWEEP = {
    "dqk": {"dqk_w8": {"gla.bwd_dqk": {"num_warps": 8}}, "dqk_bk32": {"gla.bwd_dqk": {"BK": 32}},
            "dqk_split": {"gla.bwd_dqk": {"split": True}},
            "dqk_split_w8": {"gla.bwd_dqk": {"split": True, "num_warps": 8}},
            "dqk_split_bk32": {"gla.bwd_dqk": {"split": True, "BK": 32}},
            "dqk_split_sub32": {"gla.bwd_dqk": {"split": True, "sub_BK": 32}},
            "dqk_split_w8_sub32": {"gla.bwd_dqk": {"split": True, "num_warps": 8, "sub_BK": 32}}},
}
SWEEP_GATES = ("logsigmoid/16", "logsigmoid", "logsigmoid*2")


# Launch variants timed beside the defaults in every full run (rows "variant fwd ..." / "variant fwdbwd ..."): the
# dq/dk pair (default; its sub-chunk kernel at 8 warps, BK 64) against one kernel holding both intra forms (the
# mid-round default) and its sub-chunk kernel at 4 warps or BK 32; the forward's A as a pair too (both at 8 warps,
# or the sub-chunk one only), at ordinary and strong gates.
VARIANTS = {"hfzoo_dqk_one_kernel": {"gla.bwd_dqk": {"split": False}},
            "hfzoo_dqk_sub_w4": {"gla.bwd_dqk": {"sub_num_warps": 4}},
            "hfzoo_dqk_sub_bk32": {"gla.bwd_dqk": {"sub_BK": 32}},
            "hfzoo_A_split_w8": {"gla.fwd_A": {"split": True, "num_warps": 8}},
            "hfzoo_A_split_sub_w8": {"gla.fwd_A": {"split": True, "sub_num_warps": 8}},
            "hfzoo_mid_round": {"gla.bwd_dqk": {"split": False}}}


def variant_cases(res):
    T = LENGTHS[1]
    for H, K, V in SHAPES:
        for gate in ("logsigmoid/16", "logsigmoid*2"):
            B = TOKENS // T
            q, k, v, g = _inputs(B, T, H, K, V, gate=gate)
            do = torch.randn_like(v)
            case = f"variant fwdbwd B{B} T{T} H{H} K{K} V{V} {str(DT)[6:].replace('bfloat16', 'bf16')} gate={gate}"
            for name, tune in (("hfzoo", {}), *VARIANTS.items()):
                try:
                    with tuning(tune):
                        res.add(case, name, "ms", bench_ms(lambda: chunk_gla(q, k, v, g)[0].backward(do)))
                        with torch.no_grad():
                            res.add(case.replace("fwdbwd", "fwd", 1), name, "ms", bench_ms(lambda: chunk_gla(q, k, v, g)[0]))
                except Exception as e:
                    print(f"variant {name} failed: {repr(e)[:300]}")
            q = k = v = g = do = None
            _save(res)


def sweep(res):
    """Time each launch variant (fwd+bwd, T=8192, both shapes, SWEEP_GATES); keep, per group, the one with the least total
    time if it beats the default by more than 2%; write the kept settings to gla_tune.json (the HFZOO_TUNE format)."""
    import json

    T = LENGTHS[1]
    totals = {}
    for H, K, V, gate in ((*shape, gate) for shape in SHAPES for gate in SWEEP_GATES):
        B = TOKENS // T
        q, k, v, g = _inputs(B, T, H, K, V, gate=gate)
        do = torch.randn_like(v)
        todo = [("default", "default", {})] + [(grp, name, tune) for grp, variants in SWEEP.items()
                                               for name, tune in variants.items()]
        for grp, name, tune in todo:
            try:
                with tuning(tune):
                    t = bench_ms(lambda: chunk_gla(q, k, v, g)[0].backward(do))
            except Exception as e:
                print(f"variant {name} failed: {repr(e)[:300]}")
                t = float("inf")
            else:
                res.add(f"sweep fwdbwd B{B} T{T} H{H} K{K} V{V} bf16 gate={gate}", f"hfzoo_{name}", "ms", t)
            totals.setdefault((grp, name), []).append((t, tune))
        q = k = v = g = do = None
        _save(res)
    base = sum(t for t, _ in totals[("default", "default")])
    chosen = {}
    for grp in SWEEP:
        best = min(((sum(t for t, _ in runs), name, runs) for (g_, name), runs in totals.items() if g_ == grp),
                   default=None)
        if best and best[0] < 0.98 * base:
            print(f"sweep: {grp} -> {best[1]} ({best[0]:.3f} vs {base:.3f} ms)")
            for key, val in best[2][0][1].items():
                chosen.setdefault(key, {}).update(val)
    if chosen:  # the groups were timed one at a time: check the combination against the default
        combo = default = 0.0
        for H, K, V, gate in ((*shape, gate) for shape in SHAPES for gate in SWEEP_GATES):
            B = TOKENS // T
            q, k, v, g = _inputs(B, T, H, K, V, gate=gate)
            do = torch.randn_like(v)
            for name, tune in (("combined", chosen), ("default", {})):
                with tuning(tune):
                    t = bench_ms(lambda: chunk_gla(q, k, v, g)[0].backward(do))
                res.add(f"sweep fwdbwd B{B} T{T} H{H} K{K} V{V} bf16 gate={gate}", f"hfzoo_{name}", "ms", t)
                if name == "combined":
                    combo += t
                else:
                    default += t
            q = k = v = g = do = None
        print(f"sweep: combined {combo:.3f} ms vs default {default:.3f} ms")
        if combo >= default:
            chosen = {}
    out = os.environ.get("HFZOO_BENCH_OUT")
    if out and not DRY:
        with open(os.path.join(out, "gla_tune.json"), "w") as f:
            json.dump(chosen, f)
    print("sweep: chosen", chosen)
    return chosen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="T=8192 only")
    ap.add_argument("--no-fla", action="store_true", help="leave fla out (its first call autotunes for minutes)")
    ap.add_argument("--sweep", action="store_true", help="also time a few launch configurations")
    ap.add_argument("--sweep-only", action="store_true", help="only the sweep (rows in gla_sweep.json)")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (interpreter), rows not kept")
    ap.add_argument("--gates", default=",".join(GATES), help="comma-separated gate regimes (GATES)")
    ap.add_argument("--lengths", default=None, help="comma-separated T (default 2048,8192,16384; --quick: 8192)")
    ap.add_argument("--parts", default="cold,chunk,decode,accuracy,variants",
                    help="comma-separated parts to run (cold,chunk,decode,accuracy: hfzoo and fla; variants: hfzoo's "
                         "launch variants)")
    ap.add_argument("--name", default=None, help="results file name (default gla, or gla_sweep with --sweep-only)")
    ap.add_argument("--cold-here", action="store_true",
                    help="hfzoo's cold start in this process and its Triton cache (default: a fresh process and cache)")
    args = ap.parse_args()
    lengths = LENGTHS[1:2] if args.quick else LENGTHS
    if args.lengths and not DRY:
        lengths = [int(t) for t in args.lengths.split(",")]
    gates = args.gates.split(",")
    parts = set(args.parts.split(","))
    known = {"cold", "chunk", "decode", "accuracy", "variants"}
    if parts - known:
        ap.error(f"unknown parts {sorted(parts - known)}")
    if args.sweep_only:
        res = Results("gla_dryrun" if DRY else (args.name or "gla_sweep"))
        sweep(res)
        print("saved", _save(res))
        return
    res = Results("gla_dryrun" if DRY else (args.name or "gla"))
    if os.environ.get("HFZOO_TUNE"):
        print("launch settings from HFZOO_TUNE:", os.environ["HFZOO_TUNE"])
    # hfzoo first, so its rows survive a timeout during fla's autotuning
    ours, ours_dec = {}, {}
    if "cold" in parts:
        if args.cold_here:
            cold_start(res, "hfzoo", chunk_gla)
        else:
            cold_start_fresh(res)
    if "chunk" in parts:
        ours = chunk_cases(res, "hfzoo", chunk_gla, lengths, SHAPES, gates, sdpa=True)
    if "decode" in parts:
        ours_dec = decode_cases(res, "hfzoo", lambda q, k, v, g, s: fused_recurrent_gla(
            q, k, v, g, initial_state=s, output_final_state=True))
    if "accuracy" in parts:
        for gate in gates:
            accuracy(res, "hfzoo", chunk_gla, gate)
    if "variants" in parts:
        variant_cases(res)
    _save(res)
    if args.sweep:  # before fla, whose first call autotunes for minutes
        sweep(res)
    fla_chunk, fla_recurrent = (None, None) if (args.no_fla or DRY) else _fla()
    if fla_chunk is not None:
        if "cold" in parts:
            cold_start(res, "fla", fla_chunk)
        if "chunk" in parts:
            theirs = chunk_cases(res, "fla", fla_chunk, lengths, SHAPES, gates)
            ratios(res, ours, theirs)
        if "decode" in parts:
            theirs_dec = decode_cases(res, "fla", lambda q, k, v, g, s: fla_recurrent(
                q, k, v, gk=g, initial_state=s, output_final_state=True))
            for case, t in ours_dec.items():
                res.add(case, "hfzoo", "x_fla", t / theirs_dec[case])
        if "accuracy" in parts:
            for gate in gates:
                accuracy(res, "fla", fla_chunk, gate)
        _save(res)
    print("saved", _save(res))


if __name__ == "__main__":
    main()
