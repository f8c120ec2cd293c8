"""Non-causal ReLU linear attention (LiT's token mixer), per head, batched over images.

    O_n = φ(q_n) S / (φ(q_n) · z + ε),   S = Σ_m φ(k_m)ᵀ v_m  (Dk×Dv),   z = Σ_m φ(k_m)  (Dk),   φ = ReLU

Every token attends to every token of its image, so the whole sequence folds into one Dk×Dv state per
(image, head): the cost is linear in the number of tokens.

Feature map and ε. LiT's notes give "ReLU (+1e-6)". We take φ = ReLU exactly and put ε = 1e-6 in the
denominator (the ``eps`` argument): a token whose query is all ≤ 0 gets output 0 instead of 0/0, the
gradient mask of φ is exactly ``x > 0`` (torch's ReLU convention), and outputs do not depend on how many
tokens contribute a 1e-6 floor. Adding the constant inside φ instead would change outputs by O(1e-6·N)
relative terms only; callers who want it can add it to q and k before the call.

Bytes and FLOPs (one image, one head, N tokens, D = Dk = Dv; bf16 so 2 bytes a value):
forward reads k, v (state pass) and q, writes o: 8·N·D bytes and 4·N·D² FLOPs; backward reads q, k, v,
o, dO, writes dq, dk, dv: 16·N·D bytes, 10·N·D² FLOPs. The arithmetic intensity is about D/2 FLOP/byte
(144 at D = 288, LiT-XL's 4 heads): near the H200's ridge point (776 TFLOP/s / 4.3 TB/s ≈ 180), so the
kernels keep tiles in tensor-core dots and touch every activation once per pass. For 32k tokens of
LiT-XL (C = 1152) the forward moves about 300 MB (≈ 0.07 ms at copy speed) and does 43 GFLOP (≈ 0.06 ms):
small beside the block's qkv and output projections (≈ 0.45 ms), and far below SDPA's 4·N²·C per image
at 4096 tokens and beyond.

The 5×5 depthwise convolution on V that LiT adds can be fused in (``conv_weight=``): the output pass adds
the K² taps of v around each token (re-read from cache, not from memory) and the bias; the backward adds
the transposed taps of dO to dv and writes per-block partial sums of the kernel gradient (no atomics).
Measured on the H200 (benchmarks/results/lit.json, LiT-XL mixer, 32k tokens, bf16): cuDNN's depthwise
convolution alone, with the layout changes around it, takes 0.71-0.73 ms forward and 1.75-1.82 ms
forward+backward; fused, the mixer's forward drops from 2.09 to 1.75 ms at 4096 tokens, but its
forward+backward rises from 5.95 to 7.4 ms: the fused backward (25 shifted dO tiles and 25 partial rows
per program) is slower than cuDNN's. LiT's model therefore fuses only when no gradient is needed.

Passes (all accumulate in fp32; the state is kept as S/N, z/N with ε/N, which gives the same output):
  forward : state  S, z    one program per (Dk tile, Dv tile, image·head, token split), atomics across splits
            output o, den  one program per (token block, Dv tile, image·head); + conv taps of v and bias
  backward: delta  dden_n = -Σ_v dO·o / den_n           (token block, image·head)
            state  dS = Σ φ(q)ᵀ (dO/den), dz = Σ φ(q) dden
            grads  dq = ((dO/den) Sᵀ + dden zᵀ)·[q>0],  dk = (V dSᵀ + dz)·[k>0],  dv = φ(K) dS (+ convᵀ(dO))

Layout: ``[B, N, H, D]`` (tokens before heads, as a qkv projection produces them), any strides with a
unit stride on D; the output is a contiguous ``[B, N, H, Dv]`` so ``o.reshape(B, N, H*Dv)`` is free.

Ladder: reference (the definition) -> Triton kernels -> launch functions -> autograd Function ->
``linear_attention`` (public op: arguments through ``validate.py``, backend per ``dispatch.py``, launch
settings ``linear_attention.*`` in ``launch.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import apply_function
from .launch import compile_options, launch, settings, sm_count
from .triton_shim import tl, triton
from .validate import check_shape, check_tensor, kernel_dtype_problem, pick_backend


def linear_attention_reference(q, k, v, eps: float = 1e-6, conv_weight=None, conv_bias=None, grid=None):
    """Plain PyTorch definition on ``[B, N, H, D]`` tensors; computes in fp32, returns ``q.dtype``.

    With ``conv_weight`` ([Dv, 1, K, K]), adds the depthwise K×K convolution of each head's v over the
    ``grid = (height, width)`` token grid (row-major tokens, zero padding), the same kernel for every head."""
    qf, kf, vf = torch.relu(q.float()), torch.relu(k.float()), v.float()
    state = torch.einsum("bnhk,bnhv->bhkv", kf, vf)
    z = kf.sum(1)                                                   # [B, H, Dk]
    num = torch.einsum("bnhk,bhkv->bnhv", qf, state)
    den = torch.einsum("bnhk,bhk->bnh", qf, z)
    out = num / (den[..., None] + eps)
    if conv_weight is not None:
        B, N, H, DV = v.shape
        gh, gw = grid
        img = vf.permute(0, 2, 3, 1).reshape(B * H, DV, gh, gw)
        bias = None if conv_bias is None else conv_bias.float()
        conv = F.conv2d(img, conv_weight.float(), bias, padding=conv_weight.shape[-1] // 2, groups=DV)
        out = out + conv.reshape(B, H, DV, N).permute(0, 3, 1, 2)
    return out.to(q.dtype)


# ----------------------------------------------------------------------------------------------------
# Triton kernels. Tensors are addressed as base + b*s_b + n*s_n + h*s_h + d. S/dS are fp32 [B*H, Dk, Dv],
# z/dz fp32 [B*H, Dk], den/dden fp32 [B*H, N]. BLOCK_D tiles both Dk and Dv.


@triton.jit
def _relu_cast(x):
    # ReLU, kept in the input dtype for the tensor-core dot (exact: ReLU does not round).
    return tl.where(x > 0, x, tl.zeros_like(x))


@triton.jit
def _state_program(H, DV, tokens_per_split, BLOCK_D: tl.constexpr):
    # A state-sum program (grid: Dk x Dv tiles, B*H, token splits): its batch*head, batch, head, Dv tile index,
    # first token, and Dk / Dv columns.
    n_v = tl.cdiv(DV, BLOCK_D)
    iv = tl.program_id(0) % n_v
    bh = tl.program_id(1)
    dk = (tl.program_id(0) // n_v) * BLOCK_D + tl.arange(0, BLOCK_D)
    dv = iv * BLOCK_D + tl.arange(0, BLOCK_D)
    return bh, bh // H, bh % H, iv, tl.program_id(2) * tokens_per_split, dk, dv


@triton.jit
def _load_rows(base, rows, rmask, s_n, cols, n_cols):
    # the [rows, cols] tile of a token-major tensor, zero outside the tokens and columns
    return tl.load(base + rows[:, None].to(tl.int64) * s_n + cols[None, :],
                   mask=rmask[:, None] & (cols[None, :] < n_cols), other=0.0)


@triton.jit
def _add_state(S, Z, bh, iv, dk, dv, DK, DV, acc, zacc):
    # add a program's [Dk, Dv] state tile and (once per Dk tile) its [Dk] vector into the fp32 sums
    smask = (dk[:, None] < DK) & (dv[None, :] < DV)
    tl.atomic_add(S + bh.to(tl.int64) * DK * DV + dk[:, None] * DV + dv[None, :], acc, mask=smask)
    if iv == 0:
        tl.atomic_add(Z + bh * DK + dk, zacc, mask=dk < DK)


@triton.jit
def _la_state_kernel(K, V, S, Z, s_kb, s_kn, s_kh, s_vb, s_vn, s_vh, N, H, DK, DV, tokens_per_split,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    bh, b, h, iv, start, dk, dv = _state_program(H, DV, tokens_per_split, BLOCK_D)
    k_base = K + b.to(tl.int64) * s_kb + h * s_kh
    v_base = V + b.to(tl.int64) * s_vb + h * s_vh
    acc = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    zacc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for n0 in range(start, start + tokens_per_split, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rmask = rows < N
        k = _relu_cast(_load_rows(k_base, rows, rmask, s_kn, dk, DK))
        v = _load_rows(v_base, rows, rmask, s_vn, dv, DV)
        acc += tl.dot(tl.trans(k), v, input_precision=PREC)
        zacc += tl.sum(k.to(tl.float32), axis=0)
    _add_state(S, Z, bh, iv, dk, dv, DK, DV, acc, zacc)


@triton.jit
def _conv_taps(x_base, s_xn, CW, rows, rmask, dv, dvmask, DV, GH, GW, SIGN: tl.constexpr, KS: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # Σ_tap w[tap, d] · x[token shifted by SIGN·(dy, dx), d] on the row-major GH×GW token grid, zero outside it;
    # CW is the fp32 kernel as [KS*KS, DV]. SIGN=+1: the convolution (forward); SIGN=-1: its transpose (the
    # gradient with respect to its input).
    r = rows // GW
    c = rows % GW
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for tap in tl.static_range(KS * KS):
        rr = r + SIGN * (tap // KS - KS // 2)
        cc = c + SIGN * (tap % KS - KS // 2)
        ok = rmask & (rr >= 0) & (rr < GH) & (cc >= 0) & (cc < GW)
        x = tl.load(x_base + (rr * GW + cc)[:, None].to(tl.int64) * s_xn + dv[None, :],
                    mask=ok[:, None] & dvmask[None, :], other=0.0)
        w = tl.load(CW + tap * DV + dv, mask=dvmask, other=0.0)
        acc += x.to(tl.float32) * w[None, :]
    return acc


@triton.jit
def _la_out_kernel(Q, S, Z, O, DEN, OA, V, CW, CB, s_qb, s_qn, s_qh, s_vb, s_vn, s_vh, N, H, DK, DV, eps, GH, GW,
                   HAS_CONV: tl.constexpr, HAS_BIAS: tl.constexpr, KS: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    iv = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // H
    h = bh % H
    rmask = rows < N
    dv = iv * BLOCK_D + tl.arange(0, BLOCK_D)
    q_base = Q + b.to(tl.int64) * s_qb + h * s_qh
    num = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    den = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, DK, BLOCK_D):
        dk = k0 + tl.arange(0, BLOCK_D)
        a = tl.load(q_base + rows[:, None].to(tl.int64) * s_qn + dk[None, :],
                    mask=rmask[:, None] & (dk[None, :] < DK), other=0.0)
        a = _relu_cast(a)
        s = tl.load(S + bh.to(tl.int64) * DK * DV + dk[:, None] * DV + dv[None, :],
                    mask=(dk[:, None] < DK) & (dv[None, :] < DV), other=0.0)
        z = tl.load(Z + bh * DK + dk, mask=dk < DK, other=0.0)
        num += tl.dot(a, s.to(a.dtype), input_precision=PREC)
        den += tl.sum(a.to(tl.float32) * z[None, :], axis=1)
    den = den + eps
    o = num / den[:, None]
    # O (and OA) are contiguous [B, N, H, DV]
    o_offs = (b.to(tl.int64) * N + rows[:, None]) * H * DV + h * DV + dv[None, :]
    omask = rmask[:, None] & (dv[None, :] < DV)
    if HAS_CONV:
        # the attention part alone is kept for the backward (its delta term); the output adds the convolution
        tl.store(OA + o_offs, o.to(OA.dtype.element_ty), mask=omask)
        v_base = V + b.to(tl.int64) * s_vb + h * s_vh
        o += _conv_taps(v_base, s_vn, CW, rows, rmask, dv, dv < DV, DV, GH, GW, 1, KS, BLOCK_N, BLOCK_D)
        if HAS_BIAS:
            o += tl.load(CB + dv, mask=dv < DV, other=0.0)[None, :]
    tl.store(O + o_offs, o.to(O.dtype.element_ty), mask=omask)
    if iv == 0:
        tl.store(DEN + bh.to(tl.int64) * N + rows, den, mask=rmask)


@triton.jit
def _la_bwd_delta_kernel(O, DO, DEN, DDEN, s_gb, s_gn, s_gh, N, H, DV,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rmask = rows < N
    delta = tl.zeros([BLOCK_N], dtype=tl.float32)
    for v0 in range(0, DV, BLOCK_D):
        dv = v0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (dv[None, :] < DV)
        o = tl.load(O + (b.to(tl.int64) * N + rows[:, None]) * H * DV + h * DV + dv[None, :], mask=mask, other=0.0)
        g = tl.load(DO + b.to(tl.int64) * s_gb + rows[:, None].to(tl.int64) * s_gn + h * s_gh + dv[None, :],
                    mask=mask, other=0.0)
        delta += tl.sum(o.to(tl.float32) * g.to(tl.float32), axis=1)
    den = tl.load(DEN + bh.to(tl.int64) * N + rows, mask=rmask, other=1.0)
    tl.store(DDEN + bh.to(tl.int64) * N + rows, -delta / den, mask=rmask)


@triton.jit
def _la_bwd_state_kernel(Q, DO, DEN, DDEN, DS, DZ, s_qb, s_qn, s_qh, s_gb, s_gn, s_gh, N, H, DK, DV,
                         tokens_per_split, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    bh, b, h, iv, start, dk, dv = _state_program(H, DV, tokens_per_split, BLOCK_D)
    q_base = Q + b.to(tl.int64) * s_qb + h * s_qh
    g_base = DO + b.to(tl.int64) * s_gb + h * s_gh
    acc = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    zacc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for n0 in range(start, start + tokens_per_split, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rmask = rows < N
        a = _relu_cast(_load_rows(q_base, rows, rmask, s_qn, dk, DK))
        g = _load_rows(g_base, rows, rmask, s_gn, dv, DV)
        den = tl.load(DEN + bh.to(tl.int64) * N + rows, mask=rmask, other=1.0)
        dden = tl.load(DDEN + bh.to(tl.int64) * N + rows, mask=rmask, other=0.0)
        gs = (g.to(tl.float32) / den[:, None]).to(a.dtype)
        acc += tl.dot(tl.trans(a), gs, input_precision=PREC)
        zacc += tl.sum(a.to(tl.float32) * dden[:, None], axis=0)
    _add_state(DS, DZ, bh, iv, dk, dv, DK, DV, acc, zacc)


@triton.jit
def _la_bwd_qkv_kernel(Q, K, V, DO, S, Z, DS, DZ, DEN, DDEN, DQ, DK_, DV_, CW, DWP,
                       s_qb, s_qn, s_qh, s_kb, s_kn, s_kh, s_vb, s_vn, s_vh, s_gb, s_gn, s_gh,
                       N, H, DK, DV, inv_n, GH, GW, HAS_CONV: tl.constexpr, KS: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    # S, Z hold means over tokens (S/N, z/N) and DS, DZ are gradients with respect to those, so the gradients
    # of k and v, which enter the sums, carry a factor 1/N.
    # One program: a token block and one D tile j. It writes dq[:, j], dk[:, j] (Dk tile j) and dv[:, j]
    # (Dv tile j), looping over the other dimension's tiles. DQ/DK_/DV_ are contiguous [B, N, H, D].
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    j = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // H
    h = bh % H
    rmask = rows < N
    r64 = rows[:, None].to(tl.int64)
    dj = j * BLOCK_D + tl.arange(0, BLOCK_D)
    den = tl.load(DEN + bh.to(tl.int64) * N + rows, mask=rmask, other=1.0)
    dden = tl.load(DDEN + bh.to(tl.int64) * N + rows, mask=rmask, other=0.0)
    s_base = bh.to(tl.int64) * DK * DV
    if j * BLOCK_D < DK:
        kmask = rmask[:, None] & (dj[None, :] < DK)
        q = tl.load(Q + b.to(tl.int64) * s_qb + r64 * s_qn + h * s_qh + dj[None, :], mask=kmask, other=0.0)
        k = tl.load(K + b.to(tl.int64) * s_kb + r64 * s_kn + h * s_kh + dj[None, :], mask=kmask, other=0.0)
        dq = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for v0 in range(0, DV, BLOCK_D):
            di = v0 + tl.arange(0, BLOCK_D)
            vmask = rmask[:, None] & (di[None, :] < DV)
            g = tl.load(DO + b.to(tl.int64) * s_gb + r64 * s_gn + h * s_gh + di[None, :], mask=vmask, other=0.0)
            v = tl.load(V + b.to(tl.int64) * s_vb + r64 * s_vn + h * s_vh + di[None, :], mask=vmask, other=0.0)
            tmask = (dj[:, None] < DK) & (di[None, :] < DV)
            s = tl.load(S + s_base + dj[:, None] * DV + di[None, :], mask=tmask, other=0.0)      # [Dk_j, Dv_i]
            ds = tl.load(DS + s_base + dj[:, None] * DV + di[None, :], mask=tmask, other=0.0)
            gs = (g.to(tl.float32) / den[:, None]).to(q.dtype)
            dq += tl.dot(gs, tl.trans(s.to(q.dtype)), input_precision=PREC)
            dk += tl.dot(v, tl.trans(ds.to(v.dtype)), input_precision=PREC)
        z = tl.load(Z + bh * DK + dj, mask=dj < DK, other=0.0)
        dz = tl.load(DZ + bh * DK + dj, mask=dj < DK, other=0.0)
        dq = tl.where(q > 0, dq + dden[:, None] * z[None, :], 0.0)
        dk = tl.where(k > 0, (dk + dz[None, :]) * inv_n, 0.0)
        out = (b.to(tl.int64) * N + rows[:, None]) * H * DK + h * DK + dj[None, :]
        tl.store(DQ + out, dq.to(DQ.dtype.element_ty), mask=kmask)
        tl.store(DK_ + out, dk.to(DK_.dtype.element_ty), mask=kmask)
    if j * BLOCK_D < DV:
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for k0 in range(0, DK, BLOCK_D):
            di = k0 + tl.arange(0, BLOCK_D)
            k = tl.load(K + b.to(tl.int64) * s_kb + r64 * s_kn + h * s_kh + di[None, :],
                        mask=rmask[:, None] & (di[None, :] < DK), other=0.0)
            k = _relu_cast(k)
            ds = tl.load(DS + s_base + di[:, None] * DV + dj[None, :],
                         mask=(di[:, None] < DK) & (dj[None, :] < DV), other=0.0)             # [Dk_i, Dv_j]
            dv += tl.dot(k, ds.to(k.dtype), input_precision=PREC)
        dv = dv * inv_n
        if HAS_CONV:
            # The convolution's input gradient (its transpose applied to dO: taps shifted by -(dy, dx)) and
            # its kernel gradient Σ_tokens v · dO(shifted), as per-program partial rows summed on the host
            # (no atomics); both from the same shifted dO tile.
            g_base = DO + b.to(tl.int64) * s_gb + h * s_gh
            djmask = dj < DV
            vt = tl.load(V + b.to(tl.int64) * s_vb + r64 * s_vn + h * s_vh + dj[None, :],
                         mask=rmask[:, None] & djmask[None, :], other=0.0).to(tl.float32)
            r = rows // GW
            c = rows % GW
            part = DWP + (bh.to(tl.int64) * tl.num_programs(0) + tl.program_id(0)) * (KS * KS) * DV
            for tap in tl.static_range(KS * KS):
                rr = r - (tap // KS - KS // 2)
                cc = c - (tap % KS - KS // 2)
                ok = rmask & (rr >= 0) & (rr < GH) & (cc >= 0) & (cc < GW)
                g = tl.load(g_base + (rr * GW + cc)[:, None].to(tl.int64) * s_gn + dj[None, :],
                            mask=ok[:, None] & djmask[None, :], other=0.0).to(tl.float32)
                w = tl.load(CW + tap * DV + dj, mask=djmask, other=0.0)
                dv += g * w[None, :]
                tl.store(part + tap * DV + dj, tl.sum(vt * g, axis=0), mask=djmask)
        out = (b.to(tl.int64) * N + rows[:, None]) * H * DV + h * DV + dj[None, :]
        tl.store(DV_ + out, dv.to(DV_.dtype.element_ty), mask=rmask[:, None] & (dj[None, :] < DV))


# ----------------------------------------------------------------------------------------------------
# Launchers. Settings per kernel come from launch.DEFAULTS["linear_attention.<kernel>"] (BLOCK_N, BLOCK_D,
# num_warps; small tiles under the interpreter so CPU tests cover several tiles cheaply).


def _conf(kernel: str, dk: int, dv: int) -> tuple[str, dict, int, int]:
    name = f"linear_attention.{kernel}"
    conf = settings(name)
    block_d = conf.get("BLOCK_D")
    if not block_d:
        d = max(dk, dv)
        block_d = 16 if d <= 16 else 32 if d <= 32 else (64 if triton.cdiv(d, 64) * 64 * 8 <= d * 9 else 32)
    return name, compile_options(conf), conf["BLOCK_N"], block_d


def _token_splits(N: int, programs: int, block_n: int, device) -> tuple[int, int]:
    """Split each image's tokens so that a state pass launches about 2 programs per SM."""
    target = 2 * sm_count(device)
    n_split = max(1, min(triton.cdiv(N, block_n), triton.cdiv(target, max(programs, 1))))
    per_split = triton.cdiv(triton.cdiv(N, n_split), block_n) * block_n
    return triton.cdiv(N, per_split), per_split


