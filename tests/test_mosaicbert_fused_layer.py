"""MosaicBERT's Triton path with one autograd node per layer (``fused_layer.py``) against the per-module path (the
same kernels through each op's own autograd Function), and the one-read packing of a padded batch."""

import pytest
import torch
from helpers import rel_err

from hfzoo.layers.packing import Packing
from hfzoo.models.mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM, MosaicBertModel
from hfzoo.models.mosaicbert.modeling_mosaicbert import indices_of, padding_packing
from hfzoo.ops.dispatch import interpreter_enabled, use_backend
from hfzoo.ops.launch import count_launches


def tiny(**kw):
    # head_dim 8 (the kernels pad it to 16), GeGLU width 40 (not a multiple of the kernels' block)
    base = dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=40,
                hidden_dropout_prob=0.0)
    return MosaicBertConfig(**{**base, **kw})


def mlm_batch(lengths, S, vocab=97, seed=0, rate=0.4):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), S), generator=g)
    mask = (torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]).long()
    labels = ids.masked_fill(torch.rand(ids.shape, generator=g) > rate, -100).masked_fill(mask == 0, -100)
    return ids * mask, mask, labels


def needs_interpreter():
    if not interpreter_enabled() and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1")


def step(model, fused, resln=False, **batch):
    """(loss, {name: grad}) of one MLM step on the Triton backend."""
    model.bert.encoder.fused_layers = fused
    model.bert.encoder.fused_residual_ln = resln
    model.zero_grad(set_to_none=True)
    with use_backend("triton"):
        out = model(**batch)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("resln", [False, True])
def test_fused_layers_match_module_path_loss_and_every_gradient(resln):
    needs_interpreter()
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(tiny()).train()
    ids, mask, labels = mlm_batch([7, 21, 1, 13, 0], S=24)   # an empty row too
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    with count_launches() as n_fused:
        loss_f, grads_f = step(model, True, resln, **batch)
    if resln:   # two residual LayerNorms per layer each way
        assert n_fused["residual_ln.fwd"] == n_fused["residual_ln.bwd"] == 4
    with count_launches() as n_mod:
        loss_m, grads_m = step(model, False, **batch)
    # both paths ran the attention and GeGLU kernels once per layer each way
    for name in ("varlen_alibi.fwd", "varlen_alibi.bwd", "geglu.fwd", "geglu.bwd"):
        assert n_fused[name] == n_mod[name] == 2, (name, n_fused, n_mod)
    assert abs(loss_f.item() - loss_m.item()) < 1e-5 * abs(loss_m.item())
    assert grads_f.keys() == grads_m.keys()
    assert len(grads_f) == sum(1 for p in model.parameters())   # every parameter gets a gradient
    for name in grads_m:
        assert rel_err(grads_f[name], grads_m[name]) < 1e-4, name


def test_fused_layers_with_frozen_weights_and_gradient_checkpointing():
    """Frozen parameters get no gradient (and the rest the module path's); with gradient checkpointing, dropout on,
    the recomputed layers redraw the same masks: gradients equal a run without checkpointing."""
    needs_interpreter()
    torch.manual_seed(5)
    model = MosaicBertForMaskedLM(tiny(hidden_dropout_prob=0.2)).train()
    ids, mask, labels = mlm_batch([12, 5, 9], S=12, seed=6)
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    frozen = [model.bert.encoder.layer[0].attention.self.Wqkv.weight, model.bert.encoder.layer[1].mlp.layernorm.bias,
              model.bert.encoder.layer[1].mlp.wo.weight]
    for p in frozen:
        p.requires_grad_(False)
    torch.manual_seed(7)
    _, plain = step(model, True, **batch)
    assert all(p.grad is None for p in frozen) and len(plain) == sum(p.requires_grad for p in model.parameters())
    from hfzoo.models.mosaicbert.fused_layer import MosaicBertLayerFunction

    calls = []
    forward = MosaicBertLayerFunction.forward
    model.gradient_checkpointing_enable()
    torch.manual_seed(7)
    try:
        MosaicBertLayerFunction.forward = staticmethod(lambda *a: (calls.append(1), forward(*a))[1])
        _, checkpointed = step(model, True, **batch)
    finally:
        MosaicBertLayerFunction.forward = staticmethod(forward)
        model.gradient_checkpointing_disable()
    assert len(calls) == 2 * 2   # each of the 2 layers ran again in the backward
    for name in plain:
        assert rel_err(checkpointed[name], plain[name]) < 1e-5, name
    model.bert.embeddings.dropout.p = 0.0
    for m in model.modules():   # without dropout the module path must agree too
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    _, fused = step(model, True, **batch)
    _, modules = step(model, False, **batch)
    for name in modules:
        assert rel_err(fused[name], modules[name]) < 1e-4, name


