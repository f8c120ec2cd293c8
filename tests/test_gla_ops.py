"""GLA ops: Triton chunked/recurrent kernels (interpreter on CPU, native on GPU) against the token-loop definition."""

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from hfzoo.ops.gla import chunk_gla, chunk_gla_torch, fused_recurrent_gla, naive_recurrent_gla
from hfzoo.ops.launch import count_launches


def _inputs(B, T, H, Hkv, K, V, N=None, decay=1.0, device="cpu", dtype=torch.float32, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    q, k, v = r(B, T, H, K), r(B, T, Hkv, K), r(B, T, Hkv, V)
    g = F.logsigmoid(r(B, T, Hkv, K)) * decay / 4
    h0 = r(N or B, Hkv, K, V)
    to = lambda x, dt: x.to(device=device, dtype=dt)
    return to(q, dtype), to(k, dtype), to(v, dtype), to(g, torch.float32), to(h0, torch.float32)


def _run(fn, q, k, v, g, h0, cu, do, dht, **kw):
    """Output, final state and the gradients of <o, do> + <ht, dht> for every input that was given."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, g)]
    h0 = h0.detach().clone().requires_grad_() if h0 is not None else None
    o, ht = fn(*leaves, None, h0, dht is not None, cu, **kw)
    loss = (o.float() * do.float()).sum()
    if dht is not None:
        loss = loss + (ht * dht).sum()
    grads = torch.autograd.grad(loss, leaves + ([h0] if h0 is not None else []))
    return [o, *([ht] if dht is not None else []), *grads]


def _check(q, k, v, g, h0=None, cu=None, final=True, tol=2e-5):
    do = torch.randn(*q.shape[:3], v.shape[-1])
    N = q.shape[0] if cu is None else cu.numel() - 1
    dht = torch.randn(N, *k.shape[2:], v.shape[-1]) if final else None
    ours = _run(chunk_gla, q, k, v, g, h0, cu, do, dht, backend="triton")
    ref = _run(naive_recurrent_gla, q, k, v, g, h0, cu, do, dht)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("T", [1, 37, 130])
def test_chunk_matches_definition(T):
    q, k, v, g, h0 = _inputs(2, T, 2, 2, 32, 16, seed=T)
    _check(q, k, v, g, h0)


def test_chunk_without_states():
    q, k, v, g, _ = _inputs(1, 70, 2, 2, 16, 32, seed=1)
    _check(q, k, v, g, None, final=False)


def test_chunk_varlen_gqa_with_states():
    # sequences of 10, 65 (crosses a chunk boundary) and 25 tokens; 4 query heads over 2 key/value heads
    cu = torch.tensor([0, 10, 75, 100])
    q, k, v, g, h0 = _inputs(1, 100, 4, 2, 16, 16, N=3, seed=2)
    _check(q, k, v, g, h0, cu)


def test_chunk_long_varlen_dg():
    # dg's share from later chunks comes from each chunk's states: many chunks, sequences ending mid-chunk
    cu = torch.tensor([0, 70, 75, 330])
    q, k, v, g, h0 = _inputs(1, 330, 2, 1, 16, 16, N=3, seed=9)
    _check(q, k, v, g, h0, cu)
    _check(q, k, v, g, None, cu, final=False)


def _spans(g, cu, size):
    # largest log decay inside any `size`-token piece of a chunk (per key column), over the whole input
    ends = cu.tolist() if cu is not None else [0, g.shape[1]]
    worst = 0.0
    for s, e in zip(ends[:-1], ends[1:]):
        for c0 in range(s, e, 64):
            for p0 in range(c0, min(c0 + 64, e), size):
                worst = max(worst, -float(g[0, p0:min(p0 + size, c0 + 64, e)].sum(0).min()))
    return worst


# The intra-chunk scores take one of four forms per chunk and key block (gla_chunk's docstring): a whole-chunk
# matmul with the reference at the chunk's start (decay within e^-40) or halfway (within e^-80), 16-token
# sub-chunk matmuls (each sub-chunk within e^-40), or sub-chunk matmuls off the diagonal with the diagonal
# blocks elementwise. "mixed" puts ordinary and strong channels in one key block and in the two blocks of K = 80.
@pytest.mark.parametrize("regime", ["halfway", "sub_chunks", "exact_diagonal", "mixed"])
def test_chunk_strong_decay(regime):
    cu = torch.tensor([0, 37, 150, 163])  # odd lengths, sequences ending mid-chunk and mid-sub-chunk
    K = 80 if regime == "mixed" else 16
    decay = {"halfway": 4.0, "sub_chunks": 8.0, "exact_diagonal": 40.0, "mixed": 1.0}[regime]
    q, k, v, g, h0 = _inputs(1, 163, 4, 2, K, 16, N=3, decay=decay, seed=3)
    if regime == "mixed":  # per-channel gate normalisers from 1/16 to 10 (log decays ~-0.05 to ~-8 per token)
        g = g * torch.logspace(-1.2, 1.0, K)[torch.randperm(K, generator=torch.Generator().manual_seed(0))]
    chunk, sub = _spans(g, cu, 64), _spans(g, cu, 16)
    expect = {"halfway": 40 < chunk <= 80, "sub_chunks": chunk > 80 and sub <= 40}.get(regime, sub > 40)
    assert expect, (chunk, sub)
    _check(q, k, v, g, h0, cu)


@pytest.mark.parametrize("split", [{"split": False}, {"split": True}, {"split": True, "sub_BK": 16}])
def test_chunk_dqk_one_kernel_per_form(split):
    # the intra-chunk kernels (A in the forward, dq/dk in the backward) either as one kernel holding both intra
    # forms or as a pair (the whole-chunk form's kernel, the sub-chunk forms' kernel; each skips the other's
    # chunks): chunks of every form side by side, two key blocks (K = 80), sequences ending mid-chunk; the
    # sub-chunk dq/dk kernel with its own key block
    from hfzoo.ops.launch import tuning

    cu = torch.tensor([0, 37, 150, 163])
    q, k, v, g, h0 = _inputs(1, 163, 4, 2, 80, 16, N=3, seed=5)
    g = g * torch.logspace(-1.2, 1.5, 80)[torch.randperm(80, generator=torch.Generator().manual_seed(1))]
    g[:, 40:] = g[:, 40:] / 64  # the chunks after token 40: whole-chunk form in some key blocks
    worst = [-float(g[0, c0:min(c0 + 64, e)].sum(0).min()) for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())
             for c0 in range(s, e, 64)]  # each chunk's strongest column decay
    assert min(worst) < 80 and _spans(g, cu, 16) > 40, worst  # whole-chunk chunks and exact diagonal blocks
    with tuning({"gla.bwd_dqk": split, "gla.fwd_A": {"split": split["split"]}}), count_launches() as n:
        _check(q, k, v, g, h0, cu)
    assert n["gla.bwd_dqk"] == n["gla.fwd_A"] == (2 if split["split"] else 1)


def test_chunk_backward_uses_the_forward_calls_launch_settings():
    # on a GPU autograd runs the backward on its own thread, where the caller's tuning() blocks are not seen: the
    # settings in force at the forward call must be the backward's (here: its block has closed before backward)
    import threading

    from hfzoo.ops.launch import tuning

    q, k, v, g, _ = _inputs(1, 70, 2, 2, 16, 16, seed=12)
    leaves = [t.requires_grad_() for t in (q, k, v, g)]
    with tuning({"gla.bwd_dqk": {"split": True}}):
        o, _ = chunk_gla(*leaves, backend="triton")
    with count_launches() as n:
        worker = threading.Thread(target=lambda: o.sum().backward())
        worker.start()
        worker.join()
    assert n["gla.bwd_dqk"] == 2 and all(t.grad is not None for t in leaves)


def test_chunk_inference_matches_training_forward():
    # under no_grad the forward keeps no intra-chunk scores for a backward; outputs must not change
    q, k, v, g, h0 = _inputs(2, 70, 2, 2, 16, 32, seed=11)
    with torch.no_grad():
        o, ht = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, backend="triton")
    o2, ht2 = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    assert rel_err(o, o2) < 2e-5 and rel_err(ht, ht2) < 2e-5


def test_chunk_odd_head_dims():
    # K = 80 spans two 64-wide key blocks (the second one partly masked); V = 24 is no power of two
    q, k, v, g, h0 = _inputs(1, 70, 2, 2, 80, 24, seed=4)
    _check(q, k, v, g, h0)


@pytest.mark.parametrize("decay", [1.0, 12.0])  # factorised matmul path / exact path for strong decay
def test_torch_chunked_reference_matches_definition(decay):
    cu = torch.tensor([0, 3, 40, 90])
    q, k, v, g, h0 = _inputs(1, 90, 4, 2, 16, 24, N=3, decay=decay, seed=5)
    do, dht = torch.randn(1, 90, 4, 24), torch.randn(3, 2, 16, 24)
    ours = _run(chunk_gla_torch, q, k, v, g, h0, cu, do, dht)
    ref = _run(naive_recurrent_gla, q, k, v, g, h0, cu, do, dht)
    for a, b in zip(ours, ref):
        assert rel_err(a, b) < 1e-5


def test_reference_backend_is_chunked_torch():
    q, k, v, g, h0 = _inputs(2, 50, 2, 2, 16, 16, seed=6)
    o, ht = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, backend="reference")
    o2, ht2 = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    assert rel_err(o, o2) < 1e-5 and rel_err(ht, ht2) < 1e-5


@pytest.mark.parametrize("cu", [None, [0, 1, 9, 20]])
def test_recurrent_matches_definition(cu):
    cu = torch.tensor(cu) if cu is not None else None
    B = 2 if cu is None else 1
    q, k, v, g, h0 = _inputs(B, 20, 4, 2, 32, 48, N=3 if cu is not None else None, decay=3.0, seed=7)
    with torch.no_grad():
        o, ht = fused_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                                    backend="triton")
    o2, ht2 = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    assert rel_err(o, o2) < 1e-5 and rel_err(ht, ht2) < 1e-5


def test_recurrent_gradients_use_chunked_kernels():
    q, k, v, g, h0 = _inputs(1, 9, 2, 2, 16, 16, seed=8)
    do, dht = torch.randn(1, 9, 2, 16), torch.randn(1, 2, 16, 16)
    ours = _run(fused_recurrent_gla, q, k, v, g, h0, None, do, dht, backend="triton")
    ref = _run(naive_recurrent_gla, q, k, v, g, h0, None, do, dht)
    for a, b in zip(ours, ref):
        assert rel_err(a, b) < 2e-5


def test_bad_inputs_are_named():
    q, k, v, g, h0 = _inputs(2, 8, 4, 2, 16, 16)
    with pytest.raises(ValueError, match="k and g"):
        chunk_gla(q, k[..., :8], v, g)
    with pytest.raises(ValueError, match="v must be"):
        chunk_gla(q, k, v[:, :4], g)
    with pytest.raises(ValueError, match="multiple"):
        chunk_gla(q[:, :, :3], k, v, g)
    with pytest.raises(ValueError, match="initial_state"):
        chunk_gla(q, k, v, g, initial_state=h0[:1])
    with pytest.raises(ValueError, match="cu_seqlens"):
        chunk_gla(q, k, v, g, cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        fused_recurrent_gla(q[:1], k[:1], v[:1], g[:1], cu_seqlens=torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="cu_seqlens"):
        chunk_gla(q[:1], k[:1], v[:1], g[:1], cu_seqlens=torch.tensor([0.0, 8.0]))
    with pytest.raises(TypeError, match="q"):
        chunk_gla(q.numpy(), k, v, g)
    with pytest.raises(TypeError, match="v"):
        fused_recurrent_gla(q, k, v.long(), g)


# ----------------------------------------------------------------------------------------------------
# Program paths the small cases above do not reach: several value blocks, GQA groups of 3 and 4.


def test_chunk_several_value_blocks_and_gqa_group_of_3():
    # V = 144: three 64-wide value blocks in the state scans and dq/dk, two 128-wide ones in the output and dv
    # kernels (the last partly masked); 6 query heads over 2 key/value heads; varlen with a chunk crossing
    cu = torch.tensor([0, 5, 70])
    q, k, v, g, h0 = _inputs(1, 70, 6, 2, 16, 144, N=2, seed=12)
    _check(q, k, v, g, h0, cu)


def test_chunk_gqa_group_of_4():
    q, k, v, g, h0 = _inputs(2, 40, 4, 1, 16, 16, seed=13)
    _check(q, k, v, g, h0)


def test_recurrent_several_value_blocks_and_gqa_group_of_3():
    # V = 144 with K = 32: 64-wide value blocks (three, the last partly masked); 6 query heads over 2
    cu = torch.tensor([0, 4, 4, 11])  # an empty sequence in the middle
    q, k, v, g, h0 = _inputs(1, 11, 6, 2, 32, 144, N=3, decay=3.0, seed=14)
    with torch.no_grad(), count_launches() as n:
        o, ht = fused_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                                    backend="triton")
    assert n == {"gla.fused_recurrent": 1}
    o2, ht2 = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    assert rel_err(o, o2) < 1e-5 and rel_err(ht, ht2) < 1e-5
    assert torch.equal(ht[1], h0[1])  # the empty sequence keeps its initial state


# ----------------------------------------------------------------------------------------------------
# Validation: bad offsets, layouts, dtypes, gate sign, empty inputs, NaN isolation.

OPS = [chunk_gla, fused_recurrent_gla]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("bad", [[0, 150, 100], [0, 50, 20, 100], [0, 40], [5, 100], [0, 100, 100, 101]])
def test_offsets_that_do_not_rise_from_0_to_T_are_refused(op, backend, bad):
    q, k, v, g, _ = _inputs(1, 100, 2, 2, 16, 16)
    with pytest.raises(ValueError, match="cu_seqlens must rise"):
        op(q, k, v, g, cu_seqlens=torch.tensor(bad), backend=backend)


@pytest.mark.parametrize("op", OPS)
def test_strided_int32_offsets_are_made_contiguous(op):
    cu = torch.tensor([0, 3, 9, 20], dtype=torch.int32)
    strided = torch.stack([cu, torch.full_like(cu, 12345)], 1)[:, 0]
    assert not strided.is_contiguous()
    q, k, v, g, h0 = _inputs(1, 20, 2, 2, 16, 16, N=3, seed=15)
    with torch.no_grad():
        o, ht = op(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=strided, backend="triton")
    o2, ht2 = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    assert rel_err(o, o2) < 2e-5 and rel_err(ht, ht2) < 2e-5


@pytest.mark.parametrize("op", OPS)
def test_dtypes(op):
    q, k, v, g, _ = _inputs(1, 9, 2, 2, 16, 16, seed=16)
    # float64: the reference under auto (computed in float64), a TypeError when the kernels are forced
    d = [t.double() for t in (q, k, v, g)]
    with count_launches() as n:
        o, _ = op(*d)
    assert n.total() == 0 and o.dtype == torch.float64
    assert rel_err(o, naive_recurrent_gla(*d)[0]) < 1e-6
    with pytest.raises(TypeError, match="float64"):
        op(*d, backend="triton")
    with pytest.raises(TypeError, match="float64"):
        op(q, k, v, g.double(), backend="triton")
    for bad in (torch.int64, torch.bool, torch.complex64):
        with pytest.raises(TypeError, match="k must be one of"):
            op(q, k.to(bad), v, g)
    with pytest.raises(TypeError, match="initial_state"):
        op(q, k, v, g, initial_state=torch.zeros(1, 2, 16, 16, dtype=torch.long))


@pytest.mark.parametrize("op", OPS)
def test_positive_gates_are_refused_on_cpu(op):
    q, k, v, g, _ = _inputs(1, 9, 2, 2, 16, 16)
    g = g.clone()
    g[0, 3, 1, 2] = 0.5
    for backend in ("triton", "reference"):
        with pytest.raises(ValueError, match="g must be log decays <= 0"):
            op(q, k, v, g, backend=backend)
    g[0, 3, 1, 2] = 0.0  # zero (no decay) is fine
    op(q, k, v, g)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_empty_sequences(op, backend):
    # T = 0: empty output, final state = initial state; with cu_seqlens, empty sequences among others
    q, k, v, g, h0 = _inputs(2, 0, 2, 2, 16, 16)
    o, ht = op(q, k, v, g, initial_state=h0, output_final_state=True, backend=backend)
    assert o.shape == (2, 0, 2, 16) and torch.equal(ht, h0)
    cu = torch.tensor([0, 0, 7, 7])
    q, k, v, g, h0 = _inputs(1, 7, 2, 2, 16, 16, N=3, seed=17)
    with torch.no_grad():
        o, ht = op(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu, backend=backend)
    o2, ht2 = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    assert rel_err(o, o2) < 2e-5 and rel_err(ht, ht2) < 2e-5
    assert torch.equal(ht[0], h0[0]) and torch.equal(ht[2], h0[2])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_nan_in_one_sequence_stays_there(op, backend):
    # sequences of 70 (two chunks) and 30 tokens; a NaN value at token 80 (the second sequence)
    cu = torch.tensor([0, 70, 100])
    q, k, v, g, h0 = _inputs(1, 100, 2, 2, 16, 16, N=2, seed=18)
    with torch.no_grad():
        clean, ht_clean = op(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu, backend=backend)
        v = v.clone()
        v[0, 80, 1, 3] = float("nan")
        o, ht = op(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu, backend=backend)
    assert torch.equal(o[:, :70], clean[:, :70]) and torch.equal(ht[0], ht_clean[0])  # the other sequence
    assert torch.isnan(o[0, 80:, 1]).any(dim=-1).all() and torch.isnan(ht[1, 1]).any()  # from its position on
    assert torch.equal(o[0, 70:, 0], clean[0, 70:, 0]) and torch.equal(ht[1, 0], ht_clean[1, 0])  # other head


def test_bad_shapes_and_devices_are_named():
    q, k, v, g, h0 = _inputs(2, 8, 4, 2, 16, 16)
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        chunk_gla(q[0], k, v, g)
    with pytest.raises(ValueError, match="q heads"):
        chunk_gla(q, k[:, :, :0], v[:, :, :0], g[:, :, :0])
    with pytest.raises(ValueError, match="B=1"):
        chunk_gla(q, k, v, g, cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="meta"):
        chunk_gla(q, k.to("meta"), v, g)


# ----------------------------------------------------------------------------------------------------
# GPU: half precision at realistic sizes against the chunked reference in fp64.


def _gpu_check(B, T, H, Hkv, K, V, dtype, cu=None, decay=1.0, tol=None, dg_tol=None):
    # Tolerances from the H200 run of 2026-11-28 (benchmarks/NOTES.md): o, states, dq, dk, dv reach
    # 1.5e-3 (fp32 with tf32 matmuls) and 3.4e-3 (bf16/fp16). The gate gradient is a reverse cumsum of
    # q*dq - k*dk, whose terms largely cancel, so its relative error is ~10x larger (3.7e-2 in bf16).
    N = None if cu is None else len(cu) - 1
    q, k, v, g, h0 = _inputs(B, T, H, Hkv, K, V, N=N, decay=decay, device="cuda", dtype=dtype)
    cu = torch.tensor(cu, device="cuda") if cu is not None else None
    do = torch.randn(B, T, H, V, device="cuda", dtype=dtype)
    dht = torch.randn_like(h0)
    ours = _run(chunk_gla, q, k, v, g, h0, cu, do, dht, backend="triton")
    ref = _run(chunk_gla_torch, *(t.double() for t in (q, k, v, g, h0)), cu, do.double(), dht.double())
    tol = tol or (5e-3 if dtype == torch.float32 else 2e-2)
    dg_tol = dg_tol or (2e-2 if dtype == torch.float32 else 8e-2)
    names = ["o", "ht", "dq", "dk", "dv", "dg", "dh0"]
    errs = {n: rel_err(a, b) for n, a, b in zip(names, ours, ref)}
    print(f"B{B} T{T} H{H}/{Hkv} K{K} V{V} {dtype} decay x{decay}:", {n: f"{e:.1e}" for n, e in errs.items()})
    assert ours[0].dtype == dtype and ours[1].dtype == torch.float32
    assert all(e < (dg_tol if n == "dg" else tol) for n, e in errs.items()), errs


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_chunk_h16_d128(dtype):
    _gpu_check(2, 1000, 16, 16, 128, 128, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_chunk_gqa_varlen_k256_v512(dtype):
    _gpu_check(1, 900, 4, 2, 256, 512, dtype, cu=[0, 100, 163, 700, 900])


@pytest.mark.gpu
def test_gpu_chunk_strong_decay():
    # ~-8 log decay per token: sub-chunk matmuls with exact diagonal blocks, bf16 inputs (the former all-exact
    # path measured <= 2.4e-3 on everything but dg). With such decay the true gate gradient is tiny next to its
    # terms, so dg gets a looser bound (its share from later chunks comes from the same bf16 state buffers as dk's)
    _gpu_check(2, 300, 4, 4, 128, 64, torch.bfloat16, decay=40.0, tol=1e-2, dg_tol=8e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_chunk_logsigmoid_gates(dtype):
    # gates logsigmoid(x) without a normaliser (~-0.8 per token, ~-50 per chunk): the halfway reference point
    _gpu_check(2, 1000, 16, 16, 128, 128, dtype, decay=4.0)


@pytest.mark.gpu
def test_gpu_chunk_sub_chunk_gates():
    # 2 * logsigmoid(x) (~-1.6 per token): chunks beyond e^-80, sub-chunks within e^-40 (diagonal blocks by matmul)
    _gpu_check(2, 1000, 16, 16, 128, 128, torch.bfloat16, decay=8.0)


@pytest.mark.gpu
def test_gpu_long_sequence_stays_finite_and_accurate():
    q, k, v, g, h0 = _inputs(1, 65536, 4, 4, 128, 128, device="cuda", dtype=torch.bfloat16)
    q.requires_grad_()
    o, ht = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    (o.float().square().mean() + ht.square().mean()).backward()
    assert torch.isfinite(o).all() and torch.isfinite(ht).all() and torch.isfinite(q.grad).all()
    with torch.no_grad():
        o2, ht2 = chunk_gla_torch(q, k, v, g, initial_state=h0, output_final_state=True, chunk_size=64)
    assert rel_err(o, o2) < 2e-2 and rel_err(ht, ht2) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64])
def test_gpu_recurrent_decode_step(batch):
    q, k, v, g, h0 = _inputs(batch, 1, 4, 4, 256, 512, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        o, ht = fused_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    o2, ht2 = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    assert rel_err(o, o2) < 1e-2 and rel_err(ht, ht2) < 1e-5
