"""Per-row softmax cross-entropy: the Triton kernels against F.cross_entropy (interpreter on CPU, bf16 on GPU),
ignored rows, out-of-range targets, bad input."""

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from hfzoo.ops.launch import count_launches
from hfzoo.ops.softmax_cross_entropy import (
    softmax_cross_entropy,
    softmax_cross_entropy_bwd,
    softmax_cross_entropy_fwd,
    softmax_cross_entropy_reference,
)


def _check(N, C, dtype, device, tol, ignore=()):
    torch.manual_seed(0)
    logits = (3 * torch.randn(N, C, device=device)).to(dtype).requires_grad_()
    targets = torch.randint(0, C, (N,), device=device)
    for i in ignore:
        targets[i] = -100
    loss = softmax_cross_entropy(logits, targets, backend="triton")
    w = torch.rand(N, device=device)  # a per-row upstream gradient
    (grad,) = torch.autograd.grad((loss * w).sum(), logits)
    lf = logits.detach().float().requires_grad_()
    ref = F.cross_entropy(lf, targets, reduction="none")
    (gref,) = torch.autograd.grad((ref * w).sum(), lf)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert rel_err(loss, ref) < tol
    assert rel_err(grad, gref) < tol
    for i in ignore:
        assert loss[i] == 0 and (grad[i] == 0).all()


@pytest.mark.parametrize("N,C", [(9, 53), (4, 16), (3, 1), (0, 7)])
def test_kernels_match_reference_interpreter(N, C):
    # class counts that are not multiples of the 16-wide interpreter block, one class, no rows
    with count_launches() as n:
        _check(N, C, torch.float32, "cpu", 1e-6, ignore=(2,) if N > 2 else ())
    assert n == ({"softmax_ce.fwd": 1, "softmax_ce.bwd": 1} if N else {})


def test_scalar_reduction_gradient_and_extreme_logits():
    # the sum's gradient is an expanded (stride-0) tensor; -inf logits (a class that is never predicted) and
    # a large logit do not overflow the online log-sum-exp
    logits = torch.tensor([[0.0, float("-inf"), 80.0, -5.0], [1.0, 2.0, float("-inf"), 3.0]], requires_grad=True)
    targets = torch.tensor([2, 0])
    loss = softmax_cross_entropy(logits, targets, backend="triton")
    ref = softmax_cross_entropy_reference(logits, targets)
    assert torch.allclose(loss, ref, atol=1e-5)
    (g,) = torch.autograd.grad(loss.sum() / 2, logits)
    (gr,) = torch.autograd.grad(ref.sum() / 2, logits)
    assert torch.allclose(g, gr, atol=1e-6)


def test_launchers_write_given_buffers_and_the_gradient_in_place():
    # what linear_cross_entropy does with a chunk: forward into slices of larger buffers, then the backward with
    # one dloss for every row (stride 0) written over the logits themselves
    torch.manual_seed(0)
    logits = 3 * torch.randn(7, 37)
    targets = torch.tensor([0, 36, -100, 5, 17, -100, 2])
    loss, lse = torch.full((10,), 7.0), torch.full((10,), 7.0)
    softmax_cross_entropy_fwd(logits, targets, -100, loss=loss[2:9], lse=lse[1:8])
    assert (loss[:2] == 7).all() and (loss[9:] == 7).all() and (lse[0] == 7) and (lse[8:] == 7).all()
    assert rel_err(loss[2:9], softmax_cross_entropy_reference(logits, targets)) < 1e-6
    assert rel_err(lse[1:8], torch.logsumexp(logits, -1)) < 1e-6
    lf = logits.clone().requires_grad_()
    (want,) = torch.autograd.grad(softmax_cross_entropy_reference(lf, targets).sum(), lf)
    buf = logits.clone()
    out = softmax_cross_entropy_bwd(buf, targets, lse[1:8], torch.ones(1).expand(7), -100, dlogits=buf)
    assert out.data_ptr() == buf.data_ptr() and rel_err(buf, want) < 1e-6
    assert (buf[2] == 0).all() and (buf[5] == 0).all()
    with pytest.raises(ValueError, match="unit column stride"):
        softmax_cross_entropy_fwd(logits.t(), targets[:1].expand(37).contiguous(), -100)


def test_out_of_range_target_gives_nan_not_a_wild_read():
    logits = torch.randn(3, 5)
    loss = softmax_cross_entropy(logits, torch.tensor([1, 5, -3]), backend="triton")
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1:]).all()


def test_bad_inputs():
    logits = torch.randn(3, 5)
    with pytest.raises(TypeError, match="targets"):
        softmax_cross_entropy(logits, torch.zeros(3))
    with pytest.raises(ValueError, match="targets must have shape"):
        softmax_cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="logits must have 2"):
        softmax_cross_entropy(logits[None], torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="float64"):
        softmax_cross_entropy(logits.double(), torch.zeros(3, dtype=torch.long), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_kernels_gpu_16bit(dtype):
    _check(2700, 30522, dtype, "cuda", 1e-2, ignore=(0, 17))
    _check(5, 100, dtype, "cuda", 1e-2)
