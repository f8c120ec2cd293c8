"""Chunked linear + cross-entropy against logits made in full and torch's cross_entropy."""

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from hfzoo.ops.launch import count_launches
from hfzoo.ops.linear_cross_entropy import linear_cross_entropy


def _data(N=10, D=16, V=50, seed=0, dtype=torch.float32, ignore=True):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=gen).to(dtype)
    w = (torch.randn(V, D, generator=gen) / 4).to(dtype)
    b = torch.randn(V, generator=gen).to(dtype)
    t = torch.randint(0, V, (N,), generator=gen)
    if ignore:
        t[::3] = -100
    return h, w, b, t


def _grads(fn, h, w, b):
    leaves = [x.detach().clone().requires_grad_() for x in (h, w, b)]
    loss = fn(*leaves)
    return [loss, *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("chunk", [3, 4, 64])  # chunks that do not divide N, and one chunk for all
@pytest.mark.parametrize("reduction", ["mean", "sum", "items"])
def test_matches_full_logits(chunk, reduction):
    h, w, b, t = _data()
    kw = {"reduction": "sum"} if reduction == "sum" else {}
    if reduction == "items":
        kw = {"num_items_in_batch": torch.tensor(17)}  # e.g. counted over several accumulation steps

    def ref(h, w, b):
        loss = F.cross_entropy((h @ w.T + b).float(), t, ignore_index=-100, reduction="sum")
        return loss / 17 if reduction == "items" else (loss if reduction == "sum" else loss / (t != -100).sum())

    ours = _grads(lambda h, w, b: linear_cross_entropy(h, w, t, bias=b, chunk_size=chunk, **kw), h, w, b)
    want = _grads(ref, h, w, b)
    for a, r in zip(ours, want):
        assert a.shape == r.shape and rel_err(a, r) < 1e-5


def test_leading_dims_no_bias_and_a_scaled_upstream_gradient():
    h, w, _, t = _data(N=24)
    h3, t3 = h.view(2, 12, 16), t.view(2, 12)
    hh = h3.clone().requires_grad_()
    ww = w.clone().requires_grad_()
    (3.0 * linear_cross_entropy(hh, ww, t3, chunk_size=5)).backward()
    hr, wr = h3.clone().requires_grad_(), w.clone().requires_grad_()
    (3.0 * F.cross_entropy((hr @ wr.T).reshape(-1, 50), t3.reshape(-1))).backward()
    assert rel_err(hh.grad, hr.grad) < 1e-5 and rel_err(ww.grad, wr.grad) < 1e-5


def test_bf16_inputs_compute_in_fp32():
    h, w, b, t = _data(dtype=torch.bfloat16)
    loss = linear_cross_entropy(h, w, t, bias=b, chunk_size=4)
    ref = F.cross_entropy(h.float() @ w.float().T + b.float(), t)
    assert loss.dtype == torch.float32 and rel_err(loss, ref) < 1e-2
    hh = h.clone().requires_grad_()
    linear_cross_entropy(hh, w, t, chunk_size=4).backward()
    assert hh.grad.dtype == torch.bfloat16 and torch.isfinite(hh.grad.float()).all()


def test_all_ignored_gives_zero_and_no_grad_mode_keeps_nothing():
    h, w, b, t = _data()
    t[:] = -100
    hh = h.clone().requires_grad_()
    loss = linear_cross_entropy(hh, w, t)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(hh.grad) == 0
    with torch.no_grad():
        h, w, b, t = _data()
        out = linear_cross_entropy(h.requires_grad_(), w, t, bias=b)
    assert not out.requires_grad
    assert rel_err(out, F.cross_entropy(h.detach() @ w.T + b, t)) < 1e-5


def test_bad_inputs_are_named():
    h, w, b, t = _data()
    with pytest.raises(TypeError, match="target"):
        linear_cross_entropy(h, w, t.float())
    with pytest.raises(ValueError, match="last dim"):
        linear_cross_entropy(h[:, :8], w, t)
    with pytest.raises(ValueError, match="leading shape"):
        linear_cross_entropy(h, w, t[:5])
    with pytest.raises(ValueError, match="bias"):
        linear_cross_entropy(h, w, t, bias=b[:3])
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, w, t, reduction="none")
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(h, w, t, chunk_size=0)
    with pytest.raises(TypeError, match="weight"):
        linear_cross_entropy(h, w.long(), t)