def _prec(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _strides(x):
    return x.stride(0), x.stride(1), x.stride(2)


def _conv_table(conv_weight, DV):
    """[DV, 1, K, K] depthwise kernel -> fp32 [K*K, DV] (one row per tap), as the kernels read it."""
    K = conv_weight.shape[-1]
    return conv_weight.detach().reshape(DV, K * K).t().float().contiguous(), K


def _fwd(q, k, v, eps, conv_weight=None, conv_bias=None, grid=(1, 1)):
    B, N, H, DK = q.shape
    DV = v.shape[-1]
    dev = q.device
    S = torch.zeros(B * H, DK, DV, device=dev, dtype=torch.float32)
    Z = torch.zeros(B * H, DK, device=dev, dtype=torch.float32)
    name, opts, bn, bd = _conf("state", DK, DV)
    tiles = triton.cdiv(DK, bd) * triton.cdiv(DV, bd)
    n_split, per_split = _token_splits(N, B * H * tiles, bn, dev)
    launch(name, _la_state_kernel, (tiles, B * H, n_split),
                  k, v, S, Z, *_strides(k), *_strides(v), N, H, DK, DV, per_split,
                  BLOCK_N=bn, BLOCK_D=bd, PREC=_prec(q), **opts)
    # Keep the state as a mean over tokens (S/N, z/N, ε/N: the same output) so its fp16/bf16 copies inside
    # the dots neither overflow at long sequences nor make dO/den underflow in the backward.
    S.mul_(1.0 / N)
    Z.mul_(1.0 / N)
    o = torch.empty(B, N, H, DV, device=dev, dtype=q.dtype)
    has_conv = conv_weight is not None
    o_attn = torch.empty_like(o) if has_conv else o
    cw, K = _conv_table(conv_weight, DV) if has_conv else (S, 1)
    cb = conv_bias.detach().float().contiguous() if conv_bias is not None else S
    den = torch.empty(B * H, N, device=dev, dtype=torch.float32)
    name, opts, bn, bd = _conf("out", DK, DV)
    launch(name, _la_out_kernel, (triton.cdiv(N, bn), triton.cdiv(DV, bd), B * H),
                  q, S, Z, o, den, o_attn, v, cw, cb, *_strides(q), *_strides(v), N, H, DK, DV, eps / N,
                  grid[0], grid[1], HAS_CONV=has_conv, HAS_BIAS=conv_bias is not None, KS=K,
                  BLOCK_N=bn, BLOCK_D=bd, PREC=_prec(q), **opts)
    return o, o_attn, S, Z, den


def _bwd(q, k, v, o_attn, S, Z, den, do, conv_weight=None, grid=(1, 1)):
    """Gradients of q, k, v and (with a convolution) of its [K*K, DV] kernel table."""
    B, N, H, DK = q.shape
    DV = v.shape[-1]
    dev = q.device
    dden = torch.empty_like(den)
    name, opts, bn, bd = _conf("bwd_delta", DK, DV)
    launch(name, _la_bwd_delta_kernel, (triton.cdiv(N, bn), B * H),
                  o_attn, do, den, dden, *_strides(do), N, H, DV, BLOCK_N=bn, BLOCK_D=bd, **opts)
    dS = torch.zeros_like(S)
    dZ = torch.zeros_like(Z)
    name, opts, bn, bd = _conf("bwd_state", DK, DV)
    tiles = triton.cdiv(DK, bd) * triton.cdiv(DV, bd)
    n_split, per_split = _token_splits(N, B * H * tiles, bn, dev)
    launch(name, _la_bwd_state_kernel, (tiles, B * H, n_split),
                  q, do, den, dden, dS, dZ, *_strides(q), *_strides(do), N, H, DK, DV, per_split,
                  BLOCK_N=bn, BLOCK_D=bd, PREC=_prec(q), **opts)
    dq = torch.empty(B, N, H, DK, device=dev, dtype=q.dtype)
    dk = torch.empty(B, N, H, DK, device=dev, dtype=k.dtype)
    dv = torch.empty(B, N, H, DV, device=dev, dtype=v.dtype)
    name, opts, bn, bd = _conf("bwd_qkv", DK, DV)
    n_blocks = triton.cdiv(N, bn)
    has_conv = conv_weight is not None
    if has_conv:
        cw, K = _conv_table(conv_weight, DV)
        dw_partial = torch.empty(B * H * n_blocks, K * K, DV, device=dev, dtype=torch.float32)
    else:
        cw, K, dw_partial = S, 1, S
    launch(name, _la_bwd_qkv_kernel, (n_blocks, triton.cdiv(max(DK, DV), bd), B * H),
                  q, k, v, do, S, Z, dS, dZ, den, dden, dq, dk, dv, cw, dw_partial,
                  *_strides(q), *_strides(k), *_strides(v), *_strides(do), N, H, DK, DV, 1.0 / N, grid[0], grid[1],
                  HAS_CONV=has_conv, KS=K, BLOCK_N=bn, BLOCK_D=bd, PREC=_prec(q), **opts)
    dw = dw_partial.sum(0) if has_conv else None
    return dq, dk, dv, dw


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class LinearAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, eps, conv_weight=None, conv_bias=None, grid=None):
        q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
        grid = tuple(grid) if grid is not None else (1, q.shape[1])
        o, o_attn, S, Z, den = _fwd(q, k, v, eps, conv_weight, conv_bias, grid)
        ctx.save_for_backward(q, k, v, o_attn, S, Z, den, conv_weight)
        ctx.grid = grid
        ctx.has_bias = conv_bias is not None
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o_attn, S, Z, den, conv_weight = ctx.saved_tensors
        do = _unit_last(do)
        dq, dk, dv, dw = _bwd(q, k, v, o_attn, S, Z, den, do, conv_weight, ctx.grid)
        dcw = dcb = None
        if conv_weight is not None:
            dcw = dw.t().reshape(conv_weight.shape).to(conv_weight.dtype)
            if ctx.has_bias:
                dcb = do.float().sum(dim=(0, 1, 2)).to(conv_weight.dtype)
        return dq, dk, dv, None, dcw, dcb, None


