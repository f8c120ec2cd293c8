"""Fused group-rational + linear (KAT's GR-KAN unit) and the whole GR-KAN MLP: Triton path vs the PyTorch reference
(forward and every gradient), the KAT model's fused MLP vs its module-by-module form, and the fallbacks."""

import pytest
import torch
from helpers import rel_err
from torch import nn

from hfzoo.ops.launch import count_launches, tuning
from hfzoo.ops.rational_linear import grkan_mlp, grkan_mlp_reference, rational_linear

NAMES = ("y", "dx", "dnumerator", "ddenominator", "dweight", "dbias")


def _inputs(M, K, N, G, arows, bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    x = (torch.randn(M, K) * 1.5).to(dtype)
    x.view(-1)[:2] = 0.0                     # sign(0) convention
    a = torch.randn(arows, 6) * 0.3
    b = torch.randn(G, 4) * 0.3
    b[0, 1] = 0.0                            # |b| derivative at 0
    w = (torch.randn(N, K) / K ** 0.5).to(dtype)
    c = torch.randn(N).to(dtype) if bias else None
    return x, a, b, w, c


def _run(fn, tensors, dy=None, **kwargs):
    ts = [t.clone().requires_grad_() if t is not None else None for t in tensors]
    y = fn(*ts, **kwargs)
    if dy is None:
        torch.manual_seed(123)
        dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [t for t in ts if t is not None], dy)
    return (y, *grads), dy


CASES = [  # M, K, N, groups, numerator rows, form, bias
    (37, 48, 40, 8, 1, "released", True),     # groups of 6 columns: coefficients gathered per column
    (20, 64, 300, 4, 4, "paper", True),       # N = 256 + 64: one program covers N with two accumulators
    (9, 96, 70, 3, 1, "released", False),     # groups of 32: one group per K tile; no bias
    (33, 80, 530, 5, 5, "released", True),    # N > 512: several column blocks (recomputed prologue), odd sizes
    (5, 24, 17, 1, 1, "paper", False),        # one group, tiny
]


@pytest.mark.parametrize("M,K,N,G,arows,form,bias", CASES)
def test_rational_linear_matches_reference_fp32(M, K, N, G, arows, form, bias):
    inputs = _inputs(M, K, N, G, arows, bias)
    with count_launches() as n:
        out, dy = _run(rational_linear, inputs, num_groups=G, denominator_form=form, backend="triton", fuse=True)
    fwd = "rational_linear.fwd_wide" if N <= 512 else "rational_linear.fwd"
    assert n[fwd] == 1 and n["group_rational.bwd_fp32"] == 1 and n["group_rational.fwd"] == 0
    ref, _ = _run(rational_linear, inputs, dy, num_groups=G, denominator_form=form, backend="reference")
    assert len(out) == len(ref) == (6 if bias else 5)
    for name, o, r in zip(NAMES, out, ref):
        assert o.shape == r.shape and o.dtype == r.dtype, name
        assert rel_err(o, r) < 3e-5, (name, rel_err(o, r))


def test_rational_linear_default_is_rational_kernel_then_matmul():
    # the fused forward is off by default (slower than the rational kernel + cuBLAS on the H200; launch.DEFAULTS)
    inputs = _inputs(21, 48, 40, 8, 1)
    with count_launches() as n:
        out, dy = _run(rational_linear, inputs, num_groups=8, backend="triton")
    assert n["group_rational.fwd"] == 1 and n["rational_linear.fwd_wide"] == 0
    ref, _ = _run(rational_linear, inputs, dy, num_groups=8, backend="reference")
    for name, o, r in zip(NAMES, out, ref):
        assert rel_err(o, r) < 3e-5, (name, rel_err(o, r))