def test_gla_model_fused_loss_matches_its_logits_loss():
    # GLAForCausalLM with fuse_linear_cross_entropy: in training with labels the loss comes from the hidden states
    # (no logits returned); loss and every gradient equal the default path's, also with num_items_in_batch
    from hfzoo.models.gla.configuration_gla import GLAConfig
    from hfzoo.models.gla.modeling_gla import GLAForCausalLM

    torch.manual_seed(0)
    cfg = GLAConfig(vocab_size=64, hidden_size=32, num_heads=2, num_hidden_layers=2, fuse_linear_cross_entropy=True)
    model = GLAForCausalLM(cfg).train()
    ids = torch.randint(0, 64, (2, 21))
    labels = ids.clone()
    labels[0, :5] = -100
    for extra in ({}, {"num_items_in_batch": torch.tensor(50)}):
        results = []
        for fused in (True, False):
            model.config.fuse_linear_cross_entropy = fused
            model.zero_grad()
            out = model(input_ids=ids, labels=labels, **extra)
            out.loss.backward()
            assert (out.logits is None) == fused
            results.append([out.loss.detach()] + [p.grad.clone() for p in model.parameters()])
        for a, b in zip(*results):
            assert rel_err(a, b) < 1e-5
    # pre-shifted labels (transformers' shift_labels) take the place of labels on both paths
    shift = torch.randint(0, 64, (2, 21))
    shift[0, 3:9] = -100
    with torch.no_grad():
        losses = []
        for fused in (True, False):
            model.config.fuse_linear_cross_entropy = fused
            losses.append(model(input_ids=ids, labels=labels, shift_labels=shift).loss)
        assert rel_err(losses[0], losses[1]) < 1e-6
        assert rel_err(losses[0], model(input_ids=ids, labels=labels).loss) > 1e-3
        # another ignore_index (transformers' loss kwarg) marks the same tokens on both paths
        other = torch.where(labels == -100, torch.full_like(labels, -1), labels)
        for fused in (True, False):
            model.config.fuse_linear_cross_entropy = fused
            got = model(input_ids=ids, labels=other, ignore_index=-1).loss
            assert rel_err(got, model(input_ids=ids, labels=labels).loss) < 1e-6
    model.eval()
    model.config.fuse_linear_cross_entropy = True
    assert model(input_ids=ids, labels=labels).logits is not None  # evaluation keeps transformers' outputs


def test_gla_model_default_loss_is_transformers_causal_lm_loss():
    # GLAForCausalLM's default loss is transformers' ForCausalLMLoss on its logits, with every gradient, with and
    # without num_items_in_batch; shift_labels is honoured
    from transformers.loss.loss_utils import ForCausalLMLoss

    from hfzoo.models.gla.configuration_gla import GLAConfig
    from hfzoo.models.gla.modeling_gla import GLAForCausalLM

    torch.manual_seed(0)
    model = GLAForCausalLM(GLAConfig(vocab_size=64, hidden_size=32, num_heads=2, num_hidden_layers=2)).train()
    ids = torch.randint(0, 64, (2, 21))
    labels = ids.clone()
    labels[1, :6] = -100
    for extra in ({}, {"num_items_in_batch": torch.tensor(37)}):
        results = []
        for ours in (True, False):
            model.zero_grad()
            if ours:
                out = model(input_ids=ids, labels=labels, **extra)
                loss = out.loss
                assert out.logits is not None and out.logits.shape == (2, 21, 64)
            else:
                loss = ForCausalLMLoss(model(input_ids=ids).logits, labels, 64, **extra)
            loss.backward()
            results.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
        for a, b in zip(*results):
            assert rel_err(a, b) < 1e-5
    shift = F.pad(labels[:, 1:], (0, 1), value=-100)
    with torch.no_grad():
        assert rel_err(model(input_ids=ids, labels=labels, shift_labels=shift).loss,
                       model(input_ids=ids, labels=labels).loss) < 1e-6


# --- the kernel path (softmax_cross_entropy's kernels on each chunk's logits; the interpreter on CPU) ------------


