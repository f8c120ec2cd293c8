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

import torch

from .launch import bucket, launch, persistent_grid, settings
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
#   0. ``_prepare_codes_kernel``: the codes' squared norms, their largest finite value and (for bf16x3) the
#      high/low bf16 split of the codebook, in one pass;
#   1. candidates: the scores pass on fast tensor-core dots (tf32, or bf16x3 = three bf16 products of a high/low
#      split of both operands; z is split in the kernel) keeping per row the best score b1, its index and the
#      runner-up b2. Its epilogue computes a rigorous bound B_i on |approximate score - exact score| for the
#      row (``_dot_error``) and flags the row unless b2 > b1 + 2 B_i: the exact minimum can only be a code whose
#      approximate score is within 2 B_i of b1, and when the runner-up is not, the winner is certain;
#   2. ``_compact_kernel`` lists the flagged rows (one program, in order) and their count, on the device;
#   3. ``_collect_kernel`` recomputes the approximate scores of listed rows and records every code within
#      b1 + 2 B_i (up to MAXC per row; the count goes on past MAXC);
#   4. ``_resolve_kernel`` scores the recorded codes in fp64 (products of fp32 values are exact in fp64, sums
#      round at about D * 1e-16 of the terms' magnitudes) and takes the smallest, lowest index first; rows with
#      more than MAXC candidates (many exact ties) or without any (NaN vectors) are scanned against the whole
#      codebook in fp64.
# Nothing waits for the host: the number of flagged rows stays on the device, later programs check it.


