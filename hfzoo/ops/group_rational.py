"""Group-rational activation of KAT's GR-KAN layers: ``F(x) = P(x) / Q(x)`` with coefficients per channel group.

``P(x) = a_0 + a_1 x + ... + a_5 x^5`` (numerator degree 5) and a degree-4 denominator ``Q`` with ``Q >= 1``.
The last dimension (``D`` channels) is cut into ``G`` contiguous groups of ``D // G`` channels; every channel
of group ``g`` uses the coefficients of row ``g``. A coefficient tensor may also have a single row shared by
all groups: the released KAT checkpoints store the numerator as ``(1, 6)`` and the denominator as ``(G, 4)``.

Two denominators, chosen with ``denominator=``:

* ``"released"`` (default): ``Q = 1 + |b_0||x| + |b_1||x|^2 + |b_2||x|^3 + |b_3||x|^4``. This is what the
  released CUDA and Triton kernels (rational_kat_cu) compute and what the published KAT checkpoints were
  trained with, so converted checkpoints reproduce their outputs only under this form. As in those kernels,
  the derivative of ``|v|`` at ``v = 0`` is taken as ``+1`` (for ``x`` and for ``b``): with the identity
  init (``b = 0``) the denominator coefficients still receive gradients, which a plain ``abs()`` would zero.
* ``"paper"``: ``Q = 1 + |b_0 x + b_1 x^2 + b_2 x^3 + b_3 x^4|`` as written in the KAT paper (and used by
  its fitting script). The ``gelu`` entry of ``RATIONAL_INITS`` was fitted under this form and reproduces
  GELU only here; under ``"released"`` it gives ``F(3) ~ 1.53`` instead of ``~3.0``.

Everything is computed in fp32 whatever the dtypes of ``x`` and the coefficients; the output has ``x``'s
dtype and the coefficient gradients have the coefficients' dtypes.

Ladder: ``group_rational_reference`` (readable math, autograd) -> Triton forward / backward kernels ->
``GroupRationalFunction`` -> ``group_rational`` (public op: checks its arguments with ``validate.py``, dispatches
per call, see ``dispatch.py``; launch settings ``group_rational.*`` in ``launch.py``).
The backward kernel keeps the ten coefficient-gradient sums of its tile in registers over all the rows it
visits; how they are then summed over programs is ``launch.DEFAULTS["group_rational.coef_grad"]["reduce"]``:
``"kernel"`` (default: one partial per program and chunk of columns, summed by a second small kernel),
``"last_program"`` (partials per program and group, summed in a fixed order by the last program to finish, found with
an atomic ticket: one launch) -- both without atomic adds on the gradients, so they are the same bits on every run --
or ``"atomic"`` (each program atomically adds its per-group sums: FlashKAT's scheme, kept for comparison). On the
H200 the second kernel is the fastest on the GPU (benchmarks/NOTES.md). With ``y_dtype`` the backward also writes
F(x) (``rational_linear``'s weight gradient needs it).
"""

from __future__ import annotations

import torch

from .dispatch import apply_function
from .launch import compile_options, launch, settings, settings_token, sm_count
from .triton_shim import tl, triton
from .validate import KERNEL_DTYPES, REFERENCE_DTYPES, check_tensor, kernel_dtype_problem, pick_backend

NUM_NUMERATOR = 6     # a_0 .. a_5
NUM_DENOMINATOR = 4   # b_0 .. b_3 (multiplying x^1 .. x^4)
DENOMINATORS = ("released", "paper")

# Initial coefficients (numerator a_0..a_5, denominator b_0..b_3), least-squares fits of the named function
# on [-3, 3] published with the KAT reference code. Checked in tests/test_group_rational.py:
# identity is exact; swish matches x * sigmoid(x) to ~1e-6 on [-3, 3] under either denominator form;
# gelu matches GELU to ~3e-3 under the "paper" form only.
RATIONAL_INITS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "identity": ((0.0, 1.0, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),
    "swish": ((3.054879741161051e-07, 0.5000007853744493, 0.24999783422824703, 0.05326628273219478,
               0.005803034571292244, 0.0002751961022402342),
              (-4.111554955950634e-06, 0.10652899335007572, -1.2690007399796238e-06, 0.0005502331264140556)),
    "gelu": ((-0.00153969, 0.51692871, 0.44075827, 0.0972553, -0.00884418, -0.00378675),
             (-0.14171056, -0.06481231, -0.0444695, 0.01283776)),
}


def _sign_pos(v: torch.Tensor) -> torch.Tensor:
    """sign(v) with sign(0) = +1 (the convention of the released kernels)."""
    return torch.where(v < 0, -1.0, 1.0).to(v.dtype)


def _abs_pos(v: torch.Tensor) -> torch.Tensor:
    """|v| whose autograd derivative at 0 is +1 instead of 0."""
    return v * _sign_pos(v).detach()


