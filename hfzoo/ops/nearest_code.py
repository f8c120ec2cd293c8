"""Nearest codebook entry for each vector: ``argmin_k ||z_i - c_k||^2`` without an N x K distance matrix.

Vector quantizers (VQ-VAE, VQGAN, SimVQ) spend most of their quantization time here. The textbook
implementations (``torch.cdist(z, c).argmin(1)`` or ``(||z||^2 + ||c||^2 - 2 z c^T).argmin(1)``) write the
full N x K matrix to memory: 17 GB for 65,536 vectors against 65,536 codes in fp32. The Triton kernel streams
the codebook through on-chip memory in tiles, keeps a running minimum and its index per row, and writes
only N indices.

Definition. For each row ``z`` the score of code ``c_k`` is

    score_k = ||c_k||^2 - 2 <z, c_k>           (||z||^2 is the same for every k, so it is left out)

and the answer is the smallest k with the smallest score (ties go to the lowest index, as ``torch.argmin``).
How the scores are computed is the ``precision``:

* ``"exact"`` (the default for fp32 inputs): the argmin of the exact scores of the input values. The kernels
  compute candidates on tensor cores (bf16x3: three bf16 products of a high/low split of both operands, or
  tf32), bound the error of every approximate score rigorously (operand rounding, fp32 accumulation,
  Cauchy-Schwarz; see ``_dot_error``), and settle every row whose runner-up is not certified by the bound in
  fp64 (products of fp32 values are exact in fp64; the sums' rounding, at most D * 2^-53 of the sum of the
  terms' magnitudes, is the only approximation left). The reference computes the same scores in fp64.
  Adversarial near-ties (scores a few units in the last fp32 place apart, where an fp32 computation picks by
  rounding noise) are decided correctly on both paths.
  16-bit inputs may ask for it too (their products are exact, only the sums need the bound).
* 16-bit inputs by default: exact products, fp32 accumulation on tensor cores; ``||c_k||^2`` from the same
  fp32 expression (``code_norms``) on both paths. Indices agree with the fp32 reference except where two
  codes' scores are within fp32 rounding of each other.
* fp32 fast forms without the fp64 settlement: ``"tf32x3"`` (three tf32 products, error of the order of fp32
  rounding), ``"ieee"`` (fp32 FMA, no tensor cores), ``"tf32"`` (one product, ~1e-3 relative error). Near-ties
  may go either way; Triton's CPU interpreter computes ``tl.dot`` in fp32 whatever the precision.

The scores pass keeps, per column slot of its tile, a running minimum and the tile it came from (one compare,
two selects per score; a NaN never compares less), and reduces the slots once per row at the end.

NaN: a score that is NaN counts as +inf on both paths, so a code containing NaN is never chosen; a vector
containing NaN gets index 0 and distance NaN.

Ladder: reference (chunked PyTorch) -> Triton kernel -> ``nearest_code`` (public: checks its arguments with
``validate.py``, dispatches per call, see ``dispatch.py``; launch settings ``nearest_code.*`` in ``launch.py``).
Indices have no gradient, so there is no autograd Function; quantizers use straight-through estimators
on the gathered codes instead.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from .launch import bucket, launch, persistent_grid, settings, settings_token, tuned_pick
from .triton_shim import tl, triton
from .validate import KERNEL_DTYPES, check_tensor, pick_backend

PRECISIONS = ("exact", "ieee", "tf32x3", "tf32")


def code_norms(codebook: torch.Tensor) -> torch.Tensor:
    """``||c_k||^2`` in fp32, shape ``[K]`` -- shared by the reference and the kernel so both see equal bits."""
    c = codebook.float()
    return (c * c).sum(-1)


def nearest_code_reference(z: torch.Tensor, codebook: torch.Tensor, chunk_elements: int = 1 << 26,
                           exact: bool = False):
    """Plain PyTorch definition: returns ``(indices int64 [N], scores fp32 [N])`` for ``z [N, D]``.

    ``exact=False``: scores in fp32 (``||c||^2`` from ``code_norms``, one fp32 matmul), as the fast kernels define
    them. ``exact=True``: scores in fp64 (every product of two fp32 values is exact there; the sums round at
    about D * 1e-16 of the terms' magnitudes), i.e. the argmin of the true distances up to that rounding -- what
    ``precision="exact"`` returns.
    Rows are processed in chunks so that at most ``chunk_elements`` scores exist at once (256 MB of fp32 by
    default), which keeps the reference usable at sizes where the full N x K matrix would not fit.
    """
    if exact:
        c = codebook.double()
        cn = (c * c).sum(-1)
    else:
        c = codebook.float()
        cn = code_norms(codebook)
    ct = c.t()
    n, k = z.shape[0], codebook.shape[0]
    rows = max(1, chunk_elements // max(k, 1))
    idx = torch.empty(n, dtype=torch.int64, device=z.device)
    best = torch.empty(n, dtype=torch.float32, device=z.device)
    for start in range(0, n, rows):
        zc = z[start:start + rows].to(c.dtype)
        score = cn[None, :] - 2.0 * (zc @ ct)
        score = score.nan_to_num(nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))  # NaN: never chosen
        val, arg = score.min(dim=1)  # first minimum on ties, like argmin
        idx[start:start + rows] = arg
        best[start:start + rows] = val.float()
    return idx, best


# ----------------------------------------------------------------------------------------------------
# Triton kernels.
#
# Scores pass (``_nearest_code_kernel``). One program owns BLOCK_M rows of z and walks the codebook in tiles of
# BLOCK_K codes (increasing index order), computing a BLOCK_M x BLOCK_K tile of scores with tl.dot. Instead of
# reducing every tile to a per-row minimum (a shuffle tree with an index tie-break per element), each of the
# BLOCK_K column slots keeps its own running minimum and the tile where it was found: per element one compare and
# two selects. A strict ``<`` keeps the earliest tile on ties and ignores NaN scores (NaN never compares less), so
# NaN needs no extra work. After the last tile one reduction per row picks the smallest slot minimum and, among
# equal ones, the lowest code index. With TOP2 the slots also keep the runner-up value
# (``b2 = min(b2, max(s, b1))`` with the slot's previous minimum ``b1``), so the row's second-best score comes out
# too: the exact mode needs it to certify the winner.
#
# Exact mode (fp32 default):
#   0. ``_prepare_codes_kernel``: the codes' squared norms and (for bf16x3) the high/low bf16 split of the
#      codebook, in one pass; program 0 zeroes the scratch words of the later steps (the flagged-row count,
#      tickets);
#   1. candidates: the scores pass on fast tensor-core dots (tf32, or bf16x3 = three bf16 products of a high/low
#      split of both operands; z is split in the kernel) keeping per row the best score b1, its index and the
#      runner-up b2. Its epilogue computes a rigorous bound B_i on |approximate score - exact score| for the
#      row (``_dot_error``, with max |c| read from the norms) and flags the row unless b2 > b1 + 2 B_i: the exact
#      minimum can only be a code whose approximate score is within 2 B_i of b1, and when the runner-up is not,
#      the winner is certain. The flagged rows are appended to a list (one atomic per program on the count; the
#      list's order varies between runs, the answers do not); FLAG holds each row's list position plus one;
#   3. ``_collect_kernel`` recomputes the approximate scores of listed rows and records every code within
#      b1 + 2 B_i (up to MAXC per row; the count goes on past MAXC);
#   4. ``_resolve_kernel`` scores the recorded codes in fp64 (products of fp32 values are exact in fp64, sums
#      round at about D * 1e-16 of the terms' magnitudes) and takes the smallest, lowest index first; rows with
#      more than MAXC candidates (many exact ties) or without any (NaN vectors) are scanned against the whole
#      codebook in fp64. (The SimVQ quantizer does this step inside its gather kernel, ``_vq_forward_kernel``.)
# Nothing waits for the host: the number of flagged rows stays on the device, later programs check it.


@triton.jit
def _prepare_codes_kernel(C, CN, HI, LO, SCRATCH, K, D, stride_c, n_scratch,
                          SPLIT: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    # The codes' squared norms and (SPLIT) their bf16 high/low parts. Program 0 also zeroes the small int32
    # scratch of the later kernels (list count, tickets): no separate zero-fill launch.
    pid = tl.program_id(0)
    if pid == 0:
        for s0 in range(0, n_scratch, BLOCK_S):
            ss = s0 + tl.arange(0, BLOCK_S)
            tl.store(SCRATCH + ss, tl.zeros([BLOCK_S], dtype=tl.int32), mask=ss < n_scratch)
    codes = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = codes < K
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        m = kmask[:, None] & (dd[None, :] < D)
        off = codes[:, None].to(tl.int64) * stride_c + dd[None, :]
        c = tl.load(C + off, mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(c * c, axis=1)
        if SPLIT:
            hi = c.to(tl.bfloat16)
            tl.store(HI + off, hi, mask=m)
            tl.store(LO + off, (c - hi.to(tl.float32)).to(tl.bfloat16), mask=m)
    tl.store(CN + codes, acc, mask=kmask)


@triton.jit
def _dot_tile(Z, C, C2, z, z2, zoff, rmask, k0, K, D, stride_zd, stride_c,
              BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_D: tl.constexpr, SPLIT: tl.constexpr,
              PRECISION: tl.constexpr, EVEN_K: tl.constexpr, EVEN_D: tl.constexpr):
    """``<z, c>`` of one BLOCK_M x BLOCK_K tile (fp32 accumulation)."""
    codes = k0 + tl.arange(0, BLOCK_K)
    kmask = codes < K
    dcols = tl.arange(0, BLOCK_D)
    if SINGLE_D:
        # one scalar base per tile plus offsets inside it (32-bit: the host checks K * stride < 2^31); masks only
        # where the tile can run past K or D
        coff = tl.arange(0, BLOCK_K)[:, None] * stride_c + dcols[None, :]
        cbase = k0 * stride_c
        if EVEN_K:
            if EVEN_D:
                c = tl.load(C + cbase + coff)
            else:
                c = tl.load(C + cbase + coff, mask=dcols[None, :] < D, other=0.0)
        else:
            if EVEN_D:
                c = tl.load(C + cbase + coff, mask=kmask[:, None], other=0.0)
            else:
                c = tl.load(C + cbase + coff, mask=kmask[:, None] & (dcols[None, :] < D), other=0.0)
        dot = tl.dot(z, tl.trans(c), input_precision=PRECISION)
        if SPLIT:  # bf16x3: hi*hi + hi*lo + lo*hi, each product exact, fp32 accumulation
            if EVEN_K:
                if EVEN_D:
                    c2 = tl.load(C2 + cbase + coff)
                else:
                    c2 = tl.load(C2 + cbase + coff, mask=dcols[None, :] < D, other=0.0)
            else:
                if EVEN_D:
                    c2 = tl.load(C2 + cbase + coff, mask=kmask[:, None], other=0.0)
                else:
                    c2 = tl.load(C2 + cbase + coff, mask=kmask[:, None] & (dcols[None, :] < D), other=0.0)
            dot = tl.dot(z, tl.trans(c2), dot)
            dot = tl.dot(z2, tl.trans(c), dot)
    else:
        dot = tl.zeros([z.shape[0], BLOCK_K], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + dcols
            zt = tl.load(Z + zoff[:, None] + dd[None, :] * stride_zd,
                         mask=rmask[:, None] & (dd[None, :] < D), other=0.0)
            ct = tl.load(C + codes[:, None].to(tl.int64) * stride_c + dd[None, :],
                         mask=kmask[:, None] & (dd[None, :] < D), other=0.0)
            dot += tl.dot(zt, tl.trans(ct), input_precision=PRECISION)
    return dot


@triton.jit
def _code_norms(CN, k0, K, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    codes = k0 + tl.arange(0, BLOCK_K)
    if EVEN_K:
        cn = tl.load(CN + codes)
    else:
        cn = tl.load(CN + codes, mask=codes < K, other=float("inf"))  # codes past K: +inf, never chosen
    return cn


@triton.jit
def _score_tile(Z, C, C2, CN, z, z2, zoff, rmask, k0, K, D, stride_zd, stride_c,
                BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_D: tl.constexpr, SPLIT: tl.constexpr,
                PRECISION: tl.constexpr, EVEN_K: tl.constexpr, EVEN_D: tl.constexpr):
    """Scores ``||c||^2 - 2 <z, c>`` of one BLOCK_M x BLOCK_K tile (fp32; codes past K get +inf)."""
    dot = _dot_tile(Z, C, C2, z, z2, zoff, rmask, k0, K, D, stride_zd, stride_c,
                    BLOCK_K, BLOCK_D, SINGLE_D, SPLIT, PRECISION, EVEN_K, EVEN_D)
    codes = k0 + tl.arange(0, BLOCK_K)
    cn = _code_norms(CN, k0, K, BLOCK_K, EVEN_K)
    return cn[None, :] - 2.0 * dot, codes, codes < K


@triton.jit
def _keep_minima(score, k0, b1, b2, t1, TOP2: tl.constexpr):
    """Per slot: running minimum b1, the tile start t1 where it was found, and (TOP2) the runner-up b2."""
    lt = score < b1  # False for NaN: a NaN score is never chosen
    if TOP2:
        b2 = tl.minimum(b2, tl.maximum(score, b1))  # max/min ignore NaN operands
    b1 = tl.where(lt, score, b1)
    t1 = tl.where(lt, k0 * 1.0, t1)  # exact: K < 2^24 (checked on the host)
    return b1, b2, t1


@triton.jit
def _row_offsets(rows, S, stride_zb, stride_zs):
    """Element offsets of rows of z: row r is vector r % S of batch r // S (S = N, stride_zb = 0 for [N, D])."""
    r = rows.to(tl.int64)
    return (r // S) * stride_zb + (r % S) * stride_zs


@triton.jit
def _load_rows(Z, zoff, rmask, D, stride_zd, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr):
    """The first BLOCK_D columns of the rows (all of them when SINGLE_D); for SPLIT their bf16 high/low parts."""
    dcols = tl.arange(0, BLOCK_D)
    z = tl.load(Z + zoff[:, None] + dcols[None, :] * stride_zd,
                mask=rmask[:, None] & (dcols[None, :] < D), other=0.0)
    if SPLIT:
        hi = z.to(tl.bfloat16)
        lo = (z - hi.to(tl.float32)).to(tl.bfloat16)
    else:
        hi = z
        lo = z
    return hi, lo


@triton.jit
def _nearest_code_kernel(Z, C, C2, CN, IDX, BEST, THR, FLAG, ROWS, CNT, COUNT, N, K, D,
                         S, stride_zb, stride_zs, stride_zd, stride_c,
                         N_BUCKET, K_BUCKET, dot_error, norm_error, bound_scale,
                         BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                         SINGLE_D: tl.constexpr, SPLIT: tl.constexpr, TOP2: tl.constexpr,
                         PRECISION: tl.constexpr, EVEN_K: tl.constexpr, EVEN_D: tl.constexpr,
                         OVERLAP: tl.constexpr, APPEND: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    # with SINGLE_D the whole row fits one tile: load z once, reuse it against every codebook tile
    zoff = _row_offsets(rows, S, stride_zb, stride_zs)
    z, z2 = _load_rows(Z, zoff, rmask, D, stride_zd, BLOCK_D, SPLIT)
    zsq = tl.zeros([BLOCK_M], dtype=tl.float32)  # |z|^2 for the bound (TOP2), before the loop: no live pointers
    if TOP2:
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            zf = tl.load(Z + zoff[:, None] + dd[None, :] * stride_zd,
                         mask=rmask[:, None] & (dd[None, :] < D), other=0.0).to(tl.float32)
            zsq += tl.sum(zf * zf, axis=1)
    b1 = tl.full([BLOCK_M, BLOCK_K], float("inf"), dtype=tl.float32)  # per slot: smallest score so far
    b2 = tl.full([BLOCK_M, BLOCK_K], float("inf"), dtype=tl.float32)  # per slot: runner-up (TOP2 only)
    t1 = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)  # per slot: tile start of b1 (a float: one FSEL per score)
    if OVERLAP:
        # the next tile's dot is issued before this tile's scores are reduced, so the tensor cores can run
        # while the threads compare (when the compiler keeps the dot in flight across the iteration)
        dot = _dot_tile(Z, C, C2, z, z2, zoff, rmask, 0, K, D, stride_zd, stride_c,
                        BLOCK_K, BLOCK_D, SINGLE_D, SPLIT, PRECISION, EVEN_K, EVEN_D)
        for k0 in range(BLOCK_K, K, BLOCK_K):
            nxt = _dot_tile(Z, C, C2, z, z2, zoff, rmask, k0, K, D, stride_zd, stride_c,
                            BLOCK_K, BLOCK_D, SINGLE_D, SPLIT, PRECISION, EVEN_K, EVEN_D)
            score = _code_norms(CN, k0 - BLOCK_K, K, BLOCK_K, EVEN_K)[None, :] - 2.0 * dot
            b1, b2, t1 = _keep_minima(score, k0 - BLOCK_K, b1, b2, t1, TOP2)
            dot = nxt
        last = (K - 1) // BLOCK_K * BLOCK_K
        score = _code_norms(CN, last, K, BLOCK_K, EVEN_K)[None, :] - 2.0 * dot
        b1, b2, t1 = _keep_minima(score, last, b1, b2, t1, TOP2)
    else:
        for k0 in range(0, K, BLOCK_K):
            score, codes, kmask = _score_tile(Z, C, C2, CN, z, z2, zoff, rmask, k0, K, D, stride_zd, stride_c,
                                              BLOCK_K, BLOCK_D, SINGLE_D, SPLIT, PRECISION, EVEN_K, EVEN_D)
            b1, b2, t1 = _keep_minima(score, k0, b1, b2, t1, TOP2)
    best = tl.min(b1, axis=1)
    code = t1.to(tl.int32) + tl.arange(0, BLOCK_K)[None, :]
    arg = tl.min(tl.where(b1 == best[:, None], code, K), axis=1)  # lowest index among equal minima (0 if all inf)
    tl.store(IDX + rows, arg.to(tl.int64), mask=rmask)
    tl.store(BEST + rows, best, mask=rmask)
    if TOP2:
        others = tl.where(code == arg[:, None], float("inf"), b1)
        second = tl.minimum(tl.min(b2, axis=1), tl.min(others, axis=1))
        # the row's bound (see _dot_error): |z| from the fp32 values, max |c| from the largest finite code norm
        # (K floats from L2 per program: little beside the codebook the loop streamed)
        cm = tl.zeros([1024], dtype=tl.float32)
        for c0 in range(0, K, 1024):
            cc = c0 + tl.arange(0, 1024)
            cv = tl.load(CN + cc, mask=cc < K, other=0.0)
            cm = tl.maximum(cm, tl.where((cv == cv) & (cv < float("inf")), cv, 0.0))  # inf/NaN codes never win
        c2max = tl.max(cm, axis=0) * (1.0 + norm_error)
        dots = 2.0 * tl.sqrt(zsq * (1.0 + norm_error)) * tl.sqrt(c2max)
        bound = bound_scale * (dot_error * dots + norm_error * c2max + 2.0 ** -22 * (c2max + dots)) + 2.0 ** -100
        thr = best + 2.0 * bound
        tl.store(THR + rows, thr, mask=rmask)
        flag = ((~(second > thr)) & rmask).to(tl.int32)  # NaN (a NaN vector): flagged
        # append the flagged rows to the list of unsettled rows (COUNT was zeroed by the prepare kernel; the
        # order of the list varies between runs, the answer of each row does not) and empty their lists;
        # FLAG holds the row's position in the list plus one (0: settled)
        # (APPEND=False: the autotuner's runs, which must leave the count alone; FLAG holds 0/1 then)
        if APPEND:
            nflag = tl.sum(flag, axis=0)
            base = nflag * 0
            if nflag > 0:
                base = tl.atomic_add(COUNT, nflag, sem="relaxed")
            pos = base + tl.cumsum(flag, axis=0) - 1
            tl.store(FLAG + rows, tl.where(flag != 0, pos + 1, 0), mask=rmask)
            tl.store(ROWS + pos, rows, mask=flag != 0)
            tl.store(CNT + pos, tl.zeros([BLOCK_M], dtype=tl.int32), mask=flag != 0)
        else:
            tl.store(FLAG + rows, flag, mask=rmask)


@triton.jit
def _collect_kernel(Z, C, C2, CN, ROWS, COUNT, THR, CNT, CAND, K, D, S, stride_zb, stride_zs, stride_zd, stride_c,
                    codes_per_part,
                    MAXC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                    SINGLE_D: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr, EVEN_D: tl.constexpr):
    # Program (i, j) takes listed rows ROWS[i*BLOCK_M : (i+1)*BLOCK_M] (of COUNT; programs past it do nothing)
    # against the j-th part of the codebook: few rows must still spread over the whole GPU.
    pid = tl.program_id(0)
    part = tl.program_id(1)
    count = tl.load(COUNT)
    if pid * BLOCK_M < count:
        slots = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        smask = slots < count
        rows = tl.load(ROWS + slots, mask=smask, other=0)
        thr = tl.load(THR + rows, mask=smask, other=float("-inf"))
        zoff = _row_offsets(rows, S, stride_zb, stride_zs)
        z, z2 = _load_rows(Z, zoff, smask, D, stride_zd, BLOCK_D, SPLIT)
        start = part * codes_per_part
        end = tl.minimum(start + codes_per_part, K)
        for k0 in range(start, end, BLOCK_K):
            score, codes, kmask = _score_tile(Z, C, C2, CN, z, z2, zoff, smask, k0, end, D, stride_zd, stride_c,
                                              BLOCK_K, BLOCK_D, SINGLE_D, SPLIT, PRECISION, False, EVEN_D)
            qual = ((score <= thr[:, None]) & kmask[None, :]).to(tl.int32)  # NaN thresholds or scores: never
            found = tl.sum(qual, axis=1)
            if tl.sum(found, axis=0) > 0:  # most tiles hold no candidate: skip the list work there
                base = tl.atomic_add(CNT + slots, found, mask=found > 0, sem="relaxed")  # room in the row's list
                pos = base[:, None] + tl.cumsum(qual, axis=1) - 1
                tl.store(CAND + slots[:, None].to(tl.int64) * MAXC + pos, codes[None, :] + 0 * pos,
                         mask=(qual != 0) & (pos < MAXC))


@triton.jit
def _exact_scores(Z, C, zrow, codes, cmask, D, stride_zd, stride_c, BLOCK_D: tl.constexpr):
    """fp64 scores ``||c||^2 - 2 <z, c>`` of one row against the codes listed in ``codes`` (+inf where masked/NaN)."""
    acc_cc = tl.zeros(codes.shape, dtype=tl.float64)
    acc_zc = tl.zeros(codes.shape, dtype=tl.float64)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        dm = dd < D
        zz = tl.load(Z + zrow + dd * stride_zd, mask=dm, other=0.0).to(tl.float64)
        cc = tl.load(C + codes[:, None].to(tl.int64) * stride_c + dd[None, :],
                     mask=cmask[:, None] & dm[None, :], other=0.0).to(tl.float64)
        acc_cc += tl.sum(cc * cc, axis=1)
        acc_zc += tl.sum(cc * zz[None, :], axis=1)
    s = acc_cc - 2.0 * acc_zc
    return tl.where(cmask & (s == s), s, float("inf"))


@triton.jit
def _resolve_row(Z, C, CNT, CAND, zrow, r, K, D, stride_zd, stride_c,
                 MAXC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """(index, fp64 score) of the exact nearest code of the row at ``zrow``, from its list ``r`` of candidates."""
    cnt = tl.load(CNT + r)
    if (cnt >= 1) & (cnt <= MAXC):
        j = tl.arange(0, BLOCK_C)
        jm = j < cnt
        codes = tl.load(CAND + r * MAXC + j, mask=jm, other=0)  # r * MAXC < 2^31 (checked on the host)
        s = _exact_scores(Z, C, zrow, codes, jm, D, stride_zd, stride_c, BLOCK_D)
        best = tl.min(s, axis=0)
        idx = tl.min(tl.where(s == best, codes, K), axis=0)
    else:  # too many candidates (exact ties) or none (a NaN vector): scan the whole codebook
        bv = tl.full([BLOCK_K], float("inf"), dtype=tl.float64)
        tv = tl.zeros([BLOCK_K], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            codes = k0 + tl.arange(0, BLOCK_K)
            s = _exact_scores(Z, C, zrow, codes, codes < K, D, stride_zd, stride_c, BLOCK_D)
            lt = s < bv
            bv = tl.where(lt, s, bv)
            tv = tl.where(lt, k0, tv)
        best = tl.min(bv, axis=0)
        idx = tl.min(tl.where(bv == best, tv + tl.arange(0, BLOCK_K), K), axis=0)
    return idx, best


@triton.jit
def _resolve_kernel(Z, C, ROWS, COUNT, CNT, CAND, IDX, BEST, K, D, S, stride_zb, stride_zs, stride_zd, stride_c,
                    MAXC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    # Persistent: program p settles listed rows p, p + programs, ...
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    count = tl.load(COUNT)
    for r in range(pid, count, nprog):
        row = tl.load(ROWS + r)
        idx, best = _resolve_row(Z, C, CNT, CAND, _row_offsets(row, S, stride_zb, stride_zs), r, K, D, stride_zd,
                                 stride_c, MAXC, BLOCK_C, BLOCK_K, BLOCK_D)
        tl.store(IDX + row, idx.to(tl.int64))
        tl.store(BEST + row, best.to(tl.float32))


# The SimVQ quantizer's differentiable part (``quantize_projected``), given the indices: the forward kernel gathers
# the picked codes q = CB[idx] into z_q (laid out like z), and sums |q - z|^2 per program; the backward kernel
# recomputes q - z and writes dz, the scaled difference G and the picked frozen codes P (dW = G^T P is one cuBLAS
# product), and db's per-program column sums. Cross-program sums: each program stores its partial, then takes a
# ticket (an acq_rel atomic after a barrier); the program with the last ticket adds the partials in program order
# (deterministic). The tickets live in the scratch words the prepare kernel zeroed in the same forward; the
# backward's counts on modulo the number of programs, so a second backward of the same graph works too.


@triton.jit
def _vq_forward_kernel(Z, CB, IDX, FLAG, CNT, CAND, ZQ, PART, SCRATCH, LOSS, N, K, D, S, stride_zb, stride_zs,
                       stride_zd, loss_scale, MAXC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    dd = tl.arange(0, BLOCK_D)
    m = rmask[:, None] & (dd[None, :] < D)
    zoff = _row_offsets(rows, S, stride_zb, stride_zs)
    zp = zoff[:, None] + dd[None, :] * stride_zd
    code = tl.load(IDX + rows, mask=rmask, other=0)
    # the exact mode's last step for this block's unsettled rows (FLAG: list position + 1), one row at a time
    slot1 = tl.load(FLAG + rows, mask=rmask, other=0)
    unsettled = (slot1 > 0).to(tl.int32)
    rank = tl.cumsum(unsettled, axis=0) - 1
    for j in range(0, tl.sum(unsettled, axis=0)):
        sel = (unsettled != 0) & (rank == j)
        row = tl.max(tl.where(sel, rows, -1), axis=0)
        slot = tl.max(tl.where(sel, slot1, 0), axis=0) - 1
        zrow = tl.max(tl.where(sel, zoff, -1), axis=0)
        new, _ = _resolve_row(Z, CB, CNT, CAND, zrow, slot, K, D, stride_zd, D, MAXC, BLOCK_C, BLOCK_K, BLOCK_D)
        code = tl.where(rows == row, new.to(tl.int64), code)
        tl.store(IDX + row, new.to(tl.int64))
    q = tl.load(CB + code[:, None] * D + dd[None, :], mask=m, other=0.0)
    z = tl.load(Z + zp, mask=m, other=0.0)
    tl.store(ZQ + zp, q, mask=m)
    diff = q - z
    tl.store(PART + pid, tl.sum(tl.sum(diff * diff, axis=1), axis=0))
    tl.debug_barrier()
    ticket = tl.atomic_add(SCRATCH + 1, 1, sem="acq_rel")
    if ticket == nprog - 1:
        acc = tl.zeros([BLOCK_P], dtype=tl.float32)
        for p0 in range(0, nprog, BLOCK_P):
            pp = p0 + tl.arange(0, BLOCK_P)
            acc += tl.load(PART + pp, mask=pp < nprog, other=0.0, volatile=True)
        tl.store(LOSS, tl.sum(acc, axis=0) * loss_scale)


@triton.jit
def _vq_backward_kernel(Z, CB, C0, IDX, GOUT, GLOSS, GZ, G, P, PARTB, SCRATCH, DB, N, D, S, stride_zb, stride_zs,
                        stride_zd, stride_c0, gz_scale, g_scale,
                        NEED_Z: tl.constexpr, NEED_W: tl.constexpr, NEED_B: tl.constexpr,
                        HAS_GOUT: tl.constexpr, HAS_GLOSS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    dd = tl.arange(0, BLOCK_D)
    m = rmask[:, None] & (dd[None, :] < D)
    zp = _row_offsets(rows, S, stride_zb, stride_zs)[:, None] + dd[None, :] * stride_zd
    code = tl.load(IDX + rows, mask=rmask, other=0)
    q = tl.load(CB + code[:, None] * D + dd[None, :], mask=m, other=0.0)
    z = tl.load(Z + zp, mask=m, other=0.0)
    diff = q - z
    if HAS_GLOSS:  # (a missing gradient is zero: the output was not used)
        gl = tl.load(GLOSS).to(tl.float32)
    else:
        gl = 0.0
    if NEED_Z:  # straight-through: dz = d z_q - w_z 2 (q - z) dloss / n
        dz = (gz_scale * gl) * diff
        if HAS_GOUT:
            dz += tl.load(GOUT + zp, mask=m, other=0.0)
        tl.store(GZ + zp, dz, mask=m)
    g = (g_scale * gl) * diff  # the codebook term's gradient on q: w_q 2 (q - z) dloss / n
    if NEED_W:
        off = rows[:, None].to(tl.int64) * D + dd[None, :]
        tl.store(G + off, g, mask=m)
        tl.store(P + off, tl.load(C0 + code[:, None] * stride_c0 + dd[None, :], mask=m, other=0.0), mask=m)
    if NEED_B:
        tl.store(PARTB + pid * BLOCK_D + dd, tl.sum(g, axis=0))
        tl.debug_barrier()
        ticket = tl.atomic_add(SCRATCH + 2, 1, sem="acq_rel")
        if ticket % nprog == nprog - 1:
            acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
            for p0 in range(0, nprog, BLOCK_P):
                pp = p0 + tl.arange(0, BLOCK_P)
                acc += tl.load(PARTB + pp[:, None] * BLOCK_D + dd[None, :], mask=(pp < nprog)[:, None], other=0.0,
                               volatile=True)
            tl.store(DB + dd, tl.sum(acc, axis=0), mask=dd < D)


# Host-side arithmetic in plain Python: triton.cdiv / next_power_of_2 are jit functions (microseconds per call),
# and this module launches up to six kernels per call.
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _block_d(d: int) -> int:
    return max(16, min(128, _pow2(d)))  # wider rows loop over D in chunks


def _rows_layout(z: torch.Tensor):
    """``(N, D, layout)`` of contiguous ``z [N, D]``; ``layout = (S, stride_b, stride_s, stride_d)`` locates row r
    at ``(r // S) * stride_b + (r % S) * stride_s`` (see ``_row_offsets``)."""
    n, d = z.shape
    return n, d, (max(n, 1), 0, z.stride(0), z.stride(1))


def _channels_layout(z: torch.Tensor):
    """``(N, D, layout)`` of contiguous channel-first ``z [B, D, *spatial]``: rows are the B * prod(spatial)
    vectors, read in place (no transposed copy)."""
    b, d = z.shape[0], z.shape[1]
    s = z[0, 0].numel()
    return b * s, d, (max(s, 1), d * s, 1, s)


# Launch plans: what the host derives from the settings and the shapes (configs, constexprs, grids, the autotuner's
# pick once known) is remembered per shape under ``settings_token()`` (never inside ``tuning()`` blocks), so a
# repeated call only allocates and launches. A step of the SimVQ quantizer is host-bound at B64 K8192.
_PLAN_LIMIT = 512
_plans: dict = {}


def _plan(key: tuple, build):
    token = settings_token()
    if token is None:
        return build()
    key = key + (token,)
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) >= _PLAN_LIMIT:
            _plans.clear()
        plan = _plans[key] = build()
    return plan


# Scratch tensors that no caller keeps (the exact mode's lists and counts, the quantizer's partial sums) are kept
# between calls per launch plan, CUDA stream and thread: a later call on the same stream is ordered after the
# earlier one's kernels, so reusing them is safe there, and other streams or threads get their own. At most
# _WORKSPACE_LIMIT sets are kept (the oldest is dropped); none inside tuning() blocks.
_WORKSPACE_LIMIT = 8
_workspaces: dict = {}


def _workspace(key: tuple, device: torch.device, build):
    token = settings_token()
    if token is None:
        return build()
    stream = torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else None
    key = key + (device, token, stream, threading.get_ident())
    ws = _workspaces.get(key)
    if ws is None:
        while len(_workspaces) >= _WORKSPACE_LIMIT:
            _workspaces.pop(next(iter(_workspaces)))
        ws = _workspaces[key] = build()
    return ws


class _PassPlan:
    """Launch plan of one scores pass: configs, constexprs, autotune key names, the side-effect-free tuning key
    (first pass), and the autotuner's pick with its grid once known."""

    __slots__ = ("configs", "meta", "keys", "tune_key", "pick", "pick_grid", "n")

    def __init__(self, name, n, k, d, precision, split, top2, z_dtype, c_dtype, elem, device):
        block_d = _block_d(d)
        configs = [{"OVERLAP": False, **c} for c in settings(name)["configs"]]
        if d > block_d:  # wide rows pipeline z chunks too: keep the configs whose stages fit shared memory (227 KB)
            configs = [c for c in configs
                       if c.get("num_stages", 2) * (c["BLOCK_M"] + c["BLOCK_K"]) * block_d * elem <= 200 << 10]
            configs = configs or [{"BLOCK_M": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2}]
        self.configs, self.n = configs, n
        self.meta = dict(BLOCK_D=block_d, SINGLE_D=d <= block_d, SPLIT=split, TOP2=top2, PRECISION=precision,
                         EVEN_K=k % 128 == 0, EVEN_D=d == block_d)  # every BLOCK_K in the lists divides 128
        self.keys = ["N_BUCKET", "K_BUCKET", "D", "SPLIT", "TOP2", "PRECISION", "EVEN_K"]
        # at least as fine as the autotuner's key (its key values, the tensors' dtypes, the config list)
        self.tune_key = (tuple(tuple(sorted(c.items())) for c in configs), bucket(n, lo=1), bucket(k, lo=1), d,
                         split, precision, self.meta["EVEN_K"], z_dtype, c_dtype, device)
        self.pick = self.pick_grid = None
        if len(configs) == 1:
            self.pick, self.pick_grid = configs[0], (_cdiv(n, configs[0]["BLOCK_M"]),)


def _scores_pass(z, layout, c, c2, cn, precision: str, name: str, top2=None):
    """Launch the scores pass: ``(idx int64 [N], best fp32 [N])``; with ``top2 = (thr, flag, rows, cnt, count,
    dot_error, norm_error, bound_scale)`` it also writes each row's threshold and unsettled flag and appends the
    unsettled rows to ``rows`` (``count`` must be zero)."""
    n, d, (zs, zb, zr, zd) = layout
    k = c.shape[0]
    split = c2 is not None
    plan = _plan((name, n, k, d, precision, split, top2 is not None, z.dtype, c.dtype, z.device),
                 lambda: _PassPlan(name, n, k, d, precision, split, top2 is not None, z.dtype, c.dtype,
                                   z.element_size(), z.device))
    idx = torch.empty(n, dtype=torch.int64, device=z.device)
    best = torch.empty(n, dtype=torch.float32, device=z.device)
    thr, flag, rows, cnt, count, dot_error, norm_error, bound_scale = top2 or (best,) * 5 + (0.0, 0.0, 0.0)
    args = (z, c, c2 if split else c, cn, idx, best, thr, flag, rows, cnt, count, n, k, d, zs, zb, zr, zd,
            c.stride(0), bucket(n, lo=1), bucket(k, lo=1), dot_error, norm_error, bound_scale)
    if plan.pick is not None:  # the tuned (or only) config: one plain launch
        launch("nearest_code.fwd", _nearest_code_kernel, plan.pick_grid, *args, **plan.meta, APPEND=True,
               configs=[plan.pick])
        return idx, best
    configs, meta, keys = plan.configs, plan.meta, plan.keys
    grid = lambda m: (_cdiv(n, m["BLOCK_M"]),)  # noqa: E731
    if top2 is not None and plan.tune_key not in _side_effect_free_tuned:
        # The autotuner runs a kernel several times on the real arguments; the first pass's list append is not
        # idempotent (the count would grow past N). The first call for a tuning key therefore tunes (and runs)
        # the pass without the append; the launch below reuses the pick.
        launch("nearest_code.fwd", _nearest_code_kernel, grid, *args, **meta, APPEND=False, configs=configs,
               key=keys)
        _side_effect_free_tuned.add(plan.tune_key)
    launch("nearest_code.fwd", _nearest_code_kernel, grid, *args, **meta, APPEND=True, configs=configs, key=keys)
    pick = tuned_pick(_nearest_code_kernel, configs, keys, args, {**meta, "APPEND": True})
    if pick is not None:  # later calls of this shape launch the pick directly
        plan.pick_grid, plan.pick = (_cdiv(n, pick["BLOCK_M"]),), pick
    return idx, best


# Rigorous bound on |approximate score - exact score| per row, as a multiple of 2 |z| max|c| (dot products):
# operand rounding (tf32 keeps 10 fraction bits, truncated or rounded: relative error < 2^-10 per operand; bf16x3
# leaves lo*lo and the residues of the split: < 4 * 2^-16) plus fp32 accumulation of n products, charged 2^-22
# of sum|products| per product (tensor cores align and truncate the addends; 2^-22 is two units in the last
# place); Cauchy-Schwarz bounds sum|z_d c_d| by |z| |c|. The code norms' fp32 sums add (D + 2) 2^-23 max|c|^2
# (``norm_error``), the score's own rounding 2^-22 of its terms. ``bound_scale`` (2 by default) is a safety factor.
def _dot_error(candidates: str, d: int) -> float:
    if candidates == "tf32":
        return 2 * 2.0 ** -10 + 2.0 ** -20 + d * 2.0 ** -22
    if candidates == "bf16x3":
        return 4 * 2.0 ** -16 + 3 * d * 2.0 ** -22
    return d * 2.0 ** -22  # 16-bit inputs: exact products, fp32 sums


def _exact_plan(dtype: torch.dtype, d: int, conf: dict):
    """Which candidates pass the exact mode runs for these inputs: ``"bf16x3"``, ``"tf32"`` or ``"16bit"``."""
    if dtype != torch.float32:
        return "16bit"
    return "bf16x3" if conf["candidates"] == "bf16x3" and d <= 128 else "tf32"


SCRATCH = 4  # int32 words zeroed by the prepare kernel: [0] unsettled-row count, [1], [2] tickets of the
# quantizer's kernels (``quantize_projected``), [3] spare
_side_effect_free_tuned: set = set()  # first-pass autotune keys already tuned (see _scores_pass)


class _ExactPlan:
    """Launch plan of the exact mode for one shape: settings and everything derived from them."""

    __slots__ = ("maxc", "candidates", "split", "bound", "prep_grid", "prep_meta", "block_d", "collect_grid",
                 "per_part", "collect_conf", "resolve_grid", "resolve_meta")

    def __init__(self, n, k, d, dtype, device):
        conf = settings("nearest_code.exact")
        self.maxc = int(conf["max_candidates"])
        self.candidates = _exact_plan(dtype, d, conf)
        self.split = self.candidates == "bf16x3"
        self.bound = (_dot_error(self.candidates, d), (d + 2) * 2.0 ** -23, float(conf["bound_scale"]))
        pconf = settings("nearest_code.prepare")
        self.prep_grid = (_cdiv(k, pconf["BLOCK_K"]),)
        self.prep_meta = dict(SPLIT=self.split, BLOCK_K=pconf["BLOCK_K"], BLOCK_D=min(128, _block_d(d)), BLOCK_S=16,
                              num_warps=pconf["num_warps"])
        self.block_d = block_d = _block_d(d)
        cconf = settings("nearest_code.collect")
        bm, bk = cconf["BLOCK_M"], cconf["BLOCK_K"]
        parts = max(1, min(int(cconf["codebook_parts"]), _cdiv(k, 2 * bk)))
        self.per_part = _cdiv(_cdiv(k, parts), bk) * bk
        self.collect_grid = (_cdiv(n, bm), _cdiv(k, self.per_part))
        self.collect_conf = [{kk: v for kk, v in cconf.items() if kk != "codebook_parts"}]
        rconf = settings("nearest_code.resolve")
        self.resolve_grid = (persistent_grid(n, device, rconf["programs_per_sm"]),)
        self.resolve_meta = dict(MAXC=self.maxc, BLOCK_C=_pow2(self.maxc), BLOCK_K=rconf["BLOCK_K"], BLOCK_D=block_d,
                                 num_warps=rconf["num_warps"])


def _exact_plan_for(n, k, d, dtype, device) -> _ExactPlan:
    return _plan(("exact", n, k, d, dtype, device), lambda: _ExactPlan(n, k, d, dtype, device))


def _exact_buffers(n, k, d, split, maxc, dev):
    """The exact mode's scratch: (scratch words, code norms, hi, lo, thr, flag, rows, cnt, candidate lists)."""
    hi = torch.empty(k, d, dtype=torch.bfloat16, device=dev) if split else None
    lo = torch.empty(k, d, dtype=torch.bfloat16, device=dev) if split else None
    return (torch.empty(SCRATCH, dtype=torch.int32, device=dev), torch.empty(k, dtype=torch.float32, device=dev),
            hi, lo, torch.empty(n, dtype=torch.float32, device=dev), torch.empty(n, dtype=torch.int32, device=dev),
            torch.empty(n, dtype=torch.int32, device=dev), torch.empty(n, dtype=torch.int32, device=dev),
            torch.empty(n * maxc, dtype=torch.int32, device=dev))


def _exact_first_pass(z: torch.Tensor, codebook: torch.Tensor, conf=None, layout=None, plan=None):
    """Steps 0-1 of the exact mode: ``(idx, best, thr, flag, cn, hi, lo, rows, cnt, scratch)``; ``layout`` as
    ``_rows_layout`` (default: ``z`` is ``[N, D]``). ``conf`` is unused (the settings are read per plan)."""
    n, d, _ = layout = layout or _rows_layout(z)
    k = codebook.shape[0]
    dev = z.device
    plan = plan or _exact_plan_for(n, k, d, z.dtype, dev)
    split = plan.split
    scratch, cn, hi, lo, thr, flag, rows, cnt = _workspace(("exact", n, k, d, z.dtype, dev), dev,
                                                           lambda: _exact_buffers(n, k, d, split, plan.maxc, dev))[:8]
    hi, lo = (hi, lo) if split else (codebook, None)
    launch("nearest_code.prepare", _prepare_codes_kernel, plan.prep_grid,
           codebook, cn, hi, lo if split else hi, scratch, k, d, codebook.stride(0), SCRATCH, **plan.prep_meta)
    idx, best = _scores_pass(z, layout, hi, lo, cn, "tf32", "nearest_code.candidates",
                             (thr, flag, rows, cnt, scratch) + plan.bound)
    return idx, best, thr, flag, cn, hi, lo, rows, cnt, scratch


def _nearest_code_exact(z: torch.Tensor, codebook: torch.Tensor, layout=None, resolve: bool = True):
    """The exact mode: ``(idx, best, scratch, (flag, cnt, cand, maxc))`` -- four launches (prepare, first pass,
    collect, resolve); with ``resolve=False`` the last step is left to the caller's kernel (``_resolve_row`` on the
    rows whose ``flag`` is not 0; ``idx`` and ``best`` hold the first pass's answers there until then)."""
    n, d, zl = layout = layout or _rows_layout(z)
    k = codebook.shape[0]
    plan = _exact_plan_for(n, k, d, z.dtype, z.device)
    maxc = plan.maxc
    if n * maxc >= 2 ** 31:
        raise ValueError(f"nearest_code: {n} vectors exceed the exact mode's candidate list (int32 offsets); "
                         f"split the batch")
    idx, best, thr, flag, cn, hi, lo, rows, cnt, scratch = _exact_first_pass(z, codebook, None, layout, plan)
    cand = _workspace(("exact", n, k, d, z.dtype, z.device), z.device,
                      lambda: _exact_buffers(n, k, d, plan.split, maxc, z.device))[8]
    block_d = plan.block_d
    launch("nearest_code.collect", _collect_kernel, plan.collect_grid,
           z, hi, lo if lo is not None else hi, cn, rows, scratch, thr, cnt, cand, k, d, *zl, hi.stride(0),
           plan.per_part, MAXC=maxc, BLOCK_D=block_d, SINGLE_D=d <= block_d, SPLIT=lo is not None, PRECISION="tf32",
           EVEN_D=d == block_d, configs=plan.collect_conf)
    if resolve:
        launch("nearest_code.resolve", _resolve_kernel, plan.resolve_grid,
               z, codebook, rows, scratch, cnt, cand, idx, best, k, d, *zl, codebook.stride(0), **plan.resolve_meta)
    return idx, best, scratch, (flag, cnt, cand, maxc)


def _check_codebook_size(k: int, numel: int):
    if k >= 2 ** 24:
        raise ValueError(f"nearest_code: {k} codes exceed the kernels' limit of 2^24; use backend='reference'")
    if numel >= 2 ** 31:
        raise ValueError(f"nearest_code: a codebook of {numel} values exceeds the kernels' 32-bit offsets (2^31); "
                         f"use backend='reference'")


def _nearest_code_triton(z: torch.Tensor, codebook: torch.Tensor, precision: str):
    z = z.contiguous()
    codebook = codebook.contiguous()
    _check_codebook_size(codebook.shape[0], codebook.numel())
    if precision == "exact":
        return _nearest_code_exact(z, codebook)[:2]
    cn = code_norms(codebook).contiguous()
    name = "nearest_code.fwd_fp32" if z.dtype == torch.float32 else "nearest_code.fwd_16bit"
    return _scores_pass(z, _rows_layout(z), codebook, None, cn, precision, name)


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, *, return_distance: bool = False,
                 precision: str | None = None, backend: str | None = None):
    """Index of the nearest codebook row (squared Euclidean distance) for every vector of ``z``.

    Args:
        z: ``[..., D]`` vectors (fp32, fp16 or bf16).
        codebook: ``[K, D]`` codes, same dtype and device as ``z``.
        return_distance: also return the squared distance to the chosen code (fp32, clamped at 0).
        precision: how scores are computed.
            ``"exact"`` (default for fp32 inputs): the index of the nearest code in exact arithmetic (ties to the
            lowest index): fast tensor-core candidates, a rigorous error bound, and fp64 scores wherever the
            best two candidates are within the bound. For 16-bit inputs ``"exact"`` works the same way (exact
            products, so only the fp32 sums need the bound); their default is plain fp32 accumulation.
            ``"tf32x3"`` (about fp32 accuracy on tensor cores), ``"ieee"`` (fp32 FMA) and ``"tf32"`` (~1e-3
            relative) are the fast fp32 forms without the fp64 settlement: near-ties may go either way.
            On the reference path ``"exact"`` computes in fp64 and everything else in fp32.
        backend: ``"triton"``, ``"reference"`` or None (choose per ``hfzoo.ops.dispatch``).

    Returns:
        ``indices`` (int64, shape ``z.shape[:-1]``), or ``(indices, distances)`` with ``return_distance``.
        Ties go to the lowest index. No N x K buffer is allocated on the Triton path.

    Example::

        >>> z, codebook = torch.randn(10, 3, 64), torch.randn(512, 64)
        >>> nearest_code(z, codebook).shape
        torch.Size([10, 3])
    """
    op = "nearest_code"
    check_tensor(op, "z", z, dims=(1, None), dtypes=KERNEL_DTYPES)
    check_tensor(op, "codebook", codebook, dtypes=KERNEL_DTYPES, device=z.device)
    if codebook.dim() != 2:
        raise ValueError(f"nearest_code: codebook must be [K, D], got shape {tuple(codebook.shape)}")
    if codebook.shape[1] != z.shape[-1]:
        raise ValueError(f"nearest_code: z's last dimension ({z.shape[-1]}) must equal the codebook's D "
                         f"({codebook.shape[1]})")
    if codebook.shape[0] == 0:
        raise ValueError("nearest_code: codebook must hold at least one code")
    if z.dtype != codebook.dtype:
        raise TypeError(f"nearest_code: z ({z.dtype}) and codebook ({codebook.dtype}) must have the same dtype")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"nearest_code: precision must be one of {PRECISIONS}, got {precision!r}")
    if precision is None:
        precision = "exact" if z.dtype == torch.float32 else "tf32"
    elif z.dtype != torch.float32 and precision != "exact":
        precision = "tf32"  # 16-bit operands: products are exact whatever the flag (it only affects fp32 operands)
    lead = z.shape[:-1]
    z2 = z.reshape(-1, z.shape[-1])
    if pick_backend(op, (z2, codebook), backend) == "reference" or z2.shape[0] == 0:
        idx, best = nearest_code_reference(z2.detach(), codebook.detach(), exact=precision == "exact")
    else:
        idx, best = _nearest_code_triton(z2.detach(), codebook.detach(), precision)
    idx = idx.reshape(lead)
    if not return_distance:
        return idx
    zf = z2.detach().float()
    dist = ((zf * zf).sum(-1) + best).clamp_min(0.0)
    return idx, dist.reshape(lead)


# ----------------------------------------------------------------------------------------------------
# The SimVQ quantizer's training step: codebook W(C), exact nearest code, both loss terms, straight-through.


def quantize_projected_reference(z: torch.Tensor, frozen: torch.Tensor, weight: torch.Tensor,
                                 bias: torch.Tensor | None, w_z: float, w_q: float):
    """Plain PyTorch definition of ``quantize_projected`` (autograd through every step)."""
    codebook = F.linear(frozen, weight, bias)
    zt = z.movedim(1, -1)
    idx, _ = nearest_code_reference(zt.reshape(-1, z.shape[1]).detach(), codebook.detach(), exact=True)
    idx = idx.reshape(zt.shape[:-1])
    q = F.embedding(idx, codebook)
    loss = w_z * F.mse_loss(zt, q.detach()) + w_q * F.mse_loss(q, zt.detach())
    z_q = (zt + (q - zt).detach()).movedim(-1, 1)
    return z_q, idx, loss


class _VQPlan:
    """Launch plan of the quantizer's own kernels for one shape."""

    __slots__ = ("fwd_meta", "bwd_meta", "nprog", "block_d", "loss_scale")

    def __init__(self, n, d, w_z, w_q):
        conf = settings("nearest_code.vq")
        bm, self.block_d = conf["BLOCK_M"], _block_d(d)
        self.nprog = _cdiv(n, bm)
        maxc = int(settings("nearest_code.exact")["max_candidates"])
        self.fwd_meta = dict(MAXC=maxc, BLOCK_C=_pow2(maxc), BLOCK_K=conf["BLOCK_K"], BLOCK_M=bm,
                             BLOCK_D=self.block_d, BLOCK_P=1024, num_warps=conf["num_warps"])
        self.bwd_meta = dict(BLOCK_M=bm, BLOCK_D=self.block_d, BLOCK_P=32, num_warps=conf["num_warps"])
        self.loss_scale = (w_z + w_q) / max(n * d, 1)


class _ProjectedVQ(torch.autograd.Function):
    """Forward: the projection (cuBLAS) and four kernels (prepare, first pass, collect, resolve + gather + loss);
    backward: one kernel and one matmul (``dW = G^T P``). Nothing waits for the host."""

    @staticmethod
    def forward(ctx, z, frozen, weight, bias, w_z: float, w_q: float):
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the indices (or an unused output)
        n, d, layout = _channels_layout(z)
        codebook = F.linear(frozen, weight, bias)  # W(C) (no graph: Function.forward runs without grad)
        idx, _, scratch, (flag, cnt, cand, maxc) = _nearest_code_exact(z, codebook, (n, d, layout), resolve=False)
        plan = _plan(("vq", n, d, w_z, w_q), lambda: _VQPlan(n, d, w_z, w_q))
        dev = z.device
        z_q = torch.empty_like(z)
        part = _workspace(("vq_fwd", plan.nprog), dev, lambda: torch.empty(plan.nprog, dtype=torch.float32, device=dev))
        loss = torch.empty((), dtype=torch.float32, device=dev)  # (not a view of part: the caller may modify it)
        launch("nearest_code.vq_fwd", _vq_forward_kernel, (plan.nprog,), z, codebook, idx, flag, cnt, cand, z_q,
               part, scratch, loss, n, codebook.shape[0], d, *layout, plan.loss_scale, **plan.fwd_meta)
        ctx.save_for_backward(z, idx, codebook, frozen, scratch)
        ctx.meta = (w_z, w_q, n, d, layout, plan)
        indices = idx.view(z.shape[:1] + z.shape[2:])
        ctx.mark_non_differentiable(indices)
        return z_q, indices, loss

    @staticmethod
    def backward(ctx, grad_zq, grad_idx, grad_loss):
        z, idx, codebook, frozen, scratch = ctx.saved_tensors
        w_z, w_q, n, d, layout, plan = ctx.meta
        need_z, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        if grad_loss is None and not need_z:  # W and b get gradients through the loss only: zero
            return (None, None, torch.zeros(d, d, dtype=torch.float32, device=z.device) if need_w else None,
                    torch.zeros(d, dtype=torch.float32, device=z.device) if need_b else None, None, None)
        dev = z.device
        nprog, block_d = plan.nprog, plan.block_d
        has_gout = grad_zq is not None
        if has_gout and (grad_zq.dtype != torch.float32 or not grad_zq.is_contiguous()):
            grad_zq = grad_zq.float().contiguous()
        gz = torch.empty_like(z) if need_z else z
        gw = g = p = db = partb = z
        if need_w or need_b:  # G and P of dW = G^T P, db's per-program partials (consumed on this stream)
            g, p, partb = _workspace(("vq_bwd", n, d, nprog, block_d), dev, lambda: (
                torch.empty(n, d, dtype=torch.float32, device=dev), torch.empty(n, d, dtype=torch.float32, device=dev),
                torch.empty(nprog, block_d, dtype=torch.float32, device=dev)))
        if need_b:
            db = torch.empty(d, dtype=torch.float32, device=dev)
        launch("nearest_code.vq_bwd", _vq_backward_kernel, (nprog,), z, codebook, frozen, idx,
               grad_zq if has_gout else z, grad_loss if grad_loss is not None else z, gz, g, p, partb, scratch, db,
               n, d, *layout, frozen.stride(0), -2.0 * w_z / max(n * d, 1), 2.0 * w_q / max(n * d, 1),
               NEED_Z=need_z, NEED_W=need_w, NEED_B=need_b, HAS_GOUT=has_gout, HAS_GLOSS=grad_loss is not None,
               **plan.bwd_meta)
        if need_w:
            gw = torch.mm(g.t(), p)
        return gz if need_z else None, None, gw if need_w else None, db if need_b else None, None, None


def quantize_projected(z: torch.Tensor, frozen: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       w_z: float, w_q: float, *, backend: str | None = None):
    """SimVQ's quantizer step: codebook ``W(C) = frozen @ weight.T + bias``, the exact nearest code of every vector
    of ``z``, the loss ``w_z ||sg(q) - z||^2 + w_q ||q - sg(z)||^2`` (means) and the straight-through output.

    Args:
        z: ``[B, D, *spatial]`` (channels second), float32.
        frozen: ``[K, D]`` codes ``C`` (no gradient); weight ``[D, D]``, bias ``[D]`` or None: the linear layer ``W``.
        w_z, w_q: weights of the commitment and codebook terms.
        backend: ``"triton"``, ``"reference"`` or None (choose per ``hfzoo.ops.dispatch``).

    Returns:
        ``(z_q [B, D, *spatial], indices int64 [B, *spatial], loss)``. Gradients: ``z`` gets ``d z_q`` (straight
        through) plus the commitment term's; ``weight`` and ``bias`` get the codebook term's through the picked
        codes only. ``frozen`` gets none. Indices are the exact argmin over ``F.linear(frozen, weight, bias)``
        (the codebook as computed in float32; ties to the lowest index).
    """
    op = "quantize_projected"
    check_tensor(op, "z", z, dims=(2, None), dtypes=KERNEL_DTYPES)
    check_tensor(op, "frozen", frozen, dims=2, dtypes=KERNEL_DTYPES, device=z.device)
    check_tensor(op, "weight", weight, dims=2, dtypes=KERNEL_DTYPES, device=z.device)
    d = z.shape[1]
    if frozen.shape[1] != d or weight.shape != (d, d) or (bias is not None and bias.shape != (d,)):
        raise ValueError(f"{op}: expected frozen [K, {d}], weight [{d}, {d}], bias [{d}]; got "
                         f"{tuple(frozen.shape)}, {tuple(weight.shape)}, "
                         f"{None if bias is None else tuple(bias.shape)}")
    if frozen.shape[0] == 0:
        raise ValueError(f"{op}: the codebook must hold at least one code")
    fp32 = all(t.dtype == torch.float32 for t in (z, frozen, weight) + ((bias,) if bias is not None else ()))
    problem = None if fp32 and d <= 128 else "the kernels take float32 inputs with D <= 128"
    if (pick_backend(op, (z, frozen, weight), backend, problem) == "reference" or frozen.requires_grad
            or z.numel() == 0):
        return quantize_projected_reference(z, frozen, weight, bias, w_z, w_q)
    _check_codebook_size(frozen.shape[0], frozen.shape[0] * d)
    return _ProjectedVQ.apply(z.contiguous(), frozen.contiguous(), weight.contiguous(),
                              bias.contiguous() if bias is not None else None, float(w_z), float(w_q))
