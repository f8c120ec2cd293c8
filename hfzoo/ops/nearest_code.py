"""Nearest codebook entry for each vector: ``argmin_k ||z_i - c_k||^2`` without an N x K distance matrix.

Vector quantizers (VQ-VAE, VQGAN, SimVQ) spend most of their quantization time here. The textbook
implementations (``torch.cdist(z, c).argmin(1)`` or ``(||z||^2 + ||c||^2 - 2 z c^T).argmin(1)``) write the
full N x K matrix to memory: 17 GB for 65,536 vectors against 65,536 codes in fp32. The Triton kernel streams
the codebook through on-chip memory in tiles, keeps a running minimum and its index per row, and writes
only N indices.

Definition (the same in the reference and the kernel). For each row ``z`` the score of code ``c_k`` is

    score_k = ||c_k||^2 - 2 <z, c_k>           (||z||^2 is the same for every k, so it is left out)

computed in fp32 whatever the input dtype; the answer is the smallest k with the smallest score
(ties go to the lowest index, as ``torch.argmin``). ``||c_k||^2`` is computed once, in fp32, by the same
PyTorch expression on both paths, so the two paths differ only in the summation order of the dot products.

Precision of the dot products, by input dtype:

* bf16 / fp16 inputs: products of two 16-bit floats are exact in fp32, and the kernel accumulates them in
  fp32 on tensor cores -- the same numbers the reference gets by upcasting to fp32 first. Indices agree with
  the fp32 reference except where two codes' scores are within fp32 rounding of each other.
* fp32 inputs: ``precision="tf32x3"`` (the default on the GPU) splits each operand into a tf32 high part and a
  tf32 low part and sums three tensor-core products; its error is of the order of fp32 rounding. ``"ieee"``
  uses plain fp32 FMA (slower, no tensor cores). ``"tf32"`` (one product, ~1e-3 relative error) is
  available for speed when near-ties do not matter. Triton's CPU interpreter computes ``tl.dot`` in fp32
  whatever the precision, so CPU tests see fp32 results.

Where the best two scores are closer than the rounding error of the dot product, "the nearest code" is not
well defined in floating point and the paths may pick different (equally near, within tolerance) codes;
tests therefore check index equality on well-separated inputs and exact ties, and distance optimality
(the chosen code's distance is within a tolerance of the true minimum) everywhere else.

NaN: a score that is NaN counts as +inf on both paths, so a code containing NaN is never chosen; a vector
containing NaN gets index 0 and distance NaN.

Ladder: reference (chunked PyTorch) -> Triton kernel -> ``nearest_code`` (public: checks its arguments with
``validate.py``, dispatches per call, see ``dispatch.py``; launch settings ``nearest_code.*`` in ``launch.py``).
Indices have no gradient, so there is no autograd Function; quantizers use straight-through estimators
on the gathered codes instead.
"""

from __future__ import annotations

import torch

from .launch import bucket, launch, settings
from .triton_shim import tl, triton
from .validate import KERNEL_DTYPES, check_tensor, pick_backend

PRECISIONS = ("ieee", "tf32x3", "tf32")


def code_norms(codebook: torch.Tensor) -> torch.Tensor:
    """``||c_k||^2`` in fp32, shape ``[K]`` -- shared by the reference and the kernel so both see equal bits."""
    c = codebook.float()
    return (c * c).sum(-1)


def nearest_code_reference(z: torch.Tensor, codebook: torch.Tensor, chunk_elements: int = 1 << 26):
    """Plain PyTorch definition: returns ``(indices int64 [N], scores fp32 [N])`` for ``z [N, D]``.

    Rows are processed in chunks so that at most ``chunk_elements`` fp32 scores exist at once (256 MB by
    default), which keeps the reference usable at sizes where the full N x K matrix would not fit.
    """
    cn = code_norms(codebook)
    ct = codebook.float().t()
    n, k = z.shape[0], codebook.shape[0]
    rows = max(1, chunk_elements // max(k, 1))
    idx = torch.empty(n, dtype=torch.int64, device=z.device)
    best = torch.empty(n, dtype=torch.float32, device=z.device)
    for start in range(0, n, rows):
        zc = z[start:start + rows].float()
        score = cn[None, :] - 2.0 * (zc @ ct)
        score = score.nan_to_num(nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))  # NaN: never chosen
        val, arg = score.min(dim=1)  # first minimum on ties, like argmin
        idx[start:start + rows] = arg
        best[start:start + rows] = val
    return idx, best


# ----------------------------------------------------------------------------------------------------
# Triton kernel. One program owns BLOCK_M rows of z and walks the whole codebook in tiles of BLOCK_K codes
# (in increasing index order), computing a BLOCK_M x BLOCK_K tile of scores with tl.dot, reducing it to a
# per-row minimum and updating the running minimum only on a strict improvement -- so ties keep the
# earlier (lower) index, and within a tile tl.min's left tie-break keeps the lowest index too.


# Launch settings: launch.DEFAULTS["nearest_code.fwd_fp32" / "nearest_code.fwd_16bit"], short autotune lists keyed
# on power-of-two buckets of N and K and on D (a new batch size does not tune again); one small fixed config
# under the interpreter.


