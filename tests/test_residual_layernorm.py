"""Residual + dropout + LayerNorm kernels against the reference: values, every gradient, the dropout mask shared by
forward and backward, the column sums the backward returns."""

import pytest
import torch
from helpers import rel_err

from hfzoo.ops.dispatch import interpreter_enabled
from hfzoo.ops.residual_layernorm import (
    residual_layernorm,
    residual_layernorm_backward,
    residual_layernorm_forward,
    residual_layernorm_reference,
)


def needs_kernels():
    if not interpreter_enabled() and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 or a GPU")


def inputs(N, H, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x, r = (torch.randn(N, H, generator=g).to(device, dtype) for _ in range(2))
    w = (1 + 0.3 * torch.randn(H, generator=g)).to(device, dtype)
    b = (0.2 * torch.randn(H, generator=g)).to(device, dtype)
    return x, r, w, b


@pytest.mark.parametrize("N,H", [(13, 37), (5, 48), (1, 16), (0, 24)])
def test_kernels_match_reference_values_and_every_gradient(N, H):
    needs_kernels()
    x, r, w, b = inputs(N, H)
    dy = torch.randn(N, H, generator=torch.Generator().manual_seed(1))
    results = []
    for backend in ("triton", "reference"):
        leaves = [t.clone().requires_grad_() for t in (x, r, w, b)]
        y = residual_layernorm(*leaves, eps=1e-5, backend=backend)
        y.backward(dy)
        results.append([y.detach()] + [t.grad for t in leaves])
    for got, want in zip(*results):
        if want.numel():
            assert rel_err(got, want) < 1e-5


def _mask(N, H, p, seed):
    """The kernels' keep mask at ``seed``: forward of x = 1, residual = 0 (kept entries become 1 / (1 - p))."""
    ones, zeros = torch.ones(N, H), torch.zeros(N, H)
    _, z, _, _ = residual_layernorm_forward(ones, zeros, torch.ones(H), torch.zeros(H), 1e-5, p, seed)
    keep = z != 0
    assert torch.allclose(z[keep], torch.full_like(z[keep], 1 / (1 - p)))
    return keep


def test_dropout_mask_is_shared_by_forward_and_backward_and_sums_are_right():
    needs_kernels()
    N, H, p, seed = 29, 40, 0.3, 1234
    keep = _mask(N, H, p, seed)
    assert 0.5 < keep.float().mean().item() < 0.9             # about 1 - p kept
    assert not torch.equal(keep, _mask(N, H, p, seed + 1))     # another seed, another mask
    x, r, w, b = inputs(N, H, seed=2)
    y, z, mean, rstd = residual_layernorm_forward(x, r, w, b, 1e-5, p, seed)
    # the reference with the kernels' mask applied explicitly
    leaves = [t.clone().requires_grad_() for t in (x, r, w, b)]
    zr = leaves[0] * keep / (1 - p) + leaves[1]
    yr = torch.nn.functional.layer_norm(zr, (H,), leaves[2], leaves[3], 1e-5)
    assert rel_err(y, yr) < 1e-5 and rel_err(z, zr) < 1e-6
    dy = torch.randn(N, H, generator=torch.Generator().manual_seed(3))
    yr.backward(dy)
    dz, dx, dw, db, dsum = residual_layernorm_backward(dy, z, w, mean, rstd, p, seed)
    assert rel_err(dx, leaves[0].grad) < 1e-5
    assert rel_err(dz, leaves[1].grad) < 1e-5
    assert rel_err(dw, leaves[2].grad) < 1e-5 and rel_err(db, leaves[3].grad) < 1e-5
    assert rel_err(dsum, leaves[0].grad.sum(0)) < 1e-5        # the preceding bias's gradient


def test_public_op_dropout_gradients_use_the_forward_mask():
    needs_kernels()
    N, H, p = 11, 24, 0.25
    x, r, w, b = inputs(N, H, seed=4)
    torch.manual_seed(5)
    x1 = x.clone().requires_grad_()
    y = residual_layernorm(x1, r, w, b, dropout_p=p, backend="triton")
    y.backward(torch.ones_like(y) + torch.arange(H) / H)
    # the gradient is exactly zero where the forward dropped x (and only there, up to chance zeros)
    dropped = x1.grad == 0
    assert 0.1 < dropped.float().mean().item() < 0.45
    torch.manual_seed(5)
    again = residual_layernorm(x, r, w, b, dropout_p=p, backend="triton")
    assert torch.equal(again, y.detach())                        # the seed comes from torch's CPU generator


def test_bad_inputs():
    x, r, w, b = inputs(3, 8)
    with pytest.raises(ValueError):
        residual_layernorm(x, r[:, :4], w, b)
    with pytest.raises(ValueError):
        residual_layernorm(x, r, w[:4], b)
    with pytest.raises(TypeError):
        residual_layernorm(x, r.double(), w, b)
    with pytest.raises(ValueError):
        residual_layernorm(x, r, w, b, dropout_p=1.0)
    assert rel_err(residual_layernorm(x.double(), r.double(), w.double(), b.double()),
                   residual_layernorm_reference(x, r, w, b).double()) < 1e-6   # fp64 runs the reference


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_matches_reference(dtype):
    x, r, w, b = inputs(1000, 768, dtype, "cuda", seed=6)
    dy = torch.randn(1000, 768, device="cuda", dtype=dtype)
    results = []
    for backend in ("triton", "reference"):
        leaves = [t.clone().requires_grad_() for t in (x, r, w, b)]
        y = residual_layernorm(*leaves, backend=backend)
        y.backward(dy)
        results.append([y.detach()] + [t.grad for t in leaves])
    for got, want in zip(*results):
        assert rel_err(got, want) < 2e-2