def test_rational_linear_3d_input_and_inference_path():
    x, a, b, w, c = _inputs(2 * 7, 32, 24, 4, 1)
    x3 = x.view(2, 7, 32)
    with torch.no_grad(), count_launches() as n:
        y = rational_linear(x3, a, b, w, c, num_groups=4, backend="triton", fuse=True)
    assert y.shape == (2, 7, 24) and n.total() == 1
    ref = rational_linear(x3, a, b, w, c, num_groups=4, backend="reference")
    assert rel_err(y, ref) < 3e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rational_linear_16bit(dtype):
    inputs = _inputs(29, 64, 45, 4, 1, dtype=dtype)
    out, dy = _run(rational_linear, inputs, num_groups=4, backend="triton", fuse=True)
    ref, _ = _run(rational_linear, inputs, dy, num_groups=4, backend="reference")
    for name, o, r in zip(NAMES, out, ref):
        assert o.dtype == r.dtype, name
        assert rel_err(o, r) < 2e-2, (name, rel_err(o, r))


def test_rational_linear_under_autocast_reads_fp32_and_multiplies_in_bf16():
    # as KAT's fc1 under autocast: fp32 input (LayerNorm output) and fp32 parameters; output and matmuls in bf16,
    # gradients in the parameters' and input's dtypes
    inputs = _inputs(23, 48, 64, 8, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, dy = _run(rational_linear, inputs, num_groups=8, backend="triton", fuse=True)
        ref, _ = _run(rational_linear, inputs, dy, num_groups=8, backend="reference")
    assert out[0].dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in out[1:])
    for name, o, r in zip(NAMES, out, ref):
        assert o.dtype == r.dtype, name
        assert rel_err(o, r) < 2e-2, (name, rel_err(o, r))


MLP_CASES = [  # M, D, H, groups, numerator rows, form
    (21, 48, 192, 8, 1, "released"),     # KAT's shape ratios (hidden 4 D), shared numerator
    (13, 32, 80, 4, 4, "paper"),
]


def _mlp_inputs(M, D, H, G, arows, dtype=torch.float32):
    torch.manual_seed(M + D)
    x = torch.randn(M, D, dtype=dtype)
    a1, b1 = torch.randn(arows, 6) * 0.3, torch.randn(G, 4) * 0.3
    a2, b2 = torch.randn(arows, 6) * 0.3, torch.randn(G, 4) * 0.3
    w1, c1 = (torch.randn(H, D) / D ** 0.5).to(dtype), torch.randn(H).to(dtype)
    w2, c2 = (torch.randn(D, H) / H ** 0.5).to(dtype), torch.randn(D).to(dtype)
    return x, a1, b1, w1, c1, a2, b2, w2, c2


@pytest.mark.parametrize("fuse", [(True, True), (False, False), (False, True)])
@pytest.mark.parametrize("M,D,H,G,arows,form", MLP_CASES)
def test_grkan_mlp_matches_reference(M, D, H, G, arows, form, fuse):
    inputs = _mlp_inputs(M, D, H, G, arows)
    with count_launches() as n:
        out, dy = _run(grkan_mlp, inputs, num_groups=G, denominator_form=form, backend="triton", fuse=fuse)
    assert n["rational_linear.fwd_wide"] + n["rational_linear.fwd"] == sum(fuse)
    assert n["group_rational.fwd"] == 2 - sum(fuse) and n["group_rational.bwd_fp32"] == 2
    ref, _ = _run(grkan_mlp_reference, inputs, dy, num_groups=G, denominator_form=form)
    names = ("y", "dx", "da1", "db1", "dw1", "dc1", "da2", "db2", "dw2", "dc2")
    for name, o, r in zip(names, out, ref):
        assert o.shape == r.shape and o.dtype == r.dtype, name
        assert rel_err(o, r) < 5e-5, (name, rel_err(o, r))


