"""MoM on the GPU: the mixture-of-memories layer (one packed varlen launch) vs a GLA layer of the same width and vs
a loop of per-memory ``chunk_gla`` calls (the MoM repository's approach), plus whole-model training steps and
first-call (cold start) times.

    PYTHONPATH=. HFZOO_BENCH_OUT=$OUT python benchmarks/mom.py [--quick]
``--dry-run`` runs the whole script on the CPU at toy sizes (fp32, Triton interpreter) to check its logic; its
rows go to a temporary folder, never to results/.

Cases (bf16): ``layer fwdbwd B.. T.. d1024 H4 M4 top2+shared`` -- contenders ``hfzoo`` (MoM layer),
``hfzoo_gla`` (GLA layer, same width and heads: one memory), ``loop_chunk_gla`` (the same MoM layer whose
recurrence is one ``chunk_gla`` call per memory over every row at full length, as with capacity 1.0 in the MoM
repository); ``x_gla`` rows give MoM time / GLA time (target <= 2). ``train B.. T.. d1024 L4`` -- one
optimizer step of MoMForCausalLM vs GLAForCausalLM (16k tokens per batch): ``ms`` and peak ``GB``.
``coldstart ...`` -- the first MoM layer fwd+bwd in the process and the first at a new length (``s``).
"""

# ruff: noqa: B023  (the lambdas below are timed on the spot, inside their loop iteration)
from __future__ import annotations

import argparse
import os
import sys
import tempfile

DRY = "--dry-run" in sys.argv
if DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.common import Results  # noqa: E402
from hfzoo.models.gla import GLAConfig, GLAForCausalLM  # noqa: E402
from hfzoo.models.gla.modeling_gla import GatedLinearAttention  # noqa: E402
from hfzoo.models.mom import MoMConfig, MoMForCausalLM  # noqa: E402
from hfzoo.models.mom.modeling_mom import GLAMemoryBackend, MixtureOfMemories  # noqa: E402
from hfzoo.ops.dispatch import use_backend  # noqa: E402
from hfzoo.ops.gla import chunk_gla  # noqa: E402

if DRY:
    DEV, DT, D, VOCAB, LAYERS = "cpu", torch.float32, 64, 256, 1
    LAYER_CASES, TRAIN_CASES, NEW_T = [(2, 64)], [(2, 64)], 96
else:
    DEV, DT, D, VOCAB, LAYERS = "cuda", torch.bfloat16, 1024, 32000, 4
    LAYER_CASES, TRAIN_CASES, NEW_T = [(8, 2048), (2, 8192)], [(8, 2048), (2, 8192)], 3000


bench_ms, first_call_s, peak_gb = common.timers(DRY)


class LoopGLABackend(GLAMemoryBackend):
    """The MoM repository's schedule: one ``chunk_gla`` call per memory, each over all rows at full length
    (a row's tokens for that memory first, zeros after; capacity 1.0 keeps every token)."""

    @staticmethod
    def recurrence(q, inputs, initial_state, batch, output_final_state, step):
        k, v, g = inputs
        N, S = batch.num_sequences, len(batch.lengths) // batch.num_sequences
        T = batch.slots.shape[1] // N
        index, L = batch.dense_index()
        # the same entries in an [S * N, T] layout (one chunk_gla call per state below)
        row, col = index // L, index % L
        flat = row * T + col
        outs = []
        for s in range(S):
            mine = (row >= s * N) & (row < (s + 1) * N)
            idx = flat[mine] - s * N * T
            dense = [t.new_zeros(N * T, *t.shape[1:]).index_copy(0, idx, t[mine]).view(N, T, *t.shape[1:])
                     for t in (q, k, v, g)]
            o_s, _ = chunk_gla(*dense)
            outs.append((mine, o_s.flatten(0, 1)[idx]))
        o = v.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
        for mine, o_s in outs:
            o[mine] = o_s
        return o, None


def mom_config(**kw):
    return MoMConfig(vocab_size=VOCAB, hidden_size=D, expand_k=0.5, expand_v=1.0, num_heads=4,
                     num_hidden_layers=LAYERS, num_memories=4, topk=2, shared_mem=True, tie_word_embeddings=True,
                     **kw)


