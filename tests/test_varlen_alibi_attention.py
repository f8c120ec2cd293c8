"""Variable-length ALiBi attention: slopes, the reference against a naive loop, the Triton kernels
against the reference (interpreter on CPU, bf16 on GPU), and bad input."""

import math

import pytest
import torch
from helpers import rel_err

from hfzoo.ops import varlen_alibi_attention as vaa
from hfzoo.ops.launch import count_launches, tuning
from hfzoo.ops.varlen_alibi_attention import (
    alibi_slopes,
    varlen_alibi_attention,
    varlen_alibi_attention_qkvpacked,
    varlen_alibi_attention_reference,
)


def _cu(lengths, device="cpu"):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)


def naive(q, k, v, lengths, slopes, scale):
    """Per sequence, per head, per query: softmax over the sequence's keys of q.k*scale - slope|i-j|."""
    out = torch.zeros_like(q, dtype=torch.float64)
    start = 0
    for L in lengths:
        for h in range(q.shape[1]):
            for i in range(L):
                logits = torch.stack([(q[start + i, h].double() @ k[start + j, h].double()) * scale
                                      - slopes[h] * abs(i - j) for j in range(L)])
                p = torch.softmax(logits, 0)
                out[start + i, h] = p @ v[start:start + L, h].double()
        start += L
    return out


def test_slopes_follow_the_published_rule():
    # power of two n: 2^(-8/n), 2^(-16/n), ..., 2^(-8)
    assert alibi_slopes(8) == pytest.approx([2.0 ** -(i + 1) for i in range(8)])
    assert alibi_slopes(4) == pytest.approx([2.0 ** (-2 * (i + 1)) for i in range(4)])
    # 12 heads: the 8-head slopes, then every other slope of 16 heads (2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5)
    expected12 = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -(0.5 + i) for i in range(4)]
    assert alibi_slopes(12) == pytest.approx(expected12)
    # 6 heads: the 4-head slopes, then 2^-1, 2^-3 (the 8-head slopes at even positions)
    assert alibi_slopes(6) == pytest.approx([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3])
    assert len(set(alibi_slopes(12))) == 12
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(0)


@pytest.mark.parametrize("grouped", [True, False])
def test_reference_matches_naive_loop(monkeypatch, grouped):
    if not grouped:  # one SDPA call per sequence
        monkeypatch.setattr(vaa, "_GROUP_AREA", 1)
    torch.manual_seed(0)
    lengths, H, D = [3, 0, 6, 1], 3, 8
    T = sum(lengths)
    q, k, v = (torch.randn(T, H, D) for _ in range(3))
    slopes = torch.tensor(alibi_slopes(H))
    out = varlen_alibi_attention_reference(q, k, v, _cu(lengths), max(lengths), slopes)
    ref = naive(q, k, v, lengths, slopes.tolist(), D ** -0.5)
    assert rel_err(out, ref) < 1e-6


def _compare(lengths, H, D, dtype, device, tol, packed):
    torch.manual_seed(1)
    T = sum(lengths)
    cu = _cu(lengths, device)
    slopes = torch.tensor(alibi_slopes(H), device=device)
    qkv = torch.randn(T, 3, H, D, device=device, dtype=dtype, requires_grad=True)
    do = torch.randn(T, H, D, device=device, dtype=dtype)
    if packed:
        out = varlen_alibi_attention_qkvpacked(qkv, cu, max(lengths), slopes, backend="triton")
        (grad,) = torch.autograd.grad(out, qkv, do)
        grads = grad.unbind(1)
    else:
        q, k, v = (t.detach().clone().requires_grad_() for t in qkv.unbind(1))
        out = varlen_alibi_attention(q, k, v, cu, max(lengths), slopes, backend="triton")
        grads = torch.autograd.grad(out, (q, k, v), do)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in qkv.unbind(1))
    ref = varlen_alibi_attention_reference(q32, k32, v32, cu, max(lengths), slopes)
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), do.float())
    assert out.dtype == dtype
    assert rel_err(out, ref) < tol
    for name, g, r in zip("qkv", grads, ref_grads):
        assert rel_err(g, r) < tol, f"d{name}"


