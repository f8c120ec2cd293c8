"""Non-causal ReLU linear attention (LiT's mixer): Triton kernels (interpreter on CPU, native on GPU)
against the PyTorch reference, and the reference against the formula written out token by token."""

import pytest
import torch
from helpers import rel_err

from hfzoo.ops.linear_attention import linear_attention, linear_attention_reference


def _run(backend, q, k, v, do, eps=1e-6):
    o = linear_attention(q, k, v, eps=eps, backend=backend)
    return [o, *torch.autograd.grad(o, (q, k, v), do)]


def _inputs(B, N, H, DK, DV, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    q, k = (torch.randn(B, N, H, DK, generator=g, device=device, dtype=dtype).requires_grad_() for _ in range(2))
    v = torch.randn(B, N, H, DV, generator=g, device=device, dtype=dtype).requires_grad_()
    do = torch.randn(B, N, H, DV, generator=g, device=device, dtype=dtype)
    return q, k, v, do


# Token counts not multiples of the interpreter's 16-token block; head dims spanning one to three tiles,
# Dk != Dv, one and several heads, several images.
@pytest.mark.parametrize("B,N,H,DK,DV", [(2, 37, 3, 24, 24), (1, 50, 2, 16, 40), (3, 9, 1, 40, 8), (1, 1, 2, 8, 8)])
def test_triton_matches_reference_fp32(B, N, H, DK, DV):
    q, k, v, do = _inputs(B, N, H, DK, DV, seed=N)
    ours = _run("triton", q, k, v, do)
    ref = _run("reference", q, k, v, do)
    for name, a, b in zip(("o", "dq", "dk", "dv"), ours, ref):
        assert a.shape == b.shape, name
        assert rel_err(a, b) < 1e-5, name


# LiT's depthwise convolution on v, fused: odd grids (3x5, 7x9, 1x6), kernel sizes 3 and 5, with/without bias
@pytest.mark.parametrize("B,grid,H,D,K,bias", [(2, (3, 5), 3, 24, 5, True), (1, (7, 9), 2, 16, 3, False),
                                               (2, (1, 6), 1, 8, 5, True)])
def test_fused_depthwise_conv_matches_reference_fp32(B, grid, H, D, K, bias):
    N = grid[0] * grid[1]
    q, k, v, do = _inputs(B, N, H, D, D, seed=N + K)
    g = torch.Generator().manual_seed(K)
    w = torch.randn(D, 1, K, K, generator=g).requires_grad_()
    b = torch.randn(D, generator=g).requires_grad_() if bias else None
    inputs = [q, k, v, w] + ([b] if bias else [])
    res = []
    for backend in ("triton", "reference"):
        o = linear_attention(q, k, v, conv_weight=w, conv_bias=b, grid=grid, backend=backend)
        res.append([o, *torch.autograd.grad(o, inputs, do)])
    for name, a, r in zip(("o", "dq", "dk", "dv", "dw", "db"), *res):
        assert rel_err(a, r) < 1e-5, name


def test_reference_conv_is_per_head_conv2d():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 12, 2, 4).unbind(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
    out = linear_attention_reference(q, k, v, conv_weight=conv.weight, conv_bias=conv.bias, grid=(3, 4))
    attn = linear_attention_reference(q, k, v)
    for h in range(2):
        img = v[:, :, h].transpose(1, 2).reshape(1, 4, 3, 4)          # head h's v as a 4-channel 3x4 image
        expected = attn[:, :, h] + conv(img).reshape(1, 4, 12).transpose(1, 2)
        assert rel_err(out[:, :, h], expected) < 1e-6


def test_strided_slices_of_packed_qkv():
    # The model passes q, k, v as views into one [B, N, 3, H, D] projection output.
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 21, 3, 2, 24, generator=g, requires_grad=True)
    do = torch.randn(2, 21, 2, 24, generator=g)
    grads = []
    for backend in ("triton", "reference"):
        o = linear_attention(*qkv.unbind(2), backend=backend)
        grads.append((o, torch.autograd.grad(o, qkv, do)[0]))
    assert rel_err(grads[0][0], grads[1][0]) < 1e-5
    assert rel_err(grads[0][1], grads[1][1]) < 1e-5