def test_fused_path_is_one_node_per_layer_and_falls_back_where_it_cannot_run():
    needs_interpreter()
    torch.manual_seed(1)
    model = MosaicBertModel(tiny(), add_pooling_layer=False).train()
    ids, mask, _ = mlm_batch([5, 9], S=9)
    with use_backend("triton"):
        out = model.encode(ids, mask)
        assert type(out.hidden.grad_fn).__name__ == "MosaicBertLayerFunctionBackward"
        model.encoder.fused_layers = False
        assert type(model.encode(ids, mask).hidden.grad_fn).__name__ != "MosaicBertLayerFunctionBackward"
        model.encoder.fused_layers = True
        with torch.autocast("cpu", dtype=torch.bfloat16):   # autocast: the module path's per-op casts
            assert not model.encoder.fused_path_ok(torch.zeros(3, 48))
    with use_backend("reference"):
        assert not model.encoder.fused_path_ok(torch.zeros(3, 48))
    dropout_attn = MosaicBertModel(tiny(attention_probs_dropout_prob=0.1)).train()
    with use_backend("triton"):
        assert not dropout_attn.encoder.fused_path_ok(torch.zeros(3, 48))      # the kernels have no attention dropout
        assert dropout_attn.eval().encoder.fused_path_ok(torch.zeros(3, 48))    # in eval there is none
        assert not model.encoder.fused_path_ok(torch.zeros(0, 48))


def test_wrapped_or_hooked_submodules_take_the_module_path():
    """The fused node reads the layers' parameters directly: a replaced projection (an adapter, a quantised linear)
    or a hook on a submodule must not be skipped silently."""
    needs_interpreter()
    torch.manual_seed(3)
    model = MosaicBertModel(tiny(), add_pooling_layer=False).eval()
    x = torch.zeros(3, 48)
    with use_backend("triton"):
        assert model.encoder.fused_path_ok(x)

        class Scaled(torch.nn.Linear):   # stands in for an adapter-wrapped projection
            def forward(self, h):
                return 2 * super().forward(h)
        old = model.encoder.layer[1].mlp.wo
        model.encoder.layer[1].mlp.wo = Scaled(old.in_features, old.out_features)
        assert not model.encoder.fused_path_ok(x)
        model.encoder.layer[1].mlp.wo = old
        ids, mask, _ = mlm_batch([5, 8], S=8)
        with torch.no_grad():
            plain = model.encode(ids, mask).hidden
            handle = model.encoder.layer[0].attention.self.Wqkv.register_forward_hook(lambda m, i, o: o * 0)
            assert not model.encoder.fused_path_ok(x)
            hooked = model.encode(ids, mask).hidden
        assert rel_err(hooked, plain) > 1e-2   # the hook ran
        handle.remove()
        assert model.encoder.fused_path_ok(x)
        handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
        try:
            assert not model.encoder.fused_path_ok(x)
        finally:
            handle.remove()


def test_fused_layers_with_hidden_states_and_inference_match_module_path():
    needs_interpreter()
    torch.manual_seed(2)
    model = MosaicBertForMaskedLM(tiny(num_hidden_layers=3)).eval()
    ids, mask, labels = mlm_batch([11, 3, 17], S=17, seed=3)
    results = []
    for fused in (True, False):
        model.bert.encoder.fused_layers = fused
        with use_backend("triton"), torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
            plain = model.bert(input_ids=ids, attention_mask=mask)
        results.append((out.loss, out.logits, out.hidden_states[-1], plain.last_hidden_state))
    for a, b in zip(*results):
        assert rel_err(a, b) < 1e-5