@pytest.mark.parametrize("fuse_backward", [(True, True), (False, True)])
@pytest.mark.parametrize("M,D,H,G,arows,form", MLP_CASES + [(37, 64, 256, 4, 1, "released")])
def test_grkan_mlp_fused_backward_matches_reference(M, D, H, G, arows, form, fuse_backward):
    # dF = dY @ W inside the rational's backward kernel (dF never written): groups of 6 and 24 columns take per-column
    # partials, groups of 16 and 64 one partial per tile
    inputs = _mlp_inputs(M, D, H, G, arows)
    with count_launches() as n:
        out, dy = _run(grkan_mlp, inputs, num_groups=G, denominator_form=form, backend="triton", fuse=(True, True),
                       fuse_backward=fuse_backward)
    assert n["rational_linear.bwd"] == sum(fuse_backward) and n["group_rational.bwd_fp32"] == 2 - sum(fuse_backward)
    ref, _ = _run(grkan_mlp_reference, inputs, dy, num_groups=G, denominator_form=form)
    names = ("y", "dx", "da1", "db1", "dw1", "dc1", "da2", "db2", "dw2", "dc2")
    for name, o, r in zip(names, out, ref):
        assert rel_err(o, r) < 5e-5, (name, rel_err(o, r))


def test_rational_linear_fused_backward_setting():
    inputs = _inputs(29, 48, 33, 8, 8)
    with tuning({"rational_linear.bwd": {"fused": True}}), count_launches() as n:
        out, dy = _run(rational_linear, inputs, num_groups=8, backend="triton")
    assert n["rational_linear.bwd"] == 1 and n["group_rational.bwd_fp32"] == 0
    ref, _ = _run(rational_linear, inputs, dy, num_groups=8, backend="reference")
    for name, o, r in zip(NAMES, out, ref):
        assert rel_err(o, r) < 3e-5, (name, rel_err(o, r))


def test_grkan_mlp_only_some_gradients():
    # frozen weights and coefficients (e.g. an adapter elsewhere): only x's gradient is computed
    x, *params = _mlp_inputs(11, 32, 64, 4, 1)
    xs = x.clone().requires_grad_()
    y = grkan_mlp(xs, *params, num_groups=4, backend="triton")
    (gx,) = torch.autograd.grad(y, xs, torch.ones_like(y))
    xr = x.clone().requires_grad_()
    (gr,) = torch.autograd.grad(grkan_mlp_reference(xr, *params, num_groups=4), xr, torch.ones_like(y))
    assert rel_err(gx, gr) < 5e-5


def test_bad_arguments():
    x, a, b, w, c = _inputs(4, 32, 16, 4, 1)
    with pytest.raises(ValueError, match="weight must have shape"):
        rational_linear(x, a, b, w[:, :31], c, num_groups=4)
    with pytest.raises(ValueError, match="bias must have shape"):
        rational_linear(x, a, b, w, c[:3], num_groups=4)
    with pytest.raises(ValueError, match="divisible"):
        rational_linear(x, a, b, w, c, num_groups=5)
    with pytest.raises(ValueError, match="denominator must have shape"):
        rational_linear(x, a, b[:2], w, c, num_groups=4)
    with pytest.raises(TypeError, match="weight"):
        rational_linear(x, a, b, w.int(), c, num_groups=4)
    inputs = _mlp_inputs(4, 32, 64, 4, 1)
    with pytest.raises(ValueError, match="weight must have shape"):
        grkan_mlp(*inputs[:7], inputs[7][:, :60], inputs[8], num_groups=4)


# ----------------------------------------------------------------------------------------------------------------
# KAT's MLP: fused vs module by module


def _tiny(**kw):
    from hfzoo.models.kat import KATConfig

    base = dict(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, mlp_ratio=4, num_labels=10, rational_groups=4)
    base.update(kw)
    return KATConfig(**base)


