"""Gated linear attention (GLA): the recurrence, its readable reference, and the public ops.

Per head, with a per-key-dimension decay ``alpha_t = exp(g_t)`` (``g_t <= 0``, log space):

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t          (S: [K, V])
    o_t = scale * q_t S_t

``chunk_gla`` is the training form (chunked, parallel over the sequence); ``fused_recurrent_gla`` is the
decoding form (one step at a time, state in registers). Both take the same arguments and agree with
``naive_recurrent_gla`` below, which is the definition (and the test oracle). ``chunk_gla_torch`` is the same
chunked computation in plain PyTorch: the reference backend that CPU users get, far faster than the loop.
Triton kernels: ``gla_chunk.py`` (forward and backward) and ``gla_recurrent.py`` (decoding).

Inputs are checked by ``validate.py`` (dtypes: fp32/fp16/bf16 on every path, fp64 on the reference only;
``cu_seqlens`` offsets rising from 0 to T; ``g <= 0`` where checking is free). NaN: a NaN in one sequence (batch
row or ``cu_seqlens`` segment) never reaches another, on both paths; inside a sequence it reaches every later
output through the state, and the chunked forms (kernel and reference) also give NaN to the earlier tokens of
the chunk that holds it (a causally masked score is still multiplied: 0 * NaN).

Grouped-query heads: ``q`` has H heads, ``k``, ``v``, ``g`` may have ``Hkv`` heads with ``H % Hkv == 0``;
query head ``h`` reads the state of key/value head ``h // (H // Hkv)``. States have ``Hkv`` heads.
"""

from __future__ import annotations

import torch

from .validate import check_cu_seqlens, check_nonpositive, check_shape, check_tensor, kernel_dtype_problem, pick_backend


def _check_inputs(name, q, k, v, g, initial_state, cu_seqlens, backend):
    """Validate the arguments (``validate.py``); return ``(backend, cu_seqlens, offsets)``.

    ``cu_seqlens`` comes back as a contiguous int32 tensor on the inputs' device, ``offsets`` as its values
    when they were read (for CPU tensors always, for CUDA ones once per tensor; see ``validate.py``).
    """
    for arg, t in (("q", q), ("k", k), ("v", v), ("g", g)):
        check_tensor(name, arg, t, dims=4, device=q.device if arg != "q" and isinstance(q, torch.Tensor) else None)
    B, T, H, K = q.shape
    Hkv = k.shape[2]
    if k.shape != (B, T, Hkv, K) or g.shape != k.shape:
        raise ValueError(f"{name}: k and g must have shape {(B, T, Hkv, K)} (q is {tuple(q.shape)}); "
                         f"got k {tuple(k.shape)}, g {tuple(g.shape)}")
    if v.shape[:3] != (B, T, Hkv):
        raise ValueError(f"{name}: v must be [B, T, Hkv, V] = {(B, T, Hkv)} + (V,); got {tuple(v.shape)}")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"{name}: q heads ({H}) must be a multiple of key/value heads ({Hkv})")
    N, offsets = B, None
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"{name}: with cu_seqlens the batch must be packed into B=1; got B={B}")
        cu_seqlens, offsets = check_cu_seqlens(name, cu_seqlens, T, q.device)
        N = cu_seqlens.numel() - 1
    if initial_state is not None:
        check_tensor(name, "initial_state", initial_state, device=q.device)
        check_shape(name, "initial_state", initial_state, (N, Hkv, K, v.shape[-1]), "[N, Hkv, K, V]")
    check_nonpositive(name, "g", g)
    tensors = [t for t in (q, k, v, g, initial_state) if t is not None]
    choice = pick_backend(name, tensors, backend, kernel_dtype_problem(*tensors))
    return choice, cu_seqlens, offsets


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


