"""Host side of the SimVQ quantizer step (`vq step B.. HxW K.. D.. fp32` in benchmarks/simvq.py).

The step is bound by the host at B64 K8192 (its kernels take well under its wall time), so this script looks at
what the host does per step, for `hfzoo` (quantize_projected) and `hfzoo_unfused` (the previous path):

* how every Triton launch went through ``hfzoo.ops.launch``: ``fast`` (the remembered compiled kernel was replayed),
  ``compile`` (the fast path's first call for a key: Triton's own launch), ``triton`` (the fast path stepped aside:
  Triton's own launch every call), ``autotune`` (the launch went through Triton's autotuner);
* the per-op self CPU time of one step (torch.profiler, CPU activity; on a GPU also the CUDA kernels);
* the wall time per step on the host, synchronised every ``n`` steps (``host us``) -- on the CPU with ``--stub``
  the Triton kernels are replaced by stand-ins that launch nothing (the rest of the step runs as on a GPU: the
  real ``launch()`` with its fast path, the aten ops on small CPU tensors), which measures the Python around
  the kernels.

    PYTHONPATH=. python benchmarks/simvq_host.py                  # GPU: B64 16x16 K8192 D128
    PYTHONPATH=. python benchmarks/simvq_host.py --stub           # CPU stand-ins, small shapes
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hfzoo.ops import launch as L  # noqa: E402
from hfzoo.ops import nearest_code as nc  # noqa: E402

PATHS: collections.Counter = collections.Counter()


def _name(kernel) -> str:
    fn = getattr(kernel, "fn", None)
    return getattr(fn, "__name__", None) or getattr(kernel, "__name__", None) or type(kernel).__name__


@contextlib.contextmanager
def record_paths():
    """Count, per kernel, which way ``launch()`` took (see the module docstring)."""
    real_fast, real_tuner = L._launch_fast, L._autotuner

    def fast(kernel, grid, args, kwargs):
        before = len(L._fast_entries)
        ok = real_fast(kernel, grid, args, kwargs)
        PATHS[(_name(kernel), "triton" if not ok else "compile" if len(L._fast_entries) > before else "fast")] += 1
        return ok

    def tuner(kernel, configs, key):
        tuned = real_tuner(kernel, configs, key)

        class _Counted:
            best_config = property(lambda self: tuned.best_config)

            def __getitem__(self, grid):
                PATHS[(_name(kernel), "autotune")] += 1
                return tuned[grid]
        return _Counted()

    L._launch_fast, L._autotuner = fast, tuner
    try:
        yield PATHS
    finally:
        L._launch_fast, L._autotuner = real_fast, real_tuner


# ---------------------------------------------------------------------------------------------------- CPU stand-ins


class _StubCompiled:
    function, packed_metadata = "fn", "meta"

    def __init__(self, first_pass: bool):
        self.first_pass = first_pass

    def run(self, *a):  # grid (3), stream, function, metadata, 3 x None, then the kernel's arguments
        if self.first_pass:  # valid indices for the eager gather of the unfused path
            a[9 + 4].zero_()


class _StubKernel:
    """Has the real kernel's ``params`` (so the fast path keys it as it would the real one); launches nothing."""

    def __init__(self, real):
        self.params, self.pre_run_hooks, self.fn = real.params, [], real.fn
        self.first_pass = real.fn.__name__ == "_nearest_code_kernel"

    def __getitem__(self, grid):
        def run(*a, **kw):
            if self.first_pass:
                a[4].zero_()
            return _StubCompiled(self.first_pass)
        return run


class _StubTuned:
    def __init__(self, kernel, configs):
        self.kernel, self.best_config = kernel, None
        self.configs = configs

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            conf = dict(self.configs[0])

            class _Best:
                def all_kwargs(self, conf=conf):
                    return conf
            self.best_config = _Best()
            return None
        return run


class _Hooks:
    calls: list = []


class _Runtime:
    launch_enter_hook = launch_exit_hook = _Hooks()


