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
