"""Property-based tests (hypothesis): the validators on arbitrary offsets, and every kernel against its reference on
random small shapes (the interpreter on CPU). Few examples each, derandomized: same cases on every machine."""

import pytest
import torch
from helpers import rel_err

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hfzoo.ops import validate  # noqa: E402
from hfzoo.ops.launch import count_launches, is_interpreted  # noqa: E402
from hfzoo.ops.triton_shim import HAS_TRITON  # noqa: E402

FEW = settings(max_examples=12, deadline=None, derandomize=True, database=None)
KERNELS = settings(max_examples=6, deadline=None, derandomize=True, database=None)
needs_kernels = pytest.mark.skipif(not (HAS_TRITON and (is_interpreted() or torch.cuda.is_available())),
                                   reason="needs Triton with a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------------- validators


@FEW
@given(offsets=st.lists(st.integers(-3, 40), min_size=2, max_size=8), total=st.integers(0, 40),
       dtype=st.sampled_from([torch.int32, torch.int64]), strided=st.booleans())
def test_cu_seqlens_accepted_exactly_when_rising_from_0_to_total(offsets, total, dtype, strided):
    cu = torch.tensor(offsets, dtype=dtype)
    if strided:  # a view with stride 2
        cu = torch.stack([cu, torch.full_like(cu, 7)], 1)[:, 0]
    valid = offsets[0] == 0 and offsets[-1] == total and all(a <= b for a, b in zip(offsets, offsets[1:]))
    if not valid:
        with pytest.raises(ValueError, match="must rise"):
            validate.check_cu_seqlens("op", cu, total, torch.device("cpu"))
        return
    out, read = validate.check_cu_seqlens("op", cu, total, torch.device("cpu"))
    assert out.dtype == torch.int32 and out.is_contiguous() and out.tolist() == offsets and read == offsets


@FEW
@given(dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32,
                              torch.int64, torch.bool, torch.complex64, torch.uint8]))
def test_dtype_checks_name_the_argument_and_the_supported_dtypes(dtype):
    t = torch.zeros(2, 3, dtype=dtype)
    if dtype in validate.REFERENCE_DTYPES:
        assert validate.check_tensor("op", "x", t) is t
        assert (validate.kernel_dtype_problem(t) is None) == (dtype in validate.KERNEL_DTYPES)
    else:
        with pytest.raises(TypeError, match=r"op: x must be one of float32, float16, bfloat16, float64"):
            validate.check_tensor("op", "x", t)


def test_offsets_of_one_tensor_are_read_once_until_it_changes(monkeypatch):
    cu = torch.tensor([0, 3, 5])
    reads = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or real(self))
    for _ in range(3):
        validate.check_cu_seqlens("op", cu, 5, torch.device("cpu"))
    assert len(reads) == 1
    cu[1] = 9  # changed in place: read (and refused) again
    with pytest.raises(ValueError, match="must rise"):
        validate.check_cu_seqlens("op", cu, 5, torch.device("cpu"))
    with validate.trusted():  # the caller vouches for the offsets: nothing is read
        validate.check_cu_seqlens("op", torch.tensor([0, 9, 5]), 5, torch.device("cpu"))
    assert len(reads) == 2


# ---------------------------------------------------------------------------------------------------- kernels


@needs_kernels
@KERNELS
@given(rows=st.integers(1, 70), D=st.integers(8, 90), weight=st.booleans(), gate=st.booleans(), seed=st.integers(0, 99))
def test_rms_norm_gated_kernel_matches_reference(rows, D, weight, gate, seed):
    # D >= 8: with one or two channels x / rms(x) is almost constant and dx a tiny difference of nearly equal
    # terms, whose relative error says nothing about the kernel (tests/test_rmsnorm.py covers D = 3)
    from hfzoo.ops.rmsnorm import rms_norm_gated

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, D, generator=g).to(DEVICE).requires_grad_()
    w = (torch.rand(D, generator=g) + 0.5).to(DEVICE).requires_grad_() if weight else None
    gt = torch.randn(rows, D, generator=g).to(DEVICE).requires_grad_() if gate else None
    dy = torch.randn(rows, D, generator=g).to(DEVICE)
    inputs = [t for t in (x, w, gt) if t is not None]
    outs = []
    for backend in ("triton", "reference"):
        with count_launches() as n:
            y = rms_norm_gated(x, w, gt, backend=backend)
            outs.append([y, *torch.autograd.grad(y, inputs, dy)])
        assert (n.total() > 0) == (backend == "triton")
    for a, b in zip(*outs):
        assert rel_err(a, b) < 1e-5


@needs_kernels
@KERNELS
@given(rows=st.integers(1, 60), G=st.integers(1, 4), group_size=st.integers(1, 40),
       form=st.sampled_from(["released", "paper"]), shared=st.booleans(), seed=st.integers(0, 99))
