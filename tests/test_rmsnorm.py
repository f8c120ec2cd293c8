"""Fused gated RMSNorm: Triton kernels (interpreter on CPU, native on GPU) against the reference."""

import pytest
import torch
from helpers import rel_err

from hfzoo.ops import rmsnorm as rms_mod
from hfzoo.ops.launch import count_launches, tuning
from hfzoo.ops.rmsnorm import rms_norm_gated, rms_norm_gated_reference


def _grads(backend, x, w, g, dy):
    inputs = [t for t in (x, w, g) if t is not None]
    y = rms_norm_gated(x, w, g, eps=1e-5, backend=backend)
    return [y, *torch.autograd.grad(y, inputs, dy)]


@pytest.mark.parametrize("shape", [(1, 3), (3, 7, 48), (37, 100), (2, 5, 257)])
@pytest.mark.parametrize("weight,gate", [(True, True), (True, False), (False, True), (False, False)])
def test_matches_reference_fp32(shape, weight, gate):
    torch.manual_seed(sum(shape))
    x = torch.randn(shape, requires_grad=True)
    w = (torch.rand(shape[-1]) + 0.5).requires_grad_() if weight else None
    g = torch.randn(shape, requires_grad=True) if gate else None
    dy = torch.randn(shape)
    ours = _grads("triton", x, w, g, dy)
    ref = _grads("reference", x, w, g, dy)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-5


def test_reference_matches_definition():
    x, w, g = torch.randn(4, 16), torch.randn(16), torch.randn(4, 16)
    expected = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * w * g * torch.sigmoid(g)
    assert rel_err(rms_norm_gated_reference(x, w, g), expected) < 1e-6


@pytest.mark.parametrize("programs_per_sm", [None, 1])
def test_backward_programs_walking_several_row_blocks(programs_per_sm, monkeypatch):
    # 333 rows of 48: 16-row blocks; with the interpreter's 2 SMs the backward runs 8 (default) or 2 programs,
    # each walking several row blocks and summing its weight-gradient partial over them; M cuts the last range
    torch.manual_seed(9)
    x = torch.randn(333, 48, requires_grad=True)
    w = (torch.rand(48) + 0.5).requires_grad_()
    g = torch.randn(333, 48, requires_grad=True)
    dy = torch.randn(333, 48)
    seen = []
    real = rms_mod.launch

    def spy(name, kernel, grid, *args, **kwargs):
        if name == "rmsnorm.bwd":
            seen.append((grid[0], args[10], kwargs["BLOCK_M"]))
        return real(name, kernel, grid, *args, **kwargs)

    monkeypatch.setattr(rms_mod, "launch", spy)
    overrides = {} if programs_per_sm is None else {"rmsnorm.bwd": {"programs_per_sm": programs_per_sm}}
    with tuning(overrides):
        ours = _grads("triton", x, w, g, dy)
    ((programs, rows_per_program, block_m),) = seen
    assert programs > 1 and rows_per_program >= 2 * block_m and 333 % rows_per_program != 0
    ref = _grads("reference", x, w, g, dy)
    for a, b in zip(ours, ref):
        assert rel_err(a, b) < 1e-5


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="weight"):
        rms_norm_gated(torch.randn(2, 8), torch.ones(7))
    with pytest.raises(ValueError, match="gate"):
        rms_norm_gated(torch.randn(2, 8), None, torch.randn(2, 9))
    with pytest.raises(ValueError, match="x must have at least 1"):
        rms_norm_gated(torch.tensor(1.0))
    with pytest.raises(ValueError, match="meta"):
        rms_norm_gated(torch.randn(2, 8), torch.ones(8, device="meta"))


def test_dtypes_and_layouts():
    x = torch.randn(6, 16)
    for bad in (torch.int32, torch.int64, torch.bool):
        with pytest.raises(TypeError, match="x must be one of float32"):
            rms_norm_gated(x.to(bad), backend="triton")
        with pytest.raises(TypeError, match="weight must be one of"):
            rms_norm_gated(x, torch.ones(16, dtype=bad))
    # float64: the reference (in float64) under auto, a TypeError when the kernels are forced
    with count_launches() as n:
        y = rms_norm_gated(x.double(), torch.ones(16, dtype=torch.float64))
    assert n.total() == 0 and y.dtype == torch.float64
    assert rel_err(y, x.double() / x.double().pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()) < 1e-12
    with pytest.raises(TypeError, match="float64"):
        rms_norm_gated(x.double(), backend="triton")
    # non-contiguous x, weight and gate reach the kernels as contiguous copies
    xt = torch.randn(16, 6).t()
    wt = torch.randn(16, 2)[:, 0]
    gt = torch.randn(16, 6).t()
    assert not (xt.is_contiguous() or wt.is_contiguous() or gt.is_contiguous())
    with count_launches() as n:
        y = rms_norm_gated(xt, wt, gt, backend="triton")
    assert n["rmsnorm.fwd"] == 1
    assert rel_err(y, rms_norm_gated_reference(xt, wt, gt)) < 1e-5


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_empty_input(backend):
    x = torch.randn(0, 3, 8, requires_grad=True)
    y = rms_norm_gated(x, torch.ones(8), backend=backend)
    assert y.shape == (0, 3, 8)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx.shape == x.shape


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(4, 1000, 256), (8191, 512), (3, 77, 1000)])
def test_gpu_matches_reference(dtype, shape):
    torch.manual_seed(0)
    dev = "cuda"
    x = torch.randn(shape, device=dev, dtype=dtype, requires_grad=True)
    w = (torch.rand(shape[-1], device=dev) + 0.5).to(dtype).requires_grad_()
    g = torch.randn(shape, device=dev, dtype=dtype, requires_grad=True)
    dy = torch.randn(shape, device=dev, dtype=dtype)
    ours = _grads("triton", x, w, g, dy)
    ref = _grads("reference", x.float(), w.float(), g.float(), dy.float())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, b in zip(ours, ref):
        assert a.dtype == dtype
        assert rel_err(a, b) < tol
