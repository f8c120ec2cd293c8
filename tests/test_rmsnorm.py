"""Fused gated RMSNorm: Triton kernels (interpreter on CPU, native on GPU) against the reference."""

import pytest
import torch
from helpers import rel_err

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


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="weight"):
        rms_norm_gated(torch.randn(2, 8), torch.ones(7))
    with pytest.raises(ValueError, match="gate"):
        rms_norm_gated(torch.randn(2, 8), None, torch.randn(2, 9))


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
