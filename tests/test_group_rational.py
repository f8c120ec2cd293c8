"""Group-rational activation (KAT's GR-KAN): Triton kernels vs the PyTorch reference, the denominator forms,
the shipped initial coefficients, and argument checks."""

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from hfzoo.ops.group_rational import RATIONAL_INITS, group_rational, group_rational_reference
from hfzoo.ops.launch import count_launches, tuning

BWD_KERNELS = ("group_rational.bwd_fp32", "group_rational.bwd_16bit")


def _bwd_tuning(**settings):
    return tuning({name: settings for name in BWD_KERNELS})


def _direct(x, a, b, G, form):
    """Straight float64 evaluation of the two formulas, independent of the reference's code."""
    x = x.double()
    D = x.shape[-1]
    g = torch.arange(D) // (D // G)
    a = a.double().expand(G, 6)[g]          # [D, 6]
    b = b.double().expand(G, 4)[g]          # [D, 4]
    p = sum(a[:, i] * x ** i for i in range(6))
    if form == "released":
        q = 1 + sum(b[:, i].abs() * x.abs() ** (i + 1) for i in range(4))
    else:
        q = 1 + sum(b[:, i] * x ** (i + 1) for i in range(4)).abs()
    return p / q


def _run(x, a, b, G, form, backend, dy):
    xs = [t.clone().requires_grad_() for t in (x, a, b)]
    y = group_rational(*xs, num_groups=G, denominator_form=form, backend=backend)
    return (y, *torch.autograd.grad(y, xs, dy))


CASES = [  # shape, groups, numerator rows (1 = shared, as in the released checkpoints)
    ((37, 48), 8, 1),
    ((3, 5, 24), 4, 4),
    ((2, 9, 300), 6, 1),
    ((1, 40), 1, 1),
    ((4, 520), 4, 4),   # 130 chunks of 4 columns: 9 tiles of 16 chunks, the last one partly masked
]


@pytest.mark.parametrize("chunk,prefetch", [(1, False), (4, True)])
@pytest.mark.parametrize("form", ["released", "paper"])
@pytest.mark.parametrize("shape,G,arows", CASES)
def test_kernel_matches_reference_fp32(shape, G, arows, form, chunk, prefetch):
    # backward variants: coefficient sums folded over 1 or up to 4 columns; next row block loaded ahead
    torch.manual_seed(sum(shape) + G + len(form))
    x = torch.randn(*shape) * 1.5
    a = torch.randn(arows, 6) * 0.3
    b = torch.randn(G, 4) * 0.3
    b[0, 1] = 0.0           # a zero coefficient: |.| derivative convention
    x.view(-1)[:3] = 0.0    # zero inputs: sign(0) convention
    dy = torch.randn(shape)
    with _bwd_tuning(max_chunk=chunk, prefetch=prefetch), count_launches() as n:
        out = _run(x, a, b, G, form, "triton", dy)
    assert n == {"group_rational.fwd": 1, "group_rational.bwd_fp32": 1, "group_rational.coef_grad": 1}
    ref = _run(x, a, b, G, form, "reference", dy)
    for name, o, r in zip(("y", "dx", "dnumerator", "ddenominator"), out, ref):
        assert o.shape == r.shape, name
        assert rel_err(o, r) < 2e-5, (name, rel_err(o, r))
    assert rel_err(ref[0], _direct(x, a, b, G, form)) < 1e-6


@pytest.mark.parametrize("prefetch", [False, True])
def test_backward_programs_walking_several_row_blocks(prefetch):
    # 300 rows of 96 channels: 4 programs (2 per SM of the interpreter's 2-SM machine), each walking 80 rows in
    # 8-row blocks; the last program's range is cut by M. Coefficient sums over 3 groups of 32 channels.
    import hfzoo.ops.group_rational as gr_mod

    torch.manual_seed(7)
    M, D, G = 300, 96, 3
    x, dy = torch.randn(M, D) * 1.5, torch.randn(M, D)
    a, b = torch.randn(G, 6) * 0.3, torch.randn(G, 4) * 0.3
    calls = []
    real = gr_mod.launch

    def spy(name, kernel, grid, *args, **kwargs):
        calls.append((name, grid, kwargs.get("BLOCK_M"), args[11] if name.startswith("group_rational.bwd") else None))
        return real(name, kernel, grid, *args, **kwargs)

    gr_mod.launch = spy
    try:
        with _bwd_tuning(prefetch=prefetch):
            out = _run(x, a, b, G, "released", "triton", dy)
    finally:
        gr_mod.launch = real
    (_, grid, block_m, rows_per_program), = [c for c in calls if c[0] == "group_rational.bwd_fp32"]
    assert grid[0] > 1 and rows_per_program >= 3 * block_m and rows_per_program % block_m == 0
    assert M % rows_per_program != 0  # the last program's range is cut by M
    ref = _run(x, a, b, G, "released", "reference", dy)
    for name, o, r in zip(("y", "dx", "dnumerator", "ddenominator"), out, ref):
        assert rel_err(o, r) < 2e-5, (name, rel_err(o, r))


