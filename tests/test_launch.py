"""The launch module: device facts, the settings table and its overrides, and the launch counter."""

import json

import pytest
import torch

from hfzoo.ops import launch
from hfzoo.ops.launch import DEFAULTS, bucket, count_launches, persistent_grid, settings, sm_count, tuning


def test_bucket_is_the_next_power_of_two_at_least_lo():
    assert [bucket(n) for n in (0, 1, 16, 17, 100, 128, 129)] == [16, 16, 16, 32, 128, 128, 256]
    assert bucket(3, lo=1) == 4 and bucket(1, lo=1) == 1 and bucket(5, lo=64) == 64


def test_cpu_devices_see_a_small_constant_machine():
    assert sm_count("cpu") == launch.INTERPRETER_SM_COUNT
    assert persistent_grid(1000, "cpu", per_sm=3) == 3 * launch.INTERPRETER_SM_COUNT
    assert persistent_grid(1, "cpu", per_sm=8) == 1
    assert persistent_grid(0, "cpu") == 1


def test_is_interpreted_reads_the_flag(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert launch.is_interpreted()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not launch.is_interpreted()
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not launch.is_interpreted()


def test_settings_layers_in_order(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert settings("group_rational.fwd") == {"bytes_per_thread": 32, "num_warps": 4}
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter overlay
    assert settings("group_rational.fwd") == {"bytes_per_thread": 64, "num_warps": 2}
    # shape defaults beat the table, the environment beats both, tuning() blocks beat the environment
    assert settings("gla.fwd_o", BV=64)["BV"] == 64
    monkeypatch.setenv("HFZOO_TUNE", json.dumps({"gla.fwd_o": {"BV": 32, "num_warps": 2}}))
    assert settings("gla.fwd_o", BV=64) == {"BV": 32, "num_warps": 2}
    with tuning({"gla.fwd_o": {"num_warps": 8}}):
        with tuning({"gla.fwd_o": {"BK": 32}}):
            assert settings("gla.fwd_o", BV=64) == {"BK": 32, "BV": 32, "num_warps": 8}
        assert "BK" not in settings("gla.fwd_o")
    assert settings("gla.fwd_o")["num_warps"] == 2


def test_tuning_is_undone_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with tuning({"rmsnorm.fwd": {"num_warps": 1}}):
            raise RuntimeError("boom")
    assert settings("rmsnorm.fwd")["num_warps"] == DEFAULTS["rmsnorm.fwd"]["num_warps"]


def test_settings_are_a_fresh_copy():
    s = settings("nearest_code.fwd_fp32")
    s["configs"] = []
    s["new"] = 1
    assert settings("nearest_code.fwd_fp32")["configs"] and "new" not in settings("nearest_code.fwd_fp32")


def test_unknown_kernels_and_bad_overrides_are_errors(monkeypatch):
    with pytest.raises(KeyError, match="no launch settings"):
        settings("gla.fwd_oo")
    with pytest.raises(ValueError, match="unknown kernel"):
        with tuning({"gla.fwd_oo": {"num_warps": 8}}):
            pass
    with pytest.raises(ValueError, match="dicts"):
        with tuning({"gla.fwd_o": 8}):
            pass
    monkeypatch.setenv("HFZOO_TUNE", "{not json")
    with pytest.raises(ValueError, match="HFZOO_TUNE must be JSON"):
        settings("gla.fwd_o")
    monkeypatch.setenv("HFZOO_TUNE", '{"rmsnorm.fwdd": {}}')
    with pytest.raises(ValueError, match="HFZOO_TUNE.*unknown kernel"):
        settings("rmsnorm.fwd")


def test_compile_options_pick_only_compiler_flags():
    assert launch.compile_options({"BLOCK": 16, "num_warps": 4, "num_stages": None}) == {"num_warps": 4}


def test_count_launches_nests_and_keeps_a_process_total():
    before = launch.launch_counts().get("rmsnorm.fwd", 0)
    with count_launches() as outer:
        launch.note_launch("rmsnorm.fwd")
        with count_launches() as inner:
            launch.note_launch("rmsnorm.fwd", 2)
    launch.note_launch("rmsnorm.fwd")  # outside both blocks
    assert inner == {"rmsnorm.fwd": 2} and outer == {"rmsnorm.fwd": 3}
    assert launch.launch_counts()["rmsnorm.fwd"] == before + 4


@pytest.mark.skipif(not launch.HAS_TRITON, reason="needs Triton")
def test_ops_count_their_launches_and_reference_launches_nothing():
    from hfzoo.ops.rmsnorm import rms_norm_gated

    x = torch.randn(5, 8, requires_grad=True)
    with count_launches() as n:
        rms_norm_gated(x, backend="reference").sum().backward()
    assert n.total() == 0
    if launch.is_interpreted():
        with count_launches() as n:
            rms_norm_gated(x, backend="triton").sum().backward()
        assert n == {"rmsnorm.fwd": 1, "rmsnorm.bwd": 1}


def test_tuning_reaches_other_threads():
    # autograd launches CUDA backward kernels from its own thread: a tuning() block must hold there too
    import threading

    seen = {}
    with tuning({"rmsnorm.bwd": {"num_warps": 1}}):
        worker = threading.Thread(target=lambda: seen.update(inside=settings("rmsnorm.bwd")))
        worker.start()
        worker.join()
    worker = threading.Thread(target=lambda: seen.update(after=settings("rmsnorm.bwd")))
    worker.start()
    worker.join()
    assert seen["inside"]["num_warps"] == 1
    assert seen["after"]["num_warps"] == DEFAULTS["rmsnorm.bwd"]["num_warps"]


def test_remembered_settings_follow_the_environment_and_stay_private(monkeypatch):
    first = settings("rmsnorm.fwd")
    first["num_warps"] = 99  # the caller's copy, not the remembered merge
    assert settings("rmsnorm.fwd")["num_warps"] == DEFAULTS["rmsnorm.fwd"]["num_warps"]
    monkeypatch.setenv("HFZOO_TUNE", json.dumps({"rmsnorm.fwd": {"num_warps": 2}}))
    assert settings("rmsnorm.fwd")["num_warps"] == 2
    monkeypatch.delenv("HFZOO_TUNE")
    assert settings("rmsnorm.fwd")["num_warps"] == DEFAULTS["rmsnorm.fwd"]["num_warps"]
    assert settings("gla.fwd_o", BV=64)["BV"] == 64 and settings("gla.fwd_o", BV=32)["BV"] == 32
    assert settings("gla.fwd_o", configs=[{"BV": 16}])["configs"] == [{"BV": 16}]  # unhashable: merged each call


# ----------------------------------------------------------------------------------------------------
# The fast launch path: the key must be at least as fine as Triton's specialisation, and a hit must pass the
# arguments in the kernel's signature order. On the CPU a stand-in kernel records what reaches the launcher.


class _Param:
    def __init__(self, name, is_constexpr=False, default=None):
        self.name, self.is_constexpr, self.default = name, is_constexpr, default


class _Compiled:
    def __init__(self, log):
        self.log, self.function, self.packed_metadata = log, "fn", "meta"

    def run(self, *a):
        self.log.append(("fast",) + a)


class _FakeKernel:
    """``k(X, n, scale, BLOCK: constexpr, FLAG: constexpr = True)``: Triton's path is ``k[grid](...)``."""

    def __init__(self):
        self.params = [_Param("X"), _Param("n"), _Param("scale"), _Param("BLOCK", True),
                       _Param("FLAG", True, True)]
        self.pre_run_hooks = []
        self.log = []
        self.compiled = 0

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.compiled += 1
            self.log.append(("triton", grid, args, kwargs))
            return _Compiled(self.log)
        return run


class _Hooks:
    def __init__(self):
        self.calls = []


class _Runtime:
    def __init__(self):
        self.launch_enter_hook, self.launch_exit_hook = _Hooks(), _Hooks()


@pytest.fixture
def fake_runtime(monkeypatch):
    rt = _Runtime()
    monkeypatch.setattr(launch, "_fast_runtime", [lambda: 0, lambda dev: 1234, rt])
    monkeypatch.setattr(launch, "_fast_entries", {})
    monkeypatch.setattr(launch, "_fast_kernels", {})
    return rt


def test_fast_launch_replays_the_compiled_kernel_in_signature_order(fake_runtime):
    k = _FakeKernel()
    x = torch.zeros(64)
    assert launch._launch_fast(k, (3,), (x, 32, 0.5), {"BLOCK": 16, "num_warps": 4})
    assert k.compiled == 1 and k.log[-1][0] == "triton"
    assert launch._launch_fast(k, (3, 2), (x, 48, 0.25), {"BLOCK": 16, "num_warps": 4})
    assert k.compiled == 1   # same key: n 32 -> 48 keeps its class (divisible by 16, i32)
    # grid, stream, function, metadata, no launch metadata or hooks, then every argument incl. constexprs/defaults
    assert k.log[-1] == ("fast", 3, 2, 1, 1234, "fn", "meta", None, None, None, x, 48, 0.25, 16, True)


def test_fast_launch_key_separates_what_triton_specialises(fake_runtime):
    k = _FakeKernel()
    base = torch.zeros(65)
    cases = [
        (base[:64], 32, {"BLOCK": 16}),
        (base[1:], 32, {"BLOCK": 16}),                 # the same dtype, an address not 16-byte aligned
        (base[:64].double(), 32, {"BLOCK": 16}),       # another dtype
        (base[:64], 33, {"BLOCK": 16}),                # not divisible by 16
        (base[:64], 1, {"BLOCK": 16}),                 # == 1
        (base[:64], 2 ** 40, {"BLOCK": 16}),           # i64
        (base[:64], 2 ** 63 + 16, {"BLOCK": 16}),      # u64
        (base[:64], 32, {"BLOCK": 32}),                # another constexpr
        (base[:64], 32, {"BLOCK": 16, "FLAG": False}),  # a defaulted constexpr given
        (base[:64], 32, {"BLOCK": 16, "num_warps": 8}),  # a compile option
    ]
    for i, (x, n, kw) in enumerate(cases):
        assert launch._launch_fast(k, (1,), (x, n, 1.0), kw)
        assert k.compiled == i + 1, f"case {i} reused another specialisation's kernel"
    # a constexpr passed positionally is keyed by value, not by its int class
    assert launch._launch_fast(k, (1,), (base[:64], 32, 1.0, 64), {})
    assert launch._launch_fast(k, (1,), (base[:64], 32, 1.0, 128), {})
    assert k.compiled == len(cases) + 2


def test_fast_launch_leaves_unusual_launches_to_triton(fake_runtime):
    k = _FakeKernel()
    x = torch.zeros(64)
    assert not launch._launch_fast(k, (1,), (x, 32), {"scale": 1.0, "BLOCK": 16})   # runtime arg by keyword
    assert not launch._launch_fast(k, (1,), (x, "32", 1.0), {"BLOCK": 16})         # a type the key does not model
    assert not launch._launch_fast(k, (1,), (x, 32, 1.0), {"BLOCK": [16]})         # unhashable constexpr
    fake_runtime.launch_enter_hook.calls.append(print)                              # a profiler's hook
    assert not launch._launch_fast(k, (1,), (x, 32, 1.0), {"BLOCK": 16})
    assert k.compiled == 0
    k.pre_run_hooks.append(print)
    fake_runtime.launch_enter_hook.calls.clear()
    launch._fast_kernels.clear()
    assert not launch._launch_fast(k, (1,), (x, 32, 1.0), {"BLOCK": 16})


@pytest.mark.gpu
def test_fast_launch_matches_tritons_path_on_the_gpu():
    from hfzoo.ops.group_rational import group_rational
    from hfzoo.ops.rmsnorm import rms_norm_gated

    torch.manual_seed(0)
    storage = torch.randn(1 + 96 * 384, device="cuda")
    for x in (storage[:-1].view(96, 384), storage[1:].view(96, 384)):   # aligned, then a misaligned address
        x = x.clone().requires_grad_() if x.data_ptr() % 16 == 0 else x.detach().requires_grad_()
        a = torch.randn(1, 6, device="cuda", requires_grad=True)
        b = torch.randn(8, 4, device="cuda", requires_grad=True)
        outs = []
        for on in (False, True, True):   # Triton's path, the fast path's miss, its hit
            with launch.fast_launch(on):
                y = group_rational(x, a, b, 8)
                gx, ga, gb = torch.autograd.grad(y.square().sum(), (x, a, b))
                z = rms_norm_gated(x, torch.ones(384, device="cuda"), x.detach() * 0.5)
            outs.append((y, gx, ga, gb, z))
        for other in outs[1:]:
            for u, v in zip(outs[0], other):
                torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_autotuned_launches_reuse_the_autotuners_pick(fake_runtime, monkeypatch):
    k = _FakeKernel()
    tuned_calls = []

    class _Best:
        def all_kwargs(self):
            return {"BLOCK": 32, "num_warps": 4}

    class _Tuned:
        best_config = _Best()

        def __getitem__(self, grid):
            return lambda *a, **kw: tuned_calls.append((grid, a, kw))

    monkeypatch.setattr(launch, "_autotuner", lambda kernel, configs, key: _Tuned())
    monkeypatch.setattr(launch, "_tuned_picks", {})
    monkeypatch.setattr(launch, "_FAST_SUPPORTED", True)
    x = torch.zeros(64)
    configs = [{"BLOCK": 16, "num_warps": 4}, {"BLOCK": 32, "num_warps": 4}]
    with launch.fast_launch(True):
        launch.launch("rmsnorm.fwd", k, (2,), x, 48, 1.0, configs=configs, key=["n"])       # tuned
        launch.launch("rmsnorm.fwd", k, (2,), x, 48, 1.0, configs=configs, key=["n"])       # pick, Triton's path
        launch.launch("rmsnorm.fwd", k, (2,), x, 48, 1.0, configs=configs, key=["n"])       # pick, fast path
        launch.launch("rmsnorm.fwd", k, (2,), x, 64, 1.0, configs=configs, key=["n"])       # a new key: tuned
        launch.launch("rmsnorm.fwd", k, (2,), x.double(), 48, 1.0, configs=configs, key=["n"])  # new dtype: tuned
    assert len(tuned_calls) == 3
    assert k.compiled == 1 and k.log[0][3] == {"BLOCK": 32, "num_warps": 4}
    assert k.log[1] == ("fast", 2, 1, 1, 1234, "fn", "meta", None, None, None, x, 48, 1.0, 32, True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU driver")
def test_fast_launch_steps_aside_without_a_gpu_driver(monkeypatch):
    # the sm_90 compile check runs real (not interpreted) kernels on a CPU machine: Triton's path must be taken
    monkeypatch.setattr(launch, "_fast_runtime", [])
    monkeypatch.setattr(launch, "_fast_kernels", {})
    monkeypatch.setattr(launch, "_FAST_SUPPORTED", True)
    k = _FakeKernel()
    assert not launch._launch_fast(k, (1,), (torch.zeros(4), 32, 1.0), {"BLOCK": 16})
    assert launch._FAST_SUPPORTED is False and k.compiled == 0
