"""Chunked gated linear attention in Triton: forward and backward (training and prefill).

The sequence is cut into chunks of ``BT = 64`` tokens. A first pass cumulates the gates inside each chunk
(``gc = cumsum(g)``, fp32) and decays the keys to the chunk's end (``kd = k * e^(gl - gc)``, in the matmul
dtype); ``gl`` is the chunk's total log decay (``gc`` at its last token). With ``h`` the state before the chunk:

    o      = scale * [ (q * e^gc) @ h  +  A @ v ],    A_ij = sum_k q_ik k_jk e^(gc_ik - gc_jk)  (j <= i)
    h_next = e^gl * h + kd^T @ v

Intra-chunk scores ``A`` on tensor cores: when the chunk's decay stays within ``e^-CLAMP`` in every key
dimension of a block (every realistic chunk), ``A = (q e^gc) @ (k e^-gc)^T`` in one matmul; ``e^-gc`` is
then at most ``e^CLAMP`` and the products keep their relative precision. Chunks with stronger decay take
an exact elementwise path (``exp`` of differences clamped at 0, column by column), so no input overflows.
The same split serves the backward's ``dq``/``dk`` intra terms.

Kernels (grid in brackets):
  _prep      [K/BK, chunks, Hkv]   gc and kd (the backward rebuilds kd from the saved gc)
  _fwd_h     [K/BK, V/BV, N*Hkv]   sequential over chunks: states before each chunk, final state
  _fwd_A     [chunks, H]           A alone (unscaled, matmul dtype), kept for dv
  _fwd_o     [V/BV, chunks, H]     output (computes A itself instead when TUNE["o"]["SPLIT_A"] is False)
  _bwd_dh    [K/BK, V/BV, N*Hkv]   reverse scan: state gradients after each chunk, d initial state
  _bwd_dv    [V/BV, chunks, Hkv]   dv = kd @ dh + A^T @ do (summed over the query heads of a group)
  _bwd_dA    [chunks, H]           dA = scale * do v^T, when split from _bwd_dqk (TUNE)
  _bwd_dqk   [K/BK, chunks, Hkv]   dq, dk, dg (the later tokens' share of dg from sum_v h_next * dh_next)
The two scans load the next chunk's tiles while the current one computes. The backward recomputes the
chunk states instead of keeping them from the forward.
"""

from __future__ import annotations

import json
import os

import torch

from .triton_shim import tl, triton

BT = 64  # chunk length
CLAMP = 40.0  # largest in-chunk log decay taken by the single-matmul path


def _p2(n: int, lo: int = 16, hi: int = 64) -> int:
    return max(lo, min(hi, triton.next_power_of_2(n)))


# ----------------------------------------------------------------------------------------------------
# Small helpers shared by the kernels.


@triton.jit
def _dot_in(x, HALF: tl.constexpr):
    # half inputs run their matmuls in bf16 (its range holds e^CLAMP); fp32 inputs stay fp32
    if HALF:
        return x.to(tl.bfloat16)
    else:
        return x.to(tl.float32)


