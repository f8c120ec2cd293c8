"""Bidirectional attention over packed variable-length sequences with a symmetric ALiBi bias.

Sequences of a batch are packed one after another (no padding) into ``[total, H, D]`` tensors and
delimited by ``cu_seqlens = [0, len_0, len_0 + len_1, ..., total]``. Token ``i`` of a sequence attends to
every token ``j`` of the *same* sequence with the logit

    s_ij = scale * <q_i, k_j> - slope_h * |i - j|

(MosaicBERT's ALiBi: symmetric, no causal mask), and ``o_i = softmax_j(s_ij) v_j``. Tokens never see
other sequences, so a batch of lengths 64..512 costs only the real tokens' work.

Ladder: ``alibi_slopes`` (the published head slopes) -> ``varlen_alibi_attention_reference`` (the
definition, plain PyTorch SDPA with a bias over padded groups of sequences) -> Triton kernels (flash-style:
online softmax in the forward; the backward is one kernel without atomics that recomputes the probabilities
from the saved log-sum-exp: each program computes dK/dV of one key block and then dQ of the query block with
the same index) -> autograd Functions -> ``varlen_alibi_attention`` and
``varlen_alibi_attention_qkvpacked`` (public: arguments checked by ``validate.py``, dispatching per call, see
``dispatch.py``; launch settings ``varlen_alibi.*`` in ``launch.py``).

NaN: both paths keep sequences apart (a NaN in one sequence never reaches another); inside a sequence a NaN
query, key or value makes that sequence's affected outputs NaN, as the softmax says.

The Triton kernels have no attention dropout: with ``dropout_p > 0`` the reference runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .dispatch import apply_function
from .launch import bucket, launch, settings
from .triton_shim import tl, triton
from .validate import check_cu_seqlens, check_tensor, kernel_dtype_problem, pick_backend

# ----------------------------------------------------------------------------------------------------
# The slopes


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi head slopes (Press et al.), as MosaicBERT uses them.

    For a power of two ``n``: a geometric sequence starting at ``2^(-8/n)`` with that same ratio, i.e.
    ``slope_h = 2^(-8 (h + 1) / n)``. Otherwise: the slopes of the closest smaller power of two ``m``,
    followed by every other slope of ``2m`` (the odd-numbered ones) until there are ``n``.
    """
    if num_heads < 1:
        raise ValueError(f"alibi_slopes: num_heads must be >= 1, got {num_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


# ----------------------------------------------------------------------------------------------------
# Reference

# Consecutive sequences are padded to the longest of their group and batched into one SDPA call while the
# group's padded score area (sequences x longest^2) stays within this budget; a longer sequence forms a
# group of its own. Padding (not a block-diagonal bias over concatenated sequences) keeps sequences apart
# also for NaN/inf: a masked score is still computed, and NaN * 0 would leak into other sequences.
_GROUP_AREA = 256 * 256


def _groups(lengths: list[int]) -> list[list[int]]:
    groups, current = [], []
    for L in lengths:
        if current and (len(current) + 1) * max(max(current), L) ** 2 > _GROUP_AREA:
            groups.append(current)
            current = []
        current.append(L)
    if current:
        groups.append(current)
    return groups


def _alibi_bias(L: int, slopes: torch.Tensor) -> torch.Tensor:
    """``[H, L, L]`` symmetric ALiBi bias ``-slope_h |i - j|``."""
    pos = torch.arange(L, device=slopes.device)
    return -slopes.float()[:, None, None] * (pos[:, None] - pos[None, :]).abs().float()


def varlen_alibi_attention_reference(q, k, v, cu_seqlens, max_seqlen, slopes, softmax_scale=None,
                                     dropout_p: float = 0.0):
    """The definition in plain PyTorch: SDPA with an explicit ALiBi bias, computed in fp32.

    Consecutive sequences are padded to a common length and batched into one SDPA call per group (padded
    keys masked with ``-inf``, padded keys and values zero), so values of one sequence -- NaN included --
    never reach another. Returns ``q``'s dtype. Differentiable.
    """
    total, H, D = q.shape
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    if total == 0:  # empty, but still part of the autograd graph (a backward through an empty batch works)
        return q * 0 + k * 0 + v * 0
    lengths = [L for L in (cu_seqlens[1:] - cu_seqlens[:-1]).tolist() if L > 0]
    dt = torch.promote_types(q.dtype, torch.float32)
    qf, kf, vf = (t.to(dt) for t in (q, k, v))
    outs, start = [], 0
    for group in _groups(lengths):
        n, Lmax, size = len(group), max(group), sum(group)
        # [n, H, Lmax, D] padded batch; `valid` marks each sequence's real positions
        pos = torch.arange(Lmax, device=q.device)
        valid = pos[None, :] < torch.tensor(group, device=q.device)[:, None]          # [n, Lmax]
        padded = []
        for t in (qf, kf, vf):
            p = t.new_zeros(n, Lmax, H, D)
            p[valid] = t[start:start + size]  # row-major order of `valid` is the packed order
            padded.append(p.transpose(1, 2))
        bias = _alibi_bias(Lmax, slopes).to(dt)[None].expand(n, H, Lmax, Lmax)
        bias = bias.masked_fill(~valid[:, None, None, :], float("-inf"))
        o = F.scaled_dot_product_attention(*padded, attn_mask=bias, dropout_p=dropout_p, scale=scale)
        outs.append(o.transpose(1, 2)[valid])                                           # [size, H, D]
        start += size
    return torch.cat(outs, dim=0).to(q.dtype)


# ----------------------------------------------------------------------------------------------------
# Triton kernels. Grid: (blocks along the longest sequence, sequences, heads). Logits are kept in the
# log2 domain (scaled by log2(e)) so the kernels use exp2. LSE is saved per token and head ([total, H]).
#
# Layout contract (keeps the argument list short: on the GPU machine each kernel argument costs a few us of host
# time per launch, and this attention runs twice per layer): q, k, v are [total, H, D] with heads D apart and unit
# last stride (slices of a fused QKV projection qualify; each has its own token stride); O and dO are contiguous
# [total, H, D]; dq, dk, dv share one token stride (slices of one [total, 3, H, D] buffer). H and D are constexprs.

_LOG2E = 1.4426950408889634


@triton.jit
def _alibi_fwd_kernel(Q, K, V, O, LSE, CU, SLOPES, qk_scale, stride_q, stride_k, stride_v, SEQ_BUCKET,
                      H: tl.constexpr, D: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    start = tl.load(CU + b)
    L = tl.load(CU + b + 1) - start
    if pid_m * BLOCK_M >= L:
        return
    slope = tl.load(SLOPES + h).to(tl.float32) * 1.4426950408889634
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < L
    mask_d = offs_d < D
    rows = (start + offs_m).to(tl.int64)
    q = tl.load(Q + rows[:, None] * stride_q + h * D + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, L, BLOCK_N):
        cols = n0 + offs_n
        mask_n = cols < L
        kv_rows = (start + cols).to(tl.int64)
        kt = tl.load(K + kv_rows[None, :] * stride_k + h * D + offs_d[:, None],
                     mask=mask_n[None, :] & mask_d[:, None], other=0.0)
        s = tl.dot(q, kt) * qk_scale
        s = s - slope * tl.abs(offs_m[:, None] - cols[None, :]).to(tl.float32)
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + kv_rows[:, None] * stride_v + h * D + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O + rows[:, None] * (H * D) + h * D + offs_d[None, :], acc.to(O.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])
    tl.store(LSE + rows * H + h, m_i + tl.math.log2(l_i), mask=mask_m)


@triton.jit
def _alibi_bwd_dkdv(Q, K, V, O, DO, LSE, DK, DV, start, L, blk, h, slope, qk_scale, stride_q, stride_k, stride_v,
                    stride_g, H: tl.constexpr, D: tl.constexpr,
                    BLOCK: tl.constexpr, STEP: tl.constexpr, BLOCK_D: tl.constexpr):
    # dK, dV of keys [blk*BLOCK, (blk+1)*BLOCK), walking all queries of the sequence in STEP tiles.
    offs_b = blk * BLOCK + tl.arange(0, BLOCK)
    offs_s = tl.arange(0, STEP)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    rows_b = (start + offs_b).to(tl.int64)
    bmask = (offs_b < L)[:, None] & mask_d[None, :]
    k = tl.load(K + rows_b[:, None] * stride_k + h * D + offs_d[None, :], mask=bmask, other=0.0)
    v = tl.load(V + rows_b[:, None] * stride_v + h * D + offs_d[None, :], mask=bmask, other=0.0)
    dk = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    for m0 in range(0, L, STEP):
        qpos = m0 + offs_s
        mask_m = qpos < L
        rows = (start + qpos).to(tl.int64)
        smask = mask_m[:, None] & mask_d[None, :]
        q = tl.load(Q + rows[:, None] * stride_q + h * D + offs_d[None, :], mask=smask, other=0.0)
        do = tl.load(DO + rows[:, None] * (H * D) + h * D + offs_d[None, :], mask=smask, other=0.0)
        o = tl.load(O + rows[:, None] * (H * D) + h * D + offs_d[None, :], mask=smask, other=0.0)
        lse = tl.load(LSE + rows * H + h, mask=mask_m, other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        st = tl.dot(k, tl.trans(q)) * qk_scale  # [BLOCK, STEP]: logits, keys along rows
        st = st - slope * tl.abs(offs_b[:, None] - qpos[None, :]).to(tl.float32)
        pt = tl.math.exp2(st - lse[None, :])
        pt = tl.where(mask_m[None, :], pt, 0.0)
        dv += tl.dot(pt.to(do.dtype), do)
        dpt = tl.dot(v, tl.trans(do))
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q)
    sm_scale = qk_scale * 0.6931471805599453  # qk_scale = sm_scale * log2(e)
    tl.store(DK + rows_b[:, None] * stride_g + h * D + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty),
             mask=bmask)
    tl.store(DV + rows_b[:, None] * stride_g + h * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=bmask)