def _kernel_data(dtype, N=37, D=16, V=50, seed=1):
    h, w, b, t = _data(N=N, D=D, V=V, seed=seed, dtype=dtype, ignore=False)
    t[::5] = -100
    t[8:16] = -100   # with chunk_size 8: the second chunk has no counted target
    return h, w, b, t


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "items"])
def test_kernel_path_matches_reference(dtype, reduction):
    # 37 tokens in chunks of 8 (the last one partial), ignored targets and an all-ignored chunk; loss and the
    # gradients of hidden, weight and bias against the reference path and against full fp64 logits
    h, w, b, t = _kernel_data(dtype)
    kw = {"sum": {"reduction": "sum"}, "items": {"num_items_in_batch": 50}}.get(reduction, {})

    def run(backend):
        return _grads(lambda h, w, b: linear_cross_entropy(h, w, t, bias=b, chunk_size=8, backend=backend, **kw),
                      h, w, b)

    with count_launches() as n:
        ours = run("triton")
    assert n == {"softmax_ce.fwd": 5, "softmax_ce.bwd": 5}   # one of each per chunk
    ref = run("reference")

    def exact(h, w, b):
        total = F.cross_entropy(h.double() @ w.double().T + b.double(), t, reduction="sum")
        return total / {"mean": (t != -100).sum(), "sum": 1, "items": 50}[reduction]

    want = _grads(exact, h, w, b)
    tol = 1e-5 if dtype == torch.float32 else 2e-2   # bf16: logits and softmax - one_hot rounded to bf16
    assert ours[0].dtype == torch.float32 and [g.dtype for g in ours[1:]] == [dtype] * 3
    for a, r, e in zip(ours, ref, want):
        assert rel_err(a, r) < tol and rel_err(a, e) < tol
    assert torch.count_nonzero(ours[1][8:16]) == 0   # the all-ignored chunk's hidden states get no gradient


def test_kernel_path_all_ignored_no_grad_and_empty():
    h, w, b, t = _kernel_data(torch.float32)
    t[:] = -100
    loss, dh, dw, db = _grads(lambda h, w, b: linear_cross_entropy(h, w, t, bias=b, chunk_size=8, backend="triton"),
                              h, w, b)
    assert loss.item() == 0.0 and all(torch.count_nonzero(g) == 0 for g in (dh, dw, db))
    h, w, b, t = _kernel_data(torch.float32)
    with count_launches() as n, torch.no_grad():   # no gradient wanted: the forward kernel alone
        out = linear_cross_entropy(h, w, t, bias=b, chunk_size=8, backend="triton")
    assert n == {"softmax_ce.fwd": 5}
    assert rel_err(out, F.cross_entropy(h @ w.T + b, t)) < 1e-6
    empty = linear_cross_entropy(h[:0], w, t[:0], chunk_size=8, backend="triton")
    assert empty.item() == 0.0


def test_backend_choice():
    h, w, b, t = _kernel_data(torch.float32)
    with count_launches() as n:
        linear_cross_entropy(h, w, t, bias=b)           # auto on CPU: the reference
    assert n.total() == 0
    with pytest.raises(TypeError, match="float64"):
        linear_cross_entropy(h.double(), w.double(), t, backend="triton")
    with pytest.raises(TypeError, match="one dtype"):
        linear_cross_entropy(h, w, t, bias=b.bfloat16(), backend="triton")
    # fp64 runs the reference in fp64
    hd, wd = h.double(), w.double()
    assert rel_err(linear_cross_entropy(hd, wd, t), F.cross_entropy(hd @ wd.T, t)) < 1e-12


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_kernel_path_gpu_16bit(dtype):
    h, w, b, t = (x.cuda() for x in _data(N=3000, D=256, V=5003, dtype=dtype))
    got = _grads(lambda h, w, b: linear_cross_entropy(h, w, t, bias=b, chunk_size=1024), h, w, b)
    want = _grads(lambda h, w, b: F.cross_entropy((h @ w.T + b).float(), t), h.float(), w.float(), b.float())
    assert [g.dtype for g in got[1:]] == [dtype] * 3
    for a, r in zip(got, want):
        assert rel_err(a, r) < 2e-2