@contextlib.contextmanager
def stubbed():
    """CPU stand-ins: Triton kernels replaced (nothing runs), the fast path on with a fake driver, the Triton
    backend allowed on CPU tensors."""
    from hfzoo.ops import dispatch

    saved = {}
    for name in ("_prepare_codes_kernel", "_nearest_code_kernel", "_collect_kernel", "_resolve_kernel",
                 "_vq_forward_kernel", "_vq_backward_kernel"):
        saved[name] = getattr(nc, name)
        setattr(nc, name, _StubKernel(saved[name]))
    old = (L._FAST_SUPPORTED, list(L._fast_runtime), L._autotuner, dispatch.triton_unavailable_reason)
    L._FAST_SUPPORTED = True
    L._fast_runtime[:] = [lambda: 0, lambda dev: 0, _Runtime()]
    L._autotuner = lambda kernel, configs, key: _StubTuned(kernel, configs)
    dispatch.triton_unavailable_reason = lambda *t: None
    try:
        yield
    finally:
        for name, k in saved.items():
            setattr(nc, name, k)
        L._FAST_SUPPORTED, L._fast_runtime[:], L._autotuner, dispatch.triton_unavailable_reason = (
            old[0], old[1], old[2], old[3])


# ---------------------------------------------------------------------------------------------------- the step


def make_steps(b: int, hw: int, k: int, d: int, device: str):
    from hfzoo.models.simvq.modeling_simvq import SimVQQuantizer

    torch.manual_seed(0)
    ours = SimVQQuantizer(k, d, beta=0.25).to(device)
    torch.nn.init.normal_(ours.embedding.weight, std=d ** -0.5)
    unfused = SimVQQuantizer(k, d, beta=0.25).to(device)
    unfused.load_state_dict(ours.state_dict())
    unfused._fused = lambda z: False
    x = torch.randn(b, d, hw, hw, device=device, requires_grad=True)
    target = torch.randn(b, d, hw, hw, device=device)
    steps = {}
    for cname, q in (("hfzoo", ours), ("hfzoo_unfused", unfused)):
        params = [p for p in q.parameters() if p.requires_grad]

        def step(q=q, params=params):  # the benchmark's step (benchmarks/simvq.py)
            for p in params:
                p.grad = None
            x.grad = None
            zq, idx, loss = q(x)
            total = loss + (zq - target).square().mean()
            total.backward()
            return idx, loss
        steps[cname] = step
    return steps


def host_us(step, n: int, sync) -> float:
    """Median over 5 rounds of the wall microseconds per step, ``n`` steps per round, synchronised per round."""
    out = []
    for _ in range(5):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return sorted(out)[2]