@triton.jit
def _alibi_bwd_dq(Q, K, V, O, DO, LSE, DQ, start, L, blk, h, slope, qk_scale, stride_q, stride_k, stride_v,
                  stride_g, H: tl.constexpr, D: tl.constexpr,
                  BLOCK: tl.constexpr, STEP: tl.constexpr, BLOCK_D: tl.constexpr):
    # dQ of queries [blk*BLOCK, (blk+1)*BLOCK), walking all keys of the sequence in STEP tiles.
    offs_b = blk * BLOCK + tl.arange(0, BLOCK)
    offs_s = tl.arange(0, STEP)
    offs_d = tl.arange(0, BLOCK_D)
    mask_b = offs_b < L
    mask_d = offs_d < D
    rows_b = (start + offs_b).to(tl.int64)
    bmask = mask_b[:, None] & mask_d[None, :]
    q = tl.load(Q + rows_b[:, None] * stride_q + h * D + offs_d[None, :], mask=bmask, other=0.0)
    do = tl.load(DO + rows_b[:, None] * (H * D) + h * D + offs_d[None, :], mask=bmask, other=0.0)
    o = tl.load(O + rows_b[:, None] * (H * D) + h * D + offs_d[None, :], mask=bmask, other=0.0)
    lse = tl.load(LSE + rows_b * H + h, mask=mask_b, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    dq = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, L, STEP):
        cols = n0 + offs_s
        mask_n = cols < L
        kv_rows = (start + cols).to(tl.int64)
        smask = mask_n[:, None] & mask_d[None, :]
        kk = tl.load(K + kv_rows[:, None] * stride_k + h * D + offs_d[None, :], mask=smask, other=0.0)
        vv = tl.load(V + kv_rows[:, None] * stride_v + h * D + offs_d[None, :], mask=smask, other=0.0)
        s = tl.dot(q, tl.trans(kk)) * qk_scale  # [BLOCK, STEP]
        s = s - slope * tl.abs(offs_b[:, None] - cols[None, :]).to(tl.float32)
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(mask_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(vv))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kk.dtype), kk)
    sm_scale = qk_scale * 0.6931471805599453
    tl.store(DQ + rows_b[:, None] * stride_g + h * D + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=bmask)