def group_rational_reference(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                             num_groups: int, denominator_form: str = "released",
                             out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Plain PyTorch definition (differentiable through autograd); computes in fp32, returns ``out_dtype``
    (default ``x.dtype``)."""
    D = x.shape[-1]
    xf = x.float().reshape(*x.shape[:-1], num_groups, D // num_groups)   # [..., G, D/G]
    a = numerator.float().expand(num_groups, NUM_NUMERATOR)              # [G, 6]
    b = denominator.float().expand(num_groups, NUM_DENOMINATOR)          # [G, 4]
    a = a[:, :, None]                                                    # [G, 6, 1]: broadcasts over D/G
    b = b[:, :, None]
    p = a[:, 5]
    for i in range(4, -1, -1):                                           # Horner
        p = p * xf + a[:, i]
    if denominator_form == "released":
        ax = _abs_pos(xf)
        bb = _abs_pos(b)
        q = bb[:, 3]
        for i in range(2, -1, -1):
            q = q * ax + bb[:, i]
        q = 1.0 + q * ax
    else:
        t = b[:, 3]
        for i in range(2, -1, -1):
            t = t * xf + b[:, i]
        q = 1.0 + _abs_pos(t * xf)
    return (p / q).reshape(x.shape).to(out_dtype or x.dtype)


# ----------------------------------------------------------------------------------------------------
# Triton kernels. x is viewed as [M, D] (rows = flattened leading dims) and its columns as D // VEC chunks of
# VEC adjacent columns, VEC a power of two dividing the group size (so a chunk never straddles two groups) and
# at most one 16-byte load wide. A tile is [NCH chunks, BLOCK_M rows, VEC columns]: each thread holds whole
# chunks, so the ten coefficients are loaded once per chunk (one register each, not one per column) and sums
# over a chunk stay inside a thread. Chunks come first because Triton lays threads out along the leading axis
# among those of equal contiguity: this way a warp reads 32 adjacent chunks of one row (512 contiguous bytes in
# bf16) instead of one 16-byte chunk from each of 32 rows. A_STRIDE / B_STRIDE are 0 when one coefficient row is
# shared by all groups.


@triton.jit
def _chunk_coefficients(A, B, chunk, kmask, VEC: tl.constexpr, DG, A_STRIDE, B_STRIDE):
    """The ten coefficients of each chunk's group as [NCH, 1, 1] fp32 tensors."""
    g = (chunk * VEC) // DG
    a0 = tl.load(A + g * A_STRIDE + 0, mask=kmask, other=0.0).to(tl.float32)[:, None, None]
    a1 = tl.load(A + g * A_STRIDE + 1, mask=kmask, other=0.0).to(tl.float32)[:, None, None]
    a2 = tl.load(A + g * A_STRIDE + 2, mask=kmask, other=0.0).to(tl.float32)[:, None, None]
    a3 = tl.load(A + g * A_STRIDE + 3, mask=kmask, other=0.0).to(tl.float32)[:, None, None]
    a4 = tl.load(A + g * A_STRIDE + 4, mask=kmask, other=0.0).to(tl.float32)[:, None, None]
    a5 = tl.load(A + g * A_STRIDE + 5, mask=kmask, other=0.0).to(tl.float32)[:, None, None]
    b0 = tl.load(B + g * B_STRIDE + 0, mask=kmask, other=0.0).to(tl.float32)[:, None, None]
    b1 = tl.load(B + g * B_STRIDE + 1, mask=kmask, other=0.0).to(tl.float32)[:, None, None]
    b2 = tl.load(B + g * B_STRIDE + 2, mask=kmask, other=0.0).to(tl.float32)[:, None, None]
    b3 = tl.load(B + g * B_STRIDE + 3, mask=kmask, other=0.0).to(tl.float32)[:, None, None]
    return a0, a1, a2, a3, a4, a5, b0, b1, b2, b3


@triton.jit
def _group_rational_fwd_kernel(X, A, B, Y, M, D, DG, A_STRIDE, B_STRIDE, PAPER: tl.constexpr,
                               BLOCK_M: tl.constexpr, NCH: tl.constexpr, VEC: tl.constexpr):
    chunk = tl.program_id(1) * NCH + tl.arange(0, NCH)
    kmask = chunk < D // VEC
    a0, a1, a2, a3, a4, a5, c0, c1, c2, c3 = _chunk_coefficients(A, B, chunk, kmask, VEC, DG, A_STRIDE, B_STRIDE)
    if not PAPER:
        c0, c1, c2, c3 = tl.abs(c0), tl.abs(c1), tl.abs(c2), tl.abs(c3)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = chunk[:, None, None] * VEC + tl.arange(0, VEC)[None, None, :]           # [NCH, 1, VEC]
    mask = (rows < M)[None, :, None] & kmask[:, None, None]
    offs = rows[None, :, None].to(tl.int64) * D + cols
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    p = ((((a5 * x + a4) * x + a3) * x + a2) * x + a1) * x + a0
    if PAPER:
        t = (((c3 * x + c2) * x + c1) * x + c0) * x
        q = 1.0 + tl.abs(t)
    else:
        w = tl.abs(x)
        q = 1.0 + (((c3 * w + c2) * w + c1) * w + c0) * w
    tl.store(Y + offs, (p / q).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _group_rational_bwd_kernel(X, DY, A, B, DX, PART, Y, DA, DB, COUNTER, M, D, DG, G, A_STRIDE, B_STRIDE,
                               rows_per_program, PAPER: tl.constexpr, BLOCK_M: tl.constexpr, NCH: tl.constexpr,
                               VEC: tl.constexpr, PREFETCH: tl.constexpr, STORE_Y: tl.constexpr, REDUCE: tl.constexpr,
                               GB: tl.constexpr, GMAX: tl.constexpr, BLOCK_P: tl.constexpr, RB: tl.constexpr):
    # Program (i, j) walks rows [i * rows_per_program, (i + 1) * rows_per_program) of chunk block j. Per element:
    #   dx = gp * (P' - y Q'),  gp = dy / Q (= dL/dP),  gq = -gp y (= dL/dQ),  y = P / Q
    # and the ten coefficient-gradient terms gp x^k (k = 0..5) and gq dQ/dc_k (k = 0..3). Those are summed over
    # the chunk inside the thread and accumulated in ten [NCH, BLOCK_M] register tiles, reduced over rows once at
    # the end: PART[i, k, chunk]. The coefficient-gradient kernel below sums PART over programs and groups.
    # Released form: c_k = |b_k|, Q = 1 + sum c_k |x|^(k+1) (the chain through |b| is taken there too).
    # Paper form: Q = 1 + |T|, T = sum b_k x^(k+1). Both: sign(0) = +1.
    # With PREFETCH, the next row block's x and dy are loaded before the current one is computed. With STORE_Y, y =
    # F(x) is written to Y as well (rational_linear's backward needs it for the weight gradient: no extra pass).
    pid_m = tl.program_id(0)
    NC = D // VEC
    chunk = tl.program_id(1) * NCH + tl.arange(0, NCH)
    kmask = chunk < NC
    a0, a1, a2, a3, a4, a5, c0, c1, c2, c3 = _chunk_coefficients(A, B, chunk, kmask, VEC, DG, A_STRIDE, B_STRIDE)
    if not PAPER:
        c0, c1, c2, c3 = tl.abs(c0), tl.abs(c1), tl.abs(c2), tl.abs(c3)
    # derivative coefficients, once per chunk: P' = sum k a_k x^(k-1); d(w H(w))/dw with H = sum c_k w^k
    e1, e2, e3, e4 = 2.0 * a2, 3.0 * a3, 4.0 * a4, 5.0 * a5
    f1, f2, f3 = 2.0 * c1, 3.0 * c2, 4.0 * c3
    cols = chunk[:, None, None] * VEC + tl.arange(0, VEC)[None, None, :]           # [NCH, 1, VEC]
    cmask = kmask[:, None, None]
    ga0 = tl.zeros([NCH, BLOCK_M], dtype=tl.float32)
    ga1 = tl.zeros([NCH, BLOCK_M], dtype=tl.float32)
    ga2 = tl.zeros([NCH, BLOCK_M], dtype=tl.float32)
    ga3 = tl.zeros([NCH, BLOCK_M], dtype=tl.float32)
    ga4 = tl.zeros([NCH, BLOCK_M], dtype=tl.float32)
    ga5 = tl.zeros([NCH, BLOCK_M], dtype=tl.float32)
    gc0 = tl.zeros([NCH, BLOCK_M], dtype=tl.float32)
    gc1 = tl.zeros([NCH, BLOCK_M], dtype=tl.float32)
    gc2 = tl.zeros([NCH, BLOCK_M], dtype=tl.float32)
    gc3 = tl.zeros([NCH, BLOCK_M], dtype=tl.float32)
    start = pid_m * rows_per_program
    end = tl.minimum(start + rows_per_program, M)
    if PREFETCH:
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < end)[None, :, None] & cmask
        offs = rows[None, :, None].to(tl.int64) * D + cols
        x_next = tl.load(X + offs, mask=mask, other=0.0)
        dy_next = tl.load(DY + offs, mask=mask, other=0.0)
    for r0 in range(start, start + rows_per_program, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        mask = (rows < end)[None, :, None] & cmask
        offs = rows[None, :, None].to(tl.int64) * D + cols
        if PREFETCH:
            x = x_next.to(tl.float32)
            dy = dy_next.to(tl.float32)
            nmask = (rows + BLOCK_M < end)[None, :, None] & cmask
            x_next = tl.load(X + offs + BLOCK_M * D, mask=nmask, other=0.0)
            dy_next = tl.load(DY + offs + BLOCK_M * D, mask=nmask, other=0.0)
        else:
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)   # 0 outside: no contribution
        p = ((((a5 * x + a4) * x + a3) * x + a2) * x + a1) * x + a0
        dp = (((e4 * x + e3) * x + e2) * x + e1) * x + a1
        if PAPER:
            w = x
        else:
            w = tl.abs(x)
        t = (((c3 * w + c2) * w + c1) * w + c0) * w       # T(w)
        dt = ((f3 * w + f2) * w + f1) * w + c0             # T'(w)
        if PAPER:
            s = tl.where(t < 0, -1.0, 1.0)                 # dQ/dx = sign(T) T'(x), dQ/db_k = sign(T) x^(k+1)
            q = 1.0 + tl.abs(t)
        else:
            s = tl.where(x < 0, -1.0, 1.0)                 # dQ/dx = sign(x) T'(|x|), dQ/dc_k = |x|^(k+1)
            q = 1.0 + t
        rq = 1.0 / q
        y = p * rq
        gp = dy * rq
        tl.store(DX + offs, (gp * (dp - y * (s * dt))).to(DX.dtype.element_ty), mask=mask)
        if STORE_Y:
            tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
        gq = -gp * y
        if PAPER:
            gq = gq * s
        u = gp
        ga0 += tl.sum(u, axis=2)
        u = u * x
        ga1 += tl.sum(u, axis=2)
        u = u * x
        ga2 += tl.sum(u, axis=2)
        u = u * x
        ga3 += tl.sum(u, axis=2)
        u = u * x
        ga4 += tl.sum(u, axis=2)
        u = u * x
        ga5 += tl.sum(u, axis=2)
        v = gq * w
        gc0 += tl.sum(v, axis=2)
        v = v * w
        gc1 += tl.sum(v, axis=2)
        v = v * w
        gc2 += tl.sum(v, axis=2)
        v = v * w
        gc3 += tl.sum(v, axis=2)
    s0, s1, s2 = tl.sum(ga0, axis=1), tl.sum(ga1, axis=1), tl.sum(ga2, axis=1)
    s3, s4, s5 = tl.sum(ga3, axis=1), tl.sum(ga4, axis=1), tl.sum(ga5, axis=1)
    s6, s7, s8, s9 = tl.sum(gc0, axis=1), tl.sum(gc1, axis=1), tl.sum(gc2, axis=1), tl.sum(gc3, axis=1)
    if REDUCE == 0:   # per-program partials PART[i, k, chunk], summed by _group_rational_coef_grad_kernel
        base = PART + pid_m.to(tl.int64) * 10 * NC + chunk
        tl.store(base + 0 * NC, s0, mask=kmask)
        tl.store(base + 1 * NC, s1, mask=kmask)
        tl.store(base + 2 * NC, s2, mask=kmask)
        tl.store(base + 3 * NC, s3, mask=kmask)
        tl.store(base + 4 * NC, s4, mask=kmask)
        tl.store(base + 5 * NC, s5, mask=kmask)
        tl.store(base + 6 * NC, s6, mask=kmask)
        tl.store(base + 7 * NC, s7, mask=kmask)
        tl.store(base + 8 * NC, s8, mask=kmask)
        tl.store(base + 9 * NC, s9, mask=kmask)
    elif REDUCE == 2:   # FlashKAT's scheme: each program sums its block per group, then atomically adds those sums
        g_first = (tl.program_id(1) * NCH * VEC) // DG
        slot = tl.arange(0, GB)
        onehot = (((chunk * VEC) // DG - g_first)[:, None] == slot[None, :]) & kmask[:, None]      # [NCH, GB]
        gs = g_first + slot
        smask = (gs < G) & (tl.sum(onehot.to(tl.int32), axis=0) > 0)
        pa = DA + gs * A_STRIDE
        tl.atomic_add(pa + 0, tl.sum(tl.where(onehot, s0[:, None], 0.0), axis=0), mask=smask)
        tl.atomic_add(pa + 1, tl.sum(tl.where(onehot, s1[:, None], 0.0), axis=0), mask=smask)
        tl.atomic_add(pa + 2, tl.sum(tl.where(onehot, s2[:, None], 0.0), axis=0), mask=smask)
        tl.atomic_add(pa + 3, tl.sum(tl.where(onehot, s3[:, None], 0.0), axis=0), mask=smask)
        tl.atomic_add(pa + 4, tl.sum(tl.where(onehot, s4[:, None], 0.0), axis=0), mask=smask)
        tl.atomic_add(pa + 5, tl.sum(tl.where(onehot, s5[:, None], 0.0), axis=0), mask=smask)
        t6 = tl.sum(tl.where(onehot, s6[:, None], 0.0), axis=0)
        t7 = tl.sum(tl.where(onehot, s7[:, None], 0.0), axis=0)
        t8 = tl.sum(tl.where(onehot, s8[:, None], 0.0), axis=0)
        t9 = tl.sum(tl.where(onehot, s9[:, None], 0.0), axis=0)
        pb = DB + gs * B_STRIDE
        if not PAPER:   # the chain through |b|, sign(0) = +1
            t6 = tl.where(tl.load(B + gs * B_STRIDE + 0, mask=smask, other=0.0) < 0, -t6, t6)
            t7 = tl.where(tl.load(B + gs * B_STRIDE + 1, mask=smask, other=0.0) < 0, -t7, t7)
            t8 = tl.where(tl.load(B + gs * B_STRIDE + 2, mask=smask, other=0.0) < 0, -t8, t8)
            t9 = tl.where(tl.load(B + gs * B_STRIDE + 3, mask=smask, other=0.0) < 0, -t9, t9)
        tl.atomic_add(pb + 0, t6, mask=smask)
        tl.atomic_add(pb + 1, t7, mask=smask)
        tl.atomic_add(pb + 2, t8, mask=smask)
        tl.atomic_add(pb + 3, t9, mask=smask)
    else:   # REDUCE == 1: per-program sums per group, then the last program to finish adds them up in fixed order
        pid_c = tl.program_id(1)
        C = tl.num_programs(1)
        P = tl.num_programs(0)
        g_first = (pid_c * NCH * VEC) // DG
        slot = tl.arange(0, GB)
        onehot = (((chunk * VEC) // DG - g_first)[:, None] == slot[None, :]) & kmask[:, None]      # [NCH, GB]
        base = PART + ((pid_m * C + pid_c) * 10).to(tl.int64) * GB + slot
        tl.store(base + 0 * GB, tl.sum(tl.where(onehot, s0[:, None], 0.0), axis=0))
        tl.store(base + 1 * GB, tl.sum(tl.where(onehot, s1[:, None], 0.0), axis=0))
        tl.store(base + 2 * GB, tl.sum(tl.where(onehot, s2[:, None], 0.0), axis=0))
        tl.store(base + 3 * GB, tl.sum(tl.where(onehot, s3[:, None], 0.0), axis=0))
        tl.store(base + 4 * GB, tl.sum(tl.where(onehot, s4[:, None], 0.0), axis=0))
        tl.store(base + 5 * GB, tl.sum(tl.where(onehot, s5[:, None], 0.0), axis=0))
        tl.store(base + 6 * GB, tl.sum(tl.where(onehot, s6[:, None], 0.0), axis=0))
        tl.store(base + 7 * GB, tl.sum(tl.where(onehot, s7[:, None], 0.0), axis=0))
        tl.store(base + 8 * GB, tl.sum(tl.where(onehot, s8[:, None], 0.0), axis=0))
        tl.store(base + 9 * GB, tl.sum(tl.where(onehot, s9[:, None], 0.0), axis=0))
        tl.debug_barrier()                                  # every thread's partials are written ...
        ticket = tl.atomic_add(COUNTER, 1, sem="acq_rel")   # ... before this program is counted
        if ticket == P * C - 1:
            _coef_grad_last_program(PART, B, DA, DB, P, C, DG, G, A_STRIDE, B_STRIDE, PAPER, NCH, VEC, GB, GMAX,
                                    BLOCK_P, RB)
            tl.atomic_xchg(COUNTER, 0)                      # ready for the next backward


@triton.jit
def _coef_grad_last_program(PART, B, DA, DB, P, C, DG, G, A_STRIDE, B_STRIDE, PAPER: tl.constexpr,
                            NCH: tl.constexpr, VEC: tl.constexpr, GB: tl.constexpr, GMAX: tl.constexpr,
                            BLOCK_P: tl.constexpr, RB: tl.constexpr):
    """Sum the partials PART[i, (c, k, slot)] over programs i (rows of R = C * 10 * GB values, BLOCK_P rows at a
    time, in order), file each (c, k, slot) under coefficient k of group g_first(c) + slot, then write the gradients:
    per group, or summed over groups for a shared coefficient row."""
    R = C * 10 * GB
    j = tl.arange(0, RB)
    jm = j < R
    colsum = tl.zeros([RB], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        offs = ps.to(tl.int64)[:, None] * R + j[None, :]
        colsum += tl.sum(tl.load(PART + offs, mask=(ps < P)[:, None] & jm[None, :], other=0.0,
                                 cache_modifier=".cg"), axis=0)
    c = j // (10 * GB)
    k = (j // GB) % 10
    g = (c * NCH * VEC) // DG + j % GB
    valid = jm & (g < G)
    t = tl.arange(0, 16 * GMAX)
    acc = tl.sum(tl.where(((k * GMAX + g)[:, None] == t[None, :]) & valid[:, None], colsum[:, None], 0.0),
                 axis=0)                                      # [k, group] flattened
    acc2 = tl.reshape(acc, [16, GMAX])
    kk = tl.arange(0, 16)[:, None]
    gg = tl.arange(0, GMAX)[None, :]
    total = tl.sum(acc2, axis=1)[:, None]                     # summed over groups: [16, 1]
    # numerator a_k = rows 0..5 of acc2
    if A_STRIDE == 0:
        tl.store(DA + kk + 0 * gg, total.to(DA.dtype.element_ty), mask=(kk < 6) & (gg == 0))
    else:
        tl.store(DA + gg * 6 + kk, acc2.to(DA.dtype.element_ty), mask=(kk < 6) & (gg < G))
    # denominator b_k = rows 6..9; released form: times sign(b), sign(0) = +1
    kb = kk - 6
    bmask = (kk >= 6) & (kk < 10)
    if B_STRIDE == 0:
        val = total + 0.0 * gg
        rowmask = bmask & (gg == 0)
        boffs = kb + 0 * gg
    else:
        val = acc2
        rowmask = bmask & (gg < G)
        boffs = gg * 4 + kb
    if not PAPER:
        bk = tl.load(B + boffs, mask=rowmask, other=0.0).to(tl.float32)
        val = tl.where(bk < 0, -val, val)
    tl.store(DB + boffs, val.to(DB.dtype.element_ty), mask=rowmask)


@triton.jit
def _group_rational_coef_grad_kernel(PART, B, DA, DB, P, NC, A_ROWS, B_ROWS, PAPER: tl.constexpr,
                                     BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    # Program (k, r): the gradient of coefficient k (0..5: a_k, 6..9: b_(k-6)) of coefficient row r, the sum of
    # PART[:, k, chunks of row r] (a row's chunks are contiguous: its group, or all of them for a shared row).
    # Released form: the kernel above differentiated w.r.t. |b|; times sign(b) with sign(0) = +1.
    k = tl.program_id(0)
    r = tl.program_id(1)
    nrows = tl.where(k < 6, A_ROWS, B_ROWS)
    if r < nrows:
        per_row = NC // nrows
        acc = tl.zeros([BLOCK_P, BLOCK_K], dtype=tl.float32)
        for p0 in range(0, P, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            for j0 in range(0, per_row, BLOCK_K):
                js = j0 + tl.arange(0, BLOCK_K)
                offs = ps[:, None].to(tl.int64) * 10 * NC + k * NC + r * per_row + js[None, :]
                acc += tl.load(PART + offs, mask=(ps < P)[:, None] & (js < per_row)[None, :], other=0.0)
        total = tl.sum(tl.sum(acc, axis=1), axis=0)
        if k < 6:
            tl.store(DA + r * 6 + k, total.to(DA.dtype.element_ty))
        else:
            if not PAPER:
                bk = tl.load(B + r * 4 + (k - 6)).to(tl.float32)
                total = tl.where(bk < 0, -total, total)
            tl.store(DB + r * 4 + (k - 6), total.to(DB.dtype.element_ty))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


# (host code uses these two rather than triton.cdiv / triton.next_power_of_2, which are constexpr functions whose
# per-call wrapper costs several microseconds: this op runs 24 times per KAT-S step, forward and backward.)


def _vec(group_size: int, element_size: int, max_vec: int | None) -> int:
    """Columns per chunk: the largest power of two <= one 16-byte load (or max_vec) that divides the group size."""
    limit = max_vec or max(1, 16 // element_size)
    c = 1
    while c * 2 <= limit and group_size % (c * 2) == 0:
        c *= 2
    return c


def _chunk_blocks(D: int, VEC: int, block_c: int = 256) -> tuple[int, int]:
    """(NCH, column blocks): chunks per tile (a power of two, at most block_c columns) and tiles across D.

    Halves the tile while more than 1/8 of the last tile would be masked (D = 384 in fp32: 3 tiles of 32 chunks,
    not 2 of 64 with the second half idle)."""
    nc = D // VEC
    nch = max(1, min(_next_pow2(nc), block_c // VEC))
    while nch > 8 and (_cdiv(nc, nch) * nch - nc) * 8 > nc:
        nch //= 2
    return nch, _cdiv(nc, nch)


def _strides(a, b):
    """Row strides of the coefficient tensors: 0 when one row is shared by every group."""
    return (NUM_NUMERATOR if a.shape[0] > 1 else 0), (NUM_DENOMINATOR if b.shape[0] > 1 else 0)


# Launch settings: launch.DEFAULTS["group_rational.fwd" / ".bwd_fp32" / ".bwd_16bit" / ".coef_grad"] (measured with
# `benchmarks/kat.py sweep` on an H200; small tiles under the interpreter). The backward's settings follow the
# widest of x and dy (fp32 x with a bf16 dy, as under autocast, takes the fp32 settings).


# Host-side plans: what an op call derives from its shapes and launch settings (tile sizes, grids, constexprs),
# remembered per shape, dtypes and launch.settings_token() (not inside tuning() blocks, where the token is None), so
# a call pays one dict lookup instead of the settings merges and tile arithmetic (KAT-S runs this op 48 times a step).
_plans: dict = {}
_MAX_PLANS = 512


def _remember(key, plan):
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()
    _plans[key] = plan
    return plan


def _forward_plan(M, D, num_groups, x_dtype, out_dtype, esize):
    conf = settings("group_rational.fwd")
    VEC = _vec(D // num_groups, esize, None)
    NCH, col_blocks = _chunk_blocks(D, VEC)
    tile = conf["num_warps"] * 32 * max(1, conf["bytes_per_thread"] // esize)
    BLOCK_M = max(1, tile // (NCH * VEC))
    return (_cdiv(M, BLOCK_M), col_blocks), dict(BLOCK_M=BLOCK_M, NCH=NCH, VEC=VEC, **compile_options(conf))


_UNSET = object()


def _forward(x2, a, b, num_groups, paper, out_dtype, token=_UNSET):
    """F(x2) in out_dtype (one launch). ``token``: ``launch.settings_token()`` if the caller already read it."""
    M, D = x2.shape
    y = torch.empty((M, D), dtype=out_dtype, device=x2.device)
    if token is _UNSET:
        token = settings_token()
    key = ("fwd", token, M, D, num_groups, x2.dtype, out_dtype)
    plan = _plans.get(key) if token is not None else None
    if plan is None:
        plan = _forward_plan(M, D, num_groups, x2.dtype, out_dtype, max(x2.element_size(), y.element_size()))
        if token is not None:
            _remember(key, plan)
    grid, meta = plan
    launch("group_rational.fwd", _group_rational_fwd_kernel, grid,
           x2, a, b, y, M, D, D // num_groups, *_strides(a, b), PAPER=paper, **meta)
    return y


def _backward_settings(x_dtype: torch.dtype, dy_dtype: torch.dtype, token=_UNSET) -> tuple[str, dict, dict]:
    """Kernel name and launch settings of the backward (read when the forward runs: autograd runs CUDA backwards on
    its own thread, where the caller's ``tuning()`` blocks are not visible). ``token`` as in ``_forward``."""
    if token is _UNSET:
        token = settings_token()
    key = ("bwd_settings", token, x_dtype, dy_dtype)
    hit = _plans.get(key) if token is not None else None
    if hit is None:
        name = ("group_rational.bwd_16bit" if max(x_dtype.itemsize, dy_dtype.itemsize) == 2
                else "group_rational.bwd_fp32")
        hit = (name, settings(name), settings("group_rational.coef_grad"))
        if token is not None:   # one shared tuple per token: callers only read it
            _remember(key, hit)
    return hit


def _backward(x2, dy2, a, b, num_groups, paper, conf=None, y_dtype=None):
    """dx (x's dtype), d numerator, d denominator (the coefficients' dtypes): two launches, no host reductions.
    With ``y_dtype``, also F(x) in that dtype (computed anyway): returns (dx, da, db, y)."""
    M, D = x2.shape
    DG = D // num_groups
    conf = conf or _backward_settings(x2.dtype, dy2.dtype)
    if conf[2]["reduce"] == "kernel":   # the default: geometry from the plan cache
        key = ("bwd", id(conf), M, D, num_groups, x2.dtype, dy2.dtype, a.shape[0], b.shape[0], x2.device)
        plan = _plans.get(key)
        if plan is None or plan[0] is not conf:   # (the plan holds conf, so its id is not reused while cached)
            plan = _remember(key, _backward_kernel_plan(conf, M, D, num_groups, x2, dy2, a, b))
        _, programs, grid, meta, cgrid, cmeta = plan
        dx = torch.empty_like(x2)
        y = None if y_dtype is None else torch.empty((M, D), dtype=y_dtype, device=x2.device)
        part = torch.empty(programs, 10, D // meta["VEC"], dtype=torch.float32, device=x2.device)
        a_stride, b_stride = _strides(a, b)
        launch(conf[0], _group_rational_bwd_kernel, grid,
               x2, dy2, a, b, dx, part, dx if y is None else y, dx, dx, dx, M, D, DG, num_groups, a_stride, b_stride,
               meta["rows_per_program"], PAPER=paper, STORE_Y=y is not None, **meta["kw"])
        da = torch.empty_like(a)
        db = torch.empty_like(b)
        launch("group_rational.coef_grad", _group_rational_coef_grad_kernel, cgrid,
               part, b, da, db, programs, D // meta["VEC"], a.shape[0], b.shape[0], PAPER=paper, **cmeta)
        return (dx, da, db) if y is None else (dx, da, db, y)
    # reduce "last_program" or "atomic" (settings for comparison; "kernel" took the plan path above)
    name, cfg, cconf = conf
    VEC, NCH, col_blocks, BLOCK_M, programs, rows_per_program = _backward_geometry(cfg, M, D, DG, x2, dy2)
    dx = torch.empty_like(x2)
    y = None if y_dtype is None else torch.empty((M, D), dtype=y_dtype, device=x2.device)
    reduce = cconf["reduce"]
    GB = GMAX = RB = 1
    BLOCK_P = cconf["BLOCK_P"]
    if reduce == "atomic":
        part, counter, mode = dx, dx, 2
        GB = _next_pow2(_groups_per_block(NCH * VEC, DG, D))
        flat = torch.zeros(a.numel() + b.numel(), dtype=torch.float32, device=x2.device)
        da, db = flat[:a.numel()].view(a.shape), flat[a.numel():].view(b.shape)
    elif reduce == "last_program":
        GB = _next_pow2(_groups_per_block(NCH * VEC, DG, D))
        GMAX = _next_pow2(num_groups)
        RB = _next_pow2(col_blocks * 10 * GB)
        BLOCK_P = max(1, min(cconf["BLOCK_P"] * 2, cconf["last_program_tile"] // RB))
        part = torch.empty(programs * col_blocks * 10 * GB, dtype=torch.float32, device=x2.device)
        da, db, counter, mode = torch.empty_like(a), torch.empty_like(b), _counter(x2.device), 1
    else:
        raise ValueError(f"group_rational: coef_grad reduce must be 'kernel', 'last_program' or 'atomic', "
                         f"got {reduce!r}")
    launch(name, _group_rational_bwd_kernel, (programs, col_blocks),
           x2, dy2, a, b, dx, part, dx if y is None else y, da, db, counter, M, D, DG, num_groups, *_strides(a, b),
           rows_per_program, PAPER=paper, BLOCK_M=BLOCK_M, NCH=NCH, VEC=VEC, PREFETCH=bool(cfg["prefetch"]),
           STORE_Y=y is not None, REDUCE=mode, GB=GB, GMAX=GMAX, BLOCK_P=BLOCK_P, RB=RB, **compile_options(cfg))
    if mode == 2:
        da, db = da.to(a.dtype), db.to(b.dtype)
    return (dx, da, db) if y is None else (dx, da, db, y)


def _backward_geometry(cfg, M, D, DG, x2, dy2):
    """(VEC, NCH, col_blocks, BLOCK_M, programs, rows_per_program) of the backward kernel: chunks of VEC columns,
    persistent over rows with about programs_per_sm programs per SM in all, shared among the column blocks."""
    VEC = _vec(DG, max(x2.element_size(), dy2.element_size()), cfg["max_chunk"])
    NCH, col_blocks = _chunk_blocks(D, VEC)
    BLOCK_M = max(1, cfg["num_warps"] * 32 * cfg["values_per_thread"] // (NCH * VEC))
    programs = max(1, min(_cdiv(cfg["programs_per_sm"] * sm_count(x2.device), col_blocks),
                          _cdiv(M, BLOCK_M)))
    rows_per_program = _cdiv(_cdiv(M, programs), BLOCK_M) * BLOCK_M
    return VEC, NCH, col_blocks, BLOCK_M, _cdiv(M, rows_per_program), rows_per_program


def _backward_kernel_plan(conf, M, D, num_groups, x2, dy2, a, b):
    """The launch geometry of ``_backward`` with reduce == "kernel" (partials summed by the coefficient kernel)."""
    name, cfg, cconf = conf
    VEC, NCH, col_blocks, BLOCK_M, programs, rows_per_program = _backward_geometry(cfg, M, D, D // num_groups,
                                                                                   x2, dy2)
    kw = dict(BLOCK_M=BLOCK_M, NCH=NCH, VEC=VEC, PREFETCH=bool(cfg["prefetch"]), REDUCE=0, GB=1,
              GMAX=1, BLOCK_P=cconf["BLOCK_P"], RB=1, **compile_options(cfg))
    meta = {"VEC": VEC, "rows_per_program": rows_per_program, "kw": kw}
    per_row = (D // VEC) // min(a.shape[0], b.shape[0])
    cmeta = dict(BLOCK_P=cconf["BLOCK_P"], BLOCK_K=min(cconf["BLOCK_K"], _next_pow2(per_row)),
                 **compile_options(cconf))
    return conf, programs, (programs, col_blocks), meta, (10, max(a.shape[0], b.shape[0])), cmeta


def _groups_per_block(block_cols: int, group_size: int, D: int) -> int:
    """The most groups that one column block of block_cols columns touches."""
    return max((min(c + block_cols, D) - 1) // group_size - c // group_size + 1 for c in range(0, D, block_cols))


_counters: dict = {}


def _counter(device: torch.device) -> torch.Tensor:
    """A zeroed int32 counter per device and stream for the last-program reduction; the last program resets it."""
    key = (device, torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0)
    t = _counters.get(key)
    if t is None:
        t = _counters[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return t


class GroupRationalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, numerator, denominator, num_groups, denominator_form, out_dtype):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        a = numerator.contiguous()
        b = denominator.contiguous()
        paper = denominator_form == "paper"
        y = _forward(x2, a, b, num_groups, paper, out_dtype)
        ctx.save_for_backward(x2, a, b)
        ctx.shape, ctx.num_groups, ctx.paper = shape, num_groups, paper
        # backward settings read here, where the caller's tuning() blocks are visible (not needed without grad)
        ctx.conf = _backward_settings(x2.dtype, out_dtype) if any(ctx.needs_input_grad[:3]) else None
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, a, b = ctx.saved_tensors
        dy2 = dy.reshape(x2.shape).contiguous()
        dx, da, db = _backward(x2, dy2, a, b, ctx.num_groups, ctx.paper, ctx.conf)
        return dx.reshape(ctx.shape), da, db, None, None, None


def _check(x, numerator, denominator, num_groups, denominator_form):
    op = "group_rational"
    check_tensor(op, "x", x, dims=(1, None))
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"group_rational: num_groups must be a positive int, got {num_groups!r}")
    D = x.shape[-1]
    if D % num_groups:
        raise ValueError(f"group_rational: the last dimension of x ({D}) must be divisible by num_groups "
                         f"({num_groups})")
    for name, t, n in (("numerator", numerator, NUM_NUMERATOR), ("denominator", denominator, NUM_DENOMINATOR)):
        check_tensor(op, name, t, device=x.device)
        if t.dim() != 2 or t.shape[1] != n or t.shape[0] not in (1, num_groups):
            raise ValueError(f"group_rational: {name} must have shape (1, {n}) or ({num_groups}, {n}), "
                             f"got {tuple(t.shape)}")
    if denominator_form not in DENOMINATORS:
        raise ValueError(f"group_rational: denominator must be one of {DENOMINATORS}, got {denominator_form!r}")


def group_rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, num_groups: int = 8,
                   denominator_form: str = "released", backend: str | None = None,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Apply ``P(x) / Q(x)`` with coefficients per group of contiguous channels of the last dimension.

    Args:
        x: ``[..., D]`` activations (fp32, fp16 or bf16; 2D ``[N, D]`` and 3D ``[B, L, D]`` alike; fp64 runs the
            reference, other dtypes are a ``TypeError``).
        numerator: ``(G, 6)`` or ``(1, 6)`` (shared by all groups) coefficients ``a_0..a_5``.
        denominator: ``(G, 4)`` or ``(1, 4)`` coefficients ``b_0..b_3`` of ``x^1..x^4``.
        num_groups: ``G``; ``D`` must be divisible by it.
        denominator_form: ``"released"`` (``Q = 1 + sum |b_i| |x|^(i+1)``, the released kernels and
            checkpoints) or ``"paper"`` (``Q = 1 + |sum b_i x^(i+1)|``). See the module docstring.
        backend: ``"triton"``, ``"reference"`` or None (choose per ``hfzoo.ops.dispatch``).
        out_dtype: dtype of the result (fp32, fp16 or bf16; default ``x.dtype``). Under autocast a model passes the
            autocast dtype, so the next matmul needs no cast pass (its input would be cast to it anyway); the
            gradient of ``x`` keeps ``x``'s dtype.

    Returns:
        A tensor of ``x``'s shape and ``out_dtype``, computed in fp32. Differentiable in all three tensors.

    Example::

        >>> a = torch.tensor([RATIONAL_INITS["swish"][0]])          # (1, 6)
        >>> b = torch.tensor([RATIONAL_INITS["swish"][1]] * 8)      # (8, 4)
        >>> group_rational(torch.randn(2, 5, 64), a, b, num_groups=8).shape
        torch.Size([2, 5, 64])
    """
    _check(x, numerator, denominator, num_groups, denominator_form)
    if out_dtype is not None and out_dtype not in REFERENCE_DTYPES:
        raise TypeError(f"group_rational: out_dtype must be one of {REFERENCE_DTYPES}, got {out_dtype!r}")
    tensors = (x, numerator, denominator)
    problem = kernel_dtype_problem(*tensors)
    if problem is None and out_dtype is not None and out_dtype not in KERNEL_DTYPES:
        problem = f"the Triton kernels write float32, float16 or bfloat16, not out_dtype={out_dtype}"
    if pick_backend("group_rational", tensors, backend, problem) == "reference" or x.numel() == 0:
        return group_rational_reference(x, numerator, denominator, num_groups, denominator_form, out_dtype)
    return apply_function(GroupRationalFunction, x, numerator, denominator, num_groups, denominator_form,
                          out_dtype or x.dtype)