@pytest.mark.parametrize("form", ["released", "paper"])
def test_out_dtype_fp32_input_half_output(form):
    # Under autocast the model asks for the autocast dtype directly: x fp32 -> y fp16, dy fp16 -> dx fp32.
    torch.manual_seed(3)
    x, G = torch.randn(23, 64) * 1.5, 4
    a, b = torch.randn(1, 6) * 0.3, torch.randn(G, 4) * 0.3
    dy = torch.randn(23, 64).half()
    outs = []
    for backend in ("triton", "reference"):
        xs = [t.clone().requires_grad_() for t in (x, a, b)]
        y = group_rational(*xs, num_groups=G, denominator_form=form, backend=backend, out_dtype=torch.float16)
        outs.append((y, *torch.autograd.grad(y, xs, dy)))
    for name, o, r in zip(("y", "dx", "dnumerator", "ddenominator"), *outs):
        assert o.dtype == r.dtype and o.shape == r.shape, name
        assert rel_err(o, r) < 1e-3, (name, rel_err(o, r))
    assert outs[0][0].dtype == torch.float16 and outs[0][1].dtype == torch.float32
    with pytest.raises(TypeError, match="out_dtype"):
        group_rational(x, a, b, num_groups=G, out_dtype=torch.int32)


def test_zero_denominator_coefficients_get_gradients():
    # The released kernels differentiate |b| at b = 0 as +1: with identity init (b = 0) the denominator must
    # still learn. A plain abs() would give exactly zero here.
    a = torch.tensor([RATIONAL_INITS["identity"][0]])
    b = torch.zeros(8, 4)
    x = torch.rand(16, 64) + 0.5            # positive inputs: every term has the same sign
    for backend in ("triton", "reference"):
        _, _, _, db = _run(x, a, b, 8, "released", backend, torch.ones(16, 64))
        assert (db < 0).all(), backend      # dQ/d|b| = |x|^k > 0, dL/dQ = -P/Q^2 < 0 for positive x


def test_shared_numerator_gradient_is_sum_over_groups():
    torch.manual_seed(1)
    x, dy = torch.randn(10, 32), torch.randn(10, 32)
    a1, b = torch.randn(1, 6) * 0.2, torch.randn(4, 4) * 0.2
    _, _, da1, _ = _run(x, a1, b, 4, "released", "triton", dy)
    _, _, da4, _ = _run(x, a1.expand(4, 6).contiguous(), b, 4, "released", "triton", dy)
    assert da1.shape == (1, 6) and da4.shape == (4, 6)
    assert rel_err(da1, da4.sum(0, keepdim=True)) < 1e-5


def test_init_coefficients():
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    G = 1

    def f(name, form):
        a, b = (torch.tensor([c], dtype=torch.float64) for c in RATIONAL_INITS[name])
        return _direct(x[None], a, b, G, form)[0]

    assert torch.equal(f("identity", "released"), x)
    assert (f("swish", "released") - F.silu(x)).abs().max() < 1e-5
    assert (f("swish", "paper") - F.silu(x)).abs().max() < 1e-3
    # The "gelu" set reproduces GELU only under the paper's denominator 1 + |sum b_i x^(i+1)|.
    assert (f("gelu", "paper") - F.gelu(x)).abs().max() < 5e-3
    released = f("gelu", "released")
    assert abs(released[-1].item() - 1.531) < 1e-2      # F(3) ~ 1.53 instead of GELU(3) ~ 3.0
    assert (released - F.gelu(x)).abs().max() > 1.0
    # the reference agrees with the direct formula on the shipped sets
    for name in RATIONAL_INITS:
        a, b = (torch.tensor([c]) for c in RATIONAL_INITS[name])
        y = group_rational_reference(x.float()[None], a, b, 1, "released")[0]
        assert rel_err(y, f(name, "released")) < 1e-6