@triton.jit
def _alibi_bwd_kernel(Q, K, V, O, DO, LSE, DQ, DK, DV, CU, SLOPES, qk_scale, stride_q, stride_k, stride_v, stride_g,
                      SEQ_BUCKET, H: tl.constexpr, D: tl.constexpr,
                      BLOCK: tl.constexpr, STEP: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr):
    # The whole backward in one launch, without atomics: dK/dV of a key block and dQ of a query block each have
    # exactly one program that computes them, recomputing P and dP (7 matmuls per tile pair instead of 5).
    # SPLIT=False: program (i, b, h) first computes dK/dV of block i of sequence b, head h, then dQ of block i.
    # SPLIT=True: twice the programs, each doing one of the two (even program 2i: dK/dV of block i; odd 2i + 1:
    # dQ of block i): half the serial work per program, twice the programs in flight -- short sequences are
    # latency-bound. delta_i = rowsum(dO_i * O_i) (= sum_j P_ij dP_ij) is computed where it is needed, from the
    # O and dO tiles (no preprocessing pass).
    pid = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    start = tl.load(CU + b)
    L = tl.load(CU + b + 1) - start
    slope = tl.load(SLOPES + h).to(tl.float32) * 1.4426950408889634
    if SPLIT:
        blk = pid // 2
        if blk * BLOCK >= L:
            return
        if pid % 2 == 0:
            _alibi_bwd_dkdv(Q, K, V, O, DO, LSE, DK, DV, start, L, blk, h, slope, qk_scale, stride_q, stride_k,
                            stride_v, stride_g, H, D, BLOCK, STEP, BLOCK_D)
        else:
            _alibi_bwd_dq(Q, K, V, O, DO, LSE, DQ, start, L, blk, h, slope, qk_scale, stride_q, stride_k, stride_v,
                          stride_g, H, D, BLOCK, STEP, BLOCK_D)
    else:
        if pid * BLOCK >= L:
            return
        _alibi_bwd_dkdv(Q, K, V, O, DO, LSE, DK, DV, start, L, pid, h, slope, qk_scale, stride_q, stride_k,
                        stride_v, stride_g, H, D, BLOCK, STEP, BLOCK_D)
        _alibi_bwd_dq(Q, K, V, O, DO, LSE, DQ, start, L, pid, h, slope, qk_scale, stride_q, stride_k, stride_v,
                      stride_g, H, D, BLOCK, STEP, BLOCK_D)