def gla_config():
    return GLAConfig(vocab_size=VOCAB, hidden_size=D, expand_k=0.5, expand_v=1.0, num_heads=4,
                     num_hidden_layers=LAYERS, tie_word_embeddings=True)


def layer_step(layer, x, w):
    def run():
        out = layer(x)
        out = out[0] if isinstance(out, tuple) else out
        (out.float() * w).sum().backward()
    return run


_DRY_OUT = tempfile.mkdtemp() if DRY else None


def save(res):
    return res.save(_DRY_OUT, plot_metric=None if DRY else "ms")


def train_step(model, ids):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run():
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="first case only")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (interpreter), rows not kept")
    args = ap.parse_args()
    res = Results("mom")
    torch.manual_seed(0)
    ctx = use_backend("triton") if DRY else use_backend("auto")
    with ctx:
        mom = MixtureOfMemories(mom_config(), 0).to(DEV, DT)
        gla = GatedLinearAttention(gla_config(), 0).to(DEV, DT)
        loop = MixtureOfMemories(mom_config(), 0).to(DEV, DT)
        loop.load_state_dict(mom.state_dict())
        loop.backend = LoopGLABackend
        layer_cases = LAYER_CASES[:1] if args.quick else LAYER_CASES

        # cold start: the first MoM layer call in this process, then the first at a new length
        B, T = layer_cases[0]
        x = torch.randn(B, T, D, device=DEV, dtype=DT, requires_grad=True)
        w = torch.randn(B, T, D, device=DEV)
        res.add(f"coldstart layer fwdbwd B{B} T{T}", "hfzoo", "s", first_call_s(layer_step(mom, x, w)))
        x2 = torch.randn(B, NEW_T, D, device=DEV, dtype=DT, requires_grad=True)
        w2 = torch.randn(B, NEW_T, D, device=DEV)
        res.add(f"coldstart layer fwdbwd B{B} T{NEW_T} (new length)", "hfzoo", "s",
                first_call_s(layer_step(mom, x2, w2)))

        for B, T in layer_cases:
            case = f"layer fwdbwd B{B} T{T} d{D} H4 M4 top2+shared {'fp32' if DRY else 'bf16'}"
            x = torch.randn(B, T, D, device=DEV, dtype=DT, requires_grad=True)
            w = torch.randn(B, T, D, device=DEV)
            times = {}
            for name, layer in (("hfzoo", mom), ("hfzoo_gla", gla), ("loop_chunk_gla", loop)):
                times[name] = bench_ms(layer_step(layer, x, w))
                res.add(case, name, "ms", times[name])
            res.add(case, "hfzoo", "x_gla", times["hfzoo"] / times["hfzoo_gla"])
            res.add(case, "hfzoo", "x_loop", times["hfzoo"] / times["loop_chunk_gla"])
            with torch.no_grad():
                fwd = {n: bench_ms(lambda: l(x)) for n, l in (("hfzoo", mom), ("hfzoo_gla", gla))}
            for n, t in fwd.items():
                res.add(case.replace("fwdbwd", "fwd"), n, "ms", t)
            save(res)                   # after every case: a run cut short keeps what it measured
        del mom, gla, loop

        for B, T in (TRAIN_CASES[:1] if args.quick else TRAIN_CASES):
            case = f"train B{B} T{T} d{D} L{LAYERS} {'fp32' if DRY else 'bf16'}"
            ids = torch.randint(0, VOCAB, (B, T), device=DEV)
            for name, make in (("hfzoo", lambda: MoMForCausalLM(mom_config())),
                               ("hfzoo_gla", lambda: GLAForCausalLM(gla_config()))):
                torch.manual_seed(0)
                step = train_step(make().to(DEV, DT).train(), ids)
                step()
                ms = bench_ms(step)
                res.add(case, name, "ms", ms)
                res.add(case, name, "tokens/s", B * T / (ms / 1e3))
                res.add(case, name, "GB", peak_gb(step))
                step = None
                if not DRY:
                    torch.cuda.empty_cache()
            save(res)
    print(save(res))


if __name__ == "__main__":
    main()