def _grads(model, x, labels, eager=False, monkeypatch=None):
    from hfzoo.models.kat.modeling_kat import KATMLP

    model.zero_grad()
    if eager:
        monkeypatch.setattr(KATMLP, "_fusable", lambda self: False)
    try:
        with count_launches() as n:
            out = model(pixel_values=x, labels=labels)
            out.loss.backward()
    finally:
        monkeypatch.undo() if eager else None
    return out.logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}, n


@pytest.mark.kernels
@pytest.mark.parametrize("form,shared", [("released", True), ("paper", False)])
def test_kat_fused_mlp_matches_module_by_module(monkeypatch, form, shared):
    from hfzoo.models.kat import KATForImageClassification

    torch.manual_seed(0)
    model = KATForImageClassification(_tiny(rational_denominator=form, rational_shared_numerator=shared))
    x, labels = torch.randn(3, 1, 8, 8), torch.tensor([1, 5, 9])
    fused_kernels = {"fuse_fp32": True, "fuse_fc1": True, "fuse_fc2": True}     # fp32 matmuls fused as well
    with tuning({"rational_linear.mlp": fused_kernels}):
        fused = _grads(model, x, labels)
        eager = _grads(model, x, labels, eager=True, monkeypatch=monkeypatch)
    default = _grads(model, x, labels)                 # one autograd node, the rational kernel + matmul
    assert fused[2]["rational_linear.fwd_wide"] == 4 and fused[2]["group_rational.fwd"] == 0
    assert eager[2]["rational_linear.fwd_wide"] == 0 and eager[2]["group_rational.fwd"] == 4
    assert default[2]["rational_linear.fwd_wide"] == 0 and default[2]["group_rational.fwd"] == 4
    assert rel_err(default[0], eager[0]) < 1e-5
    for name, g in default[1].items():
        assert rel_err(g, eager[1][name]) < 1e-4, name
    assert rel_err(fused[0], eager[0]) < 1e-5
    for name, g in fused[1].items():
        assert rel_err(g, eager[1][name]) < 1e-4, name


@pytest.mark.kernels
def test_kat_mlp_falls_back_for_dropout_adapters_and_hooks():
    from hfzoo.models.kat import KATForImageClassification

    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)

    def launches(model):
        fused_kernels = {"fuse_fp32": True, "fuse_fc1": True, "fuse_fc2": True}
        with count_launches() as n, tuning({"rational_linear.mlp": fused_kernels}):
            model(pixel_values=x)
        return n["rational_linear.fwd_wide"], n["group_rational.fwd"]

    model = KATForImageClassification(_tiny(hidden_dropout_prob=0.1))
    assert launches(model.train()) == (0, 4)        # dropout between act and fc in training: module by module
    assert launches(model.eval()) == (4, 0)         # no dropout at inference: fused

    class Adapter(nn.Linear):                        # stands for peft's LoRA layer replacing fc1
        pass

    model = KATForImageClassification(_tiny()).eval()
    mlp = model.kat.layers[0].mlp
    state = {k: v.clone() for k, v in model.state_dict().items()}
    old = mlp.fc1
    mlp.fc1 = Adapter(old.in_features, old.out_features)
    mlp.fc1.load_state_dict(old.state_dict())
    assert launches(model) == (2, 2)
    assert model.state_dict().keys() == state.keys()
    mlp.fc1 = old
    handle = model.kat.layers[1].mlp.act2.register_forward_hook(lambda m, i, o: None)
    assert launches(model) == (2, 2)
    handle.remove()
    assert launches(model) == (4, 0)