def _loss_at(model, batch, state, direction, eps):
    """The MLM loss with every parameter moved by ``eps * direction``, the RNG reset to ``state`` first (the same
    dropout masks every time)."""
    with torch.no_grad():
        for p, v in zip(model.parameters(), direction):
            p.add_(v, alpha=eps)
    torch.set_rng_state(state)
    with use_backend("triton"), torch.no_grad():
        loss = model(**batch).loss.item()
    with torch.no_grad():
        for p, v in zip(model.parameters(), direction):
            p.sub_(v, alpha=eps)
    return loss


@pytest.mark.parametrize("resln", [False, True])
def test_fused_dropout_backward_uses_the_forward_masks(resln):
    """With both dropouts on, the gradient along a random direction in each weight group of the layers agrees with a
    central difference of the loss taken under the same RNG state (same masks): a backward that redrew either mask
    would not (a GeGLU backward with another seed misses by 2-10x here)."""
    needs_interpreter()
    torch.manual_seed(4)
    # initializer_range 0.2: the layers' weights matter enough to the loss for a float32 difference to resolve them
    model = MosaicBertForMaskedLM(tiny(hidden_dropout_prob=0.3, initializer_range=0.2)).train()
    model.bert.embeddings.dropout.p = 0.0   # only the layers' dropouts (the fused ones) are tested here
    model.bert.encoder.fused_residual_ln = resln
    ids, mask, labels = mlm_batch([9, 16, 4], S=16, seed=5, rate=0.6)
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    state = torch.get_rng_state()
    with use_backend("triton"):
        loss = model(**batch).loss
    loss.backward()
    names, params = zip(*model.named_parameters())
    assert _loss_at(model, batch, state, [torch.zeros_like(p) for p in params], 0.0) == pytest.approx(loss.item(),
                                                                                                      rel=1e-6)
    g = torch.Generator().manual_seed(6)
    for group in ("Wqkv", "attention.output.dense", "gated_layers", "mlp.wo"):
        direction = [torch.randn(p.shape, generator=g) * 0.1 * (group in n) for n, p in zip(names, params)]
        analytic = sum((p.grad * v).sum() for p, v in zip(params, direction)).item()
        eps = 1e-2
        numeric = (_loss_at(model, batch, state, direction, eps)
                   - _loss_at(model, batch, state, direction, -eps)) / (2 * eps)
        assert numeric == pytest.approx(analytic, rel=2e-2), group


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("with_mask", [True, False])
def test_padding_packing_matches_separate_reads(with_mask, static, monkeypatch):
    from hfzoo.models.mosaicbert import modeling_mosaicbert

    monkeypatch.setattr(modeling_mosaicbert, "_NONZERO_STATIC", [static])   # False: the cumsum + scatter fallback
    g = torch.Generator().manual_seed(7)
    B, S = 5, 13
    lengths = torch.tensor([13, 0, 4, 9, 1])
    mask = (torch.arange(S)[None, :] < lengths[:, None]).long() if with_mask else None
    keep = mask.bool() if with_mask else torch.ones(B, S, dtype=torch.bool)
    labelled = (torch.rand(B, S, generator=g) < 0.4) & keep
    packing, positions, subset = padding_packing(mask, B, S, "cpu", labelled)
    ref = Packing.from_mask(keep)
    assert packing.cu_seqlens.tolist() == ref.cu_seqlens.tolist() and packing.max_seqlen == ref.max_seqlen
    assert packing.num_tokens == ref.num_tokens
    x = torch.randn(B, S, 3, generator=g)
    assert torch.equal(packing.pack(x), ref.pack(x))
    assert positions.tolist() == torch.nonzero(labelled.flatten()).flatten().tolist()
    assert subset.tolist() == torch.nonzero(ref.pack(labelled)).flatten().tolist()
    none, no_pos, no_sub = padding_packing(mask, B, S, "cpu", torch.zeros(B, S, dtype=torch.bool))
    assert no_pos.numel() == 0 and no_sub.numel() == 0 and none.max_seqlen == ref.max_seqlen