def test_relu_gradient_mask_and_dead_queries():
    # Queries that are all negative see nothing: output 0, gradient 0 through the ReLU; negative keys add nothing.
    q, k, v, do = _inputs(1, 19, 2, 16, 16, seed=3)
    with torch.no_grad():
        q[:, :5] = -q[:, :5].abs() - 0.1
        k[:, 7:11] = -k[:, 7:11].abs() - 0.1
    o, dq, dk, dv = _run("triton", q, k, v, do)
    assert o[:, :5].abs().max() == 0
    assert dq[:, :5].abs().max() == 0
    assert dk[:, 7:11].abs().max() == 0
    assert (dq[q.detach() <= 0] == 0).all() and (dk[k.detach() <= 0] == 0).all()
    ref = _run("reference", q, k, v, do)
    for a, b in zip((o, dq, dk, dv), ref):
        assert rel_err(a, b) < 1e-5


def test_reference_matches_token_loop():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 6, 3, 5), torch.randn(2, 6, 3, 5), torch.randn(2, 6, 3, 4)
    out = torch.empty(2, 6, 3, 4)
    for b in range(2):
        for h in range(3):
            fk, fq = k[b, :, h].relu(), q[b, :, h].relu()
            for n in range(6):
                w = fq[n] @ fk.T                                  # unnormalized weights over all tokens
                out[b, n, h] = (w @ v[b, :, h]) / (w.sum() + 1e-3)
    assert rel_err(linear_attention_reference(q, k, v, eps=1e-3), out) < 1e-6


def test_bad_inputs_are_named():
    x = torch.randn(2, 5, 2, 8)
    with pytest.raises(ValueError, match="v must be"):
        linear_attention(x, x, torch.randn(2, 6, 2, 8))
    with pytest.raises(ValueError, match="q and k"):
        linear_attention(x, torch.randn(2, 5, 2, 4), x)
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        linear_attention(x[0], x, x)
    with pytest.raises(TypeError, match="k must be"):
        linear_attention(x, x.long(), x)
    # float64: the reference runs it; forcing the kernels is an error, not a silent downcast
    x64 = x.double()
    assert linear_attention(x64, x64, x64).dtype == torch.float64
    with pytest.raises(TypeError, match="float64"):
        linear_attention(x64, x64, x64, backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        linear_attention(x, x, x.double())
    with pytest.raises(ValueError, match="eps"):
        linear_attention(x, x, x, eps=0.0)
    with pytest.raises(ValueError, match="grid"):
        linear_attention(x, x, x, conv_weight=torch.randn(8, 1, 5, 5), grid=(2, 3))
    with pytest.raises(ValueError, match="conv_weight"):
        linear_attention(x, x, x, conv_weight=torch.randn(8, 1, 4, 4), grid=(1, 5))
    with pytest.raises(ValueError, match="conv_bias"):
        linear_attention(x, x, x, conv_weight=torch.randn(8, 1, 5, 5), conv_bias=torch.randn(7), grid=(1, 5))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("B,N,H,DK,DV", [(4, 1000, 4, 288, 288), (2, 4096, 2, 192, 192), (8, 255, 6, 64, 64),
                                         (1, 16384, 4, 72, 40), (64, 256, 16, 72, 72)])
def test_gpu_matches_reference(dtype, B, N, H, DK, DV):
    q, k, v, do = _inputs(B, N, H, DK, DV, dtype=dtype, device="cuda")
    ours = _run("triton", q, k, v, do)
    ref = _run("reference", *(t.detach().float().requires_grad_() for t in (q, k, v)), do.float())
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, a, b in zip(("o", "dq", "dk", "dv"), ours, ref):
        assert a.dtype == dtype, name
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < tol, (name, rel_err(a, b))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,grid,H,D", [(8, (64, 64), 4, 288), (128, (16, 16), 2, 192), (3, (17, 23), 6, 64)])
def test_gpu_fused_conv_matches_reference(dtype, B, grid, H, D):
    N = grid[0] * grid[1]
    q, k, v, do = _inputs(B, N, H, D, D, dtype=dtype, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    w = (0.2 * torch.randn(D, 1, 5, 5, generator=g, device="cuda")).to(dtype).requires_grad_()
    b = torch.randn(D, generator=g, device="cuda").to(dtype).requires_grad_()
    o = linear_attention(q, k, v, conv_weight=w, conv_bias=b, grid=grid, backend="triton")
    ours = [o, *torch.autograd.grad(o, (q, k, v, w, b), do)]
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v, w, b)]
    o = linear_attention(*ref_in[:3], conv_weight=ref_in[3], conv_bias=ref_in[4], grid=grid, backend="reference")
    ref = [o, *torch.autograd.grad(o, ref_in, do.float())]
    for name, a, r in zip(("o", "dq", "dk", "dv", "dw", "db"), ours, ref):
        assert a.dtype == dtype, name
        assert rel_err(a, r) < 2e-2, (name, rel_err(a, r))