# ----------------------------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@pytest.mark.parametrize("K,N", [(384, 1536), (1536, 384), (192, 768), (768, 3072)])
@pytest.mark.parametrize("form", ["released", "paper"])
def test_rational_linear_gpu_autocast_bf16(K, N, form):
    # KAT-S (384/1536), KAT-T (192/768) and KAT-B (768/3072) fc1 and fc2 shapes with an odd number of rows
    torch.manual_seed(0)
    M, G = 3001, 8
    x = torch.randn(M, K, device="cuda") * 1.5
    a = torch.randn(1, 6, device="cuda") * 0.3
    b = torch.randn(G, 4, device="cuda") * 0.3
    w = torch.randn(N, K, device="cuda") / K ** 0.5
    c = torch.randn(N, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, dy = _run(rational_linear, (x, a, b, w, c), num_groups=G, denominator_form=form, backend="triton",
                       fuse=True)
    ref, _ = _run(rational_linear, (x.double(), a.double(), b.double(), w.double(), c.double()), dy.double(),
                  num_groups=G, denominator_form=form, backend="reference")
    for name, o, r in zip(NAMES, out, ref):
        assert rel_err(o, r) < 2e-2, (name, rel_err(o, r))


@pytest.mark.gpu
@pytest.mark.parametrize("fuse,fuse_backward", [((True, True), (False, False)), ((False, False), (False, False)),
                                                ((True, True), (True, True))])
def test_grkan_mlp_gpu_bf16_autocast(fuse, fuse_backward):
    torch.manual_seed(0)
    inputs = [t.cuda() for t in _mlp_inputs(2 * 197 + 5, 384, 1536, 8, 1)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, dy = _run(grkan_mlp, inputs, num_groups=8, backend="triton", fuse=fuse, fuse_backward=fuse_backward)
    ref, _ = _run(grkan_mlp_reference, [t.double() for t in inputs], dy.double(), num_groups=8)
    for name, o, r in zip(("y", "dx", "da1", "db1", "dw1", "dc1", "da2", "db2", "dw2", "dc2"), out, ref):
        assert rel_err(o, r) < 3e-2, (name, rel_err(o, r))


def test_grkan_mlp_cached_plans_follow_settings_changes(monkeypatch):
    # grkan_mlp and group_rational remember their launch plans per launch.settings_token(): after a default call, a
    # tuning() block and HFZOO_TUNE must still take effect (not a stale plan), with the same results
    inputs = _mlp_inputs(21, 48, 192, 8, 1)
    names = ("y", "dx", "da1", "db1", "dw1", "dc1", "da2", "db2", "dw2", "dc2")
    ref = None
    for _ in range(2):   # the second default call runs from the cached plans
        with count_launches() as n:
            out, dy = _run(grkan_mlp, inputs, num_groups=8, backend="triton")
        assert n["group_rational.fwd"] == 2 and n["group_rational.coef_grad"] == 2
        ref = ref or _run(grkan_mlp_reference, inputs, dy, num_groups=8)[0]
        for name, o, r in zip(names, out, ref):
            assert rel_err(o, r) < 5e-5, (name, rel_err(o, r))
    # the backward's settings are read when the forward runs, so the whole call sits inside the block
    with tuning({"group_rational.coef_grad": {"reduce": "last_program"}}), count_launches() as n:
        out, _ = _run(grkan_mlp, inputs, dy, num_groups=8, backend="triton")
    assert n["group_rational.coef_grad"] == 0 and n["group_rational.bwd_fp32"] == 2
    for name, o, r in zip(names, out, ref):
        assert rel_err(o, r) < 5e-5, (name, rel_err(o, r))
    monkeypatch.setenv("HFZOO_TUNE", '{"rational_linear.mlp": {"fuse_fc2": true, "fuse_fp32": true}}')
    with count_launches() as n:
        out, _ = _run(grkan_mlp, inputs, dy, num_groups=8, backend="triton")
    assert n["group_rational.fwd"] == 1 and n["rational_linear.fwd_wide"] == 1
    for name, o, r in zip(names, out, ref):
        assert rel_err(o, r) < 5e-5, (name, rel_err(o, r))
    monkeypatch.delenv("HFZOO_TUNE")
    with count_launches() as n:
        _run(grkan_mlp, inputs, dy, num_groups=8, backend="triton")
    assert n["group_rational.fwd"] == 2 and n["rational_linear.fwd_wide"] == 0