def test_dtype_follows_input():
    a = torch.tensor([RATIONAL_INITS["swish"][0]])
    b = torch.tensor([RATIONAL_INITS["swish"][1]] * 2)
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    y = group_rational(x, a, b, num_groups=2, backend="reference")
    assert y.dtype == torch.bfloat16
    assert rel_err(y, F.silu(x.float())) < 1e-2


def test_bad_arguments():
    x, a, b = torch.randn(4, 12), torch.zeros(1, 6), torch.zeros(4, 4)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        group_rational(x, a, torch.zeros(5, 4), num_groups=5)
    with pytest.raises(ValueError, match="numerator must have shape"):
        group_rational(x, torch.zeros(1, 5), b, num_groups=4)
    with pytest.raises(ValueError, match="denominator must have shape"):
        group_rational(x, a, torch.zeros(3, 4), num_groups=4)
    with pytest.raises(ValueError, match="denominator must be one of"):
        group_rational(x, a, b, num_groups=4, denominator_form="poly")
    with pytest.raises(TypeError, match="x must be one of float32"):
        group_rational(torch.ones(4, 12, dtype=torch.long), a, b, num_groups=4)
    with pytest.raises(TypeError, match="numerator must be one of"):
        group_rational(x, a.long(), b, num_groups=4)
    with pytest.raises(TypeError, match="float64"):
        group_rational(x.double(), a, b, num_groups=4, backend="triton")
    with pytest.raises(ValueError, match="num_groups"):
        group_rational(x, a, b, num_groups=True)


def test_float64_runs_the_reference_and_noncontiguous_inputs_the_kernels():
    torch.manual_seed(8)
    a, b = torch.randn(1, 6) * 0.3, torch.randn(4, 4) * 0.3
    x = torch.randn(5, 12, dtype=torch.float64)
    with count_launches() as n:
        y = group_rational(x, a, b, num_groups=4)
    assert n.total() == 0 and y.dtype == torch.float64
    assert rel_err(y, _direct(x, a, b, 4, "released")) < 1e-6
    xt = torch.randn(12, 5).t()                      # non-contiguous [5, 12]
    bt = torch.randn(4, 4).t() * 0.3                 # non-contiguous coefficients
    y = group_rational(xt, a, bt, num_groups=4, backend="triton")
    assert rel_err(y, _direct(xt, a, bt, 4, "released")) < 1e-5


REDUCES = ("kernel", "last_program", "atomic")


@pytest.mark.parametrize("form", ["released", "paper"])
@pytest.mark.parametrize("shape,G,arows", CASES + [((300, 96), 3, 3), ((50, 768), 8, 1)])
def test_coefficient_gradient_reductions(shape, G, arows, form):
    # the three ways of summing the coefficient gradients over the backward's programs: a second kernel, the last
    # program to finish (one launch), atomic adds (FlashKAT's scheme) -- each against the reference
    torch.manual_seed(sum(shape) + G)
    x, dy = torch.randn(*shape) * 1.5, torch.randn(shape)
    a, b = torch.randn(arows, 6) * 0.3, torch.randn(G, 4) * 0.3
    b[0, 1] = 0.0
    b[-1, 2] = -b[-1, 2].abs()          # a negative coefficient: the sign chain of |b|
    ref = _run(x, a, b, G, form, "reference", dy)
    for reduce in REDUCES:
        with tuning({"group_rational.coef_grad": {"reduce": reduce}}), count_launches() as n:
            out = _run(x, a, b, G, form, "triton", dy)
        assert n["group_rational.coef_grad"] == (reduce == "kernel") and n["group_rational.bwd_fp32"] == 1
        for name, o, r in zip(("y", "dx", "dnumerator", "ddenominator"), out, ref):
            assert rel_err(o, r) < 2e-5, (reduce, name, rel_err(o, r))