# Launch settings: launch.DEFAULTS["varlen_alibi.fwd" / ".bwd"]: short autotune lists keyed on
# the head-dim block and a power-of-two bucket of the longest sequence (a new batch composition does not tune
# again); one small fixed tile under the interpreter (block edges are crossed by short test sequences).
_KEY = ["BLOCK_D", "SEQ_BUCKET"]


def _launch(name, kernel, grid_len_key, n_seq, n_heads, max_seqlen, *args, **kwargs):
    conf = settings(name)
    # SPLIT kernels run two programs per block (see _alibi_bwd_kernel)
    # -(-a // b): ceil division without triton.cdiv (a constexpr function in newer Triton: slower to call per launch)
    grid = lambda meta: (-(-max_seqlen // meta[grid_len_key]) * (2 if meta.get("SPLIT") else 1), n_seq,
                         n_heads)
    launch(name, kernel, grid, *args, configs=conf["configs"], key=_KEY, **kwargs)


def _block_d(D: int) -> int:
    return max(16, 1 << (D - 1).bit_length())   # next power of two (plain ints: cheaper per launch)


def _forward(q, k, v, cu_seqlens, max_seqlen, slopes, scale):
    total, H, D = q.shape
    o = torch.empty(total, H, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(total, H, dtype=torch.float32, device=q.device)
    _launch("varlen_alibi.fwd", _alibi_fwd_kernel, "BLOCK_M", cu_seqlens.numel() - 1, H, max_seqlen,
            q, k, v, o, lse, cu_seqlens, slopes, scale * _LOG2E, q.stride(0), k.stride(0), v.stride(0),
            bucket(max_seqlen), H=H, D=D, BLOCK_D=_block_d(D))
    return o, lse


def _backward(q, k, v, o, lse, do, dqkv, cu_seqlens, max_seqlen, slopes, scale):
    """dq, dk, dv into ``dqkv[:, 0]``, ``[:, 1]``, ``[:, 2]`` (a contiguous ``[total, 3, H, D]`` buffer)."""
    total, H, D = q.shape
    _launch("varlen_alibi.bwd", _alibi_bwd_kernel, "BLOCK", cu_seqlens.numel() - 1, H, max_seqlen,
            q, k, v, o, do, lse, dqkv[:, 0], dqkv[:, 1], dqkv[:, 2], cu_seqlens, slopes, scale * _LOG2E,
            q.stride(0), k.stride(0), v.stride(0), dqkv.stride(0), bucket(max_seqlen), H=H, D=D, BLOCK_D=_block_d(D))


def _head_layout(*tensors):
    """Each ``[total, H, D]`` tensor with heads D apart and a unit last stride (a copy only where it is not)."""
    return [t if t.stride(-1) == 1 and (t.shape[1] == 1 or t.stride(1) == t.shape[2]) else t.contiguous()
            for t in tensors]


class VarlenAlibiAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, slopes, scale):
        q, k, v = _head_layout(q, k, v)
        o, lse = _forward(q, k, v, cu_seqlens, max_seqlen, slopes, scale)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens, slopes)
        ctx.max_seqlen, ctx.scale = max_seqlen, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_seqlens, slopes = ctx.saved_tensors
        total, H, D = q.shape
        dqkv = torch.empty(total, 3, H, D, dtype=q.dtype, device=q.device)  # one buffer: one gradient stride
        _backward(q, k, v, o, lse, do.contiguous(), dqkv, cu_seqlens, ctx.max_seqlen, slopes, ctx.scale)
        return dqkv[:, 0], dqkv[:, 1], dqkv[:, 2], None, None, None, None