@triton.jit
def _nearest_code_kernel(Z, C, CN, IDX, BEST, N, K, D, stride_z, stride_c,
                         N_BUCKET, K_BUCKET,
                         BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                         SINGLE_D: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    dcols = tl.arange(0, BLOCK_D)
    best = tl.full([BLOCK_M], float("inf"), dtype=tl.float32)
    best_idx = tl.zeros([BLOCK_M], dtype=tl.int32)
    if SINGLE_D:
        # the whole row fits in one tile: load z once, reuse it against every codebook tile
        z = tl.load(Z + rows[:, None].to(tl.int64) * stride_z + dcols[None, :],
                    mask=rmask[:, None] & (dcols[None, :] < D), other=0.0)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        kmask = codes < K
        if SINGLE_D:
            c = tl.load(C + codes[:, None].to(tl.int64) * stride_c + dcols[None, :],
                        mask=kmask[:, None] & (dcols[None, :] < D), other=0.0)
            dot = tl.dot(z, tl.trans(c), input_precision=PRECISION)
        else:
            dot = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + dcols
                zt = tl.load(Z + rows[:, None].to(tl.int64) * stride_z + dd[None, :],
                             mask=rmask[:, None] & (dd[None, :] < D), other=0.0)
                ct = tl.load(C + codes[:, None].to(tl.int64) * stride_c + dd[None, :],
                             mask=kmask[:, None] & (dd[None, :] < D), other=0.0)
                dot += tl.dot(zt, tl.trans(ct), input_precision=PRECISION)
        cn = tl.load(CN + codes, mask=kmask, other=float("inf"))
        score = cn[None, :] - 2.0 * dot
        # codes past K and NaN scores (a NaN in z or in the code) count as +inf: a NaN code is never chosen
        score = tl.where(kmask[None, :] & (score == score), score, float("inf"))
        tile_best, tile_arg = tl.min(score, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best < best
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, k0 + tile_arg, best_idx)
    tl.store(IDX + rows, best_idx.to(tl.int64), mask=rmask)
    tl.store(BEST + rows, best, mask=rmask)


def _nearest_code_triton(z: torch.Tensor, codebook: torch.Tensor, precision: str):
    n, d = z.shape
    k = codebook.shape[0]
    z = z.contiguous()
    codebook = codebook.contiguous()
    cn = code_norms(codebook).contiguous()
    idx = torch.empty(n, dtype=torch.int64, device=z.device)
    best = torch.empty(n, dtype=torch.float32, device=z.device)
    block_d = max(16, min(128, triton.next_power_of_2(d)))  # wider rows loop over D in chunks
    conf = settings("nearest_code.fwd_fp32" if z.dtype == torch.float32 else "nearest_code.fwd_16bit")
    launch("nearest_code.fwd", _nearest_code_kernel, lambda meta: (triton.cdiv(n, meta["BLOCK_M"]),),
                  z, codebook, cn, idx, best, n, k, d, z.stride(0), codebook.stride(0),
                  bucket(n, lo=1), bucket(k, lo=1),
                  BLOCK_D=block_d, SINGLE_D=d <= block_d, PRECISION=precision,
                  configs=conf["configs"], key=["N_BUCKET", "K_BUCKET", "D"])
    return idx, best


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, *, return_distance: bool = False,
                 precision: str | None = None, backend: str | None = None):
    """Index of the nearest codebook row (squared Euclidean distance) for every vector of ``z``.

    Args:
        z: ``[..., D]`` vectors (fp32, fp16 or bf16).
        codebook: ``[K, D]`` codes, same dtype and device as ``z``.
        return_distance: also return the squared distance to the chosen code (fp32, clamped at 0).
        precision: dot-product precision for fp32 inputs on the Triton path: ``"tf32x3"`` (default,
            about fp32 accuracy on tensor cores), ``"ieee"`` (plain fp32) or ``"tf32"`` (fastest, ~1e-3
            relative). Ignored for 16-bit inputs (exact products, fp32 accumulation) and on the reference path
            (always fp32).
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
    if precision is None:
        precision = "tf32x3"
    if precision not in PRECISIONS:
        raise ValueError(f"nearest_code: precision must be one of {PRECISIONS}, got {precision!r}")
    if z.dtype != torch.float32:
        precision = "tf32"  # 16-bit operands: products are exact whatever the flag (it only affects fp32 operands)
    lead = z.shape[:-1]
    z2 = z.reshape(-1, z.shape[-1])
    if pick_backend(op, (z2, codebook), backend) == "reference" or z2.shape[0] == 0:
        idx, best = nearest_code_reference(z2.detach(), codebook.detach())
    else:
        idx, best = _nearest_code_triton(z2.detach(), codebook.detach(), precision)
    idx = idx.reshape(lead)
    if not return_distance:
        return idx
    zf = z2.detach().float()
    dist = ((zf * zf).sum(-1) + best).clamp_min(0.0)
    return idx, dist.reshape(lead)