@triton.jit
def _prepare_codes_kernel(C, CN, HI, LO, CMAX2, K, D, stride_c,
                          SPLIT: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    codes = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
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
    finite = kmask & (acc == acc) & (acc < float("inf"))  # codes with inf/NaN never win: leave them out
    tl.atomic_max(CMAX2, tl.max(tl.where(finite, acc, 0.0), axis=0))


@triton.jit
def _dot_tile(Z, C, C2, z, z2, rows, rmask, k0, K, D, stride_z, stride_c,
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
            zt = tl.load(Z + rows[:, None].to(tl.int64) * stride_z + dd[None, :],
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
def _score_tile(Z, C, C2, CN, z, z2, rows, rmask, k0, K, D, stride_z, stride_c,
                BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_D: tl.constexpr, SPLIT: tl.constexpr,
                PRECISION: tl.constexpr, EVEN_K: tl.constexpr, EVEN_D: tl.constexpr):
    """Scores ``||c||^2 - 2 <z, c>`` of one BLOCK_M x BLOCK_K tile (fp32; codes past K get +inf)."""
    dot = _dot_tile(Z, C, C2, z, z2, rows, rmask, k0, K, D, stride_z, stride_c,
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
def _load_rows(Z, rows, rmask, D, stride_z, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr):
    """The first BLOCK_D columns of the rows (all of them when SINGLE_D); for SPLIT their bf16 high/low parts."""
    dcols = tl.arange(0, BLOCK_D)
    z = tl.load(Z + rows[:, None].to(tl.int64) * stride_z + dcols[None, :],
                mask=rmask[:, None] & (dcols[None, :] < D), other=0.0)
    if SPLIT:
        hi = z.to(tl.bfloat16)
        lo = (z - hi.to(tl.float32)).to(tl.bfloat16)
    else:
        hi = z
        lo = z
    return hi, lo


@triton.jit
def _nearest_code_kernel(Z, C, C2, CN, IDX, BEST, THR, FLAG, CMAX2, N, K, D, stride_z, stride_c,
                         N_BUCKET, K_BUCKET, dot_error, norm_error, bound_scale,
                         BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                         SINGLE_D: tl.constexpr, SPLIT: tl.constexpr, TOP2: tl.constexpr,
                         PRECISION: tl.constexpr, EVEN_K: tl.constexpr, EVEN_D: tl.constexpr,
                         OVERLAP: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    # with SINGLE_D the whole row fits one tile: load z once, reuse it against every codebook tile
    z, z2 = _load_rows(Z, rows, rmask, D, stride_z, BLOCK_D, SPLIT)
    zsq = tl.zeros([BLOCK_M], dtype=tl.float32)  # |z|^2 for the bound (TOP2), before the loop: no live pointers
    if TOP2:
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            zf = tl.load(Z + rows[:, None].to(tl.int64) * stride_z + dd[None, :],
                         mask=rmask[:, None] & (dd[None, :] < D), other=0.0).to(tl.float32)
            zsq += tl.sum(zf * zf, axis=1)
    b1 = tl.full([BLOCK_M, BLOCK_K], float("inf"), dtype=tl.float32)  # per slot: smallest score so far
    b2 = tl.full([BLOCK_M, BLOCK_K], float("inf"), dtype=tl.float32)  # per slot: runner-up (TOP2 only)
    t1 = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)  # per slot: tile start of b1 (a float: one FSEL per score)
    if OVERLAP:
        # the next tile's dot is issued before this tile's scores are reduced, so the tensor cores can run
        # while the threads compare (when the compiler keeps the dot in flight across the iteration)
        dot = _dot_tile(Z, C, C2, z, z2, rows, rmask, 0, K, D, stride_z, stride_c,
                        BLOCK_K, BLOCK_D, SINGLE_D, SPLIT, PRECISION, EVEN_K, EVEN_D)
        for k0 in range(BLOCK_K, K, BLOCK_K):
            nxt = _dot_tile(Z, C, C2, z, z2, rows, rmask, k0, K, D, stride_z, stride_c,
                            BLOCK_K, BLOCK_D, SINGLE_D, SPLIT, PRECISION, EVEN_K, EVEN_D)
            score = _code_norms(CN, k0 - BLOCK_K, K, BLOCK_K, EVEN_K)[None, :] - 2.0 * dot
            b1, b2, t1 = _keep_minima(score, k0 - BLOCK_K, b1, b2, t1, TOP2)
            dot = nxt
        last = (K - 1) // BLOCK_K * BLOCK_K
        score = _code_norms(CN, last, K, BLOCK_K, EVEN_K)[None, :] - 2.0 * dot
        b1, b2, t1 = _keep_minima(score, last, b1, b2, t1, TOP2)
    else:
        for k0 in range(0, K, BLOCK_K):
            score, codes, kmask = _score_tile(Z, C, C2, CN, z, z2, rows, rmask, k0, K, D, stride_z, stride_c,
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
        c2max = tl.load(CMAX2) * (1.0 + norm_error)
        dots = 2.0 * tl.sqrt(zsq * (1.0 + norm_error)) * tl.sqrt(c2max)
        bound = bound_scale * (dot_error * dots + norm_error * c2max + 2.0 ** -22 * (c2max + dots)) + 2.0 ** -100
        thr = best + 2.0 * bound
        tl.store(THR + rows, thr, mask=rmask)
        tl.store(FLAG + rows, (~(second > thr)).to(tl.int32), mask=rmask)  # NaN (a NaN vector): flagged


@triton.jit
def _compact_kernel(FLAG, ROWS, COUNT, N, BLOCK: tl.constexpr):
    # one program: ROWS[0:count] = flagged rows in order, COUNT = count
    total = tl.zeros([1], dtype=tl.int32)
    for start in range(0, N, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        f = tl.load(FLAG + rows, mask=rows < N, other=0)
        pos = tl.sum(total, axis=0) + tl.cumsum(f, axis=0) - 1
        tl.store(ROWS + pos, rows, mask=f != 0)
        total += tl.sum(f, axis=0)
    tl.store(COUNT + tl.arange(0, 1), total)


@triton.jit
def _collect_kernel(Z, C, C2, CN, ROWS, COUNT, THR, CNT, CAND, K, D, stride_z, stride_c, codes_per_part,
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
        z, z2 = _load_rows(Z, rows, smask, D, stride_z, BLOCK_D, SPLIT)
        start = part * codes_per_part
        end = tl.minimum(start + codes_per_part, K)
        for k0 in range(start, end, BLOCK_K):
            score, codes, kmask = _score_tile(Z, C, C2, CN, z, z2, rows, smask, k0, end, D, stride_z, stride_c,
                                              BLOCK_K, BLOCK_D, SINGLE_D, SPLIT, PRECISION, False, EVEN_D)
            qual = ((score <= thr[:, None]) & kmask[None, :]).to(tl.int32)  # NaN thresholds or scores: never
            found = tl.sum(qual, axis=1)
            if tl.sum(found, axis=0) > 0:  # most tiles hold no candidate: skip the list work there
                base = tl.atomic_add(CNT + slots, found, mask=found > 0, sem="relaxed")  # room in the row's list
                pos = base[:, None] + tl.cumsum(qual, axis=1) - 1
                tl.store(CAND + slots[:, None].to(tl.int64) * MAXC + pos, codes[None, :] + 0 * pos,
                         mask=(qual != 0) & (pos < MAXC))


@triton.jit
def _exact_scores(Z, C, row, codes, cmask, D, stride_z, stride_c, BLOCK_D: tl.constexpr):
    """fp64 scores ``||c||^2 - 2 <z, c>`` of one row against the codes listed in ``codes`` (+inf where masked/NaN)."""
    acc_cc = tl.zeros(codes.shape, dtype=tl.float64)
    acc_zc = tl.zeros(codes.shape, dtype=tl.float64)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        dm = dd < D
        zz = tl.load(Z + row.to(tl.int64) * stride_z + dd, mask=dm, other=0.0).to(tl.float64)
        cc = tl.load(C + codes[:, None].to(tl.int64) * stride_c + dd[None, :],
                     mask=cmask[:, None] & dm[None, :], other=0.0).to(tl.float64)
        acc_cc += tl.sum(cc * cc, axis=1)
        acc_zc += tl.sum(cc * zz[None, :], axis=1)
    s = acc_cc - 2.0 * acc_zc
    return tl.where(cmask & (s == s), s, float("inf"))


@triton.jit
def _resolve_kernel(Z, C, ROWS, COUNT, CNT, CAND, IDX, BEST, K, D, stride_z, stride_c,
                    MAXC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    # Persistent: program p settles listed rows p, p + programs, ...
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    count = tl.load(COUNT)
    for r in range(pid, count, nprog):
        row = tl.load(ROWS + r)
        cnt = tl.load(CNT + r)
        if (cnt >= 1) & (cnt <= MAXC):
            j = tl.arange(0, BLOCK_C)
            jm = j < cnt
            codes = tl.load(CAND + r * MAXC + j, mask=jm, other=0)  # r * MAXC < 2^31 (checked on the host)
            s = _exact_scores(Z, C, row, codes, jm, D, stride_z, stride_c, BLOCK_D)
            best = tl.min(s, axis=0)
            idx = tl.min(tl.where(s == best, codes, K), axis=0)
        else:  # too many candidates (exact ties) or none (a NaN vector): scan the whole codebook
            bv = tl.full([BLOCK_K], float("inf"), dtype=tl.float64)
            tv = tl.zeros([BLOCK_K], dtype=tl.int32)
            for k0 in range(0, K, BLOCK_K):
                codes = k0 + tl.arange(0, BLOCK_K)
                s = _exact_scores(Z, C, row, codes, codes < K, D, stride_z, stride_c, BLOCK_D)
                lt = s < bv
                bv = tl.where(lt, s, bv)
                tv = tl.where(lt, k0, tv)
            best = tl.min(bv, axis=0)
            idx = tl.min(tl.where(bv == best, tv + tl.arange(0, BLOCK_K), K), axis=0)
        tl.store(IDX + row, idx.to(tl.int64))
        tl.store(BEST + row, best.to(tl.float32))


# Host-side arithmetic in plain Python: triton.cdiv / next_power_of_2 are jit functions (microseconds per call),
# and this module launches up to six kernels per call.
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _block_d(d: int) -> int:
    return max(16, min(128, _pow2(d)))  # wider rows loop over D in chunks


def _scores_pass(z, c, c2, cn, precision: str, name: str, top2=None):
    """Launch the scores pass: ``(idx int64 [N], best fp32 [N])``; with ``top2 = (thr, flag, cmax2, dot_error,
    norm_error, bound_scale)`` it also writes each row's threshold and unsettled flag."""
    n, d = z.shape
    k = c.shape[0]
    idx = torch.empty(n, dtype=torch.int64, device=z.device)
    best = torch.empty(n, dtype=torch.float32, device=z.device)
    thr, flag, cmax2, dot_error, norm_error, bound_scale = top2 or (best, best, best, 0.0, 0.0, 0.0)
    block_d = _block_d(d)
    configs = [{"OVERLAP": False, **c} for c in settings(name)["configs"]]
    if d > block_d:  # wide rows pipeline z chunks too: keep the configs whose stages fit shared memory (227 KB)
        configs = [c for c in configs
                   if c.get("num_stages", 2) * (c["BLOCK_M"] + c["BLOCK_K"]) * block_d * z.element_size() <= 200 << 10]
        configs = configs or [{"BLOCK_M": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2}]
    split = c2 is not None
    launch("nearest_code.fwd", _nearest_code_kernel, lambda meta: (_cdiv(n, meta["BLOCK_M"]),),
           z, c, c2 if split else c, cn, idx, best, thr, flag, cmax2, n, k, d, z.stride(0), c.stride(0),
           bucket(n, lo=1), bucket(k, lo=1), dot_error, norm_error, bound_scale,
           BLOCK_D=block_d, SINGLE_D=d <= block_d, SPLIT=split, TOP2=top2 is not None, PRECISION=precision,
           EVEN_K=k % 128 == 0, EVEN_D=d == block_d,  # every BLOCK_K in the lists divides 128
           configs=configs, key=["N_BUCKET", "K_BUCKET", "D", "SPLIT", "TOP2", "PRECISION", "EVEN_K"])
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


def _exact_plan(z: torch.Tensor, conf: dict):
    """Which candidates pass the exact mode runs for these inputs: ``"bf16x3"``, ``"tf32"`` or ``"16bit"``."""
    if z.dtype != torch.float32:
        return "16bit"
    return "bf16x3" if conf["candidates"] == "bf16x3" and z.shape[1] <= 128 else "tf32"


def _exact_first_pass(z: torch.Tensor, codebook: torch.Tensor, conf: dict | None = None):
    """Steps 0-1 of the exact mode: ``(idx, best, thr, flag, cn, hi, lo, counters)`` (see the comment above)."""
    n, d = z.shape
    k = codebook.shape[0]
    conf = conf or settings("nearest_code.exact")
    candidates = _exact_plan(z, conf)
    counters = torch.zeros(n + 2, dtype=torch.int32, device=z.device)  # per-row list counts, count, max |c|^2
    cmax2 = counters[n + 1:].view(torch.float32)
    cn = torch.empty(k, dtype=torch.float32, device=z.device)
    split = candidates == "bf16x3"
    hi = torch.empty(k, d, dtype=torch.bfloat16, device=z.device) if split else codebook
    lo = torch.empty(k, d, dtype=torch.bfloat16, device=z.device) if split else None
    pconf = settings("nearest_code.prepare")
    launch("nearest_code.prepare", _prepare_codes_kernel, (_cdiv(k, pconf["BLOCK_K"]),),
           codebook, cn, hi, lo if split else hi, cmax2, k, d, codebook.stride(0),
           SPLIT=split, BLOCK_K=pconf["BLOCK_K"], BLOCK_D=min(128, _block_d(d)), num_warps=pconf["num_warps"])
    thr = torch.empty(n, dtype=torch.float32, device=z.device)
    flag = torch.empty(n, dtype=torch.int32, device=z.device)
    idx, best = _scores_pass(z, hi, lo, cn, "tf32", "nearest_code.candidates",
                             (thr, flag, cmax2, _dot_error(candidates, d), (d + 2) * 2.0 ** -23,
                              float(conf["bound_scale"])))
    return idx, best, thr, flag, cn, hi, lo, counters


def _nearest_code_exact(z: torch.Tensor, codebook: torch.Tensor):
    n, d = z.shape
    k = codebook.shape[0]
    conf = settings("nearest_code.exact")
    maxc = int(conf["max_candidates"])
    if n * maxc >= 2 ** 31:
        raise ValueError(f"nearest_code: {n} vectors exceed the exact mode's candidate list (int32 offsets); "
                         f"split the batch")
    idx, best, thr, flag, cn, hi, lo, counters = _exact_first_pass(z, codebook, conf)
    cnt, count = counters[:n], counters[n:n + 1]
    rows = torch.empty(n, dtype=torch.int32, device=z.device)
    kconf = settings("nearest_code.compact")
    launch("nearest_code.compact", _compact_kernel, (1,), flag, rows, count, n, BLOCK=kconf["BLOCK"],
           num_warps=kconf["num_warps"])
    cand = torch.empty(n * maxc, dtype=torch.int32, device=z.device)
    cconf = settings("nearest_code.collect")
    bm, bk = cconf["BLOCK_M"], cconf["BLOCK_K"]
    parts = max(1, min(int(cconf["codebook_parts"]), _cdiv(k, 2 * bk)))
    per_part = _cdiv(_cdiv(k, parts), bk) * bk
    block_d = _block_d(d)
    launch("nearest_code.collect", _collect_kernel, (_cdiv(n, bm), _cdiv(k, per_part)),
           z, hi, lo if lo is not None else hi, cn, rows, count, thr, cnt, cand, k, d, z.stride(0), hi.stride(0),
           per_part, MAXC=maxc, BLOCK_D=block_d, SINGLE_D=d <= block_d, SPLIT=lo is not None, PRECISION="tf32",
           EVEN_D=d == block_d,
           configs=[{kk: v for kk, v in cconf.items() if kk != "codebook_parts"}])
    rconf = settings("nearest_code.resolve")
    grid = (persistent_grid(n, z.device, rconf["programs_per_sm"]),)
    launch("nearest_code.resolve", _resolve_kernel, grid,
           z, codebook, rows, count, cnt, cand, idx, best, k, d, z.stride(0), codebook.stride(0),
           MAXC=maxc, BLOCK_C=_pow2(maxc), BLOCK_K=rconf["BLOCK_K"], BLOCK_D=block_d,
           num_warps=rconf["num_warps"])
    return idx, best


def _nearest_code_triton(z: torch.Tensor, codebook: torch.Tensor, precision: str):
    z = z.contiguous()
    codebook = codebook.contiguous()
    if codebook.shape[0] >= 2 ** 24:
        raise ValueError(f"nearest_code: {codebook.shape[0]} codes exceed the kernels' limit of 2^24; "
                         f"use backend='reference'")
    if codebook.numel() >= 2 ** 31:
        raise ValueError(f"nearest_code: a codebook of {codebook.numel()} values exceeds the kernels' 32-bit "
                         f"offsets (2^31); use backend='reference'")
    if precision == "exact":
        return _nearest_code_exact(z, codebook)
    cn = code_norms(codebook).contiguous()
    name = "nearest_code.fwd_fp32" if z.dtype == torch.float32 else "nearest_code.fwd_16bit"
    return _scores_pass(z, codebook, None, cn, precision, name)


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
