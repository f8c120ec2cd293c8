"""Fused recurrent gated linear attention in Triton (decoding: a few tokens at a time, state in registers).

One program owns a ``[K, BV]`` slice of one key/value head's state for one sequence and walks the tokens:

    S = S * e^g[:, None] + k[:, None] * v[None, :];    o_h = scale * q_h @ S   for every query head h of the group

so grouped-query heads share one state read and write. The state stays fp32 in registers throughout.

Gradients: this kernel has no backward of its own. When any input requires a gradient (and grad mode is
on), :func:`fused_recurrent_gla_triton` computes the same function with the chunked kernels
(:mod:`hfzoo.ops.gla_chunk`), which are differentiable; decoding under ``torch.no_grad()`` takes this kernel.
"""

from __future__ import annotations

import torch

from .launch import bucket, compile_options, launch, settings
from .triton_shim import tl, triton


@triton.jit
def _fused_recurrent_fwd_kernel(Q, K_, V_, G, O, H0, HT, CU, scale, T,
                                H: tl.constexpr, H_KV: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                                BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr,
                                STORE_HT: tl.constexpr, IS_VARLEN: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hk = i_nh // H_KV, i_nh % H_KV
    GROUP: tl.constexpr = H // H_KV
    if IS_VARLEN:
        bos = tl.load(CU + i_n).to(tl.int64)
        eos = tl.load(CU + i_n + 1).to(tl.int64)
    else:
        bos = (i_n * T).to(tl.int64)
        eos = bos + T
    ok = tl.arange(0, BK)
    ov = i_v * BV + tl.arange(0, BV)
    mk, mv = ok < DK, ov < DV
    mkv = mk[:, None] & mv[None, :]
    st = ok[:, None] * DV + ov[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        S += tl.load(H0 + i_nh.to(tl.int64) * DK * DV + st, mask=mkv, other=0.0).to(tl.float32)
    for t in range(bos, eos):
        kv_k = t * (H_KV * DK) + i_hk * DK + ok
        k = tl.load(K_ + kv_k, mask=mk, other=0.0).to(tl.float32)
        g = tl.load(G + kv_k, mask=mk, other=0.0).to(tl.float32)
        v = tl.load(V_ + t * (H_KV * DV) + i_hk * DV + ov, mask=mv, other=0.0).to(tl.float32)
        S = S * tl.exp(g)[:, None] + k[:, None] * v[None, :]
        for hh in range(GROUP):
            i_h = i_hk * GROUP + hh
            q = tl.load(Q + t * (H * DK) + i_h * DK + ok, mask=mk, other=0.0).to(tl.float32)
            o = tl.sum(q[:, None] * S, axis=0) * scale
            tl.store(O + t * (H * DV) + i_h * DV + ov, o.to(O.dtype.element_ty), mask=mv)
    if STORE_HT:
        tl.store(HT + i_nh.to(tl.int64) * DK * DV + st, S, mask=mkv)


def _fused_recurrent_fwd(q, k, v, g, scale, h0, output_final_state, cu_seqlens):
    B, T, H, K = q.shape
    Hkv, V = k.shape[2], v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    conf = settings("gla.fused_recurrent")
    BK = bucket(K)
    # keep the register-resident state slice [BK, BV] at <= max_state fp32 values
    BV = max(16, min(bucket(V), conf["max_state"] // BK, conf["max_bv"]))
    conf = settings("gla.fused_recurrent", BV=BV, num_warps=4 if BK * BV <= 4096 else 8)
    BV = conf["BV"]
    o = torch.empty(B, T, H, V, dtype=v.dtype, device=v.device)
    ht = torch.empty(N, Hkv, K, V, dtype=torch.float32, device=v.device) if output_final_state else None
    cu = cu_seqlens.to(device=v.device, dtype=torch.int32).contiguous() if cu_seqlens is not None else None
    q, k, v, g = (t.contiguous() for t in (q, k, v, g))
    h0 = h0.contiguous() if h0 is not None else None
    grid = (triton.cdiv(V, BV), N * Hkv)
    launch("gla.fused_recurrent", _fused_recurrent_fwd_kernel, grid,
                  q, k, v, g, o, h0, ht, cu, scale, T, H=H, H_KV=Hkv, DK=K, DV=V, BK=BK, BV=BV,
                  USE_H0=h0 is not None, STORE_HT=output_final_state, IS_VARLEN=cu is not None,
                  **compile_options(conf))
    return o, ht


def fused_recurrent_gla_triton(q, k, v, g, scale=None, initial_state=None, output_final_state=False,
                               cu_seqlens=None):
    """Token-by-token GLA; arguments as :func:`hfzoo.ops.gla.fused_recurrent_gla` (inputs checked there).

    Returns ``(o, final_state or None)``; ``o`` in ``v``'s dtype, ``final_state`` fp32. When gradients are
    needed it runs the differentiable chunked kernels instead (same function).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    tensors = [t for t in (q, k, v, g, initial_state) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        from .gla_chunk import chunk_gla_triton

        return chunk_gla_triton(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    return _fused_recurrent_fwd(q, k, v, g, float(scale), initial_state, bool(output_final_state), cu_seqlens)
