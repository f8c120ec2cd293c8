"""``quantize_projected`` (SimVQ's fused quantizer step) against its PyTorch definition: indices, outputs, loss and
the gradients of z, W and b; odd sizes, exact ties, near-ties, NaN vectors, and the model's use of it."""

import pytest
import torch

from hfzoo.ops.launch import count_launches, tuning
from hfzoo.ops.nearest_code import nearest_code_reference, quantize_projected, quantize_projected_reference


def _inputs(b, d, spatial, k, seed, device="cpu", bias=True):
    g = torch.Generator(device=device).manual_seed(seed)
    frozen = torch.randn(k, d, generator=g, device=device) / d ** 0.5
    w = (torch.randn(d, d, generator=g, device=device) / d ** 0.5).requires_grad_()
    bb = (0.1 * torch.randn(d, generator=g, device=device)).requires_grad_() if bias else None
    z = torch.randn(b, d, *spatial, generator=g, device=device).requires_grad_()
    return z, frozen, w, bb


def _step(fn, z, frozen, w, bb, target, w_z=0.25, w_q=1.0):
    for t in (z, w, bb):
        if t is not None:
            t.grad = None
    zq, idx, loss = fn(z, frozen, w, bb, w_z, w_q)
    ((zq - target).square().mean() + 3.0 * loss).backward()
    return zq.detach(), idx, loss.detach(), z.grad, w.grad, None if bb is None else bb.grad


def _compare(z, frozen, w, bb, w_z=0.25, w_q=1.0):
    target = torch.randn_like(z)
    got = _step(lambda *a: quantize_projected(*a, backend="triton"), z, frozen, w, bb, target, w_z, w_q)
    want = _step(quantize_projected_reference, z, frozen, w, bb, target, w_z, w_q)
    # the indices are the exact argmin over the codebook F.linear computes (the reference's own)
    cb = torch.nn.functional.linear(frozen, w, bb).detach()
    flat = z.detach().movedim(1, -1).reshape(-1, z.shape[1])
    exact, _ = nearest_code_reference(flat, cb, exact=True)
    assert torch.equal(got[1].reshape(-1), exact) and torch.equal(got[1], want[1])
    assert got[1].shape == z.shape[:1] + z.shape[2:] and got[1].dtype == torch.int64
    assert torch.equal(got[0], cb[got[1]].movedim(-1, 1))  # z_q holds the picked codes
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-7)
    for a, b in zip(got[3:], want[3:]):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    return got, want


@pytest.mark.parametrize("b,d,spatial,k", [(2, 16, (5, 3), 70), (1, 24, (7,), 33), (3, 8, (4, 4), 130),
                                           (2, 32, (3, 5), 16)])
def test_fused_step_matches_the_definition(b, d, spatial, k):
    z, frozen, w, bb = _inputs(b, d, spatial, k, seed=b * 100 + d + k)
    with count_launches() as n:
        got, want = _compare(z, frozen, w, bb)
    assert torch.equal(got[1], want[1])
    # the step: prepare, first pass, collect, resolve + gather + loss, backward (the reference adds no kernels)
    assert dict(n) == {"nearest_code.prepare": 1, "nearest_code.fwd": 1, "nearest_code.collect": 1,
                       "nearest_code.vq_fwd": 1, "nearest_code.vq_bwd": 1}


def test_fused_step_without_bias_and_other_weights():
    z, frozen, w, _ = _inputs(2, 16, (3, 3), 40, seed=3, bias=False)
    got, want = _compare(z, frozen, w, None, w_z=1.0, w_q=0.25)
    assert torch.equal(got[1], want[1]) and got[5] is None