class VarlenAlibiAttentionQKVPackedFunction(torch.autograd.Function):
    """Same op on a packed ``[total, 3, H, D]`` projection: the gradient is written into one tensor."""

    @staticmethod
    def forward(ctx, qkv, cu_seqlens, max_seqlen, slopes, scale):
        if qkv.stride(-1) != 1 or qkv.stride(-2) != qkv.shape[-1]:
            qkv = qkv.contiguous()
        o, lse = _forward(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, max_seqlen, slopes, scale)
        ctx.save_for_backward(qkv, o, lse, cu_seqlens, slopes)
        ctx.max_seqlen, ctx.scale = max_seqlen, scale
        return o

    @staticmethod
    def backward(ctx, do):
        qkv, o, lse, cu_seqlens, slopes = ctx.saved_tensors
        dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
        _backward(qkv[:, 0], qkv[:, 1], qkv[:, 2], o, lse, do.contiguous(), dqkv, cu_seqlens, ctx.max_seqlen, slopes,
                  ctx.scale)
        return dqkv, None, None, None, None


# ----------------------------------------------------------------------------------------------------
# Public ops


def _check(name, q, k, v, cu_seqlens, max_seqlen, slopes, dropout_p, backend, tensors):
    """Validate the arguments; return ``(backend, cu_seqlens as contiguous int32, slopes as contiguous fp32)``."""
    check_tensor(name, "q", q, dims=3)
    check_tensor(name, "k", k, device=q.device)
    check_tensor(name, "v", v, device=q.device)
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"{name}: q, k and v must have the same shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{name}: q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise ValueError(f"{name}: max_seqlen must be a non-negative int; got {max_seqlen!r}")
    cu, offsets = check_cu_seqlens(name, cu_seqlens, q.shape[0], q.device)
    if offsets is not None and len(offsets) > 1:
        longest = max(b - a for a, b in zip(offsets, offsets[1:]))
        if longest > max_seqlen:
            raise ValueError(f"{name}: max_seqlen={max_seqlen} is smaller than the longest sequence ({longest})")
    if not isinstance(slopes, torch.Tensor) or slopes.shape != (q.shape[1],):
        raise ValueError(f"{name}: slopes must be a tensor of shape ({q.shape[1]},) (one per head); "
                         f"got {getattr(slopes, 'shape', slopes)}")
    check_tensor(name, "slopes", slopes)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{name}: dropout_p must be in [0, 1); got {dropout_p}")
    slopes = slopes.to(device=q.device, dtype=torch.float32).contiguous()
    problem, error = kernel_dtype_problem(q), TypeError
    if problem is None and _block_d(q.shape[2]) > 256:
        problem, error = f"head_dim {q.shape[2]} is larger than the kernels' 256", ValueError
    if problem is None and dropout_p > 0:
        problem, error = "the triton backend has no attention dropout; use dropout_p=0", ValueError
    choice = pick_backend(name, tensors, backend, problem, error)
    if q.shape[0] == 0:
        choice = "reference"
    return choice, cu, slopes