def test_group_rational_kernel_matches_reference(rows, G, group_size, form, shared, seed):
    from hfzoo.ops.group_rational import group_rational

    g = torch.Generator().manual_seed(seed)
    D = G * group_size
    x = (torch.randn(rows, D, generator=g) * 1.5).to(DEVICE)
    a = (torch.randn(1 if shared else G, 6, generator=g) * 0.3).to(DEVICE)
    b = (torch.randn(G, 4, generator=g) * 0.3).to(DEVICE)
    dy = torch.randn(rows, D, generator=g).to(DEVICE)
    outs = []
    for backend in ("triton", "reference"):
        leaves = [t.clone().requires_grad_() for t in (x, a, b)]
        y = group_rational(*leaves, num_groups=G, denominator_form=form, backend=backend)
        outs.append([y, *torch.autograd.grad(y, leaves, dy)])
    for name, o, r in zip(("y", "dx", "da", "db"), *outs):
        assert rel_err(o, r) < 3e-5, name


@needs_kernels
@KERNELS
@given(n=st.integers(1, 70), k=st.integers(1, 100), d=st.integers(1, 40), seed=st.integers(0, 99))
def test_nearest_code_kernel_matches_reference_on_exact_scores(n, k, d, seed):
    # small integers: every score is an exact integer in fp32, so both paths must agree bit for bit,
    # ties included (lowest index)
    from hfzoo.ops.nearest_code import nearest_code

    g = torch.Generator().manual_seed(seed)
    z = torch.randint(-3, 4, (n, d), generator=g).float().to(DEVICE)
    c = torch.randint(-3, 4, (k, d), generator=g).float().to(DEVICE)
    i_k, d_k = nearest_code(z, c, backend="triton", return_distance=True, precision="ieee")
    i_r, d_r = nearest_code(z, c, backend="reference", return_distance=True)
    exact = (z.double()[:, None] - c.double()[None]).pow(2).sum(-1)
    assert torch.equal(i_k, i_r) and torch.equal(i_r.cpu(), exact.cpu().argmin(1))
    assert torch.equal(d_k, d_r)


@needs_kernels
@KERNELS
@given(lengths=st.lists(st.integers(0, 24), min_size=1, max_size=4).filter(lambda ls: sum(ls) > 0),
       H=st.integers(1, 3), D=st.sampled_from([8, 16, 20]), seed=st.integers(0, 99))
def test_varlen_alibi_attention_kernel_matches_reference(lengths, H, D, seed):
    from hfzoo.ops.varlen_alibi_attention import alibi_slopes, varlen_alibi_attention

    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q, k, v, do = (torch.randn(T, H, D, generator=g).to(DEVICE) for _ in range(4))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    slopes = torch.tensor(alibi_slopes(H), device=DEVICE)
    outs = []
    for backend in ("triton", "reference"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        o = varlen_alibi_attention(*leaves, cu, max(lengths), slopes, backend=backend)
        outs.append([o, *torch.autograd.grad(o, leaves, do)])
    tol = 1e-5 if DEVICE == "cpu" else 5e-3
    for name, a, b in zip(("o", "dq", "dk", "dv"), *outs):
        assert rel_err(a, b) < tol, name


@needs_kernels
@KERNELS
@given(lengths=st.lists(st.integers(0, 20), min_size=1, max_size=3).filter(lambda ls: sum(ls) > 0),
       group=st.sampled_from([1, 2, 3]), Hkv=st.integers(1, 2), K=st.sampled_from([8, 16]),
       V=st.sampled_from([8, 24, 72]), seed=st.integers(0, 99))
def test_fused_recurrent_gla_kernel_matches_definition(lengths, group, Hkv, K, V, seed):
    import torch.nn.functional as F

    from hfzoo.ops.gla import fused_recurrent_gla, naive_recurrent_gla

    g = torch.Generator().manual_seed(seed)
    T, N = sum(lengths), len(lengths)
    q = torch.randn(1, T, Hkv * group, K, generator=g)
    k, v = torch.randn(1, T, Hkv, K, generator=g), torch.randn(1, T, Hkv, V, generator=g)
    gate = F.logsigmoid(torch.randn(1, T, Hkv, K, generator=g))
    h0 = torch.randn(N, Hkv, K, V, generator=g)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    args = [t.to(DEVICE) for t in (q, k, v, gate)]
    with torch.no_grad():
        o, ht = fused_recurrent_gla(*args, initial_state=h0.to(DEVICE), output_final_state=True,
                                    cu_seqlens=cu.to(DEVICE), backend="triton")
    o2, ht2 = naive_recurrent_gla(q, k, v, gate, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    assert rel_err(o, o2) < 1e-5 and rel_err(ht, ht2) < 1e-5