def chunk_gla_torch(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                    chunk_size: int = 32):
    """The chunked form in plain PyTorch: same results as ``naive_recurrent_gla`` with matmuls per chunk.

    Computes in fp32 (fp64 if ``v`` is fp64) and is differentiable by autograd; it is the reference backend
    of ``chunk_gla`` (CPU users) because it is far faster than the token loop. Inside a chunk the decay
    between positions i >= j is ``exp(min(G_i - G_j, 0))`` of the cumulative gates, so nothing overflows.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    if cu_seqlens is None:
        o, ht = _chunk_gla_dense(q, k, v, g, scale, initial_state, chunk_size, dtype)
    else:
        offsets = cu_seqlens.tolist()
        outs, finals = [], []
        for n in range(len(offsets) - 1):
            s, e = offsets[n], offsets[n + 1]
            h0 = initial_state[n:n + 1] if initial_state is not None else None
            o_n, ht_n = _chunk_gla_dense(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], scale, h0, chunk_size, dtype)
            outs.append(o_n)
            finals.append(ht_n)
        o = torch.cat(outs, dim=1) if outs else q.new_zeros(B, T, H, V, dtype=dtype)
        ht = torch.cat(finals, dim=0) if finals else None
    return o.to(v.dtype), (ht.float() if output_final_state else None)


_SAFE_LOG_DECAY = 40.0  # in-chunk log decay up to which the factorised (matmul) form is used


def _chunk_gla_dense(q, k, v, g, scale, initial_state, C, dtype):
    B, T, H, K = q.shape
    Hkv, V = k.shape[2], v.shape[-1]
    G = H // Hkv
    q = q.to(dtype).reshape(B, T, Hkv, G, K)
    k, v, g = k.to(dtype), v.to(dtype), g.to(dtype)
    S = torch.zeros(B, Hkv, K, V, dtype=dtype, device=q.device)
    if initial_state is not None:
        S = S + initial_state.to(dtype)
    outs = []
    for s in range(0, T, C):
        e = min(s + C, T)
        qc, kc, vc = q[:, s:e], k[:, s:e], v[:, s:e]
        gc = g[:, s:e].cumsum(1)  # [B, L, Hkv, K]
        L = e - s
        # state before the chunk, seen through the decay accumulated so far in the chunk
        o = torch.einsum("blhgk,bhkv->blhgv", qc * gc.exp()[:, :, :, None], S)
        # inside the chunk: A[i, j] = sum_k q_ik k_jk exp(G_ik - G_jk) for j <= i
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        if bool((gc[:, -1] >= -_SAFE_LOG_DECAY).all()):
            # exp(G_i - G_j) = exp(G_i) exp(-G_j) with exp(-G_j) <= e^40: two matmul operands, no overflow
            A = torch.einsum("bihgk,bjhk->bhgij", qc * gc.exp()[:, :, :, None], kc * (-gc).exp())
            A = torch.where(causal, A, 0.0)
        else:  # strong decay: the exact [L, L, K] decay tensor, each exponent clamped at 0
            decay = (gc[:, :, None] - gc[:, None]).clamp(max=0).exp() * causal[None, :, :, None, None]
            A = torch.einsum("bihgk,bijhk->bhgij", qc, kc[:, None] * decay)
        o = o + torch.einsum("bhgij,bjhv->bihgv", A, vc)
        outs.append(scale * o.reshape(B, L, H, V))
        gl = gc[:, -1]  # [B, Hkv, K]
        S = S * gl.exp()[..., None] + torch.einsum("bjhk,bjhv->bhkv", kc * (gl[:, None] - gc).exp(), vc)
    o = torch.cat(outs, dim=1) if outs else q.new_zeros(B, 0, H, V)
    return o, S


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
              backend=None):
    """Gated linear attention over whole sequences (training and prefill).

    Args:
        q: ``[B, T, H, K]`` queries.
        k: ``[B, T, Hkv, K]`` keys; ``H % Hkv == 0``.
        v: ``[B, T, Hkv, V]`` values.
        g: ``[B, T, Hkv, K]`` log decays (``<= 0``; positive entries are refused where checking is free, see
            ``hfzoo.ops.validate``), preferably fp32.
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
    choice, cu_seqlens, offsets = _check_inputs("chunk_gla", q, k, v, g, initial_state, cu_seqlens, backend)
    if choice == "reference":
        return chunk_gla_torch(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    from .gla_chunk import chunk_gla_triton

    if offsets is not None and cu_seqlens.is_cuda:
        # the chunked kernels read the offsets on the host to lay out their chunks; they were read once
        # already (validation), so hand them over as a CPU tensor: no second device sync
        cu_seqlens = torch.tensor(offsets, dtype=torch.int32)
    return chunk_gla_triton(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)


def fused_recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                        backend=None):
    """Gated linear attention one step at a time (decoding); arguments and returns as ``chunk_gla``."""
    choice, cu_seqlens, _ = _check_inputs("fused_recurrent_gla", q, k, v, g, initial_state, cu_seqlens, backend)
    if choice == "reference":
        # a few decoding steps: the token loop; a long prompt: the chunked form (same results, much faster)
        ref = naive_recurrent_gla if q.shape[1] <= 64 else chunk_gla_torch
        return ref(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    from .gla_recurrent import fused_recurrent_gla_triton

    return fused_recurrent_gla_triton(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
