"""Gated linear attention (GLA): the recurrence, its readable reference, and the public ops.

Per head, with a per-key-dimension decay ``alpha_t = exp(g_t)`` (``g_t <= 0``, log space):

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t          (S: [K, V])
    o_t = scale * q_t S_t

``chunk_gla`` is the training form (chunked, parallel over the sequence); ``fused_recurrent_gla`` is the
decoding form (one step at a time, state in registers). Both take the same arguments and agree with
``naive_recurrent_gla`` below, which is the definition.

Grouped-query heads: ``q`` has H heads, ``k``, ``v``, ``g`` may have ``Hkv`` heads with ``H % Hkv == 0``;
query head ``h`` reads the state of key/value head ``h // (H // Hkv)``. States have ``Hkv`` heads.
"""

from __future__ import annotations

import torch

from .dispatch import resolve_backend


def _check_inputs(name, q, k, v, g, initial_state, cu_seqlens):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or g.dim() != 4:
        raise ValueError(f"{name}: q, k, g must be [B, T, H, K] and v [B, T, H, V]; got dims "
                         f"{q.dim()}, {k.dim()}, {v.dim()}, {g.dim()}")
    B, T, H, K = q.shape
    Hkv = k.shape[2]
    if k.shape != (B, T, Hkv, K) or g.shape != k.shape:
        raise ValueError(f"{name}: k and g must have shape {(B, T, Hkv, K)} (q is {tuple(q.shape)}); "
                         f"got k {tuple(k.shape)}, g {tuple(g.shape)}")
    if v.shape[:3] != (B, T, Hkv):
        raise ValueError(f"{name}: v must be [B, T, Hkv, V] = {(B, T, Hkv)} + (V,); got {tuple(v.shape)}")
    if H % Hkv != 0:
        raise ValueError(f"{name}: q heads ({H}) must be a multiple of key/value heads ({Hkv})")
    N = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"{name}: with cu_seqlens the batch must be packed into B=1; got B={B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T:
            raise ValueError(f"{name}: cu_seqlens must be a 1-D tensor [0, ..., T={T}] of sequence offsets")
        N = cu_seqlens.numel() - 1
    if initial_state is not None and initial_state.shape != (N, Hkv, K, v.shape[-1]):
        raise ValueError(f"{name}: initial_state must have shape {(N, Hkv, K, v.shape[-1])}; "
                         f"got {tuple(initial_state.shape)}")


def naive_recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """The definition, step by step in fp32. Returns ``(o, final_state or None)``; ``o`` has ``v``'s dtype."""
    B, T, H, K = q.shape
    Hkv, V = k.shape[2], v.shape[-1]
    group = H // Hkv
    scale = K ** -0.5 if scale is None else scale
    if cu_seqlens is None:
        bounds = [(b, 0, T) for b in range(B)]
    else:
        offsets = cu_seqlens.tolist()
        bounds = [(0, offsets[i], offsets[i + 1]) for i in range(len(offsets) - 1)]
    o = torch.zeros(B, T, H, V, dtype=torch.float32, device=q.device)
    finals = []
    for n, (b, start, end) in enumerate(bounds):
        S = torch.zeros(Hkv, K, V, dtype=torch.float32, device=q.device)
        if initial_state is not None:
            S = S + initial_state[n].float()
        for t in range(start, end):
            S = S * g[b, t].float().exp()[..., None] + k[b, t].float()[..., None] * v[b, t].float()[:, None, :]
            qt = q[b, t].float().view(Hkv, group, K)
            o[b, t] = (scale * torch.einsum("hgk,hkv->hgv", qt, S)).reshape(H, V)
        finals.append(S)
    final = torch.stack(finals) if output_final_state else None
    return o.to(v.dtype), final


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
              backend=None):
    """Gated linear attention over whole sequences (training and prefill).

    Args:
        q: ``[B, T, H, K]`` queries.
        k: ``[B, T, Hkv, K]`` keys; ``H % Hkv == 0``.
        v: ``[B, T, Hkv, V]`` values.
        g: ``[B, T, Hkv, K]`` log decays (``<= 0``), preferably fp32.
        scale: multiplies ``q``; default ``K ** -0.5``.
        initial_state: optional ``[N, Hkv, K, V]`` states (N = B, or the number of sequences with cu_seqlens).
        output_final_state: also return the ``[N, Hkv, K, V]`` fp32 states after the last token.
        cu_seqlens: optional ``[N + 1]`` int offsets of sequences packed along T (then B must be 1).
        backend: force ``"triton"`` or ``"reference"``; default chooses per device (``hfzoo.ops.dispatch``).

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, V]`` in ``v``'s dtype; ``final_state`` or None.

    Example::

        >>> B, T, H, K, V = 2, 100, 4, 32, 64
        >>> q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
        >>> v = torch.randn(B, T, H, V)
        >>> g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K)) / 16
        >>> o, s = chunk_gla(q, k, v, g, output_final_state=True)
        >>> o.shape, s.shape
        (torch.Size([2, 100, 4, 64]), torch.Size([2, 4, 32, 64]))
    """
    _check_inputs("chunk_gla", q, k, v, g, initial_state, cu_seqlens)
    if resolve_backend(q, k, v, g, backend=backend, op="chunk_gla") == "reference":
        return naive_recurrent_gla(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    from .gla_chunk import chunk_gla_triton

    return chunk_gla_triton(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)


def fused_recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                        backend=None):
    """Gated linear attention one step at a time (decoding); arguments and returns as ``chunk_gla``."""
    _check_inputs("fused_recurrent_gla", q, k, v, g, initial_state, cu_seqlens)
    if resolve_backend(q, k, v, g, backend=backend, op="fused_recurrent_gla") == "reference":
        return naive_recurrent_gla(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    from .gla_recurrent import fused_recurrent_gla_triton

    return fused_recurrent_gla_triton(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