@pytest.mark.parametrize("packed", [True, False])
def test_triton_kernels_interpreter_fp32(packed):
    # odd lengths crossing the 16-wide interpreter tiles, an empty sequence, a non-power-of-two head dim
    with count_launches() as n:
        _compare([5, 17, 0, 33, 1], H=3, D=24, dtype=torch.float32, device="cpu", tol=1e-5, packed=packed)
    assert n == {"varlen_alibi.fwd": 1, "varlen_alibi.bwd": 1}  # the whole backward is one launch


def test_triton_backward_one_program_per_block_interpreter():
    # SPLIT=False: each program computes dK/dV of its block and then dQ of the same block
    with tuning({"varlen_alibi.bwd": {"configs": [{"BLOCK": 32, "STEP": 16, "SPLIT": False}]}}):
        _compare([5, 17, 0, 33, 1, 70], H=3, D=24, dtype=torch.float32, device="cpu", tol=1e-5, packed=True)


def test_triton_kernels_interpreter_many_blocks_and_heads():
    # 40 + 50 tokens: three query and key blocks of 16 per sequence (the tails partly masked), 5 heads with
    # different slopes, head dim 40 (a 64-wide block, partly masked)
    _compare([40, 3, 50], H=5, D=40, dtype=torch.float32, device="cpu", tol=1e-5, packed=False)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_empty_batch_returns_empty_and_differentiable(backend):
    qkv = torch.zeros(0, 3, 2, 16, requires_grad=True)
    out = varlen_alibi_attention_qkvpacked(qkv, torch.zeros(3, dtype=torch.int32), 0, torch.ones(2),
                                           backend=backend)
    assert out.shape == (0, 2, 16) and out.dtype == qkv.dtype
    (grad,) = torch.autograd.grad(out.sum(), qkv)
    assert grad.shape == qkv.shape


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_nan_in_one_sequence_stays_there(backend):
    # a NaN key in the second sequence: that sequence's outputs are NaN, every other sequence is untouched
    torch.manual_seed(3)
    lengths = [6, 5, 9]
    q, k, v = (torch.randn(sum(lengths), 2, 16) for _ in range(3))
    cu, slopes = _cu(lengths), torch.tensor(alibi_slopes(2))
    clean = varlen_alibi_attention(q, k, v, cu, 9, slopes, backend=backend)
    k[7, 1, 3] = float("nan")
    v[8, 0, 0] = float("inf")
    out = varlen_alibi_attention(q, k, v, cu, 9, slopes, backend=backend)
    assert torch.isnan(out[6:11, 1]).all()
    others = torch.cat([out[:6], out[11:]])
    assert torch.isfinite(others).all()
    assert torch.equal(others, torch.cat([clean[:6], clean[11:]]))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_strided_int32_cu_seqlens_are_made_contiguous(backend):
    torch.manual_seed(4)
    q, k, v = (torch.randn(7, 2, 16) for _ in range(3))
    slopes = torch.tensor(alibi_slopes(2))
    cu = _cu([3, 4])
    strided = torch.stack([cu, torch.full_like(cu, 999)], 1)[:, 0]  # an int32 view with stride 2
    assert not strided.is_contiguous() and strided.dtype == torch.int32
    out = varlen_alibi_attention(q, k, v, strided, 4, slopes, backend=backend)
    ref = varlen_alibi_attention_reference(q, k, v, cu, 4, slopes)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("bad", [[0, 5, 3, 7], [0, 8, 7], [1, 3, 7], [0, 3, 6]])
def test_offsets_that_do_not_rise_from_0_to_total_are_refused(bad):
    q = torch.randn(7, 2, 16)
    slopes = torch.tensor(alibi_slopes(2))
    for backend in ("reference", "triton"):
        with pytest.raises(ValueError, match="cu_seqlens must rise"):
            varlen_alibi_attention(q, q, q, torch.tensor(bad, dtype=torch.int32), 8, slopes, backend=backend)