def test_indices_of_fallback_matches_nonzero(monkeypatch):
    from hfzoo.models.mosaicbert import modeling_mosaicbert

    g = torch.Generator().manual_seed(8)
    for n in (0, 1, 17, 100):
        flags = torch.rand(n, generator=g) < 0.3
        for static in (True, False):
            monkeypatch.setattr(modeling_mosaicbert, "_NONZERO_STATIC", [static])
            assert indices_of(flags, int(flags.sum())).tolist() == torch.nonzero(flags).flatten().tolist()


@pytest.mark.gpu
def test_gpu_fused_layers_match_module_path_bf16_with_dropout():
    """bf16 MosaicBERT-like layers with dropout on: both paths draw the same masks from the same generators, so
    loss and gradients agree up to bf16 rounding of a different summation order."""
    cfg = tiny(hidden_size=256, num_attention_heads=4, intermediate_size=384, vocab_size=1000, num_hidden_layers=3,
               hidden_dropout_prob=0.1)
    torch.manual_seed(9)
    model = MosaicBertForMaskedLM(cfg).to("cuda", torch.bfloat16).train()
    ids, mask, labels = mlm_batch([100, 37, 250, 64], S=250, vocab=1000, seed=10)
    batch = dict(input_ids=ids.cuda(), attention_mask=mask.cuda(), labels=labels.cuda())
    results = []
    for fused in (True, False):
        torch.manual_seed(11)
        results.append(step(model, fused, **batch))
    (loss_f, grads_f), (loss_m, grads_m) = results
    assert abs(loss_f.item() - loss_m.item()) < 1e-2 * abs(loss_m.item())
    for name in grads_m:
        assert rel_err(grads_f[name], grads_m[name]) < 3e-2, name
    # the residual-LayerNorm kernels draw the hidden dropout's mask from their own Philox stream: compare without it
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for layer in model.bert.encoder.layer:
        layer.mlp.dropout.p = 0.0
    (loss_r, grads_r), (loss_m, grads_m) = step(model, True, True, **batch), step(model, False, **batch)
    assert abs(loss_r.item() - loss_m.item()) < 1e-2 * abs(loss_m.item())
    for name in grads_m:
        assert rel_err(grads_r[name], grads_m[name]) < 3e-2, name


@pytest.mark.gpu
def test_gpu_mlm_step_reads_the_device_only_to_pack(monkeypatch):
    """An MLM step on a padded batch synchronises with the GPU only inside ``padding_packing`` (its one read of the
    counts): the rest of the forward and the whole backward run with synchronising CUDA operations made errors."""
    from hfzoo.models.mosaicbert import modeling_mosaicbert

    # the shapes of the bf16 test above: its compiled and tuned kernels are reused
    cfg = tiny(hidden_size=256, num_attention_heads=4, intermediate_size=384, vocab_size=1000, num_hidden_layers=3,
               hidden_dropout_prob=0.1)
    model = MosaicBertForMaskedLM(cfg).to("cuda", torch.bfloat16).train()
    ids, mask, labels = mlm_batch([100, 37, 250, 64], S=250, vocab=1000, seed=10)
    batch = dict(input_ids=ids.cuda(), attention_mask=mask.cuda(), labels=labels.cuda())
    model(**batch).loss.backward()   # compile and tune first
    torch.cuda.synchronize()
    packing_calls = []
    original = modeling_mosaicbert.padding_packing

    def allowed_read(*args, **kwargs):
        packing_calls.append(1)
        torch.cuda.set_sync_debug_mode("default")
        try:
            return original(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(modeling_mosaicbert, "padding_packing", allowed_read)
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(**batch).loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert packing_calls == [1]
