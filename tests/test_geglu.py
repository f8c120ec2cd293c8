"""Fused GeGLU + dropout: the Triton kernels against the reference (interpreter on CPU, bf16 on GPU), the dropout
mask shared by forward and backward, and bad input."""

import pytest
import torch
from helpers import rel_err

from hfzoo.ops.geglu import geglu, geglu_reference
from hfzoo.ops.launch import count_launches


def _check(shape, dtype, device, tol):
    torch.manual_seed(0)
    x = torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
    y = geglu(x, backend="triton")
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    xf = x.detach().float().requires_grad_()
    ref = geglu_reference(xf)
    (dref,) = torch.autograd.grad(ref, xf, dy.float())
    assert y.dtype == dtype and y.shape == (*shape[:-1], shape[-1] // 2)
    assert rel_err(y, ref) < tol
    assert rel_err(dx, dref) < tol


@pytest.mark.parametrize("shape", [(7, 2 * 37), (3, 5, 2 * 16), (1, 2)])
def test_kernels_match_reference_interpreter(shape):
    # widths that are not multiples of the 16-wide interpreter block, a 3-D input, a single output column
    with count_launches() as n:
        _check(shape, torch.float32, "cpu", 1e-6)
    assert n == {"geglu.fwd": 1, "geglu.bwd": 1}


def test_reference_is_gelu_of_first_half_times_second_half():
    x = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    expected = torch.nn.functional.gelu(torch.tensor([1.0, -2.0])) * torch.tensor([3.0, 0.5])
    assert torch.allclose(geglu_reference(x), expected[None])


def test_dropout_mask_is_shared_by_forward_and_backward():
    torch.manual_seed(1)
    p = 0.3
    x = torch.randn(40, 2 * 50, requires_grad=True)
    y = geglu(x, dropout_p=p, backend="triton")
    plain = geglu_reference(x.detach())
    kept = y != 0
    frac = kept.float().mean().item()
    assert abs(frac - (1 - p)) < 0.05  # 2000 draws: 5% is > 4 standard deviations
    assert rel_err(y[kept], plain[kept] / (1 - p)) < 1e-6
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    # the reference gradient with the forward's mask: the backward must have drawn the same one
    xr = x.detach().requires_grad_()
    ref = geglu_reference(xr) * kept / (1 - p)
    (dref,) = torch.autograd.grad(ref, xr, dy)
    assert rel_err(dx, dref) < 1e-6
    # the seed comes from torch's generator: the same manual seed gives the same mask, another seed another one
    torch.manual_seed(5)
    a = geglu(x.detach(), dropout_p=p, backend="triton")
    torch.manual_seed(5)
    b = geglu(x.detach(), dropout_p=p, backend="triton")
    c = geglu(x.detach(), dropout_p=p, backend="triton")
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_reference_dropout_keeps_the_expected_share():
    torch.manual_seed(2)
    x = torch.randn(64, 2 * 64)
    y = geglu(x, dropout_p=0.5, backend="reference")
    assert abs((y != 0).float().mean().item() - 0.5) < 0.05


def test_bad_inputs():
    with pytest.raises(ValueError, match="even"):
        geglu(torch.randn(3, 5))
    with pytest.raises(ValueError, match="dropout_p"):
        geglu(torch.randn(3, 4), dropout_p=1.0)
    with pytest.raises(TypeError, match="x must be one of"):
        geglu(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="float64"):
        geglu(torch.randn(3, 4, dtype=torch.float64), backend="triton")
    assert geglu(torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64  # auto: the reference


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_kernels_gpu_16bit(dtype):
    _check((8993, 2 * 3072), dtype, "cuda", 1e-2)
    _check((5, 2 * 1000), dtype, "cuda", 1e-2)


@pytest.mark.gpu
def test_dropout_gpu_bf16():
    torch.manual_seed(3)
    x = torch.randn(1000, 2 * 3072, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = geglu(x, dropout_p=0.1)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.01
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    xr = x.detach().float().requires_grad_()
    ref = geglu_reference(xr) * kept / 0.9
    (dref,) = torch.autograd.grad(ref, xr, dy.float())
    assert rel_err(dx, dref) < 1e-2