def _check(q, k, v, eps, conv_weight=None, conv_bias=None, grid=None):
    op = "linear_attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(op, name, t, dims=4, device=q.device if isinstance(q, torch.Tensor) else None)
    if q.shape != k.shape:
        raise ValueError(f"{op}: q and k must have the same shape [batch, tokens, heads, head_dim], got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{op}: v must be [batch, tokens, heads, Dv] with q's first three sizes "
                         f"{tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not eps > 0:
        raise ValueError(f"{op}: eps must be positive, got {eps}")
    if conv_weight is None:
        if conv_bias is not None:
            raise ValueError(f"{op}: conv_bias given without conv_weight")
        return
    DV = v.shape[-1]
    check_tensor(op, "conv_weight", conv_weight, dims=4, device=q.device)
    if conv_weight.shape[:2] != (DV, 1) or conv_weight.shape[2] != conv_weight.shape[3] or conv_weight.shape[-1] % 2 == 0:
        raise ValueError(f"{op}: conv_weight must be a depthwise kernel [{DV}, 1, K, K] with odd K, "
                         f"got {tuple(conv_weight.shape)}")
    if conv_bias is not None:
        check_tensor(op, "conv_bias", conv_bias, dims=1, device=q.device)
        check_shape(op, "conv_bias", conv_bias, (DV,))
    if grid is None or len(grid) != 2 or grid[0] * grid[1] != q.shape[1]:
        raise ValueError(f"{op}: grid must be (height, width) with height * width = {q.shape[1]} tokens, "
                         f"got {grid}")


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6,
                     conv_weight: torch.Tensor | None = None, conv_bias: torch.Tensor | None = None,
                     grid: tuple[int, int] | None = None, backend: str | None = None) -> torch.Tensor:
    """Non-causal ReLU linear attention, one state per (image, head); optionally plus LiT's depthwise
    convolution of v over the 2D token grid, fused into the same kernels.

    Args:
        q: ``[B, N, H, Dk]`` queries (fp32, fp16 or bf16 for the kernels; fp64 runs the reference); any
           strides with unit stride on the last dim (e.g. a slice of a packed qkv projection): the kernels
           take the strides, so the slices are not copied.
        k: ``[B, N, H, Dk]`` keys.
        v: ``[B, N, H, Dv]`` values.
        eps: added to the normalizer ``φ(q)·Σφ(k)``.
        conv_weight: optional ``[Dv, 1, K, K]`` depthwise kernel (odd K; an ``nn.Conv2d(Dv, Dv, K, groups=Dv)``
           weight), applied to every head's v (the same kernel for all heads), zero padded.
        conv_bias: optional ``[Dv]`` bias of that convolution.
        grid: ``(height, width)`` of the token grid, ``height * width = N``, tokens in row-major order
           (required with ``conv_weight``).
        backend: ``"triton"``, ``"reference"`` or None (choose per ``hfzoo.ops.dispatch``).

    Returns:
        ``[B, N, H, Dv]`` in ``q``'s dtype (contiguous on the Triton path). Differentiable in q, k, v and the
        convolution's weight and bias.

    Example::

        >>> q, k, v = torch.randn(3, 2, 12, 4, 16).unbind(0)
        >>> linear_attention(q, k, v).shape
        torch.Size([2, 12, 4, 16])
        >>> conv = torch.nn.Conv2d(16, 16, 5, padding=2, groups=16)
        >>> linear_attention(q, k, v, conv_weight=conv.weight, conv_bias=conv.bias, grid=(3, 4)).shape
        torch.Size([2, 12, 4, 16])
    """
    _check(q, k, v, eps, conv_weight, conv_bias, grid)
    tensors = [t for t in (q, k, v, conv_weight, conv_bias) if t is not None]
    problem = kernel_dtype_problem(*tensors)
    if pick_backend("linear_attention", tensors, backend, problem) == "reference" or q.numel() == 0:
        return linear_attention_reference(q, k, v, eps, conv_weight, conv_bias, grid)
    return apply_function(LinearAttentionFunction, q, k, v, eps, conv_weight, conv_bias, grid)


__all__ = ["linear_attention", "linear_attention_reference", "LinearAttentionFunction"]