def profile_table(step, cuda: bool, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(5):
            step()
        if cuda:
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def _timed(fn, n: int, sync) -> float:
    """Host microseconds per call of ``fn`` (median of 5 rounds of ``n`` calls, synchronised between rounds)."""
    for _ in range(3):
        fn()
    out = []
    for _ in range(5):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
    sync()
    return sorted(out)[2]


def pieces(device: str, n: int, sync) -> None:
    """Host time of the pieces of the fused forward at a small shape (the GPU work is tiny: the host's time shows)."""
    import torch.nn.functional as F

    from hfzoo.ops.validate import check_tensor

    b, hw, k, d = 1, 4, 256, 128
    g = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(b, d, hw, hw, device=device, generator=g, requires_grad=True)
    fr = torch.randn(k, d, device=device, generator=g) / d ** 0.5
    w = (torch.randn(d, d, device=device, generator=g) / d ** 0.5).requires_grad_()
    bias = torch.zeros(d, device=device, requires_grad=True)
    cb = F.linear(fr, w, bias).detach()
    zd = z.detach()
    lay = nc._channels_layout(zd)
    class _Trivial(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            return a.view_as(a)

        @staticmethod
        def backward(ctx, g):
            return g

    leaf = torch.randn(b, d, hw, hw, device=device, requires_grad=True)
    target = torch.randn(b, d, hw, hw, device=device)

    def user_loss():  # the benchmark's own loss around the quantizer, with a leaf in the quantizer's place
        leaf.grad = None
        ((leaf - target).square().mean() + leaf.sum()).backward()

    vq = nc._plan(("vq", b * hw * hw, d, 0.25, 1.0), lambda: nc._VQPlan(b * hw * hw, d, 0.25, 1.0))
    idx, _, scratch, (flag, cnt, cand, maxc) = nc._nearest_code_exact(zd, cb, lay, resolve=False)
    zq, part, loss = torch.empty_like(zd), torch.empty(vq.nprog, device=device), torch.empty((), device=device)

    def vq_fwd():
        L.launch("nearest_code.vq_fwd", nc._vq_forward_kernel, (vq.nprog,), zd, cb, idx, flag, cnt, cand, zq, part,
                 scratch, loss, lay[0], k, d, *lay[2], vq.loss_scale, **vq.fwd_meta)

    rows = {
        "torch.empty(16, int32)": lambda: torch.empty(16, dtype=torch.int32, device=device),
        "trivial autograd Function, forward + backward": lambda: _Trivial.apply(leaf).sum().backward(),
        "the benchmark's loss and backward around a leaf": user_loss,
        "launch() of the gather + loss kernel (19 runtime args)": vq_fwd,
        "F.linear(C, W, b) [256 x 128]": lambda: F.linear(fr, w, bias),
        "aten mul (z * 2)": lambda: zd * 2,
        "settings('nearest_code.vq')": lambda: nc.settings("nearest_code.vq"),
        "check_tensor": lambda: check_tensor("op", "z", zd, dims=(2, None)),
        "_exact_first_pass (prepare + first pass)": lambda: nc._exact_first_pass(zd, cb, None, lay),
        "_nearest_code_exact(resolve=False) (+ collect)": lambda: nc._nearest_code_exact(zd, cb, lay, resolve=False),
        "quantize_projected forward (graph dropped)": lambda: nc.quantize_projected(z, fr, w, bias, 0.25, 1.0),
        "quantize_projected forward + backward": lambda: torch.autograd.backward(
            [t for t in nc.quantize_projected(z, fr, w, bias, 0.25, 1.0) if t.requires_grad][::-1][0]),
    }
    for name, fn in rows.items():
        print(f"  host us per call {_timed(fn, n, sync):8.1f}  {name}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stub", action="store_true", help="CPU stand-ins for the kernels (see the docstring)")
    parser.add_argument("--shape", default=None, help="B,HW,K,D (default 64,16,8192,128; with --stub 2,4,256,128)")
    parser.add_argument("--n", type=int, default=50, help="steps per timing round")
    parser.add_argument("--rows", type=int, default=30, help="rows of each profiler table")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    if args.stub:
        torch.set_num_threads(1)
    cuda = not args.stub
    shape = tuple(int(v) for v in (args.shape or ("2,4,256,128" if args.stub else "64,16,8192,128")).split(","))
    ctx = stubbed() if args.stub else contextlib.nullcontext()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    from hfzoo.ops.dispatch import use_backend

    with ctx, use_backend("triton"), record_paths() as paths:
        steps = make_steps(*shape, device="cuda" if cuda else "cpu")
        for cname, step in steps.items():
            for _ in range(3):  # compile, autotune, fill the fast path's entries
                step()
            sync()
            paths.clear()
            step()
            sync()
            print(f"{cname}: launch paths in one step (after 3 warm-up steps): "
                  + ", ".join(f"{k}/{p}: {c}" for (k, p), c in sorted(paths.items())), flush=True)
        for cname, step in steps.items():
            print(f"{cname}: host us per step {host_us(step, args.n, sync):.1f}", flush=True)
        for cname, step in steps.items():
            print(f"{cname}: host us per step {host_us(step, args.n, sync):.1f} (again)", flush=True)
        print("pieces (B1 4x4 K256 D128):", flush=True)
        pieces("cuda" if cuda else "cpu", args.n, sync)
        if cuda:  # host syncs inside one step (none expected): torch warns on each
            import warnings

            for cname, step in steps.items():
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        step()
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                caught = [w for w in caught if "prototype feature" not in str(w.message)]  # torch's notice
                print(f"{cname}: host syncs in one step: {len(caught)} "
                      + "; ".join(str(w.message)[:100] for w in caught[:5]), flush=True)
            with L.fast_launch(False):
                for cname, step in steps.items():
                    print(f"{cname}: host us per step {host_us(step, args.n, sync):.1f} (fast launch off)", flush=True)
        if not args.no_profile:
            for cname, step in steps.items():
                paths.clear()
                table = profile_table(step, cuda, args.rows)
                print(f"==== {cname}: 5 steps, sorted by self CPU time (launch paths while profiling: "
                      + ", ".join(f"{k}/{p}: {c}" for (k, p), c in sorted(paths.items())) + f")\n{table}", flush=True)


if __name__ == "__main__":
    main()