def test_last_program_reduction_is_repeatable_and_resets_its_counter():
    import hfzoo.ops.group_rational as gr_mod

    torch.manual_seed(3)
    x, dy = torch.randn(300, 96) * 1.5, torch.randn(300, 96)
    a, b = torch.randn(1, 6) * 0.3, torch.randn(4, 4) * 0.3
    with tuning({"group_rational.coef_grad": {"reduce": "last_program"}}):
        first = _run(x, a, b, 4, "released", "triton", dy)
        again = _run(x, a, b, 4, "released", "triton", dy)
    for o, r in zip(first, again):
        assert torch.equal(o, r)
    assert all(int(c.item()) == 0 for c in gr_mod._counters.values())


def test_backward_writes_the_activation_when_asked():
    # rational_linear's backward takes F(x) from the backward kernel (for the weight gradient)
    import hfzoo.ops.group_rational as gr_mod

    torch.manual_seed(4)
    x, dy = torch.randn(37, 48) * 1.5, torch.randn(37, 48).bfloat16()
    a, b = torch.randn(1, 6) * 0.3, torch.randn(8, 4) * 0.3
    dx, da, db, y = gr_mod._backward(x, dy, a, b, 8, False, y_dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16 and dx.dtype == torch.float32
    assert rel_err(y, _direct(x, a, b, 8, "released")) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_coefficient_gradient_reductions_gpu(reduce, dtype):
    torch.manual_seed(0)
    x = (torch.randn(25216, 384, device="cuda") * 1.5).to(dtype)
    a = torch.randn(1, 6, device="cuda") * 0.3
    b = torch.randn(8, 4, device="cuda") * 0.3
    dy = torch.randn(25216, 384, device="cuda").to(dtype)
    with tuning({"group_rational.coef_grad": {"reduce": reduce}}):
        out = _run(x, a, b, 8, "released", "triton", dy)
        if reduce == "last_program":   # the same bits on every run
            for o, r in zip(out, _run(x, a, b, 8, "released", "triton", dy)):
                assert torch.equal(o, r)
    ref = _run(x.double(), a.double(), b.double(), 8, "released", "reference", dy.double())
    for name, o, r in zip(("y", "dx", "dnumerator", "ddenominator"), out, ref):
        assert rel_err(o, r) < (2e-5 if dtype == torch.float32 else 1e-2), (reduce, name, rel_err(o, r))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,D,G", [((4096,), 768, 8), ((8, 197), 3072, 8), ((33,), 1000, 8), ((3, 7), 192, 4)])
@pytest.mark.parametrize("form", ["released", "paper"])
@pytest.mark.parametrize("chunk,prefetch", [(1, False), (None, True)])
def test_kernel_gpu(dtype, shape, D, G, form, chunk, prefetch):
    torch.manual_seed(0)
    x = (torch.randn(*shape, D, device="cuda") * 1.5).to(dtype)
    a = torch.randn(1, 6, device="cuda") * 0.3
    b = torch.randn(G, 4, device="cuda") * 0.3
    dy = torch.randn(*shape, D, device="cuda").to(dtype)
    with _bwd_tuning(max_chunk=chunk, prefetch=prefetch):
        out = _run(x, a, b, G, form, "triton", dy)
    ref = _run(x, a, b, G, form, "reference", dy)
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    for name, o, r in zip(("y", "dx", "dnumerator", "ddenominator"), out, ref):
        assert o.dtype == r.dtype, name
        assert rel_err(o, r) < (tol if name in ("y", "dx") else 1e-4), (name, rel_err(o, r))


@pytest.mark.gpu
@pytest.mark.parametrize("form", ["released", "paper"])
def test_kernel_gpu_fp32_input_bf16_output(form):
    torch.manual_seed(0)
    x = torch.randn(8, 197, 384, device="cuda") * 1.5
    a = torch.randn(1, 6, device="cuda") * 0.3
    b = torch.randn(8, 4, device="cuda") * 0.3
    dy = torch.randn(8, 197, 384, device="cuda").bfloat16()
    outs = []
    for backend in ("triton", "reference"):
        xs = [t.clone().requires_grad_() for t in (x, a, b)]
        y = group_rational(*xs, num_groups=8, denominator_form=form, backend=backend, out_dtype=torch.bfloat16)
        outs.append((y, *torch.autograd.grad(y, xs, dy)))
    for name, o, r in zip(("y", "dx", "dnumerator", "ddenominator"), *outs):
        assert o.dtype == r.dtype, name
        assert rel_err(o, r) < (1e-2 if name == "y" else 1e-4), (name, rel_err(o, r))
