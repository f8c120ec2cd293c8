"""Variable-length ALiBi attention: slopes, the reference against a naive loop, the Triton kernels
against the reference (interpreter on CPU, bf16 on GPU), and bad input."""

import math

import pytest
import torch
from helpers import rel_err

from hfzoo.ops import varlen_alibi_attention as vaa
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


@pytest.mark.parametrize("packed_bias", [True, False])
def test_reference_matches_naive_loop(monkeypatch, packed_bias):
    if not packed_bias:  # force the per-sequence branch
        monkeypatch.setattr(vaa, "_GROUP_TOKENS", 1)
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
    _compare([5, 17, 0, 33, 1], H=3, D=24, dtype=torch.float32, device="cpu", tol=1e-5, packed=packed)


def test_empty_batch_returns_empty():
    qkv = torch.zeros(0, 3, 2, 16)
    out = varlen_alibi_attention_qkvpacked(qkv, torch.zeros(3, dtype=torch.int32), 0, torch.ones(2))
    assert out.shape == (0, 2, 16)


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
    with pytest.raises(TypeError, match="dtype"):
        varlen_alibi_attention(q.long(), q.long(), q.long(), cu, 4, slopes)
    with pytest.raises(ValueError, match="qkv"):
        varlen_alibi_attention_qkvpacked(q, cu, 4, slopes)
    with pytest.raises(ValueError, match="no attention dropout"):
        varlen_alibi_attention(q, q, q, cu, 4, slopes, dropout_p=0.1, backend="triton")


def test_dropout_runs_on_the_reference():
    torch.manual_seed(0)
    q = torch.randn(7, 2, 16)
    cu, slopes = _cu([3, 4]), torch.tensor(alibi_slopes(2))
    plain = varlen_alibi_attention(q, q, q, cu, 4, slopes)
    dropped = varlen_alibi_attention(q, q, q, cu, 4, slopes, dropout_p=0.5)
    assert dropped.shape == plain.shape and not torch.allclose(dropped, plain)


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
def test_triton_kernels_gpu_fp16_head_dim_32():
    _compare([5, 200, 31], H=4, D=32, dtype=torch.float16, device="cuda", tol=2e-2, packed=True)