def varlen_alibi_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                           max_seqlen: int, slopes: torch.Tensor, softmax_scale: float | None = None,
                           dropout_p: float = 0.0, backend: str | None = None) -> torch.Tensor:
    """Attention within each packed sequence, with the symmetric ALiBi bias ``-slope_h * |i - j|``.

    Args:
        q, k, v: ``[total, H, D]`` tokens of all sequences one after another (fp32, fp16 or bf16; any
            strides with a unit last stride, so slices of a fused QKV projection work without copies).
        cu_seqlens: ``[B + 1]`` int32/int64 offsets ``[0, len_0, len_0 + len_1, ..., total]`` on q's device.
        max_seqlen: the longest sequence length (an int, so no device sync is needed).
        slopes: ``[H]`` fp32 per-head slopes (see ``alibi_slopes``).
        softmax_scale: logit scale; ``D ** -0.5`` when None.
        dropout_p: attention dropout (reference backend only; the Triton kernels have none).
        backend: ``"triton"``, ``"reference"`` or None (choose per ``hfzoo.ops.dispatch``).

    Returns:
        ``[total, H, D]`` in q's dtype; differentiable in q, k, v. Empty sequences are allowed.

    Example::

        >>> q = k = v = torch.randn(7, 2, 16)
        >>> cu = torch.tensor([0, 3, 7], dtype=torch.int32)
        >>> slopes = torch.tensor(alibi_slopes(2))
        >>> varlen_alibi_attention(q, k, v, cu, 4, slopes, backend="reference").shape
        torch.Size([7, 2, 16])
    """
    name = "varlen_alibi_attention"
    choice, cu, slopes = _check(name, q, k, v, cu_seqlens, max_seqlen, slopes, dropout_p, backend, (q, k, v))
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    if choice == "reference":
        return varlen_alibi_attention_reference(q, k, v, cu, max_seqlen, slopes, scale, dropout_p)
    return apply_function(VarlenAlibiAttentionFunction, q, k, v, cu, max_seqlen, slopes, scale)


def varlen_alibi_attention_qkvpacked(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                                     slopes: torch.Tensor, softmax_scale: float | None = None,
                                     dropout_p: float = 0.0, backend: str | None = None) -> torch.Tensor:
    """``varlen_alibi_attention`` on a fused projection ``qkv`` of shape ``[total, 3, H, D]``.

    The same op as ``varlen_alibi_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], ...)``; on the Triton path
    the gradient is written straight into one ``[total, 3, H, D]`` tensor (no concatenation). Returns
    ``[total, H, D]``.
    """
    name = "varlen_alibi_attention_qkvpacked"
    check_tensor(name, "qkv", qkv)
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"{name}: qkv must be [total, 3, heads, head_dim]; got shape {tuple(qkv.shape)}")
    q, k, v = qkv.unbind(1)
    choice, cu, slopes = _check(name, q, k, v, cu_seqlens, max_seqlen, slopes, dropout_p, backend, (qkv,))
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    if choice == "reference":
        return varlen_alibi_attention_reference(q, k, v, cu, max_seqlen, slopes, scale, dropout_p)
    return apply_function(VarlenAlibiAttentionQKVPackedFunction, qkv, cu, max_seqlen, slopes, scale)
