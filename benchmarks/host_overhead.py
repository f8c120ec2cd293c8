"""Host time of kernel launches and what the fast launch path (``hfzoo.ops.launch``) changes, on an NVIDIA GPU.

    PYTHONPATH=. python benchmarks/host_overhead.py [launch] [models]

* ``launch``: host microseconds per call, tiny tensors so the GPU waits for the host: an aten ``add``; a 12-argument
  Triton kernel through ``kernel[grid](...)``; the same through ``launch.launch()`` with the fast path off and on;
  ``group_rational`` without and with gradients (fast path off / on). Case ``host us per call <what>``.
* ``models``: whole-model wall milliseconds, fast path off and on interleaved for three rounds in one process:
  KAT-S and ViT-S training step (batch 128) and inference (batch 256), MosaicBERT's MLM step and encoder inference,
  GLA ``generate`` (B1 and B64, 2048-token prompt, 64 new tokens, 4 layers at hidden 2048).

Contenders ``fast_off`` / ``fast_on`` (``launch.fast_launch(False / True)``; ops without gradients run without an
autograd node in both). Results in ``host_overhead.json``; the host's speed varies between machines and calls, so
compare the two contenders of one round, not rows of different runs.
"""

from __future__ import annotations

import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import Results, seconds_per_step  # noqa: E402
from hfzoo.ops import launch as L  # noqa: E402


def host_us(fn, n=3000):
    """Host microseconds per call of ``fn`` (n calls, then one synchronisation)."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    us = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return us


def _k12():
    import triton
    import triton.language as tl

    @triton.jit
    def k12(X, Y, Z, W, n, s1, s2, s3, s4, s5, s6, s7, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        tl.store(Y + i, tl.load(X + i, mask=m), mask=m)
    return k12


def bench_launch(res: Results, rounds: int = 2):
    from hfzoo.ops.group_rational import group_rational

    k12 = _k12()
    x = torch.randn(4096, device="cuda")
    y = torch.empty_like(x)
    args = (x, y, x, y, 4096, 1, 2, 3, 4, 5, 6, 7)
    xs = torch.randn(64, 384, device="cuda", requires_grad=True)
    a = torch.randn(1, 6, device="cuda", requires_grad=True)
    b = torch.randn(8, 4, device="cuda", requires_grad=True)
    dy = torch.ones(64, 384, device="cuda")

    def nograd():
        with torch.no_grad():
            group_rational(xs, a, b, 8)

    for r in range(rounds):
        res.add("host us per call aten add", "aten", "us", host_us(lambda: x.add(1.0)), round=r)
        res.add("host us per call 12-arg kernel", "triton_grid", "us",
                host_us(lambda: k12[(4,)](*args, BLOCK=1024, num_warps=4)), round=r)
        for on in (False, True):
            name = "fast_on" if on else "fast_off"
            with L.fast_launch(on):
                res.add("host us per call 12-arg kernel", f"launch_{name}", "us",
                        host_us(lambda: L.launch("rmsnorm.fwd", k12, (4,), *args, BLOCK=1024, num_warps=4)), round=r)
                res.add("host us per call group_rational no_grad", name, "us", host_us(nograd), round=r)
                res.add("host us per call group_rational fwd+bwd", name, "us",
                        host_us(lambda: torch.autograd.backward(group_rational(xs, a, b, 8), dy), 500), round=r)


def ab(res: Results, case: str, fn, n: int, rounds: int = 3):
    for r in range(rounds):   # interleaved: off, on, off, on, ...
        for on in (False, True):
            with L.fast_launch(on):
                res.add(case, "fast_on" if on else "fast_off", "ms", 1e3 * seconds_per_step(fn, n=n), round=r)


def _kat(res: Results, name: str, cfg: dict, px, lab):
    from hfzoo.models.kat import KATConfig, KATForImageClassification

    torch.manual_seed(0)
    m = KATForImageClassification(KATConfig.from_preset("kat_small", num_labels=1000, **cfg)).cuda()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(pixel_values=px[:128], labels=lab).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            m(pixel_values=px)

    m.train()
    ab(res, f"{name} train step bs128 bf16", step, 10)
    m.eval()
    ab(res, f"{name} infer bs256 bf16", infer, 10)


def _generate(res: Results, m, B: int):
    from benchmarks import gla_model as gm

    ids = torch.randint(3, gm.VOCAB, (B, 2048), device="cuda")

    def gen():
        with torch.no_grad():
            m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, min_new_tokens=64,
                       do_sample=False, pad_token_id=0)
    ab(res, f"GLA generate B{B} prompt2048 new64", gen, 2, rounds=2)


def bench_models(res: Results):
    from benchmarks import gla_model as gm
    from benchmarks import mosaicbert as mb

    px = torch.randn(256, 3, 224, 224, device="cuda")
    lab = torch.randint(0, 1000, (128,), device="cuda")
    for name, cfg in (("KAT-S", {}), ("ViT-S", dict(mlp_type="mlp"))):
        _kat(res, name, cfg, px, lab)
        gc.collect()
        torch.cuda.empty_cache()

    lengths, batch = mb.make_batch()
    torch.manual_seed(0)
    m = mb.build("hfzoo")
    ab(res, "MosaicBERT mlm step", mb.step_fn(m, batch), 20)
    for p in m.parameters():
        p.grad = None
    m.eval()
    ab(res, "MosaicBERT encoder inference", mb.encoder_fn(m, batch), 20)
    del m
    gc.collect()
    torch.cuda.empty_cache()

    m = gm.models(2048, False)["hfzoo"].eval()
    for B in (1, 64):
        _generate(res, m, B)


def main():
    if not torch.cuda.is_available():
        print("host_overhead needs an NVIDIA GPU; none found", file=sys.stderr)
        return 2
    parts = sys.argv[1:] or ["launch", "models"]
    res = Results("host_overhead")
    if "launch" in parts:
        bench_launch(res)
        res.save(plot_metric=None)
    if "models" in parts:
        bench_models(res)
    print(res.save(plot_metric="ms"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