@triton.jit
def _chunk_tokens(i_c, CU, CI, T, NT, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    # global chunk index -> (sequence, chunk within it, first token, one past the last token, the chunk's rows,
    # their int64 token indices and which of them are inside the sequence)
    if IS_VARLEN:
        i_n = tl.load(CI + 2 * i_c)
        i_t = tl.load(CI + 2 * i_c + 1)
        bos = tl.load(CU + i_n).to(tl.int64)
        eos = tl.load(CU + i_n + 1).to(tl.int64)
    else:
        i_n = i_c // NT
        i_t = i_c % NT
        bos = (i_n * T).to(tl.int64)
        eos = bos + T
    rows = tl.arange(0, BT)
    tok = bos + i_t * BT + rows
    return i_n, i_t, bos, eos, rows, tok, tok < eos


@triton.jit
def _seq_of(i_n, CU, CO, T, NT, IS_VARLEN: tl.constexpr):
    # sequence -> (first token, one past the last, its first global chunk, its number of chunks)
    if IS_VARLEN:
        bos = tl.load(CU + i_n).to(tl.int64)
        eos = tl.load(CU + i_n + 1).to(tl.int64)
        boc = tl.load(CO + i_n)
    else:
        bos = (i_n * T).to(tl.int64)
        eos = bos + T
        boc = i_n * NT
    return bos, eos, boc, tl.cdiv(eos - bos, 64)


@triton.jit
def _load_rows(P, tok, mrow, col0, cols, ncols, row_stride):
    # rows `tok` (int64 token indices) x columns col0 + cols of a [tokens, row_stride] view
    ptr = P + tok[:, None] * row_stride + col0 + cols[None, :]
    return tl.load(ptr, mask=mrow[:, None] & (cols[None, :] < ncols), other=0.0)


@triton.jit
def _row(X, rows, t):
    # row t of a [BT, n] tile
    return tl.sum(tl.where(rows[:, None] == t, X, 0.0), axis=0)


@triton.jit
def _col(M, rows, t):
    # column t of a [BT, BT] tile
    return tl.sum(tl.where(rows[None, :] == t, M, 0.0), axis=1)


@triton.jit
def _decay_from(gc, rows, t):
    # e^(gc[i, k] - gc[t, k]) for every row i, clamped at 1 (the causally masked rows i < t would overflow)
    return tl.exp(tl.minimum(gc - _row(gc, rows, t)[None, :], 0.0))


@triton.jit
def _exact_A(A, X, Y, gc, BT: tl.constexpr):
    # A[i, j] += sum_k X[i, k] Y[j, k] e^(gc[i, k] - gc[j, k]) for j <= i, column by column (any decay)
    rows = tl.arange(0, BT)
    for t in range(BT):
        a_t = tl.sum(X * _row(Y, rows, t)[None, :] * _decay_from(gc, rows, t), axis=1)
        A += tl.where(rows[None, :] == t, a_t[:, None], 0.0)
    return A


@triton.jit
def _exact_dq(acc, M, Y, gc, BT: tl.constexpr):
    # acc[i, k] += sum_{j <= i} M[i, j] Y[j, k] e^(gc[i, k] - gc[j, k])   (M causal-masked)
    rows = tl.arange(0, BT)
    for t in range(BT):
        acc += _col(M, rows, t)[:, None] * _row(Y, rows, t)[None, :] * _decay_from(gc, rows, t)
    return acc


@triton.jit
def _exact_dk(acc, M, X, gc, BT: tl.constexpr):
    # acc[j, k] += sum_{i >= j} M[i, j] X[i, k] e^(gc[i, k] - gc[j, k])   (M causal-masked)
    rows = tl.arange(0, BT)
    for t in range(BT):
        d_t = tl.sum(_col(M, rows, t)[:, None] * X * _decay_from(gc, rows, t), axis=0)
        acc += tl.where(rows[:, None] == t, d_t[None, :], 0.0)
    return acc


# ----------------------------------------------------------------------------------------------------
# Per-chunk preparation: the in-chunk cumulative gates and the keys decayed to the chunk's end.


@triton.jit
def _last_row(GC, bos, eos, i_t, col0, ck, ncols, row_stride, BT: tl.constexpr):
    # gc at the chunk's last token: the chunk's total log decay ``gl`` (one value per key column)
    last = tl.minimum(bos + i_t * BT + BT, eos) - 1
    return tl.load(GC + last * row_stride + col0 + ck, mask=ck < ncols, other=0.0)


@triton.jit
def _prep_kernel(G, K_, GC, KD, CU, CI, T, NT,
                 H_KV: tl.constexpr, DK: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 IS_VARLEN: tl.constexpr, FROM_GC: tl.constexpr):
    # gc = in-chunk cumsum of g (fp32; or read back when FROM_GC), kd = k * e^(gl - gc) in the matmul dtype
    i_k, i_c, i_hk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_t, bos, eos, rows, tok, mt = _chunk_tokens(i_c, CU, CI, T, NT, BT, IS_VARLEN)
    ck = tl.arange(0, BK)
    col0 = i_hk * DK + i_k * BK
    m = mt[:, None] & (ck[None, :] < DK - i_k * BK)
    ptr = tok[:, None] * (H_KV * DK) + col0 + ck[None, :]
    if FROM_GC:
        gc = tl.load(GC + ptr, mask=m, other=0.0)
        gl = _last_row(GC, bos, eos, i_t, col0, ck, DK - i_k * BK, H_KV * DK, BT)
    else:
        g = tl.load(G + ptr, mask=m, other=0.0).to(tl.float32)
        gc = tl.cumsum(g, axis=0)
        gl = tl.sum(g, axis=0)
        tl.store(GC + ptr, gc, mask=m)
    k = tl.load(K_ + ptr, mask=m, other=0.0).to(tl.float32)
    tl.store(KD + ptr, (k * tl.exp(gl[None, :] - gc)).to(KD.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------------
# Forward.


@triton.jit
def _fwd_h_kernel(KD, V_, GC, H_, H0, HT, CU, CO, T, NT,
                  H_KV: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
                  IS_VARLEN: tl.constexpr):
    # S <- e^gl * S + kd^T v, chunk after chunk; the next chunk's tiles are loaded while this one computes
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H_KV, i_nh % H_KV
    bos, eos, boc, nt = _seq_of(i_n, CU, CO, T, NT, IS_VARLEN)
    rows = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    ok, ov = i_k * BK + ck, i_v * BV + cv
    mkv = (ok[:, None] < DK) & (ov[None, :] < DV)
    st = ok[:, None] * DV + ov[None, :]
    kcol, nk = i_h * DK + i_k * BK, DK - i_k * BK
    vcol, nv = i_h * DV + i_v * BV, DV - i_v * BV
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        S += tl.load(H0 + i_nh.to(tl.int64) * DK * DV + st, mask=mkv, other=0.0).to(tl.float32)
    tok = bos + rows
    kd_n = _load_rows(KD, tok, tok < eos, kcol, ck, nk, H_KV * DK)
    v_n = _load_rows(V_, tok, tok < eos, vcol, cv, nv, H_KV * DV)
    gl_n = _last_row(GC, bos, eos, 0, kcol, ck, nk, H_KV * DK, BT)
    for i_t in range(nt):
        kd, v, gl = kd_n, v_n, gl_n
        tok = bos + (i_t + 1) * BT + rows
        kd_n = _load_rows(KD, tok, tok < eos, kcol, ck, nk, H_KV * DK)
        v_n = _load_rows(V_, tok, tok < eos, vcol, cv, nv, H_KV * DV)
        gl_n = _last_row(GC, bos, eos, tl.minimum(i_t + 1, nt - 1), kcol, ck, nk, H_KV * DK, BT)
        tl.store(H_ + ((boc + i_t).to(tl.int64) * H_KV + i_h) * DK * DV + st, S.to(H_.dtype.element_ty), mask=mkv)
        S = S * tl.exp(gl)[:, None] + tl.dot(tl.trans(kd), v.to(kd.dtype))
    if STORE_HT:
        tl.store(HT + i_nh.to(tl.int64) * DK * DV + st, S, mask=mkv)


@triton.jit
def _add_A(A, q, k, gc, gl, qg, BT: tl.constexpr, HALF: tl.constexpr, CLAMP: tl.constexpr):
    # A += one key block's intra-chunk scores: one matmul when the block's decay allows, else exact
    if tl.min(gl) >= -CLAMP:
        A += tl.dot(_dot_in(qg, HALF), tl.trans(_dot_in(k * tl.exp(-gc), HALF)))
    else:
        A = _exact_A(A, q, k, gc, BT)
    return A


@triton.jit
def _fwd_A_kernel(Q, K_, GC, A_, CU, CI, T, NT,
                  H: tl.constexpr, H_KV: tl.constexpr, DK: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  IS_VARLEN: tl.constexpr, HALF: tl.constexpr, CLAMP: tl.constexpr):
    # the intra-chunk scores once per chunk and head (causal, unscaled, matmul dtype)
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_hk = i_h // (H // H_KV)
    i_n, i_t, bos, eos, rows, tok, mt = _chunk_tokens(i_c, CU, CI, T, NT, BT, IS_VARLEN)
    ck = tl.arange(0, BK)
    A = tl.zeros([BT, BT], dtype=tl.float32)
    for k0 in range(0, DK, BK):
        q = _load_rows(Q, tok, mt, i_h * DK + k0, ck, DK - k0, H * DK).to(tl.float32)
        k = _load_rows(K_, tok, mt, i_hk * DK + k0, ck, DK - k0, H_KV * DK).to(tl.float32)
        gc = _load_rows(GC, tok, mt, i_hk * DK + k0, ck, DK - k0, H_KV * DK)
        gl = _last_row(GC, bos, eos, i_t, i_hk * DK + k0, ck, DK - k0, H_KV * DK, BT)
        A = _add_A(A, q, k, gc, gl, q * tl.exp(gc), BT, HALF, CLAMP)
    A = tl.where(rows[:, None] >= rows[None, :], A, 0.0)
    tl.store(A_ + tok[:, None] * (H * BT) + i_h * BT + rows[None, :], A.to(A_.dtype.element_ty), mask=mt[:, None])


@triton.jit
def _fwd_o_kernel(Q, K_, V_, GC, H_, O, A_, CU, CI, scale, T, NT,
                  H: tl.constexpr, H_KV: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr, HALF: tl.constexpr,
                  CLAMP: tl.constexpr, A_MODE: tl.constexpr):
    # A_MODE: 0 computes A here, 1 also stores it (from the first value block), 2 loads it (_fwd_A_kernel)
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_hk = i_h // (H // H_KV)
    i_n, i_t, bos, eos, rows, tok, mt = _chunk_tokens(i_c, CU, CI, T, NT, BT, IS_VARLEN)
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    ov = i_v * BV + cv
    hbase = H_ + (i_c.to(tl.int64) * H_KV + i_hk) * DK * DV
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    A = tl.zeros([BT, BT], dtype=tl.float32)
    for k0 in range(0, DK, BK):
        q = _load_rows(Q, tok, mt, i_h * DK + k0, ck, DK - k0, H * DK).to(tl.float32)
        gc = _load_rows(GC, tok, mt, i_hk * DK + k0, ck, DK - k0, H_KV * DK)
        qg = q * tl.exp(gc)
        h = tl.load(hbase + (k0 + ck)[:, None] * DV + ov[None, :],
                    mask=((k0 + ck)[:, None] < DK) & (ov[None, :] < DV), other=0.0)
        acc += tl.dot(_dot_in(qg, HALF), _dot_in(h, HALF))
        if A_MODE != 2:
            k = _load_rows(K_, tok, mt, i_hk * DK + k0, ck, DK - k0, H_KV * DK).to(tl.float32)
            gl = _last_row(GC, bos, eos, i_t, i_hk * DK + k0, ck, DK - k0, H_KV * DK, BT)
            A = _add_A(A, q, k, gc, gl, qg, BT, HALF, CLAMP)
    if A_MODE == 2:
        A = _dot_in(tl.load(A_ + tok[:, None] * (H * BT) + i_h * BT + rows[None, :], mask=mt[:, None], other=0.0),
                    HALF)
    else:
        A = _dot_in(tl.where(rows[:, None] >= rows[None, :], A, 0.0), HALF)
        if A_MODE == 1:  # kept for the backward's dv
            if i_v == 0:
                tl.store(A_ + tok[:, None] * (H * BT) + i_h * BT + rows[None, :], A.to(A_.dtype.element_ty),
                         mask=mt[:, None])
    v = _load_rows(V_, tok, mt, i_hk * DV + i_v * BV, cv, DV - i_v * BV, H_KV * DV)
    acc += tl.dot(A, _dot_in(v, HALF))
    optr = O + tok[:, None] * (H * DV) + i_h * DV + ov[None, :]
    tl.store(optr, (acc * scale).to(O.dtype.element_ty), mask=mt[:, None] & (ov[None, :] < DV))


# ----------------------------------------------------------------------------------------------------
# Backward.


@triton.jit
def _bwd_dh_kernel(Q, GC, DO, DH, DHT, DH0, CU, CO, scale, T, NT,
                   H: tl.constexpr, H_KV: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                   IS_VARLEN: tl.constexpr, HALF: tl.constexpr):
    # reverse scan; the next chunk's gates (and the first query head's q, do) load while this one computes
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_hk = i_nh // H_KV, i_nh % H_KV
    GROUP: tl.constexpr = H // H_KV
    bos, eos, boc, nt = _seq_of(i_n, CU, CO, T, NT, IS_VARLEN)
    rows = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    ok, ov = i_k * BK + ck, i_v * BV + cv
    mkv = (ok[:, None] < DK) & (ov[None, :] < DV)
    st = ok[:, None] * DV + ov[None, :]
    gcol, nk, nv = i_hk * DK + i_k * BK, DK - i_k * BK, DV - i_v * BV
    h0 = i_hk * GROUP
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        dS += tl.load(DHT + i_nh.to(tl.int64) * DK * DV + st, mask=mkv, other=0.0).to(tl.float32)
    tok = bos + (nt - 1) * BT + rows
    gc_n = _load_rows(GC, tok, tok < eos, gcol, ck, nk, H_KV * DK)
    gl_n = _last_row(GC, bos, eos, nt - 1, gcol, ck, nk, H_KV * DK, BT)
    q_n = _load_rows(Q, tok, tok < eos, h0 * DK + i_k * BK, ck, nk, H * DK)
    do_n = _load_rows(DO, tok, tok < eos, h0 * DV + i_v * BV, cv, nv, H * DV)
    for j in range(nt):
        i_t = nt - 1 - j
        gc, gl, q, do = gc_n, gl_n, q_n, do_n
        tokp = bos + (i_t - 1) * BT + rows
        mp = (tokp < eos) & (tokp >= bos)
        gc_n = _load_rows(GC, tokp, mp, gcol, ck, nk, H_KV * DK)
        gl_n = _last_row(GC, bos, eos, tl.maximum(i_t - 1, 0), gcol, ck, nk, H_KV * DK, BT)
        q_n = _load_rows(Q, tokp, mp, h0 * DK + i_k * BK, ck, nk, H * DK)
        do_n = _load_rows(DO, tokp, mp, h0 * DV + i_v * BV, cv, nv, H * DV)
        # gradient with respect to the state after chunk i_t
        tl.store(DH + ((boc + i_t).to(tl.int64) * H_KV + i_hk) * DK * DV + st, dS.to(DH.dtype.element_ty),
                 mask=mkv)
        eg = tl.exp(gc) * scale
        dS = dS * tl.exp(gl)[:, None] + tl.dot(tl.trans(_dot_in(q.to(tl.float32) * eg, HALF)), _dot_in(do, HALF))
        tok = bos + i_t * BT + rows
        mt = tok < eos
        for hh in range(1, GROUP):
            q_h = _load_rows(Q, tok, mt, (h0 + hh) * DK + i_k * BK, ck, nk, H * DK).to(tl.float32)
            do_h = _load_rows(DO, tok, mt, (h0 + hh) * DV + i_v * BV, cv, nv, H * DV)
            dS += tl.dot(tl.trans(_dot_in(q_h * eg, HALF)), _dot_in(do_h, HALF))
    if STORE_DH0:
        tl.store(DH0 + i_nh.to(tl.int64) * DK * DV + st, dS, mask=mkv)


@triton.jit
def _bwd_dv_kernel(KD, A_, DO, DH, DV_, CU, CI, scale, T, NT,
                   H: tl.constexpr, H_KV: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr):
    # dv = kd @ dh_next + scale * sum over the group's query heads of A^T @ do (A kept by the forward)
    i_v, i_c, i_hk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    GROUP: tl.constexpr = H // H_KV
    i_n, i_t, bos, eos, rows, tok, mt = _chunk_tokens(i_c, CU, CI, T, NT, BT, IS_VARLEN)
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    ov = i_v * BV + cv
    dhbase = DH + (i_c.to(tl.int64) * H_KV + i_hk) * DK * DV
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    for k0 in range(0, DK, BK):
        kd = _load_rows(KD, tok, mt, i_hk * DK + k0, ck, DK - k0, H_KV * DK)
        dh = tl.load(dhbase + (k0 + ck)[:, None] * DV + ov[None, :],
                     mask=((k0 + ck)[:, None] < DK) & (ov[None, :] < DV), other=0.0)
        acc += tl.dot(kd, dh.to(kd.dtype))
    intra = tl.zeros([BT, BV], dtype=tl.float32)
    for hh in range(GROUP):
        i_h = i_hk * GROUP + hh
        A = tl.load(A_ + tok[:, None] * (H * BT) + i_h * BT + rows[None, :], mask=mt[:, None], other=0.0)
        do = _load_rows(DO, tok, mt, i_h * DV + i_v * BV, cv, DV - i_v * BV, H * DV)
        intra += tl.dot(tl.trans(A), do.to(A.dtype))
    acc += intra * scale
    ptr = DV_ + tok[:, None] * (H_KV * DV) + i_hk * DV + ov[None, :]
    tl.store(ptr, acc.to(DV_.dtype.element_ty), mask=mt[:, None] & (ov[None, :] < DV))


@triton.jit
def _bwd_dA_kernel(DO, V_, DA, CU, CI, scale, T, NT,
                   H: tl.constexpr, H_KV: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                   IS_VARLEN: tl.constexpr, HALF: tl.constexpr):
    # dA = scale * do @ v^T (causal, fp32) once per chunk and query head, for every key block of _bwd_dqk
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_hk = i_h // (H // H_KV)
    i_n, i_t, bos, eos, rows, tok, mt = _chunk_tokens(i_c, CU, CI, T, NT, BT, IS_VARLEN)
    cv = tl.arange(0, BV)
    dA = tl.zeros([BT, BT], dtype=tl.float32)
    for v0 in range(0, DV, BV):
        do = _load_rows(DO, tok, mt, i_h * DV + v0, cv, DV - v0, H * DV)
        v = _load_rows(V_, tok, mt, i_hk * DV + v0, cv, DV - v0, H_KV * DV)
        dA += tl.dot(_dot_in(do, HALF), tl.trans(_dot_in(v, HALF)))
    dA = tl.where(rows[:, None] >= rows[None, :], dA * scale, 0.0)
    tl.store(DA + tok[:, None] * (H * BT) + i_h * BT + rows[None, :], dA, mask=mt[:, None])


@triton.jit
def _bwd_dqk_kernel(Q, K_, V_, GC, H_, DO, DH, DA, DQ, DK_, DG, CU, CI, scale, T, NT,
                    H: tl.constexpr, H_KV: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr,
                    BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr, HALF: tl.constexpr,
                    CLAMP: tl.constexpr, INTRA_F32: tl.constexpr, SPLIT_DA: tl.constexpr):
    i_k, i_c, i_hk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    GROUP: tl.constexpr = H // H_KV
    i_n, i_t, bos, eos, rows, tok, mt = _chunk_tokens(i_c, CU, CI, T, NT, BT, IS_VARLEN)
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    ok = i_k * BK + ck
    mk = ok < DK
    causal = rows[:, None] >= rows[None, :]
    sbase = (i_c.to(tl.int64) * H_KV + i_hk) * DK * DV
    k = _load_rows(K_, tok, mt, i_hk * DK + i_k * BK, ck, DK - i_k * BK, H_KV * DK).to(tl.float32)
    gc = _load_rows(GC, tok, mt, i_hk * DK + i_k * BK, ck, DK - i_k * BK, H_KV * DK)
    gl = _last_row(GC, bos, eos, i_t, i_hk * DK + i_k * BK, ck, DK - i_k * BK, H_KV * DK, BT)
    fast = tl.min(gl) >= -CLAMP
    # through the state after the chunk: dk += (v @ dh_next^T) * e^(gl - gc); hdh = sum_v h * dh_next
    dk = tl.zeros([BT, BK], dtype=tl.float32)
    hdh = tl.zeros([BK], dtype=tl.float32)
    for v0 in range(0, DV, BV):
        v = _load_rows(V_, tok, mt, i_hk * DV + v0, cv, DV - v0, H_KV * DV)
        mkv = mk[:, None] & ((v0 + cv)[None, :] < DV)
        dh = tl.load(DH + sbase + ok[:, None] * DV + (v0 + cv)[None, :], mask=mkv, other=0.0)
        h = tl.load(H_ + sbase + ok[:, None] * DV + (v0 + cv)[None, :], mask=mkv, other=0.0)
        dk += tl.dot(_dot_in(v, HALF), tl.trans(_dot_in(dh, HALF)))
        hdh += tl.sum(h.to(tl.float32) * dh.to(tl.float32), axis=1)
    dk = dk * tl.exp(gl[None, :] - gc)
    # dg's share from every token after this chunk, sum_{s > chunk} (q dq - k dk)_s, equals sum_v h' * dh_next
    # with h' = e^gl h + kd^T v the state after the chunk (scaling that state by e^eps is the same as scaling
    # all later q by e^eps and k by e^-eps); the final chunk's dh_next is dht, so this holds there too
    carry = tl.exp(gl) * hdh + tl.sum(k * dk, axis=0)
    dgl = tl.zeros([BT, BK], dtype=tl.float32)
    for hh in range(GROUP):
        i_h = i_hk * GROUP + hh
        q = _load_rows(Q, tok, mt, i_h * DK + i_k * BK, ck, DK - i_k * BK, H * DK).to(tl.float32)
        dq = tl.zeros([BT, BK], dtype=tl.float32)
        if SPLIT_DA:  # dA from _bwd_dA_kernel (causal, scaled)
            for v0 in range(0, DV, BV):
                do = _load_rows(DO, tok, mt, i_h * DV + v0, cv, DV - v0, H * DV)
                h = tl.load(H_ + sbase + ok[:, None] * DV + (v0 + cv)[None, :],
                            mask=mk[:, None] & ((v0 + cv)[None, :] < DV), other=0.0)
                dq += tl.dot(_dot_in(do, HALF), tl.trans(_dot_in(h, HALF)))
            dA = tl.load(DA + tok[:, None] * (H * BT) + i_h * BT + rows[None, :], mask=mt[:, None], other=0.0)
        else:
            dA = tl.zeros([BT, BT], dtype=tl.float32)
            for v0 in range(0, DV, BV):
                do = _load_rows(DO, tok, mt, i_h * DV + v0, cv, DV - v0, H * DV)
                v = _load_rows(V_, tok, mt, i_hk * DV + v0, cv, DV - v0, H_KV * DV)
                h = tl.load(H_ + sbase + ok[:, None] * DV + (v0 + cv)[None, :],
                            mask=mk[:, None] & ((v0 + cv)[None, :] < DV), other=0.0)
                dq += tl.dot(_dot_in(do, HALF), tl.trans(_dot_in(h, HALF)))
                dA += tl.dot(_dot_in(do, HALF), tl.trans(_dot_in(v, HALF)))
            dA = tl.where(causal, dA * scale, 0.0)
        dq = dq * (tl.exp(gc) * scale)
        if fast:
            eg = tl.exp(gc)
            ieg = tl.exp(-gc)
            if INTRA_F32:  # fp32 operands (tf32 on the GPU): ~2.5x smaller dg error in bf16 (NOTES.md)
                dq += tl.dot(dA, k * ieg) * eg
                dk += tl.dot(tl.trans(dA), q * eg) * ieg
            else:
                dq += tl.dot(_dot_in(dA, HALF), _dot_in(k * ieg, HALF)) * eg
                dk += tl.dot(tl.trans(_dot_in(dA, HALF)), _dot_in(q * eg, HALF)) * ieg
        else:
            dq = _exact_dq(dq, dA, k, gc, BT)
            dk = _exact_dk(dk, dA, q, gc, BT)
        ptr = DQ + tok[:, None] * (H * DK) + i_h * DK + ok[None, :]
        tl.store(ptr, dq.to(DQ.dtype.element_ty), mask=mt[:, None] & mk[None, :])
        dgl += q * dq
    dgl -= k * dk
    ptr = tok[:, None] * (H_KV * DK) + i_hk * DK + ok[None, :]
    tl.store(DK_ + ptr, dk.to(DK_.dtype.element_ty), mask=mt[:, None] & mk[None, :])
    # dg_t = sum over the chunk's tokens from t on, plus the later tokens' share
    dg = tl.sum(dgl, axis=0)[None, :] - tl.cumsum(dgl, axis=0) + dgl + carry[None, :]
    tl.store(DG + ptr, dg, mask=mt[:, None] & mk[None, :])


# ----------------------------------------------------------------------------------------------------
# Launchers.


class _Seqs:
    """Where the sequences and chunks are: dense [B, T] batches or cu_seqlens-packed ones."""

    def __init__(self, B, T, cu_seqlens, device):
        self.T = T
        self.NT = triton.cdiv(T, BT)
        if cu_seqlens is None:
            self.varlen = False
            self.N = B
            self.n_chunks = B * self.NT
            self.cu = self.co = self.ci = None
        else:
            self.varlen = True
            offs = [int(x) for x in cu_seqlens.tolist()]
            self.N = len(offs) - 1
            nts = [triton.cdiv(offs[i + 1] - offs[i], BT) for i in range(self.N)]
            co = [0]
            ci = []
            for n, c in enumerate(nts):
                co.append(co[-1] + c)
                ci.extend((n, j) for j in range(c))
            self.n_chunks = co[-1]
            self.cu = torch.tensor(offs, dtype=torch.int32, device=device)
            self.co = torch.tensor(co, dtype=torch.int32, device=device)
            self.ci = torch.tensor(ci if ci else [(0, 0)], dtype=torch.int32, device=device)


def _tune_from_env() -> dict[str, dict]:
    raw = os.environ.get("HFZOO_GLA_TUNE", "").strip()
    if not raw:
        return {}
    tune = json.loads(raw)
    if not isinstance(tune, dict) or not all(isinstance(v, dict) for v in tune.values()):
        raise ValueError(f"HFZOO_GLA_TUNE must be a JSON object of objects, e.g. '{{\"o\": {{\"num_warps\": 4}}}}'; "
                         f"got {raw!r}")
    return tune


# Per-kernel tile sizes and launch options; ``TUNE[name]`` overrides them (benchmarks/gla.py sweeps it), and
# so does the environment variable ``HFZOO_GLA_TUNE`` (the same dict as JSON), read at import.
# ``TUNE["dqk"]["INTRA_F32"] = True`` runs the backward's intra-chunk dq/dk matmuls on fp32 operands;
# ``TUNE["o"]["SPLIT_A"]`` forces the separate intra-chunk score kernel on or off; ``TUNE["dqk"]["SPLIT_DA"]``
# computes dA = do v^T in its own kernel instead of inside each key block of dq/dk.
TUNE: dict[str, dict] = _tune_from_env()


def _conf(name, K, V):
    V = V or K  # the key-only kernels ("prep", "A") have no value block
    conf = {
        "prep": dict(BK=_p2(K), BV=None, num_warps=4),      # gates cumsum and decayed keys
        "h": dict(BK=_p2(K), BV=_p2(V), num_warps=4),       # state scan (forward and recomputed)
        "A": dict(BK=_p2(K), BV=None, num_warps=4),         # intra-chunk scores, when split from "o"
        "o": dict(BK=_p2(K), BV=_p2(V, hi=128), num_warps=8 if V >= 128 else 4),
        "dh": dict(BK=_p2(K), BV=_p2(V), num_warps=4),      # reverse state-gradient scan
        "dv": dict(BK=_p2(K), BV=_p2(V, hi=128), num_warps=8 if V >= 128 else 4),
        "dA": dict(BK=None, BV=_p2(V), num_warps=4),        # dA = do v^T, when split from "dqk"
        "dqk": dict(BK=_p2(K), BV=_p2(V), num_warps=4),
    }[name]
    conf.update(TUNE.get(name, {}))
    opts = {key: conf[key] for key in ("num_warps", "num_stages", "maxnreg") if key in conf}
    return conf["BK"], conf["BV"], opts


def _state_dtype(dtype):
    return torch.float32 if dtype == torch.float32 else torch.bfloat16


def _prep(k, g, gc, seqs):
    """``(gc, kd)``: in-chunk cumulative gates (fp32; computed from g, or given) and k * e^(gl - gc)."""
    B, T, Hkv, K = k.shape
    from_gc = gc is not None
    if not from_gc:
        gc = torch.empty(k.shape, dtype=torch.float32, device=k.device)
    kd = torch.empty(k.shape, dtype=_state_dtype(k.dtype), device=k.device)
    BK, _, opts = _conf("prep", K, None)
    _prep_kernel[(triton.cdiv(K, BK), seqs.n_chunks, Hkv)](
        g, k, gc, kd, seqs.cu, seqs.ci, seqs.T, seqs.NT, H_KV=Hkv, DK=K, BT=BT, BK=BK,
        IS_VARLEN=seqs.varlen, FROM_GC=from_gc, **opts)
    return gc, kd


def _fwd_states(kd, v, gc, h0, seqs, want_ht):
    B, T, Hkv, K = kd.shape
    V = v.shape[-1]
    BK, BV, opts = _conf("h", K, V)
    h = torch.empty(seqs.n_chunks, Hkv, K, V, dtype=_state_dtype(v.dtype), device=v.device)
    ht = torch.empty(seqs.N, Hkv, K, V, dtype=torch.float32, device=v.device) if want_ht else None
    grid = (triton.cdiv(K, BK), triton.cdiv(V, BV), seqs.N * Hkv)
    _fwd_h_kernel[grid](kd, v, gc, h, h0, ht, seqs.cu, seqs.co, seqs.T, seqs.NT,
                        H_KV=Hkv, DK=K, DV=V, BT=BT, BK=BK, BV=BV, USE_H0=h0 is not None,
                        STORE_HT=want_ht, IS_VARLEN=seqs.varlen, **opts)
    return h, ht


def _fwd(q, k, v, g, scale, h0, seqs, want_ht, keep_A):
    """``(o, ht, gc, A)``; ``A`` (the intra-chunk scores, for the backward) only when ``keep_A``."""
    B, T, H, K = q.shape
    Hkv, V = k.shape[2], v.shape[-1]
    gc, kd = _prep(k, g, None, seqs)
    h, ht = _fwd_states(kd, v, gc, h0, seqs, want_ht)
    kd = None
    o = torch.empty(B, T, H, V, dtype=v.dtype, device=v.device)
    BK, BV, opts = _conf("o", K, V)
    # A in its own kernel: once per chunk and head (not once per value block), and the output kernel stays small
    # (faster on the H200 also for a single value block: benchmarks/NOTES.md, sweeps of runs 4 and 6)
    split = TUNE.get("o", {}).get("SPLIT_A", True)
    A = torch.empty(B, T, H, BT, dtype=_state_dtype(v.dtype), device=v.device) if (keep_A or split) else None
    if split:
        BKA, _, opts_A = _conf("A", K, None)
        _fwd_A_kernel[(seqs.n_chunks, H)](q, k, gc, A, seqs.cu, seqs.ci, seqs.T, seqs.NT, H=H, H_KV=Hkv, DK=K,
                                          BT=BT, BK=BKA, IS_VARLEN=seqs.varlen, HALF=v.dtype != torch.float32,
                                          CLAMP=CLAMP, **opts_A)
    grid = (triton.cdiv(V, BV), seqs.n_chunks, H)
    _fwd_o_kernel[grid](q, k, v, gc, h, o, A, seqs.cu, seqs.ci, scale, seqs.T, seqs.NT,
                        H=H, H_KV=Hkv, DK=K, DV=V, BT=BT, BK=BK, BV=BV, IS_VARLEN=seqs.varlen,
                        HALF=v.dtype != torch.float32, CLAMP=CLAMP, A_MODE=2 if split else int(keep_A), **opts)
    return o, ht, gc, A


def _bwd(q, k, v, gc, A, scale, h0, do, dht, seqs):
    B, T, H, K = q.shape
    Hkv, V = k.shape[2], v.shape[-1]
    half = v.dtype != torch.float32
    _, kd = _prep(k, None, gc, seqs)
    h, _ = _fwd_states(kd, v, gc, h0, seqs, False)
    dh = torch.empty_like(h)
    dh0 = torch.empty(seqs.N, Hkv, K, V, dtype=torch.float32, device=v.device) if h0 is not None else None
    BK, BV, opts = _conf("dh", K, V)
    _bwd_dh_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BV), seqs.N * Hkv)](
        q, gc, do, dh, dht, dh0, seqs.cu, seqs.co, scale, seqs.T, seqs.NT,
        H=H, H_KV=Hkv, DK=K, DV=V, BT=BT, BK=BK, BV=BV, USE_DHT=dht is not None, STORE_DH0=h0 is not None,
        IS_VARLEN=seqs.varlen, HALF=half, **opts)
    dv = torch.empty_like(v)
    BK, BV, opts = _conf("dv", K, V)
    _bwd_dv_kernel[(triton.cdiv(V, BV), seqs.n_chunks, Hkv)](
        kd, A, do, dh, dv, seqs.cu, seqs.ci, scale, seqs.T, seqs.NT,
        H=H, H_KV=Hkv, DK=K, DV=V, BT=BT, BK=BK, BV=BV, IS_VARLEN=seqs.varlen, **opts)
    kd = None
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dg = torch.empty(k.shape, dtype=torch.float32, device=k.device)
    BK, BV, opts = _conf("dqk", K, V)
    split = bool(TUNE.get("dqk", {}).get("SPLIT_DA", False))
    dA = None
    if split:  # dA once per chunk and head instead of once per key block
        dA = torch.empty(B, T, H, BT, dtype=torch.float32, device=q.device)
        _, BVA, opts_dA = _conf("dA", K, V)
        _bwd_dA_kernel[(seqs.n_chunks, H)](do, v, dA, seqs.cu, seqs.ci, scale, seqs.T, seqs.NT, H=H, H_KV=Hkv,
                                           DV=V, BT=BT, BV=BVA, IS_VARLEN=seqs.varlen, HALF=half, **opts_dA)
    _bwd_dqk_kernel[(triton.cdiv(K, BK), seqs.n_chunks, Hkv)](
        q, k, v, gc, h, do, dh, dA, dq, dk, dg, seqs.cu, seqs.ci, scale, seqs.T, seqs.NT,
        H=H, H_KV=Hkv, DK=K, DV=V, BT=BT, BK=BK, BV=BV, IS_VARLEN=seqs.varlen, HALF=half, CLAMP=CLAMP,
        INTRA_F32=bool(TUNE.get("dqk", {}).get("INTRA_F32", False)), SPLIT_DA=split, **opts)
    return dq, dk, dv, dg, dh0


class ChunkGLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, h0, output_final_state, cu_seqlens, grad_enabled):
        q, k, v, g = (t.contiguous() for t in (q, k, v, g))
        h0 = h0.contiguous() if h0 is not None else None
        seqs = _Seqs(q.shape[0], q.shape[1], cu_seqlens, q.device)
        keep = grad_enabled and (any(ctx.needs_input_grad[:4]) or (h0 is not None and ctx.needs_input_grad[5]))
        o, ht, gc, A = _fwd(q, k, v, g, scale, h0, seqs, output_final_state, keep)
        # the backward needs the cumulated gates, not g itself
        ctx.save_for_backward(q, k, v, gc, A, h0)
        ctx.seqs, ctx.scale, ctx.g_dtype, ctx.final = seqs, scale, g.dtype, output_final_state
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, A, h0 = ctx.saved_tensors
        do = do.contiguous()
        dht = dht.contiguous() if (dht is not None and ctx.final) else None
        dq, dk, dv, dg, dh0 = _bwd(q, k, v, gc, A, ctx.scale, h0, do, dht, ctx.seqs)
        return dq, dk, dv, dg.to(ctx.g_dtype), None, dh0, None, None, None


def chunk_gla_triton(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Triton chunked GLA; arguments as :func:`hfzoo.ops.gla.chunk_gla` (inputs already checked there).

    Returns ``(o, final_state or None)``. Differentiable in q, k, v, g and initial_state (and through the
    final state). ``q`` and ``k`` are cast to ``v``'s dtype; fp16/bf16 inputs run their matmuls in bf16.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if q.dtype != v.dtype:
        q = q.to(v.dtype)
    if k.dtype != v.dtype:
        k = k.to(v.dtype)
    if q.shape[1] == 0:
        N = q.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
        o = v.new_zeros(*q.shape[:3], v.shape[-1])
        if not output_final_state:
            return o, None
        ht = initial_state.float() if initial_state is not None else \
            torch.zeros(N, k.shape[2], k.shape[3], v.shape[3], dtype=torch.float32, device=v.device)
        return o, ht
    return ChunkGLAFunction.apply(q, k, v, g, float(scale), initial_state, bool(output_final_state), cu_seqlens,
                                  torch.is_grad_enabled())
