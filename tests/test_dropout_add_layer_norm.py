"""Fused dropout + residual + LayerNorm: the Triton kernels against the eager composition (interpreter on CPU,
bf16 on GPU), the dropout mask shared by forward and backward, and bad input."""

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from hfzoo.ops.dropout_add_layer_norm import dropout_add_layer_norm, dropout_add_layer_norm_reference
from hfzoo.ops.launch import count_launches


def _inputs(shape, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    D = shape[-1]
    x = torch.randn(*shape, device=device, generator=g).to(dtype).requires_grad_()
    r = (2 * torch.randn(*shape, device=device, generator=g) + 1).to(dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(D, device=device, generator=g)).to(dtype).requires_grad_()
    b = (0.1 * torch.randn(D, device=device, generator=g)).to(dtype).requires_grad_()
    return x, r, w, b


def _grads(out, inputs, dy):
    return torch.autograd.grad(out, inputs, dy)


def _check(shape, dtype, device, tol):
    x, r, w, b = _inputs(shape, dtype, device)
    y = dropout_add_layer_norm(x, r, w, b, 1e-5, backend="triton")
    dy = torch.randn_like(y)
    got = _grads(y, (x, r, w, b), dy)
    f32 = [t.detach().float().requires_grad_() for t in (x, r, w, b)]
    ref = dropout_add_layer_norm_reference(*f32, 1e-5)
    want = _grads(ref, f32, dy.float())
    assert y.dtype == dtype and y.shape == x.shape
    assert rel_err(y, ref) < tol
    for name, g, gr in zip(["x", "residual", "weight", "bias"], got, want):
        assert g.dtype == dtype
        assert rel_err(g, gr) < tol, name


@pytest.mark.parametrize("shape", [(37, 24), (2, 5, 48), (1, 16), (19, 100)])
def test_kernels_match_reference_interpreter(shape):
    # widths that are not powers of two, rows that are not a multiple of the rows per program, 3-D input
    with count_launches() as n:
        _check(shape, torch.float32, "cpu", 1e-5)
    assert n == {"dropout_add_ln.fwd": 1, "dropout_add_ln.bwd": 1}


def test_mixed_dtypes_promote_like_eager_addition():
    # under autocast a half-precision sub-layer output meets an fp32 residual and fp32 LayerNorm parameters
    x, r, w, b = _inputs((21, 40), torch.float32, "cpu")
    xh = x.detach().half().requires_grad_()
    y = dropout_add_layer_norm(xh, r, w, b, 1e-5, backend="triton")
    assert y.dtype == torch.float32
    dy = torch.randn_like(y)
    got = _grads(y, (xh, r, w, b), dy)
    xs = [xh.detach().float().requires_grad_()] + [t.detach().requires_grad_() for t in (r, w, b)]
    ref = dropout_add_layer_norm_reference(*xs, 1e-5)
    assert rel_err(y, ref) < 1e-5
    for g, gr, t in zip(got, _grads(ref, xs, dy), (xh, r, w, b)):
        assert g.dtype == t.dtype and rel_err(g, gr) < 1e-3


def test_reference_is_the_eager_post_ln_residual():
    x, r, w, b = (t.detach() for t in _inputs((4, 8), torch.float32, "cpu"))
    ln = torch.nn.LayerNorm(8, eps=1e-12)
    with torch.no_grad():
        ln.weight.copy_(w)
        ln.bias.copy_(b)
        assert torch.allclose(dropout_add_layer_norm_reference(x, r, w, b), ln(x + r))


def test_dropout_mask_is_shared_by_forward_and_backward():
    torch.manual_seed(1)
    p = 0.25
    x, r, w, b = _inputs((64, 40), torch.float32, "cpu")
    y = dropout_add_layer_norm(x, r, w, b, 1e-5, dropout_p=p, backend="triton")
    dy = torch.randn_like(y)
    got = _grads(y, (x, r, w, b), dy)
    # the backward's mask, read off dx (zero exactly where an element was dropped)
    keep = got[0] != 0
    share = keep.float().mean().item()
    assert abs(share - (1 - p)) < 0.05  # 2560 draws
    xs = [t.detach().requires_grad_() for t in (x, r, w, b)]
    ref = dropout_add_layer_norm_reference(xs[0] * keep / (1 - p), *xs[1:], 1e-5)
    assert rel_err(y, ref) < 1e-5  # the forward used the mask the backward drew
    want = _grads(ref, xs, dy)
    for name, g, gr in zip(["x", "residual", "weight", "bias"], got, want):
        assert rel_err(g, gr) < 1e-5, name


def test_bad_inputs():
    x = torch.randn(3, 8)
    w, b = torch.ones(8), torch.zeros(8)
    with pytest.raises(ValueError, match="residual must have shape"):
        dropout_add_layer_norm(x, x[:, :4], w, b)
    with pytest.raises(ValueError, match="weight must have shape"):
        dropout_add_layer_norm(x, x, w[:4], b)
    with pytest.raises(ValueError, match="dropout_p"):
        dropout_add_layer_norm(x, x, w, b, dropout_p=-0.1)
    with pytest.raises(TypeError, match="float64"):
        dropout_add_layer_norm(x.double(), x.double(), w.double(), b.double(), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_kernels_gpu_16bit(dtype):
    _check((8993, 768), dtype, "cuda", 1e-2)
    _check((3, 1000), dtype, "cuda", 1e-2)


@pytest.mark.gpu
def test_dropout_gpu_bf16():
    torch.manual_seed(2)
    x, r, w, b = _inputs((4000, 768), torch.bfloat16, "cuda")
    y = dropout_add_layer_norm(x, r, w, b, 1e-12, dropout_p=0.1)
    dy = torch.randn_like(y)
    got = _grads(y, (x, r, w, b), dy)
    keep = got[0] != 0
    assert abs(keep.float().mean().item() - 0.9) < 0.01
    xs = [t.detach().float().requires_grad_() for t in (x, r, w, b)]
    ref = F.layer_norm(xs[0] * keep / 0.9 + xs[1], (768,), xs[2], xs[3], 1e-12)
    assert rel_err(y, ref) < 1e-2
    for g, gr in zip(got, _grads(ref, xs, dy.float())):
        assert rel_err(g, gr) < 1e-2