def test_bad_inputs():
    q = torch.randn(7, 2, 16)
    cu = _cu([3, 4])
    slopes = torch.tensor(alibi_slopes(2))
    with pytest.raises(ValueError, match="same shape"):
        varlen_alibi_attention(q, q[:, :1], q, cu, 4, slopes)
    with pytest.raises(ValueError, match="cu_seqlens must rise"):
        varlen_alibi_attention(q, q, q, _cu([3, 3]), 4, slopes)
    with pytest.raises(TypeError, match="cu_seqlens"):
        varlen_alibi_attention(q, q, q, cu.float(), 4, slopes)
    with pytest.raises(ValueError, match="max_seqlen"):
        varlen_alibi_attention(q, q, q, cu, 3, slopes)
    with pytest.raises(ValueError, match="slopes"):
        varlen_alibi_attention(q, q, q, cu, 4, torch.ones(3))
    with pytest.raises(TypeError, match="q must be one of float32"):
        varlen_alibi_attention(q.long(), q.long(), q.long(), cu, 4, slopes)
    with pytest.raises(ValueError, match="qkv"):
        varlen_alibi_attention_qkvpacked(q, cu, 4, slopes)
    with pytest.raises(ValueError, match="no attention dropout"):
        varlen_alibi_attention(q, q, q, cu, 4, slopes, dropout_p=0.1, backend="triton")
    with pytest.raises(TypeError, match="cu_seqlens"):
        varlen_alibi_attention(q, q, q, cu.bool(), 4, slopes)
    with pytest.raises(ValueError, match="cu_seqlens"):
        varlen_alibi_attention(q, q, q, cu[None], 4, slopes)
    with pytest.raises(TypeError, match="float64"):
        varlen_alibi_attention(q.double(), q.double(), q.double(), cu, 4, slopes, backend="triton")
    # float64 under auto runs the reference (computed in float64)
    out = varlen_alibi_attention(q.double(), q.double(), q.double(), cu, 4, slopes)
    assert out.dtype == torch.float64


def test_dropout_runs_on_the_reference():
    # v = 1 everywhere: without dropout every output is exactly 1; with dropout p each output is
    # sum_j P_ij m_ij / (1 - p), m_ij in {0, 1}: finite, in [0, 1 / (1 - p)], different from 1 somewhere,
    # and 1 on average (the kept probability mass is unbiased)
    torch.manual_seed(0)
    T, H, D, p = 600, 4, 16, 0.5
    q, k = torch.randn(T, H, D), torch.randn(T, H, D)
    v = torch.ones(T, H, D)
    cu, slopes = _cu([100] * 6), torch.tensor([0.0] * H)
    plain = varlen_alibi_attention(q, k, v, cu, 100, slopes)
    assert torch.allclose(plain, torch.ones_like(plain), atol=1e-5)
    dropped = varlen_alibi_attention(q, k, v, cu, 100, slopes, dropout_p=p)
    assert torch.isfinite(dropped).all()
    assert dropped.min() >= 0 and dropped.max() <= 1 / (1 - p) + 1e-5
    assert (dropped - 1).abs().max() > 0.1
    assert abs(dropped[:, :, 0].mean().item() - 1.0) < 0.05


def test_long_sequence_beyond_training_length():
    # ALiBi needs no table: a long sequence works and matches the reference (interpreter, small dims)
    torch.manual_seed(2)
    L, H, D = 150, 1, 16
    q, k, v = (torch.randn(L, H, D) for _ in range(3))
    cu, slopes = _cu([L]), torch.tensor([1 / 64])
    out = varlen_alibi_attention(q, k, v, cu, L, slopes, backend="triton")
    ref = varlen_alibi_attention_reference(q, k, v, cu, L, slopes)
    assert rel_err(out, ref) < 1e-5
    assert math.isfinite(out.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("packed", [True, False])
def test_triton_kernels_gpu_bf16(packed):
    _compare([1, 64, 127, 300, 513, 1000, 77], H=12, D=64, dtype=torch.bfloat16, device="cuda", tol=2e-2,
             packed=packed)


@pytest.mark.gpu
@pytest.mark.parametrize("split", [False, True])
def test_triton_backward_gpu_bf16_each_config(split):
    # both backward layouts the autotuner chooses between, each forced
    conf = {"BLOCK": 128, "STEP": 32, "SPLIT": split, "num_warps": 4, "num_stages": 3}
    with tuning({"varlen_alibi.bwd": {"configs": [conf]}}):
        _compare([1, 64, 127, 300, 513, 77], H=12, D=64, dtype=torch.bfloat16, device="cuda", tol=2e-2, packed=True)


@pytest.mark.gpu
def test_triton_kernels_gpu_fp16_head_dim_32():
    _compare([5, 200, 31], H=4, D=32, dtype=torch.float16, device="cuda", tol=2e-2, packed=True)
