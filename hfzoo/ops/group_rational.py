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
visits and writes one partial per program and column; the host sums those partials (no atomics).
"""

from __future__ import annotations

import torch

from .launch import compile_options, launch, settings, sm_count
from .triton_shim import tl, triton
from .validate import check_tensor, kernel_dtype_problem, pick_backend

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
                             num_groups: int, denominator_form: str = "released") -> torch.Tensor:
    """Plain PyTorch definition (differentiable through autograd); computes in fp32, returns ``x.dtype``."""
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
    return (p / q).reshape(x.shape).to(x.dtype)


# ----------------------------------------------------------------------------------------------------
# Triton kernels. x is viewed as [M, D] (rows = flattened leading dims). A tile is BLOCK_M rows x BLOCK_C
# columns; each column knows its group (col // DG) and loads that group's ten coefficients once per tile.
# A_STRIDE / B_STRIDE are 0 when one coefficient row is shared by all groups.


@triton.jit
def _load_coefficients(A, B, cols, cmask, DG, A_STRIDE, B_STRIDE):
    g = cols // DG
    a0 = tl.load(A + g * A_STRIDE + 0, mask=cmask, other=0.0).to(tl.float32)
    a1 = tl.load(A + g * A_STRIDE + 1, mask=cmask, other=0.0).to(tl.float32)
    a2 = tl.load(A + g * A_STRIDE + 2, mask=cmask, other=0.0).to(tl.float32)
    a3 = tl.load(A + g * A_STRIDE + 3, mask=cmask, other=0.0).to(tl.float32)
    a4 = tl.load(A + g * A_STRIDE + 4, mask=cmask, other=0.0).to(tl.float32)
    a5 = tl.load(A + g * A_STRIDE + 5, mask=cmask, other=0.0).to(tl.float32)
    b0 = tl.load(B + g * B_STRIDE + 0, mask=cmask, other=0.0).to(tl.float32)
    b1 = tl.load(B + g * B_STRIDE + 1, mask=cmask, other=0.0).to(tl.float32)
    b2 = tl.load(B + g * B_STRIDE + 2, mask=cmask, other=0.0).to(tl.float32)
    b3 = tl.load(B + g * B_STRIDE + 3, mask=cmask, other=0.0).to(tl.float32)
    return a0, a1, a2, a3, a4, a5, b0, b1, b2, b3


@triton.jit
def _group_rational_fwd_kernel(X, A, B, Y, M, D, DG, A_STRIDE, B_STRIDE,
                               PAPER: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < D
    a0, a1, a2, a3, a4, a5, b0, b1, b2, b3 = _load_coefficients(A, B, cols, cmask, DG, A_STRIDE, B_STRIDE)
    mask = (rows[:, None] < M) & cmask[None, :]
    offs = rows[:, None].to(tl.int64) * D + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    p = a5[None, :] * x + a4[None, :]
    p = p * x + a3[None, :]
    p = p * x + a2[None, :]
    p = p * x + a1[None, :]
    p = p * x + a0[None, :]
    if PAPER:
        t = b3[None, :] * x + b2[None, :]
        t = t * x + b1[None, :]
        t = t * x + b0[None, :]
        q = 1.0 + tl.abs(t * x)
    else:
        ax = tl.abs(x)
        q = tl.abs(b3)[None, :] * ax + tl.abs(b2)[None, :]
        q = q * ax + tl.abs(b1)[None, :]
        q = q * ax + tl.abs(b0)[None, :]
        q = 1.0 + q * ax
    tl.store(Y + offs, (p / q).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _fold(t, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, CHUNK: tl.constexpr):
    """[BLOCK_M, BLOCK_C] -> [BLOCK_M, BLOCK_C // CHUNK]: sum runs of CHUNK adjacent columns (same group)."""
    if CHUNK > 1:
        t = tl.sum(tl.reshape(t, [BLOCK_M, BLOCK_C // CHUNK, CHUNK]), axis=2)
    return t


@triton.jit
def _bwd_tile(x, dy, a0, a1, a2, a3, a4, a5, c0, c1, c2, c3, PAPER: tl.constexpr):
    """dx and the ten per-element coefficient-gradient terms of one [BLOCK_M, BLOCK_C] tile.

    a_i are the numerator and c_i the denominator coefficients ([1, BLOCK_C] each; c_i = |b_i| for the
    released form). Terms: dL/da_k = gp x^k, then dL/dc_k = gq dQ/dc_k, with gp = dy / Q, gq = -gp P / Q.
    """
    x2 = x * x
    x3 = x2 * x
    x4 = x2 * x2
    p = a0 + a1 * x + a2 * x2 + a3 * x3 + a4 * x4 + a5 * x4 * x
    dp = a1 + 2.0 * a2 * x + 3.0 * a3 * x2 + 4.0 * a4 * x3 + 5.0 * a5 * x4
    if PAPER:
        # Q = 1 + |T|, T = c0 x + c1 x^2 + c2 x^3 + c3 x^4; dQ/dc_i = s x^{i+1}, s = sign(T), sign(0) = +1
        t = c0 * x + c1 * x2 + c2 * x3 + c3 * x4
        s = tl.where(t < 0, -1.0, 1.0)
        q = 1.0 + tl.abs(t)
        dq = s * (c0 + 2.0 * c1 * x + 3.0 * c2 * x2 + 4.0 * c3 * x3)
        u1 = s * x
        u2 = s * x2
        u3 = s * x3
        u4 = s * x4
    else:
        # Q = 1 + sum c_i |x|^{i+1}; dQ/dc_i = |x|^{i+1}; d|x|/dx = sign(x), sign(0) = +1
        s = tl.where(x < 0, -1.0, 1.0)
        ax = tl.abs(x)
        ax3 = x2 * ax
        q = 1.0 + c0 * ax + c1 * x2 + c2 * ax3 + c3 * x4
        dq = s * (c0 + 2.0 * c1 * ax + 3.0 * c2 * x2 + 4.0 * c3 * ax3)
        u1 = ax
        u2 = x2
        u3 = ax3
        u4 = x4
    rq = 1.0 / q               # one division per element
    gp = dy * rq               # dL/dP
    gq = -gp * p * rq          # dL/dQ
    dx = gp * dp + gq * dq
    return dx, gp, gp * x, gp * x2, gp * x3, gp * x4, gp * x4 * x, gq * u1, gq * u2, gq * u3, gq * u4


@triton.jit
def _group_rational_bwd_kernel(X, DY, A, B, DX, PART, M, D, DG, A_STRIDE, B_STRIDE, rows_per_program,
                               PAPER: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                               CHUNK: tl.constexpr, PREFETCH: tl.constexpr):
    # Program (i, j) walks rows [i * rows_per_program, (i + 1) * rows_per_program) of column block j.
    # The ten coefficient-gradient terms are folded over runs of CHUNK adjacent columns (CHUNK divides the
    # group size, so a run never straddles two groups; with CHUNK = the values one thread loads at once the
    # fold stays inside a thread) and accumulated in ten [BLOCK_M, BLOCK_C // CHUNK] register tiles, which are
    # reduced over rows once at the end: PART[i, k, chunk] for k = 0..9 (a_0..a_5, then the b terms).
    # With PREFETCH, the next row block's x and dy are loaded before the current one is computed.
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < D
    a0, a1, a2, a3, a4, a5, b0, b1, b2, b3 = _load_coefficients(A, B, cols, cmask, DG, A_STRIDE, B_STRIDE)
    if PAPER:
        c0, c1, c2, c3 = b0, b1, b2, b3
    else:
        c0, c1, c2, c3 = tl.abs(b0), tl.abs(b1), tl.abs(b2), tl.abs(b3)
    a0, a1, a2, a3, a4, a5 = a0[None, :], a1[None, :], a2[None, :], a3[None, :], a4[None, :], a5[None, :]
    c0, c1, c2, c3 = c0[None, :], c1[None, :], c2[None, :], c3[None, :]
    ga0 = tl.zeros([BLOCK_M, BLOCK_C // CHUNK], dtype=tl.float32)
    ga1 = tl.zeros([BLOCK_M, BLOCK_C // CHUNK], dtype=tl.float32)
    ga2 = tl.zeros([BLOCK_M, BLOCK_C // CHUNK], dtype=tl.float32)
    ga3 = tl.zeros([BLOCK_M, BLOCK_C // CHUNK], dtype=tl.float32)
    ga4 = tl.zeros([BLOCK_M, BLOCK_C // CHUNK], dtype=tl.float32)
    ga5 = tl.zeros([BLOCK_M, BLOCK_C // CHUNK], dtype=tl.float32)
    gb0 = tl.zeros([BLOCK_M, BLOCK_C // CHUNK], dtype=tl.float32)
    gb1 = tl.zeros([BLOCK_M, BLOCK_C // CHUNK], dtype=tl.float32)
    gb2 = tl.zeros([BLOCK_M, BLOCK_C // CHUNK], dtype=tl.float32)
    gb3 = tl.zeros([BLOCK_M, BLOCK_C // CHUNK], dtype=tl.float32)
    start = pid_m * rows_per_program
    end = tl.minimum(start + rows_per_program, M)
    if PREFETCH:
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < end)[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * D + cols[None, :]
        x_next = tl.load(X + offs, mask=mask, other=0.0)
        dy_next = tl.load(DY + offs, mask=mask, other=0.0)
    for r0 in range(start, start + rows_per_program, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        mask = (rows < end)[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * D + cols[None, :]
        if PREFETCH:
            x = x_next.to(tl.float32)
            dy = dy_next.to(tl.float32)
            nmask = (rows + BLOCK_M < end)[:, None] & cmask[None, :]
            x_next = tl.load(X + offs + BLOCK_M * D, mask=nmask, other=0.0)
            dy_next = tl.load(DY + offs + BLOCK_M * D, mask=nmask, other=0.0)
        else:
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)   # 0 outside: no contribution
        dx, t0, t1, t2, t3, t4, t5, t6, t7, t8, t9 = _bwd_tile(x, dy, a0, a1, a2, a3, a4, a5, c0, c1, c2, c3,
                                                              PAPER)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        ga0 += _fold(t0, BLOCK_M, BLOCK_C, CHUNK)
        ga1 += _fold(t1, BLOCK_M, BLOCK_C, CHUNK)
        ga2 += _fold(t2, BLOCK_M, BLOCK_C, CHUNK)
        ga3 += _fold(t3, BLOCK_M, BLOCK_C, CHUNK)
        ga4 += _fold(t4, BLOCK_M, BLOCK_C, CHUNK)
        ga5 += _fold(t5, BLOCK_M, BLOCK_C, CHUNK)
        gb0 += _fold(t6, BLOCK_M, BLOCK_C, CHUNK)
        gb1 += _fold(t7, BLOCK_M, BLOCK_C, CHUNK)
        gb2 += _fold(t8, BLOCK_M, BLOCK_C, CHUNK)
        gb3 += _fold(t9, BLOCK_M, BLOCK_C, CHUNK)
    NC = D // CHUNK
    chunks = tl.program_id(1) * (BLOCK_C // CHUNK) + tl.arange(0, BLOCK_C // CHUNK)
    kmask = chunks < NC
    base = PART + pid_m.to(tl.int64) * 10 * NC + chunks
    tl.store(base + 0 * NC, tl.sum(ga0, axis=0), mask=kmask)
    tl.store(base + 1 * NC, tl.sum(ga1, axis=0), mask=kmask)
    tl.store(base + 2 * NC, tl.sum(ga2, axis=0), mask=kmask)
    tl.store(base + 3 * NC, tl.sum(ga3, axis=0), mask=kmask)
    tl.store(base + 4 * NC, tl.sum(ga4, axis=0), mask=kmask)
    tl.store(base + 5 * NC, tl.sum(ga5, axis=0), mask=kmask)
    tl.store(base + 6 * NC, tl.sum(gb0, axis=0), mask=kmask)
    tl.store(base + 7 * NC, tl.sum(gb1, axis=0), mask=kmask)
    tl.store(base + 8 * NC, tl.sum(gb2, axis=0), mask=kmask)
    tl.store(base + 9 * NC, tl.sum(gb3, axis=0), mask=kmask)


def _column_block(D: int) -> int:
    return min(256, triton.next_power_of_2(D))


def _strides(a, b):
    """Row strides of the coefficient tensors: 0 when one row is shared by every group."""
    return (NUM_NUMERATOR if a.shape[0] > 1 else 0), (NUM_DENOMINATOR if b.shape[0] > 1 else 0)


# Launch settings: launch.DEFAULTS["group_rational.fwd" / "group_rational.bwd_fp32" / "group_rational.bwd_16bit"]
# (the best of `benchmarks/kat.py sweep` on an H200; small tiles under the interpreter).


def _bwd_settings(element_size: int) -> dict:
    return settings("group_rational.bwd_16bit" if element_size == 2 else "group_rational.bwd_fp32")


def _forward(x2, a, b, num_groups, paper):
    M, D = x2.shape
    y = torch.empty_like(x2)
    BLOCK_C = _column_block(D)
    conf = settings("group_rational.fwd")
    tile = conf["num_warps"] * 32 * max(1, conf["bytes_per_thread"] // x2.element_size())
    BLOCK_M = max(1, tile // BLOCK_C)
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(D, BLOCK_C))
    launch("group_rational.fwd", _group_rational_fwd_kernel, grid,
                  x2, a, b, y, M, D, D // num_groups, *_strides(a, b), PAPER=paper, BLOCK_M=BLOCK_M,
                  BLOCK_C=BLOCK_C, **compile_options(conf))
    return y


def _chunk(group_size: int, element_size: int, max_chunk: int | None) -> int:
    limit = max_chunk or max(1, 16 // element_size)
    c = 1
    while c * 2 <= limit and group_size % (c * 2) == 0:
        c *= 2
    return c


def _backward(x2, dy2, a, b, num_groups, paper):
    M, D = x2.shape
    DG = D // num_groups
    dx = torch.empty_like(x2)
    cfg = _bwd_settings(x2.element_size())
    CHUNK = _chunk(DG, x2.element_size(), cfg["max_chunk"])
    BLOCK_C = max(_column_block(D), CHUNK)
    BLOCK_M = max(1, cfg["num_warps"] * 32 * cfg["values_per_thread"] // BLOCK_C)
    col_blocks = triton.cdiv(D, BLOCK_C)
    # persistent over rows: about programs_per_sm programs per SM in all, shared among the column blocks
    programs = max(1, min(triton.cdiv(cfg["programs_per_sm"] * sm_count(x2.device), col_blocks),
                          triton.cdiv(M, BLOCK_M)))
    rows_per_program = triton.cdiv(triton.cdiv(M, programs), BLOCK_M) * BLOCK_M
    programs = triton.cdiv(M, rows_per_program)
    part = torch.empty(programs, 10, D // CHUNK, dtype=torch.float32, device=x2.device)
    launch(f"group_rational.bwd_{'16bit' if x2.element_size() == 2 else 'fp32'}",
                  _group_rational_bwd_kernel, (programs, col_blocks),
                  x2, dy2, a, b, dx, part, M, D, DG, *_strides(a, b), rows_per_program,
                  PAPER=paper, BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C, CHUNK=CHUNK, PREFETCH=bool(cfg["prefetch"]),
                  **compile_options(cfg))
    per_group = part.sum(0).view(10, num_groups, DG // CHUNK).sum(-1)       # [10, G]
    da = per_group[:NUM_NUMERATOR].t()                                       # [G, 6]
    db = per_group[NUM_NUMERATOR:].t()                                       # [G, 4]
    if a.shape[0] == 1:
        da = da.sum(0, keepdim=True)
    if b.shape[0] == 1:
        db = db.sum(0, keepdim=True)
    if not paper:   # the kernel differentiated w.r.t. |b|; chain through |.| with sign(0) = +1
        db = db * _sign_pos(b.float())
    return dx, da, db


class GroupRationalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, numerator, denominator, num_groups, denominator_form):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        a = numerator.contiguous()
        b = denominator.contiguous()
        paper = denominator_form == "paper"
        y = _forward(x2, a, b, num_groups, paper)
        ctx.save_for_backward(x2, a, b)
        ctx.shape, ctx.num_groups, ctx.paper = shape, num_groups, paper
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, a, b = ctx.saved_tensors
        dy2 = dy.reshape(x2.shape).contiguous()
        dx, da, db = _backward(x2, dy2, a, b, ctx.num_groups, ctx.paper)
        return dx.reshape(ctx.shape), da.to(a.dtype), db.to(b.dtype), None, None


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
                   denominator_form: str = "released", backend: str | None = None) -> torch.Tensor:
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

    Returns:
        A tensor of ``x``'s shape and dtype, computed in fp32. Differentiable in all three tensors.

    Example::

        >>> a = torch.tensor([RATIONAL_INITS["swish"][0]])          # (1, 6)
        >>> b = torch.tensor([RATIONAL_INITS["swish"][1]] * 8)      # (8, 4)
        >>> group_rational(torch.randn(2, 5, 64), a, b, num_groups=8).shape
        torch.Size([2, 5, 64])
    """
    _check(x, numerator, denominator, num_groups, denominator_form)
    tensors = (x, numerator, denominator)
    problem = kernel_dtype_problem(*tensors)
    if pick_backend("group_rational", tensors, backend, problem) == "reference" or x.numel() == 0:
        return group_rational_reference(x, numerator, denominator, num_groups, denominator_form)
    return GroupRationalFunction.apply(x, numerator, denominator, num_groups, denominator_form)
