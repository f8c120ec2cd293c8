"""Chunked gated linear attention in Triton: forward and backward (training and prefill).

The sequence is cut into chunks of ``BT = 64`` tokens. A first pass cumulates the gates inside each chunk
(``gc = cumsum(g)``, fp32) and decays the keys to the chunk's end (``kd = k * e^(gl - gc)``, in the matmul
dtype); ``gl`` is the chunk's total log decay (``gc`` at its last token). With ``h`` the state before the chunk:

    o      = scale * [ (q * e^gc) @ h  +  A @ v ],    A_ij = sum_k q_ik k_jk e^(gc_ik - gc_jk)  (j <= i)
    h_next = e^gl * h + kd^T @ v

Intra-chunk scores ``A`` (and the backward's intra ``dq``/``dk``) on tensor cores at any decay, chosen per chunk
and key block at run time:
  * the chunk decays by at most ``e^-2CLAMP`` in every key column (ordinary gates, and ``logsigmoid`` gates
    without a normaliser): one matmul ``(q e^(gc - gl/2)) @ (k e^(gl/2 - gc))^T``. The reference point halfway
    through the chunk's decay keeps both factors within ``e^±CLAMP``; the products keep their relative
    precision (only causally masked entries can exceed ``e^CLAMP``, and they are discarded);
  * stronger decay: the chunk is cut into ``BC = 16``-token sub-chunks with reference points ``r_J`` (gc at
    the last token of sub-chunk J, ``r_-1 = 0``). For a query i in sub-chunk I and a key j in sub-chunk J < I,
    ``e^(gc_i - gc_j) = e^(gc_i - r_{I-1}) * e^(r_{I-1} - r_J) * e^(r_J - gc_j)``: three factors <= 1, so the
    scores against the keys of J are one matmul whatever the decay, with two exp tiles per key block shared by
    all J (the middle factor is a per-column vector). The diagonal sub-blocks (I = J; the middle factor is then
    ``e^(r_{J-1} - r_J)`` >= 1) join the same matmul while no sub-chunk decays beyond ``e^-CLAMP``, and otherwise
    take an exact elementwise form (``exp`` of differences <= 0, a loop over the 16 key offsets of a sub-chunk).

Kernels (grid in brackets):
  _prep      [K/BK, chunks, Hkv]   gc and kd (the backward rebuilds kd from the saved gc)
  _fwd_h     [K/BK, V/BV, N*Hkv]   sequential over chunks: states before each chunk, final state
  _fwd_A     [chunks, H]           A (causal, unscaled, matmul dtype), used by the output and kept for dv; as a
                                   pair with ``split`` (FORMS 1 and 2: the whole-chunk form's chunks, then the others)
  _fwd_o     [V/BV, chunks, H]     output
  _bwd_dh    [K/BK, V/BV, N*Hkv]   reverse scan: state gradients after each chunk, d initial state
  _bwd_dv    [V/BV, chunks, Hkv]   dv = kd @ dh + A^T @ do (summed over the query heads of a group)
  _bwd_dqk   [K/BK, chunks, Hkv]   dq, dk, dg (the later tokens' share of dg from sum_v h_next * dh_next); a pair by
                                   default
The dq/dk pair keeps the sub-chunk code out of the ordinary-gate kernel (its registers; benchmarks/NOTES.md,
version 4); one kernel holding both forms remains available (settings ``split: False``).
The two scans load the next chunk's tiles while the current one computes. The backward recomputes the
chunk states instead of keeping them from the forward.

Variants that lost on the H200 and were removed (numbers in benchmarks/NOTES.md, code in git history): the
intra-chunk scores computed inside the output kernel, dA = do v^T in its own kernel, fp32 operands for the
backward's intra-chunk matmuls, and the column-by-column exact form over whole 64-token chunks.
"""

from __future__ import annotations

import torch

from .gla import _SAFE_LOG_DECAY as CLAMP  # largest log decay a factorised (matmul) form spans
from .launch import compile_options, launch, settings, tuning
from .triton_shim import tl, triton