def test_fused_step_gradients_of_one_input_only():
    z, frozen, w, bb = _inputs(2, 16, (4,), 40, seed=5)
    z.requires_grad_(False)
    zq, idx, loss = quantize_projected(z, frozen, w, bb, 0.25, 1.0, backend="triton")
    loss.backward()
    zq2, idx2, loss2 = quantize_projected_reference(z, frozen, w, bb, 0.25, 1.0)
    gw, gb = torch.autograd.grad(loss2, (w, bb))
    assert torch.equal(idx, idx2)
    torch.testing.assert_close(w.grad, gw, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(bb.grad, gb, rtol=1e-4, atol=1e-7)
    # only z: W and b need no gradient
    z2, frozen, w2, bb2 = _inputs(2, 16, (4,), 40, seed=5)
    w2.requires_grad_(False)
    bb2.requires_grad_(False)
    zq, idx, loss = quantize_projected(z2, frozen, w2, bb2, 0.25, 1.0, backend="triton")
    (zq.sum() + loss).backward()
    zq_r, _, loss_r = quantize_projected_reference(z2.detach().requires_grad_(), frozen, w2, bb2, 0.25, 1.0)
    assert w2.grad is None
    z_r = z2.detach().requires_grad_()
    zq_r, _, loss_r = quantize_projected_reference(z_r, frozen, w2, bb2, 0.25, 1.0)
    (zq_r.sum() + loss_r).backward()
    torch.testing.assert_close(z2.grad, z_r.grad, rtol=1e-5, atol=1e-7)


def test_second_backward_of_the_same_graph():
    # the backward's bias ticket counts on across calls: a retained graph gives the same gradients twice
    z, frozen, w, bb = _inputs(2, 16, (5,), 40, seed=8)
    zq, idx, loss = quantize_projected(z, frozen, w, bb, 0.25, 1.0, backend="triton")
    total = zq.square().mean() + loss
    first = torch.autograd.grad(total, (z, w, bb), retain_graph=True)
    second = torch.autograd.grad(total, (z, w, bb))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_exact_ties_near_ties_and_nan_vectors():
    # W = I, b = 0: the codebook is C itself; duplicate codes (exact ties: lowest index), twins one fp32 ulp apart
    # in one coordinate, and a NaN vector (index 0, NaN loss as in the definition); a huge bound sends every row
    # through the fp64 stage
    d, k = 16, 48
    g = torch.Generator().manual_seed(21)
    c = torch.randint(-3, 4, (k // 2, d), generator=g).float()
    twins = c.clone()
    twins[:, 1] = torch.nextafter(twins[:, 1], torch.tensor(float("inf")))
    frozen = torch.cat([c, twins])
    frozen[5] = frozen[2]  # an exact tie inside the first half
    w = torch.eye(d).requires_grad_()
    bb = torch.zeros(d).requires_grad_()
    pick = torch.randint(0, k, (30,), generator=g)
    z = (frozen[pick] + 0.25 * torch.randint(-1, 2, (30, d), generator=g).float()).t().reshape(1, d, 30)
    z = z.contiguous()
    # (max_candidates 2: the tied rows take the full fp64 scan)
    want, _ = nearest_code_reference(z[0].t(), frozen, exact=True)
    for scale, maxc in ((2.0, 16), (1e6, 16), (1e6, 2)):
        with tuning({"nearest_code.exact": {"bound_scale": scale, "max_candidates": maxc}}):
            zq, idx, loss = quantize_projected(z, frozen, w, bb, 0.25, 1.0, backend="triton")
        assert torch.equal(idx.reshape(-1), want), scale
        assert not (idx == 5).any()
        assert torch.equal(zq[0].t(), frozen[want])  # the gather uses the settled indices
        torch.testing.assert_close(loss, 1.25 * (frozen[want] - z[0].t()).square().mean(), rtol=1e-6, atol=0)
    zn = z.clone()
    zn[0, 3, 7] = float("nan")
    zq, idx, loss = quantize_projected(zn, frozen, w, bb, 0.25, 1.0, backend="triton")
    want, _ = nearest_code_reference(zn[0].t(), frozen, exact=True)
    assert idx[0, 7] == 0 and torch.equal(idx.reshape(-1), want) and torch.isnan(loss)


def test_bad_inputs_name_the_op():
    z, frozen, w, bb = _inputs(1, 8, (3,), 10, seed=1)
    with pytest.raises(ValueError, match="quantize_projected"):
        quantize_projected(z, frozen[:, :4], w, bb, 0.25, 1.0)
    with pytest.raises(TypeError, match="quantize_projected"):
        quantize_projected(z.double(), frozen, w, bb, 0.25, 1.0, backend="triton")


def test_model_training_step_runs_the_fused_kernels():
    from hfzoo.models.simvq import SimVQQuantizer
    from hfzoo.ops.dispatch import use_backend

    torch.manual_seed(0)
    q = SimVQQuantizer(40, 16)
    z = torch.randn(2, 16, 3, 3, requires_grad=True)
    with use_backend("triton"), count_launches() as n:
        zq, idx, loss = q(z)
        (zq.sum() + loss).backward()
    assert n["nearest_code.vq_fwd"] == 1 and n["nearest_code.vq_bwd"] == 1 and n.total() == 5
    gz, gw = z.grad.clone(), q.embedding_proj.weight.grad.clone()
    z.grad = None
    q.zero_grad()
    zq2, idx2, loss2 = q(z)  # CPU: the reference path (_QuantizerStep)
    (zq2.sum() + loss2).backward()
    assert torch.equal(idx, idx2)
    torch.testing.assert_close(loss, loss2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(z.grad, gz, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q.embedding_proj.weight.grad, gw, rtol=1e-4, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.parametrize("b,hw,k", [(64, 16, 8192), (3, 7, 1000)])
def test_gpu_fused_step_matches_the_definition(b, hw, k):
    z, frozen, w, bb = _inputs(b, 128, (hw, hw), k, seed=k, device="cuda")
    _compare(z, frozen, w, bb)


def test_autotuned_first_pass_appends_its_rows_once(monkeypatch):
    # The autotuner runs a kernel several times on the real arguments. The first pass appends its unsettled rows
    # to a list (not idempotent), so a new tuning key is tuned with the append off and then launched once with it.
    # Stand-in for the autotuner (it needs a GPU): a launch with several configs runs every config on the same
    # arguments the first time its key is seen, then one config.
    from hfzoo.ops import nearest_code as nc

    real, seen, appends = nc.launch, set(), []

    def autotuning_launch(name, kernel, grid, *args, configs=None, key=None, **kw):
        if configs is None or len(configs) < 2:
            return real(name, kernel, grid, *args, configs=configs, key=key, **kw)
        appends.append(kw["APPEND"])
        # what Triton's autotuner keys on: the key arguments (N_BUCKET, K_BUCKET, D), the constexprs, dtypes
        tune_key = (args[19], args[20], args[13]) + tuple(sorted((k, str(v)) for k, v in kw.items() if k != "APPEND"))
        for conf in configs if tune_key not in seen else configs[:1]:
            real(name, kernel, grid, *args, configs=[conf], **kw)
        seen.add(tune_key)

    monkeypatch.setattr(nc, "launch", autotuning_launch)
    monkeypatch.setattr(nc, "_side_effect_free_tuned", set())
    two = {"configs": [{"BLOCK_M": 16, "BLOCK_K": 32}, {"BLOCK_M": 32, "BLOCK_K": 16}]}
    z, frozen, w, bb = _inputs(2, 16, (5, 7), 60, seed=4)
    with tuning({"nearest_code.candidates": two, "nearest_code.exact": {"bound_scale": 1e4}}):
        for _ in range(2):
            flat = z.detach().movedim(1, -1).reshape(-1, 16).contiguous()
            _, _, _, flag, *_, scratch = nc._exact_first_pass(flat, frozen)
            assert scratch[0].item() == (flag != 0).sum().item() > 0  # every unsettled row listed once
            _compare(z, frozen, w, bb)
    assert appends == [False, True, True, True, True]  # tuned without the append once per key (two keys)


def test_first_pass_launches_the_tuned_pick_directly_once_known(monkeypatch):
    # Host path: the launch plan of a shape remembers the autotuner's pick; later calls launch that config alone
    # (no autotuner, no tuning keys rebuilt per call). Stand-ins: a launch that runs the first of several configs
    # (the autotuner needs a GPU) and a pick lookup that names the second config.
    import json

    from hfzoo.ops import nearest_code as nc

    real, calls = nc.launch, []

    def recording_launch(name, kernel, grid, *args, configs=None, key=None, **kw):
        calls.append((name, kw.get("APPEND"), None if configs is None else len(configs)))
        return real(name, kernel, grid, *args, configs=None if configs is None else configs[:1], **kw)

    two = [{"BLOCK_M": 16, "BLOCK_K": 32}, {"BLOCK_M": 32, "BLOCK_K": 16}]
    monkeypatch.setenv("HFZOO_TUNE", json.dumps({"nearest_code.candidates": {"configs": two}}))
    monkeypatch.setattr(nc, "launch", recording_launch)
    monkeypatch.setattr(nc, "tuned_pick", lambda kernel, configs, key, args, kwargs: dict(configs[1]))
    monkeypatch.setattr(nc, "_side_effect_free_tuned", set())
    monkeypatch.setattr(nc, "_plans", {})
    z, frozen, w, bb = _inputs(2, 16, (5, 7), 60, seed=11)
    for i in range(3):
        calls.clear()
        _compare(z, frozen, w, bb)
        fwd = [c for c in calls if c[0] == "nearest_code.fwd"]
        if i == 0:  # tuned without the append, then launched with it, through the config list
            assert fwd == [("nearest_code.fwd", False, 2), ("nearest_code.fwd", True, 2)]
        else:  # the pick alone
            assert fwd == [("nearest_code.fwd", True, 1)]
    assert any(key[0] == "nearest_code.candidates" for key in nc._plans)


def test_plans_are_not_remembered_inside_tuning_blocks(monkeypatch):
    from hfzoo.ops import nearest_code as nc

    monkeypatch.setattr(nc, "_plans", {})
    z, frozen, w, bb = _inputs(1, 16, (3, 3), 40, seed=12)
    with tuning({"nearest_code.exact": {"bound_scale": 1e6}}):
        _compare(z, frozen, w, bb)
    assert nc._plans == {}
    _compare(z, frozen, w, bb)
    assert {key[0] for key in nc._plans} == {"exact", "nearest_code.candidates", "vq"}


def test_backward_with_only_one_output_used():
    # the Function does not materialise zero gradients: an unused z_q or loss reaches the kernel as "absent"
    z, frozen, w, bb = _inputs(2, 16, (4, 3), 40, seed=13)
    for use in ("zq", "loss"):
        zr = z.detach().clone().requires_grad_()
        got = quantize_projected(z, frozen, w, bb, 0.25, 1.0, backend="triton")
        want = quantize_projected_reference(zr, frozen, w, bb, 0.25, 1.0)
        pick = (lambda out: (out[0] * out[0].detach()).sum()) if use == "zq" else (lambda out: 2.0 * out[2])
        (gz,) = torch.autograd.grad(pick(got), z)
        (gzr,) = torch.autograd.grad(pick(want), zr)
        torch.testing.assert_close(gz, gzr, rtol=1e-5, atol=1e-7)
    zq, _, loss = quantize_projected(z, frozen, w, bb, 0.25, 1.0, backend="triton")
    gw, gb = torch.autograd.grad(zq.sum(), (w, bb), allow_unused=True)  # z_q alone: no gradient reaches W, b
    assert (gw is None or not gw.any()) and (gb is None or not gb.any())


def test_two_steps_of_one_shape_before_one_backward():
    # the exact mode's lists and the partial sums are kept between calls of one shape (per stream and thread):
    # a second forward before the first backward must leave the first one's gradients intact
    from hfzoo.ops import nearest_code as nc

    z1, frozen, w, bb = _inputs(2, 16, (3, 5), 50, seed=14)
    z2 = torch.randn_like(z1).requires_grad_()
    outs = [quantize_projected(z, frozen, w, bb, 0.25, 1.0, backend="triton") for z in (z1, z2)]
    assert len(nc._workspaces) >= 2
    total = sum(zq.square().mean() + 2.0 * loss for zq, _, loss in outs)
    got = torch.autograd.grad(total, (z1, z2, w, bb))
    refs = [quantize_projected_reference(z, frozen, w, bb, 0.25, 1.0) for z in (z1, z2)]
    want = torch.autograd.grad(sum(zq.square().mean() + 2.0 * loss for zq, _, loss in refs), (z1, z2, w, bb))
    for (_, i, _), (_, j, _) in zip(outs, refs):
        assert torch.equal(i, j)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_another_thread_gets_its_own_scratch():
    import threading

    from hfzoo.ops import nearest_code as nc

    z, frozen, w, bb = _inputs(1, 16, (4, 4), 30, seed=15)
    quantize_projected(z, frozen, w, bb, 0.25, 1.0, backend="triton")
    mine = {k for k in nc._workspaces if k[-1] == threading.get_ident()}
    result = {}

    def work():
        result["out"] = quantize_projected(z.detach(), frozen, w.detach(), bb.detach(), 0.25, 1.0, backend="triton")
        result["keys"] = {k for k in nc._workspaces if k[-1] == threading.get_ident()}

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert mine and result["keys"] and not (mine & result["keys"])
    want = quantize_projected_reference(z.detach(), frozen, w.detach(), bb.detach(), 0.25, 1.0)
    assert torch.equal(result["out"][1], want[1])