BT = 64  # chunk length
BC = 16  # sub-chunk length (strong decay)


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
def _seq_of(i_n, CU, CO, T, NT, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    # sequence -> (first token, one past the last, its first global chunk, its number of chunks)
    if IS_VARLEN:
        bos = tl.load(CU + i_n).to(tl.int64)
        eos = tl.load(CU + i_n + 1).to(tl.int64)
        boc = tl.load(CO + i_n)
    else:
        bos = (i_n * T).to(tl.int64)
        eos = bos + T
        boc = i_n * NT
    return bos, eos, boc, tl.cdiv(eos - bos, BT)


@triton.jit
def _load_rows(P, tok, mrow, col0, cols, ncols, row_stride):
    # rows `tok` (int64 token indices) x columns col0 + cols of a [tokens, row_stride] view
    ptr = P + tok[:, None] * row_stride + col0 + cols[None, :]
    return tl.load(ptr, mask=mrow[:, None] & (cols[None, :] < ncols), other=0.0)


@triton.jit
def _gc_at(GC, tok0, eos, r, col0, ck, ncols, row_stride):
    # gc at the chunk's row r (clamped to the sequence's last token): one value per key column
    t = tl.minimum(tok0 + r, eos - 1)
    return tl.load(GC + t * row_stride + col0 + ck, mask=ck < ncols, other=0.0)


@triton.jit
def _pick(I: tl.constexpr, a, b, c, d):
    # the I-th of four values (I known at compile time)
    if I == 0:
        x = a
    elif I == 1:
        x = b
    elif I == 2:
        x = c
    else:
        x = d
    return x


@triton.jit
def _sub_refs(GC, tok0, eos, col0, ck, ncols, row_stride, BC: tl.constexpr):
    # the reference points r_J = gc at the last token of sub-chunk J = 0..3 (clamped to the sequence's last token),
    # and whether every sub-chunk decays by at most e^-CLAMP (r_{J-1} - r_J, with r_{-1} = 0 before the chunk)
    r0 = _gc_at(GC, tok0, eos, BC - 1, col0, ck, ncols, row_stride)
    r1 = _gc_at(GC, tok0, eos, 2 * BC - 1, col0, ck, ncols, row_stride)
    r2 = _gc_at(GC, tok0, eos, 3 * BC - 1, col0, ck, ncols, row_stride)
    r3 = _gc_at(GC, tok0, eos, 4 * BC - 1, col0, ck, ncols, row_stride)
    span = tl.max(tl.maximum(tl.maximum(-r0, r0 - r1), tl.maximum(r1 - r2, r2 - r3)))
    return r0, r1, r2, r3, span


@triton.jit
def _sub_tiles(gc, blk, r0, r1, r2, r3):
    # on the rows of sub-chunk I: P = e^(gc - r_{I-1}) and Qk = e^(r_I - gc), both <= 1 (the clamp at 0 only
    # touches rows past the sequence's end, whose gc reads 0)
    b0, b1, b2 = (blk == 0)[:, None], (blk == 1)[:, None], (blk == 2)[:, None]
    prev = tl.where(b0, 0.0, tl.where(b1, r0[None, :], tl.where(b2, r1[None, :], r2[None, :])))
    own = tl.where(b0, r0[None, :], tl.where(b1, r1[None, :], tl.where(b2, r2[None, :], r3[None, :])))
    return tl.exp(tl.minimum(gc - prev, 0.0)), tl.exp(tl.minimum(own - gc, 0.0))


@triton.jit
def _sub_row_scale(blk, J: tl.constexpr, diag_ok, r0, r1, r2, r3, like, CLAMP: tl.constexpr):
    # row factors for the keys of sub-chunk J: e^(r_{I-1} - r_J) on the rows of each later sub-chunk I (<= 1),
    # e^(r_{J-1} - r_J) on J's own rows when diag_ok (<= e^CLAMP), zero on the rows before. With P and Qk,
    # e^(gc_i - gc_j) = P_i * e^(r_{I-1} - r_J) * Qk_j for i in I, j in J.
    M = tl.zeros_like(like)
    rJ = _pick(J, r0, r1, r2, r3)
    for I in tl.static_range(J, 4):
        w = tl.exp(tl.minimum(_pick(I, r0 * 0.0, r0, r1, r2) - rJ, CLAMP))  # (clamp: unused when beyond)
        sel = blk == I
        if I == J:  # (diag_ok broadcast to the rows first: the interpreter will not `&` a scalar flag with a mask)
            sel = sel & (blk * 0 + diag_ok.to(tl.int32) > 0)
        M = tl.where(sel[:, None], w[None, :], M)
    return M


@triton.jit
def _diag_rows(tok0, eos, rows, c, BC: tl.constexpr):
    # for each row i, the row at offset c of i's sub-chunk (its token index and whether it is in the sequence)
    j = (rows // BC) * BC + c
    tok = tok0 + j
    return j, tok, tok < eos


# ----------------------------------------------------------------------------------------------------
# Per-chunk preparation: the in-chunk cumulative gates and the keys decayed to the chunk's end.


@triton.jit
def _last_row(GC, bos, eos, i_t, col0, ck, ncols, row_stride, BT: tl.constexpr):
    # gc at the chunk's last token: the chunk's total log decay ``gl`` (one value per key column)
    return _gc_at(GC, bos + i_t * BT, eos, BT - 1, col0, ck, ncols, row_stride)


@triton.jit(do_not_specialize=["T", "NT"])  # a new length compiles nothing
def _prep_kernel(G, K, GC, KD, CU, CI, T, NT,
                 H_KV: tl.constexpr, HEAD_K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 IS_VARLEN: tl.constexpr, FROM_GC: tl.constexpr):
    # gc = in-chunk cumsum of g (fp32; or read back when FROM_GC), kd = k * e^(gl - gc) in the matmul dtype
    i_k, i_c, i_hk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_t, bos, eos, rows, tok, mt = _chunk_tokens(i_c, CU, CI, T, NT, BT, IS_VARLEN)
    ck = tl.arange(0, BK)
    col0 = i_hk * HEAD_K + i_k * BK
    m = mt[:, None] & (ck[None, :] < HEAD_K - i_k * BK)
    ptr = tok[:, None] * (H_KV * HEAD_K) + col0 + ck[None, :]
    if FROM_GC:
        gc = tl.load(GC + ptr, mask=m, other=0.0)
        gl = _last_row(GC, bos, eos, i_t, col0, ck, HEAD_K - i_k * BK, H_KV * HEAD_K, BT)
    else:
        g = tl.load(G + ptr, mask=m, other=0.0).to(tl.float32)
        gc = tl.cumsum(g, axis=0)
        gl = tl.sum(g, axis=0)
        tl.store(GC + ptr, gc, mask=m)
    k = tl.load(K + ptr, mask=m, other=0.0).to(tl.float32)
    tl.store(KD + ptr, (k * tl.exp(gl[None, :] - gc)).to(KD.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------------
# Forward.


@triton.jit(do_not_specialize=["T", "NT"])  # a new length compiles nothing
def _fwd_h_kernel(KD, V, GC, HS, H0, HT, CU, CO, T, NT,
                  H_KV: tl.constexpr, HEAD_K: tl.constexpr, HEAD_V: tl.constexpr, BT: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
                  IS_VARLEN: tl.constexpr):
    # S <- e^gl * S + kd^T v, chunk after chunk; the next chunk's tiles are loaded while this one computes
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H_KV, i_nh % H_KV
    bos, eos, boc, nt = _seq_of(i_n, CU, CO, T, NT, BT, IS_VARLEN)
    rows = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    ok, ov = i_k * BK + ck, i_v * BV + cv
    mkv = (ok[:, None] < HEAD_K) & (ov[None, :] < HEAD_V)
    st = ok[:, None] * HEAD_V + ov[None, :]
    kcol, nk = i_h * HEAD_K + i_k * BK, HEAD_K - i_k * BK
    vcol, nv = i_h * HEAD_V + i_v * BV, HEAD_V - i_v * BV
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        S += tl.load(H0 + i_nh.to(tl.int64) * HEAD_K * HEAD_V + st, mask=mkv, other=0.0).to(tl.float32)
    tok = bos + rows
    kd_n = _load_rows(KD, tok, tok < eos, kcol, ck, nk, H_KV * HEAD_K)
    v_n = _load_rows(V, tok, tok < eos, vcol, cv, nv, H_KV * HEAD_V)
    gl_n = _last_row(GC, bos, eos, 0, kcol, ck, nk, H_KV * HEAD_K, BT)
    for i_t in range(nt):
        kd, v, gl = kd_n, v_n, gl_n
        tok = bos + (i_t + 1) * BT + rows
        kd_n = _load_rows(KD, tok, tok < eos, kcol, ck, nk, H_KV * HEAD_K)
        v_n = _load_rows(V, tok, tok < eos, vcol, cv, nv, H_KV * HEAD_V)
        gl_n = _last_row(GC, bos, eos, tl.minimum(i_t + 1, nt - 1), kcol, ck, nk, H_KV * HEAD_K, BT)
        tl.store(HS + ((boc + i_t).to(tl.int64) * H_KV + i_h) * HEAD_K * HEAD_V + st, S.to(HS.dtype.element_ty),
                 mask=mkv)
        S = S * tl.exp(gl)[:, None] + tl.dot(tl.trans(kd), v.to(kd.dtype))
    if STORE_HT:
        tl.store(HT + i_nh.to(tl.int64) * HEAD_K * HEAD_V + st, S, mask=mkv)


@triton.jit(do_not_specialize=["T", "NT"])  # a new length compiles nothing
def _fwd_A_kernel(Q, K, GC, AS, CU, CI, T, NT,
                  H: tl.constexpr, H_KV: tl.constexpr, HEAD_K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                  BK: tl.constexpr, IS_VARLEN: tl.constexpr, HALF: tl.constexpr, CLAMP: tl.constexpr,
                  FORMS: tl.constexpr):
    # the intra-chunk scores once per chunk and head (causal, unscaled, matmul dtype). FORMS as in _bwd_dqk_kernel:
    # 0 = both forms (per key block at run time), 1 / 2 = only the chunks of the whole-chunk / sub-chunk form
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_hk = i_h // (H // H_KV)
    i_n, i_t, bos, eos, rows, tok, mt = _chunk_tokens(i_c, CU, CI, T, NT, BT, IS_VARLEN)
    tok0 = bos + i_t * BT
    ck = tl.arange(0, BK)
    if FORMS != 0:  # the chunk's form, decided over all key columns (as the dq/dk pair decides it)
        lo = tl.min(_last_row(GC, bos, eos, i_t, i_hk * HEAD_K, ck, HEAD_K, H_KV * HEAD_K, BT))
        for c0 in range(BK, HEAD_K, BK):
            lo = tl.minimum(lo, tl.min(_last_row(GC, bos, eos, i_t, i_hk * HEAD_K + c0, ck, HEAD_K - c0,
                                                 H_KV * HEAD_K, BT)))
        if FORMS == 1:
            if lo < -2 * CLAMP:
                return
        if FORMS == 2:
            if lo >= -2 * CLAMP:
                return
    A = tl.zeros([BT, BT], dtype=tl.float32)
    for k0 in range(0, HEAD_K, BK):
        qcol, kcol, nk = i_h * HEAD_K + k0, i_hk * HEAD_K + k0, HEAD_K - k0
        q = _load_rows(Q, tok, mt, qcol, ck, nk, H * HEAD_K).to(tl.float32)
        k = _load_rows(K, tok, mt, kcol, ck, nk, H_KV * HEAD_K).to(tl.float32)
        gc = _load_rows(GC, tok, mt, kcol, ck, nk, H_KV * HEAD_K)
        gl = _last_row(GC, bos, eos, i_t, kcol, ck, nk, H_KV * HEAD_K, BT)
        if FORMS == 1:
            A += _a_whole(q, k, gc, gl, HALF)
        elif FORMS == 2:
            A += _a_sub(q, k, gc, K, GC, tok0, eos, rows, kcol, ck, nk, H_KV, HEAD_K, BT, BC, HALF, CLAMP)
        else:
            if tl.min(gl) >= -2 * CLAMP:
                A += _a_whole(q, k, gc, gl, HALF)
            else:
                A += _a_sub(q, k, gc, K, GC, tok0, eos, rows, kcol, ck, nk, H_KV, HEAD_K, BT, BC, HALF, CLAMP)
    A = tl.where(rows[:, None] >= rows[None, :], A, 0.0)
    tl.store(AS + tok[:, None] * (H * BT) + i_h * BT + rows[None, :], A.to(AS.dtype.element_ty), mask=mt[:, None])


@triton.jit
def _a_whole(q, k, gc, gl, HALF: tl.constexpr):
    # one matmul for the whole chunk, reference point halfway (gl / 2)
    return tl.dot(_dot_in(q * tl.exp(gc - 0.5 * gl[None, :]), HALF),
                  tl.trans(_dot_in(k * tl.exp(0.5 * gl[None, :] - gc), HALF)))


@triton.jit
def _a_sub(q, k, gc, K, GC, tok0, eos, rows, kcol, ck, nk, H_KV: tl.constexpr, HEAD_K: tl.constexpr,
           BT: tl.constexpr, BC: tl.constexpr, HALF: tl.constexpr, CLAMP: tl.constexpr):
    # intra-chunk scores of one key block by sub-chunks: one matmul per key sub-chunk (_sub_row_scale), the
    # diagonal blocks exactly when a sub-chunk decays beyond e^-CLAMP
    A = tl.zeros([BT, BT], dtype=tl.float32)
    r0, r1, r2, r3, span = _sub_refs(GC, tok0, eos, kcol, ck, nk, H_KV * HEAD_K, BC)
    diag_ok = span <= CLAMP
    blk = rows // BC
    P, Qk = _sub_tiles(gc, blk, r0, r1, r2, r3)
    qP = q * P
    kQ = k * Qk
    for J in tl.static_range(BT // BC):
        M = _sub_row_scale(blk, J, diag_ok, r0, r1, r2, r3, qP, CLAMP)
        kJ = tl.where((blk == J)[:, None], kQ, 0.0)
        A += tl.dot(_dot_in(qP * M, HALF), tl.trans(_dot_in(kJ, HALF)))
    if not diag_ok:  # diagonal blocks exactly: e^(gc_i - gc_j) elementwise, one key offset at a time
        for c in range(BC):
            j, tok_j, m_j = _diag_rows(tok0, eos, rows, c, BC)
            k_c = _load_rows(K, tok_j, m_j, kcol, ck, nk, H_KV * HEAD_K).to(tl.float32)
            gc_c = _load_rows(GC, tok_j, m_j, kcol, ck, nk, H_KV * HEAD_K)
            a = tl.sum(q * k_c * tl.exp(tl.minimum(gc - gc_c, 0.0)), axis=1)
            A += tl.where(rows[None, :] == j[:, None], a[:, None], 0.0)
    return A


@triton.jit(do_not_specialize=["T", "NT"])  # a new length compiles nothing
def _fwd_o_kernel(Q, V, GC, HS, O, AS, CU, CI, scale, T, NT,
                  H: tl.constexpr, H_KV: tl.constexpr, HEAD_K: tl.constexpr, HEAD_V: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr,
                  HALF: tl.constexpr):
    # o = scale * [(q e^gc) @ h + A @ v], A from _fwd_A_kernel
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_hk = i_h // (H // H_KV)
    i_n, i_t, bos, eos, rows, tok, mt = _chunk_tokens(i_c, CU, CI, T, NT, BT, IS_VARLEN)
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    ov = i_v * BV + cv
    hbase = HS + (i_c.to(tl.int64) * H_KV + i_hk) * HEAD_K * HEAD_V
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    for k0 in range(0, HEAD_K, BK):
        q = _load_rows(Q, tok, mt, i_h * HEAD_K + k0, ck, HEAD_K - k0, H * HEAD_K).to(tl.float32)
        gc = _load_rows(GC, tok, mt, i_hk * HEAD_K + k0, ck, HEAD_K - k0, H_KV * HEAD_K)
        h = tl.load(hbase + (k0 + ck)[:, None] * HEAD_V + ov[None, :],
                    mask=((k0 + ck)[:, None] < HEAD_K) & (ov[None, :] < HEAD_V), other=0.0)
        acc += tl.dot(_dot_in(q * tl.exp(gc), HALF), _dot_in(h, HALF))
    A = _dot_in(tl.load(AS + tok[:, None] * (H * BT) + i_h * BT + rows[None, :], mask=mt[:, None], other=0.0), HALF)
    v = _load_rows(V, tok, mt, i_hk * HEAD_V + i_v * BV, cv, HEAD_V - i_v * BV, H_KV * HEAD_V)
    acc += tl.dot(A, _dot_in(v, HALF))
    optr = O + tok[:, None] * (H * HEAD_V) + i_h * HEAD_V + ov[None, :]
    tl.store(optr, (acc * scale).to(O.dtype.element_ty), mask=mt[:, None] & (ov[None, :] < HEAD_V))


# ----------------------------------------------------------------------------------------------------
# Backward.


@triton.jit(do_not_specialize=["T", "NT"])  # a new length compiles nothing
def _bwd_dh_kernel(Q, GC, DO, DHS, DHT, DH0, CU, CO, scale, T, NT,
                   H: tl.constexpr, H_KV: tl.constexpr, HEAD_K: tl.constexpr, HEAD_V: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, USE_DHT: tl.constexpr,
                   STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr, HALF: tl.constexpr):
    # reverse scan; the next chunk's gates (and the first query head's q, do) load while this one computes
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_hk = i_nh // H_KV, i_nh % H_KV
    GROUP: tl.constexpr = H // H_KV
    bos, eos, boc, nt = _seq_of(i_n, CU, CO, T, NT, BT, IS_VARLEN)
    rows = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    ok, ov = i_k * BK + ck, i_v * BV + cv
    mkv = (ok[:, None] < HEAD_K) & (ov[None, :] < HEAD_V)
    st = ok[:, None] * HEAD_V + ov[None, :]
    gcol, nk, nv = i_hk * HEAD_K + i_k * BK, HEAD_K - i_k * BK, HEAD_V - i_v * BV
    h0 = i_hk * GROUP
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        dS += tl.load(DHT + i_nh.to(tl.int64) * HEAD_K * HEAD_V + st, mask=mkv, other=0.0).to(tl.float32)
    tok = bos + (nt - 1) * BT + rows
    gc_n = _load_rows(GC, tok, tok < eos, gcol, ck, nk, H_KV * HEAD_K)
    gl_n = _last_row(GC, bos, eos, nt - 1, gcol, ck, nk, H_KV * HEAD_K, BT)
    q_n = _load_rows(Q, tok, tok < eos, h0 * HEAD_K + i_k * BK, ck, nk, H * HEAD_K)
    do_n = _load_rows(DO, tok, tok < eos, h0 * HEAD_V + i_v * BV, cv, nv, H * HEAD_V)
    for j in range(nt):
        i_t = nt - 1 - j
        gc, gl, q, do = gc_n, gl_n, q_n, do_n
        tokp = bos + (i_t - 1) * BT + rows
        mp = (tokp < eos) & (tokp >= bos)
        gc_n = _load_rows(GC, tokp, mp, gcol, ck, nk, H_KV * HEAD_K)
        gl_n = _last_row(GC, bos, eos, tl.maximum(i_t - 1, 0), gcol, ck, nk, H_KV * HEAD_K, BT)
        q_n = _load_rows(Q, tokp, mp, h0 * HEAD_K + i_k * BK, ck, nk, H * HEAD_K)
        do_n = _load_rows(DO, tokp, mp, h0 * HEAD_V + i_v * BV, cv, nv, H * HEAD_V)
        # gradient with respect to the state after chunk i_t
        tl.store(DHS + ((boc + i_t).to(tl.int64) * H_KV + i_hk) * HEAD_K * HEAD_V + st,
                 dS.to(DHS.dtype.element_ty), mask=mkv)
        eg = tl.exp(gc) * scale
        dS = dS * tl.exp(gl)[:, None] + tl.dot(tl.trans(_dot_in(q.to(tl.float32) * eg, HALF)), _dot_in(do, HALF))
        tok = bos + i_t * BT + rows
        mt = tok < eos
        for hh in range(1, GROUP):
            q_h = _load_rows(Q, tok, mt, (h0 + hh) * HEAD_K + i_k * BK, ck, nk, H * HEAD_K).to(tl.float32)
            do_h = _load_rows(DO, tok, mt, (h0 + hh) * HEAD_V + i_v * BV, cv, nv, H * HEAD_V)
            dS += tl.dot(tl.trans(_dot_in(q_h * eg, HALF)), _dot_in(do_h, HALF))
    if STORE_DH0:
        tl.store(DH0 + i_nh.to(tl.int64) * HEAD_K * HEAD_V + st, dS, mask=mkv)


@triton.jit(do_not_specialize=["T", "NT"])  # a new length compiles nothing
def _bwd_dv_kernel(KD, AS, DO, DHS, DV, CU, CI, scale, T, NT,
                   H: tl.constexpr, H_KV: tl.constexpr, HEAD_K: tl.constexpr, HEAD_V: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr):
    # dv = kd @ dh_next + scale * sum over the group's query heads of A^T @ do (A kept by the forward)
    i_v, i_c, i_hk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    GROUP: tl.constexpr = H // H_KV
    i_n, i_t, bos, eos, rows, tok, mt = _chunk_tokens(i_c, CU, CI, T, NT, BT, IS_VARLEN)
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    ov = i_v * BV + cv
    dhbase = DHS + (i_c.to(tl.int64) * H_KV + i_hk) * HEAD_K * HEAD_V
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    for k0 in range(0, HEAD_K, BK):
        kd = _load_rows(KD, tok, mt, i_hk * HEAD_K + k0, ck, HEAD_K - k0, H_KV * HEAD_K)
        dh = tl.load(dhbase + (k0 + ck)[:, None] * HEAD_V + ov[None, :],
                     mask=((k0 + ck)[:, None] < HEAD_K) & (ov[None, :] < HEAD_V), other=0.0)
        acc += tl.dot(kd, dh.to(kd.dtype))
    intra = tl.zeros([BT, BV], dtype=tl.float32)
    for hh in range(GROUP):
        i_h = i_hk * GROUP + hh
        A = tl.load(AS + tok[:, None] * (H * BT) + i_h * BT + rows[None, :], mask=mt[:, None], other=0.0)
        do = _load_rows(DO, tok, mt, i_h * HEAD_V + i_v * BV, cv, HEAD_V - i_v * BV, H * HEAD_V)
        intra += tl.dot(tl.trans(A), do.to(A.dtype))
    acc += intra * scale
    ptr = DV + tok[:, None] * (H_KV * HEAD_V) + i_hk * HEAD_V + ov[None, :]
    tl.store(ptr, acc.to(DV.dtype.element_ty), mask=mt[:, None] & (ov[None, :] < HEAD_V))


@triton.jit
def _dqk_whole(dA, q, k, gc, gl, HALF: tl.constexpr):
    # intra-chunk dq, dk of one query head, one matmul each, reference point halfway through the chunk's decay
    eg = tl.exp(gc - 0.5 * gl[None, :])
    ieg = tl.exp(0.5 * gl[None, :] - gc)
    dq = tl.dot(_dot_in(dA, HALF), _dot_in(k * ieg, HALF)) * eg
    dk = tl.dot(tl.trans(_dot_in(dA, HALF)), _dot_in(q * eg, HALF)) * ieg
    return dq, dk


@triton.jit
def _dqk_sub(dA, q, k, gc, Q, K, GC, tok0, eos, rows, kcol, qcol, ck, nk,
             H: tl.constexpr, H_KV: tl.constexpr, HEAD_K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
             HALF: tl.constexpr, CLAMP: tl.constexpr):
    # intra-chunk dq, dk of one query head by sub-chunk matmuls (+ exact diagonal blocks when a sub-chunk decays
    # beyond e^-CLAMP)
    blk = rows // BC
    dq = tl.zeros_like(q)
    dk = tl.zeros_like(k)
    r0, r1, r2, r3, span = _sub_refs(GC, tok0, eos, kcol, ck, nk, H_KV * HEAD_K, BC)
    diag_ok = span <= CLAMP
    P, Qk = _sub_tiles(gc, blk, r0, r1, r2, r3)
    qP = q * P
    kQ = k * Qk
    dAh = _dot_in(dA, HALF)
    for J in tl.static_range(BT // BC):
        M = _sub_row_scale(blk, J, diag_ok, r0, r1, r2, r3, qP, CLAMP)
        inJ = (blk == J)[:, None]
        dq += tl.dot(dAh, _dot_in(tl.where(inJ, kQ, 0.0), HALF)) * M * P
        dk += tl.where(inJ, tl.dot(tl.trans(dAh), _dot_in(qP * M, HALF)) * Qk, 0.0)
    if not diag_ok:  # diagonal blocks exactly, one offset c inside each sub-chunk at a time
        for c in range(BC):
            j, tok_j, m_j = _diag_rows(tok0, eos, rows, c, BC)
            gc_c = _load_rows(GC, tok_j, m_j, kcol, ck, nk, H_KV * HEAD_K)
            # e^-|gc - gc_c| is e^(gc_i - gc_j) for every pair i >= j that dA keeps
            e = tl.exp(-tl.abs(gc - gc_c))
            # dq_i += dA[i, j] k_j e^(gc_i - gc_j) with j = row c of i's sub-chunk
            k_c = _load_rows(K, tok_j, m_j, kcol, ck, nk, H_KV * HEAD_K).to(tl.float32)
            dA_c = tl.sum(tl.where(rows[None, :] == j[:, None], dA, 0.0), axis=1)
            dq += dA_c[:, None] * k_c * e
            # dk_j += dA[i, j] q_i e^(gc_i - gc_j) with i = row c of j's sub-chunk
            q_c = _load_rows(Q, tok_j, m_j, qcol, ck, nk, H * HEAD_K).to(tl.float32)
            dA_r = tl.sum(tl.where(rows[:, None] == j[None, :], dA, 0.0), axis=0)
            dk += dA_r[:, None] * q_c * e
    return dq, dk


@triton.jit(do_not_specialize=["T", "NT"])  # a new length compiles nothing
def _bwd_dqk_kernel(Q, K, V, GC, HS, DO, DHS, DQ, DK, DG, CU, CI, scale, T, NT,
                    H: tl.constexpr, H_KV: tl.constexpr, HEAD_K: tl.constexpr, HEAD_V: tl.constexpr,
                    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    IS_VARLEN: tl.constexpr, HALF: tl.constexpr, CLAMP: tl.constexpr, FORMS: tl.constexpr):
    # FORMS: 0 = both intra forms, chosen per chunk at run time; 1 = only the chunks that decay by at most
    # e^-2CLAMP (whole-chunk form), 2 = only the others (sub-chunk forms). 1 and 2 are launched as a pair, so
    # each kernel holds one form's registers (the ordinary-gate kernel stays small).
    i_k, i_c, i_hk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    GROUP: tl.constexpr = H // H_KV
    i_n, i_t, bos, eos, rows, tok, mt = _chunk_tokens(i_c, CU, CI, T, NT, BT, IS_VARLEN)
    tok0 = bos + i_t * BT
    ck = tl.arange(0, BK)
    kcol, nk = i_hk * HEAD_K + i_k * BK, HEAD_K - i_k * BK
    gl = _last_row(GC, bos, eos, i_t, kcol, ck, nk, H_KV * HEAD_K, BT)
    if FORMS == 0:  # one matmul per intra term for the whole chunk, else sub-chunks: per key block
        whole = tl.min(gl) >= -2 * CLAMP
    else:  # per chunk over all key columns, so that the pair agrees whatever their key blocks
        lo = tl.min(gl)
        for c0 in range(0, HEAD_K, BK):
            lo = tl.minimum(lo, tl.min(_last_row(GC, bos, eos, i_t, i_hk * HEAD_K + c0, ck, HEAD_K - c0,
                                                 H_KV * HEAD_K, BT)))
        whole = lo >= -2 * CLAMP
    if FORMS == 1:
        if not whole:
            return
    if FORMS == 2:
        if whole:
            return
    cv = tl.arange(0, BV)
    ok = i_k * BK + ck
    mk = ok < HEAD_K
    causal = rows[:, None] >= rows[None, :]
    sbase = (i_c.to(tl.int64) * H_KV + i_hk) * HEAD_K * HEAD_V
    k = _load_rows(K, tok, mt, kcol, ck, nk, H_KV * HEAD_K).to(tl.float32)
    gc = _load_rows(GC, tok, mt, kcol, ck, nk, H_KV * HEAD_K)
    # through the state after the chunk: dk += (v @ dh_next^T) * e^(gl - gc); hdh = sum_v h * dh_next
    dk = tl.zeros([BT, BK], dtype=tl.float32)
    hdh = tl.zeros([BK], dtype=tl.float32)
    for v0 in range(0, HEAD_V, BV):
        v = _load_rows(V, tok, mt, i_hk * HEAD_V + v0, cv, HEAD_V - v0, H_KV * HEAD_V)
        mkv = mk[:, None] & ((v0 + cv)[None, :] < HEAD_V)
        dh = tl.load(DHS + sbase + ok[:, None] * HEAD_V + (v0 + cv)[None, :], mask=mkv, other=0.0)
        h = tl.load(HS + sbase + ok[:, None] * HEAD_V + (v0 + cv)[None, :], mask=mkv, other=0.0)
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
        qcol = i_h * HEAD_K + i_k * BK
        q = _load_rows(Q, tok, mt, qcol, ck, nk, H * HEAD_K).to(tl.float32)
        dq = tl.zeros([BT, BK], dtype=tl.float32)
        dA = tl.zeros([BT, BT], dtype=tl.float32)
        for v0 in range(0, HEAD_V, BV):
            do = _load_rows(DO, tok, mt, i_h * HEAD_V + v0, cv, HEAD_V - v0, H * HEAD_V)
            v = _load_rows(V, tok, mt, i_hk * HEAD_V + v0, cv, HEAD_V - v0, H_KV * HEAD_V)
            h = tl.load(HS + sbase + ok[:, None] * HEAD_V + (v0 + cv)[None, :],
                        mask=mk[:, None] & ((v0 + cv)[None, :] < HEAD_V), other=0.0)
            dq += tl.dot(_dot_in(do, HALF), tl.trans(_dot_in(h, HALF)))
            dA += tl.dot(_dot_in(do, HALF), tl.trans(_dot_in(v, HALF)))
        dA = tl.where(causal, dA * scale, 0.0)
        dq = dq * (tl.exp(gc) * scale)
        if FORMS == 1:
            dq_i, dk_i = _dqk_whole(dA, q, k, gc, gl, HALF)
        elif FORMS == 2:
            dq_i, dk_i = _dqk_sub(dA, q, k, gc, Q, K, GC, tok0, eos, rows, kcol, qcol, ck, nk,
                                  H, H_KV, HEAD_K, BT, BC, HALF, CLAMP)
        else:
            if whole:
                dq_i, dk_i = _dqk_whole(dA, q, k, gc, gl, HALF)
            else:
                dq_i, dk_i = _dqk_sub(dA, q, k, gc, Q, K, GC, tok0, eos, rows, kcol, qcol, ck, nk,
                                      H, H_KV, HEAD_K, BT, BC, HALF, CLAMP)
        dq += dq_i
        dk += dk_i
        ptr = DQ + tok[:, None] * (H * HEAD_K) + i_h * HEAD_K + ok[None, :]
        tl.store(ptr, dq.to(DQ.dtype.element_ty), mask=mt[:, None] & mk[None, :])
        dgl += q * dq
    dgl -= k * dk
    ptr = tok[:, None] * (H_KV * HEAD_K) + i_hk * HEAD_K + ok[None, :]
    tl.store(DK + ptr, dk.to(DK.dtype.element_ty), mask=mt[:, None] & mk[None, :])
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


def _conf(kernel, K, V=None):
    """``(BK, BV, compile options)`` of ``"gla.<kernel>"``: tiles and warps from the head dims (measured on the
    H200, benchmarks/NOTES.md), overridable through ``launch.settings`` (``HFZOO_TUNE``, ``launch.tuning``)."""
    V = V or K  # the key-only kernels (prep, A) have no value block
    wide = 8 if V >= 128 else 4
    shape = {"prep": dict(BK=_p2(K), num_warps=4),                 # gates cumsum and decayed keys
             "fwd_h": dict(BK=_p2(K), BV=_p2(V), num_warps=4),     # state scan (forward, and recomputed)
             "fwd_A": dict(BK=_p2(K), num_warps=4),                # intra-chunk scores
             "fwd_o": dict(BK=_p2(K), BV=_p2(V, hi=128), num_warps=wide),
             "bwd_dh": dict(BK=_p2(K), BV=_p2(V), num_warps=4),    # reverse state-gradient scan
             "bwd_dv": dict(BK=_p2(K), BV=_p2(V, hi=128), num_warps=wide),
             "bwd_dqk": dict(BK=_p2(K), BV=_p2(V), num_warps=4)}[kernel]
    conf = settings(f"gla.{kernel}", **shape)
    return conf["BK"], conf.get("BV"), compile_options(conf)


def _state_dtype(dtype):
    return torch.float32 if dtype == torch.float32 else torch.bfloat16


def _prep(k, g, gc, seqs):
    """``(gc, kd)``: in-chunk cumulative gates (fp32; computed from g, or given) and k * e^(gl - gc)."""
    B, T, Hkv, K = k.shape
    from_gc = gc is not None
    if not from_gc:
        gc = torch.empty(k.shape, dtype=torch.float32, device=k.device)
    kd = torch.empty(k.shape, dtype=_state_dtype(k.dtype), device=k.device)
    BK, _, opts = _conf("prep", K)
    launch("gla.prep", _prep_kernel, (triton.cdiv(K, BK), seqs.n_chunks, Hkv),
        g, k, gc, kd, seqs.cu, seqs.ci, seqs.T, seqs.NT, H_KV=Hkv, HEAD_K=K, BT=BT, BK=BK,
        IS_VARLEN=seqs.varlen, FROM_GC=from_gc, **opts)
    return gc, kd


def _fwd_states(kd, v, gc, h0, seqs, want_ht):
    B, T, Hkv, K = kd.shape
    V = v.shape[-1]
    BK, BV, opts = _conf("fwd_h", K, V)
    h = torch.empty(seqs.n_chunks, Hkv, K, V, dtype=_state_dtype(v.dtype), device=v.device)
    ht = torch.empty(seqs.N, Hkv, K, V, dtype=torch.float32, device=v.device) if want_ht else None
    grid = (triton.cdiv(K, BK), triton.cdiv(V, BV), seqs.N * Hkv)
    launch("gla.fwd_h", _fwd_h_kernel, grid, kd, v, gc, h, h0, ht, seqs.cu, seqs.co, seqs.T, seqs.NT,
                        H_KV=Hkv, HEAD_K=K, HEAD_V=V, BT=BT, BK=BK, BV=BV, USE_H0=h0 is not None,
                        STORE_HT=want_ht, IS_VARLEN=seqs.varlen, **opts)
    return h, ht


def _fwd(q, k, v, g, scale, h0, seqs, want_ht):
    """``(o, ht, gc, A)``; ``A`` holds the intra-chunk scores (the backward's dv reads them)."""
    B, T, H, K = q.shape
    Hkv, V = k.shape[2], v.shape[-1]
    half = v.dtype != torch.float32
    gc, kd = _prep(k, g, None, seqs)
    h, ht = _fwd_states(kd, v, gc, h0, seqs, want_ht)
    kd = None
    # A in its own kernel: once per chunk and head (not once per value block), and the output kernel stays small
    # (faster on the H200 also for a single value block: benchmarks/NOTES.md, sweeps of runs 4 and 6)
    A = torch.empty(B, T, H, BT, dtype=_state_dtype(v.dtype), device=v.device)
    BK, _, opts = _conf("fwd_A", K)
    # one kernel holding both intra forms by default (measured: the mid-round run); the pair as in the backward's
    # dq/dk is an option (split; benchmarks/gla.py's variant rows time it at 8 warps; benchmarks/NOTES.md)
    conf = settings("gla.fwd_A", split=False, sub_num_warps=None)
    launches = [(0, opts)]
    if conf["split"]:
        launches = [(1, opts), (2, dict(opts, **({"num_warps": conf["sub_num_warps"]} if conf["sub_num_warps"] else {})))]
    for forms, o in launches:
        launch("gla.fwd_A", _fwd_A_kernel, (seqs.n_chunks, H), q, k, gc, A, seqs.cu, seqs.ci, seqs.T, seqs.NT,
               H=H, H_KV=Hkv, HEAD_K=K, BT=BT, BC=BC, BK=BK, IS_VARLEN=seqs.varlen, HALF=half, CLAMP=CLAMP,
               FORMS=forms, **o)
    o = torch.empty(B, T, H, V, dtype=v.dtype, device=v.device)
    BK, BV, opts = _conf("fwd_o", K, V)
    launch("gla.fwd_o", _fwd_o_kernel, (triton.cdiv(V, BV), seqs.n_chunks, H),
        q, v, gc, h, o, A, seqs.cu, seqs.ci, scale, seqs.T, seqs.NT, H=H, H_KV=Hkv, HEAD_K=K, HEAD_V=V,
        BT=BT, BK=BK, BV=BV, IS_VARLEN=seqs.varlen, HALF=half, **opts)
    return o, ht, gc, A


def _bwd(q, k, v, gc, A, scale, h0, do, dht, seqs):
    B, T, H, K = q.shape
    Hkv, V = k.shape[2], v.shape[-1]
    half = v.dtype != torch.float32
    _, kd = _prep(k, None, gc, seqs)
    h, _ = _fwd_states(kd, v, gc, h0, seqs, False)
    dh = torch.empty_like(h)
    dh0 = torch.empty(seqs.N, Hkv, K, V, dtype=torch.float32, device=v.device) if h0 is not None else None
    BK, BV, opts = _conf("bwd_dh", K, V)
    launch("gla.bwd_dh", _bwd_dh_kernel, (triton.cdiv(K, BK), triton.cdiv(V, BV), seqs.N * Hkv),
        q, gc, do, dh, dht, dh0, seqs.cu, seqs.co, scale, seqs.T, seqs.NT,
        H=H, H_KV=Hkv, HEAD_K=K, HEAD_V=V, BT=BT, BK=BK, BV=BV, USE_DHT=dht is not None,
        STORE_DH0=h0 is not None, IS_VARLEN=seqs.varlen, HALF=half, **opts)
    dv = torch.empty_like(v)
    BK, BV, opts = _conf("bwd_dv", K, V)
    launch("gla.bwd_dv", _bwd_dv_kernel, (triton.cdiv(V, BV), seqs.n_chunks, Hkv),
        kd, A, do, dh, dv, seqs.cu, seqs.ci, scale, seqs.T, seqs.NT,
        H=H, H_KV=Hkv, HEAD_K=K, HEAD_V=V, BT=BT, BK=BK, BV=BV, IS_VARLEN=seqs.varlen, **opts)
    kd = None
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dg = torch.empty(k.shape, dtype=torch.float32, device=k.device)
    # split by default: the whole-chunk kernel then compiles without the sub-chunk code, the sub-chunk kernel at 8
    # warps (Triton 3.6, sm_90a: 2040 B stack / 2860 B spill stores and 776 / 776, against 2744 / 5356 for one
    # kernel holding both forms; the sub-chunk kernel at 4 warps 2640 / 4272 and 2.6x the compile time; NOTES.md)
    conf = settings("gla.bwd_dqk", split=True, sub_BK=None, sub_num_warps=8)
    BK, BV, opts = _conf("bwd_dqk", K, V)
    # split: one kernel per intra form (each skips the other form's chunks; the sub-chunk one may take its own
    # key block and warps), else one kernel holding both
    launches = [(0, BK, opts)]
    if conf["split"]:
        sub_opts = dict(opts, **({"num_warps": conf["sub_num_warps"]} if conf["sub_num_warps"] else {}))
        launches = [(1, BK, opts), (2, conf["sub_BK"] or BK, sub_opts)]
    for forms, BK, opts in launches:
        launch("gla.bwd_dqk", _bwd_dqk_kernel, (triton.cdiv(K, BK), seqs.n_chunks, Hkv),
            q, k, v, gc, h, do, dh, dq, dk, dg, seqs.cu, seqs.ci, scale, seqs.T, seqs.NT,
            H=H, H_KV=Hkv, HEAD_K=K, HEAD_V=V, BT=BT, BC=BC, BK=BK, BV=BV, IS_VARLEN=seqs.varlen, HALF=half,
            CLAMP=CLAMP, FORMS=forms, **opts)
    return dq, dk, dv, dg, dh0


_BWD_KERNELS = ("gla.prep", "gla.fwd_h", "gla.bwd_dh", "gla.bwd_dv", "gla.bwd_dqk")


class ChunkGLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, h0, output_final_state, cu_seqlens, grad_enabled):
        q, k, v, g = (t.contiguous() for t in (q, k, v, g))
        h0 = h0.contiguous() if h0 is not None else None
        seqs = _Seqs(q.shape[0], q.shape[1], cu_seqlens, q.device)
        keep = grad_enabled and (any(ctx.needs_input_grad[:4]) or (h0 is not None and ctx.needs_input_grad[5]))
        o, ht, gc, A = _fwd(q, k, v, g, scale, h0, seqs, output_final_state)
        A = A if keep else None  # no backward to come: not kept
        # the backward needs the cumulated gates, not g itself
        ctx.save_for_backward(q, k, v, gc, A, h0)
        ctx.seqs, ctx.scale, ctx.g_dtype, ctx.final = seqs, scale, g.dtype, output_final_state
        # the backward's launch settings as they stand now: autograd may run the backward on another thread,
        # where this call's launch.tuning() blocks (context variables) are not seen
        ctx.tune = {name: settings(name) for name in _BWD_KERNELS}
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, A, h0 = ctx.saved_tensors
        do = do.contiguous()
        dht = dht.contiguous() if (dht is not None and ctx.final) else None
        with tuning(ctx.tune):
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
