"""MoM: routing, the packed one-launch memory batch against the per-token definition, padding, packed
documents, decoding, generation, gradients, the balance loss; Triton kernels through the interpreter on CPU."""

import pytest
import torch
from helpers import (
    assert_left_padded_generate_matches,
    assert_padded_batch_matches_each_sequence,
    assert_token_by_token_decoding_matches,
    rel_err,
)

from hfzoo.models.mom import MoMConfig, MoMForCausalLM, MoMModel
from hfzoo.models.mom.modeling_mom import (
    MixtureOfMemories,
    load_balancing_loss,
    pack_memories,
    route,
)
from hfzoo.models.mom.mom_reference import load_balancing_reference, mom_layer_reference
from hfzoo.ops.dispatch import use_backend

VOCAB = 61
CONFIGS = {
    "shared_gqa": dict(num_heads=2, num_kv_heads=1, num_memories=3, topk=2, shared_mem=True),
    "plain_top1": dict(num_heads=2, num_memories=4, topk=1, shared_mem=False),
    "single_kv": dict(num_heads=2, num_memories=3, topk=2, shared_mem=True, single_kv_proj=True),
}


def make_config(**overrides):
    base = dict(vocab_size=VOCAB, hidden_size=16, expand_k=1.0, expand_v=1.0, num_hidden_layers=2,
                intermediate_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return MoMConfig(**{**base, **overrides})


def randomize(module):
    """Random (not near-identity) norms, decay biases and router so that every path matters."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight") or "g_norm" in name:
                p.uniform_(0.5, 1.5)
            if "gk.1.bias" in name or ("gk_proj" in name and name.endswith("1.bias")):
                p.uniform_(-2, 3)
            if name.endswith("gate.weight"):
                p.normal_(0, 1.0)
    return module


def make_model(name_or_config, seed=0):
    torch.manual_seed(seed)
    config = name_or_config if isinstance(name_or_config, MoMConfig) else make_config(**CONFIGS[name_or_config])
    return randomize(MoMForCausalLM(config).eval())


def make_layer(name, seed=0):
    torch.manual_seed(seed)
    return randomize(MixtureOfMemories(make_config(**CONFIGS[name]), 0))


def ids(B, T, seed=1):
    return torch.randint(3, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def reference_backend(request):
    if "kernel" in request.node.name:
        yield
        return
    with use_backend("reference"):
        yield


# --- config ---------------------------------------------------------------------------------------------------


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="topk"):
        make_config(num_memories=2, topk=3)
    with pytest.raises(ValueError, match="num_memories"):
        make_config(num_memories=0, topk=1)
    with pytest.raises(ValueError, match="memory_backend"):
        make_config(memory_backend="deltanet")
    with pytest.raises(ValueError, match="num_kv_heads"):
        make_config(num_heads=4, num_kv_heads=3)


# --- routing ---------------------------------------------------------------------------------------------------


def test_router_takes_topk_and_renormalizes_over_them():
    logits = torch.randn(2, 5, 4)
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[1, 0] = False
    r = route(logits, 2, keep)
    probs = logits.softmax(-1)
    torch.testing.assert_close(r.probs, probs)
    top = probs.topk(2, -1)
    assert torch.equal(r.memories, top.indices)
    torch.testing.assert_close(r.weights[keep], (top.values / top.values.sum(-1, keepdim=True))[keep])
    torch.testing.assert_close(r.weights.sum(-1)[keep], torch.ones(int(keep.sum())))
    assert r.weights[1, 0].abs().sum() == 0       # a padded token carries no weight


def test_packed_batch_holds_each_memorys_tokens_in_time_order():
    B, T, M = 2, 9, 3
    g = torch.Generator().manual_seed(3)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[0, :2] = False
    r = route(torch.randn(B, T, M, generator=g), 2, keep)
    rows = torch.arange(B)[:, None].expand(B, T)
    batch = pack_memories(r, rows, B, M, shared=True)
    offsets = batch.cu_seqlens.tolist()
    assert len(offsets) == (M + 1) * B + 1 and offsets[-1] == batch.num_entries
    for m in range(M + 1):
        for b in range(B):
            seg = batch.tokens[offsets[m * B + b]:offsets[m * B + b + 1]].tolist()
            want = [b * T + t for t in range(T) if keep[b, t] and (m == M or m in r.memories[b, t].tolist())]
            assert seg == want, (m, b)
    assert batch.counts == [offsets[(m + 1) * B] - offsets[m * B] for m in range(M + 1)]


def test_a_memory_only_affects_the_tokens_routed_to_it():
    """Changing memory m's key/value/decay projections changes the layer output only at the tokens routed to m
    (tokens of other memories, later ones included, are untouched: no state is shared between memories)."""
    layer = make_layer("plain_top1")
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        base = layer(x)[0]
        memories = route(layer.gate(x).float(), layer.topk, torch.ones(2, 11, dtype=torch.bool)).memories
        for m in range(layer.num_memories):
            for proj in (layer.k_proj[m], layer.v_proj[m], layer.gk_proj[m][1]):
                saved = proj.weight.clone()
                proj.weight.add_(torch.randn_like(saved))
                changed = (layer(x)[0] - base).abs().amax(-1) > 1e-6
                proj.weight.copy_(saved)
                routed = (memories == m).any(-1)
                assert not (changed & ~routed).any(), (m, proj)
                if proj is layer.v_proj[m]:   # (a key or decay change at a memory's first token only rescales
                    assert torch.equal(changed, routed), m     # its output, which the output norm removes)


# --- the layer against the per-token definition ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_layer_matches_per_token_reference_with_padding(name):
    layer = make_layer(name)
    x = torch.randn(3, 13, 16)
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, :4] = 0       # left padding
    mask[2, 9:] = 0       # right padding
    with torch.no_grad():
        out = layer(x, attention_mask=mask)[0]
        ref = mom_layer_reference(layer, x, mask)
    keep = mask.bool()
    assert rel_err(out[keep], ref[keep]) < 1e-5


def test_layer_gradients_match_per_token_reference():
    layer = make_layer("shared_gqa")
    x = torch.randn(2, 10, 16, requires_grad=True)
    w = torch.randn(2, 10, 16)
    (layer(x)[0] * w).sum().backward()
    got = {n: p.grad.clone() for n, p in layer.named_parameters()}
    gx = x.grad.clone()
    layer.zero_grad()
    x.grad = None
    (mom_layer_reference(layer, x) * w).sum().backward()
    assert rel_err(gx, x.grad) < 1e-5
    for n, p in layer.named_parameters():
        if p.grad is None:
            assert got[n] is None or got[n].abs().max() == 0, n
            continue
        assert rel_err(got[n], p.grad) < 1e-5, n
    assert got["k_proj.0.weight"].abs().sum() > 0 and got["shared_gk.1.bias"].abs().sum() > 0


def test_balance_loss_matches_its_definition_and_trains_the_router():
    layer = make_layer("shared_gqa")
    x = torch.randn(2, 9, 16)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0
    _, aux = layer(x, attention_mask=mask)
    ref = load_balancing_reference(layer, x, mask)
    assert aux.shape == (2,)
    torch.testing.assert_close(aux, ref.to(aux.dtype), rtol=1e-5, atol=1e-6)
    aux.sum().backward()
    assert layer.gate.weight.grad.abs().sum() > 0
    # uniform routing gives M * sum_m (k / M) * (1 / M) = k
    r = route(torch.zeros(1, 8, 4), 2, torch.ones(1, 8, dtype=torch.bool))
    r.memories = torch.tensor([[0, 1], [2, 3]] * 4)[None]
    torch.testing.assert_close(load_balancing_loss(r), torch.tensor([2.0]))


# --- model: losses, outputs, padding, packing -----------------------------------------------------------------------


def test_forward_without_labels_tuple_outputs_and_training_loss_with_aux():
    model = make_model("shared_gqa")
    x = ids(2, 7)
    out = model(x)
    assert out.loss is None and out.logits.shape == (2, 7, VOCAB) and out.aux_loss.ndim == 0
    tup = model(x, return_dict=False)
    torch.testing.assert_close(tup[0], out.logits)
    eval_out = model(x, labels=x)
    model.train()
    train_out = model(x, labels=x)
    torch.testing.assert_close(train_out.loss, eval_out.loss + train_out.aux_loss)
    loss_tuple = model(x, labels=x, return_dict=False)[0]
    torch.testing.assert_close(loss_tuple, train_out.loss)
    # rows count by their labelled tokens; with num_items_in_batch, divided by it like the LM loss
    labels = x.clone()
    labels[0, :4] = -100                     # predicted tokens 1..6: row 0 has 3 counted labels, row 1 has 6
    out = model(x, labels=labels)
    lm = model.loss_function(logits=out.logits, labels=labels, vocab_size=VOCAB)
    rows = out.aux_loss_per_row
    torch.testing.assert_close(out.loss, lm + (3 * rows[0] + 6 * rows[1]) / 9)
    items = torch.tensor(18)
    acc = model(x, labels=labels, num_items_in_batch=items)
    lm = model.loss_function(logits=acc.logits, labels=labels, vocab_size=VOCAB, num_items_in_batch=items)
    torch.testing.assert_close(acc.loss, lm + (3 * rows[0] + 6 * rows[1]) / 18)
    torch.testing.assert_close(out.aux_loss, rows.mean())    # no padding: every row has 7 tokens
    # pre-shifted labels (transformers' shift_labels) take the place of labels, balance weights included
    shift = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    torch.testing.assert_close(model(x, labels=x, shift_labels=shift).loss, out.loss)   # labels then unused
    # another ignore_index marks the same tokens for the LM loss and the balance weights
    other = torch.where(labels == -100, torch.full_like(labels, -1), labels)
    torch.testing.assert_close(model(x, labels=other, ignore_index=-1).loss, out.loss)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_per_sequence_forward(side):
    model = make_model("shared_gqa")
    seqs = [ids(1, n, seed=10 + i)[0] for i, n in enumerate([9, 4, 6])]
    assert_padded_batch_matches_each_sequence(model, seqs, side)


def test_packed_documents_equal_each_document_alone():
    """cu_seqlens and position_ids restarts (DataCollatorWithFlattening) keep documents apart in every memory."""
    model = make_model("shared_gqa")
    docs = [ids(1, n, seed=20 + n)[0] for n in (5, 8, 3)]
    packed = torch.cat(docs)[None]
    cu = torch.tensor([0, 5, 13, 16], dtype=torch.int32)
    position_ids = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        alone = torch.cat([model(d[None]).logits[0] for d in docs])
        by_cu = model(packed, cu_seqlens=cu).logits[0]
        by_pos = model(packed, position_ids=position_ids).logits[0]
        by_alias = model(packed, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=8, max_length_k=8).logits[0]
    assert rel_err(by_cu, alone) < 1e-5
    assert rel_err(by_pos, alone) < 1e-5
    assert rel_err(by_alias, alone) < 1e-5
    # and the same through the per-token definition at layer level
    layer = model.model.layers[0].attn
    h = torch.randn(1, 16, 16)
    docs_ids = torch.repeat_interleave(torch.arange(3), torch.tensor([5, 8, 3]))[None]
    from hfzoo.layers.packing import Packing
    with torch.no_grad():
        got = layer(h, packing=Packing.from_cu_seqlens(cu, 1, 16))[0]
        ref = mom_layer_reference(layer, h, document_ids=docs_ids)
    assert rel_err(got, ref) < 1e-5


def test_packed_input_errors_are_clear():
    model = make_model("shared_gqa")
    x = ids(1, 6)
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(x, cu_seqlens=torch.tensor([0, 2, 5]))
    with pytest.raises(ValueError, match="padding"):
        model(x, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1]]), cu_seqlens=torch.tensor([0, 2, 6]))


# --- decoding and generation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_token_by_token_decoding_matches_full_forward(name):
    model = make_model(name)
    cache = assert_token_by_token_decoding_matches(model, ids(2, 13), prefix=6)
    state = cache.layers[0].recurrent_state
    assert isinstance(state, tuple) and len(state) == model.config.num_states


def test_decoding_updates_only_the_chosen_memories():
    model = make_model("plain_top1")
    x = ids(1, 6)
    with torch.no_grad():
        out = model(x, use_cache=True)
        before = [s.clone() for s in out.past_key_values.layers[0].recurrent_state]
        layer = model.model.layers[0]
        h = layer.attn_norm(model.model.embeddings(ids(1, 1, seed=5)))
        chosen = int(layer.attn.gate(h).argmax(-1))
        model(ids(1, 1, seed=5), past_key_values=out.past_key_values, use_cache=True)
        after = out.past_key_values.layers[0].recurrent_state
    for m, (a, b) in enumerate(zip(before, after)):
        assert torch.equal(a, b) == (m != chosen), m


def test_left_padded_batched_generate_equals_per_sequence_generate():
    model = make_model("shared_gqa")
    assert_left_padded_generate_matches(model, [ids(1, n, seed=30 + n)[0] for n in (8, 3, 5)], 6)


def test_beam_search_and_sampling_run():
    model = make_model("shared_gqa")
    x = ids(2, 5)
    torch.manual_seed(0)
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, top_p=0.9, max_new_tokens=3,
                         pad_token_id=0, eos_token_id=None, num_return_sequences=2)
    assert out.shape == (4, 8)
    beams = model.generate(x, attention_mask=torch.ones_like(x), num_beams=2, max_new_tokens=3, do_sample=False,
                           pad_token_id=0, eos_token_id=None)
    assert beams.shape == (2, 8)


# --- training ------------------------------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make_model("shared_gqa").train()
    x = ids(2, 8)
    model(x, labels=x).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model(x, labels=x).loss.backward()
    for n, p in model.named_parameters():
        assert rel_err(p.grad, ref[n]) < 1e-5, n


def test_save_and_load_through_auto_classes(tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM

    import hfzoo  # noqa: F401  (registers the Auto classes)

    model = make_model("shared_gqa")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is MoMForCausalLM and loaded.config.model_type == "hfzoo_mom"
    assert type(AutoModel.from_pretrained(tmp_path)) is MoMModel
    x = ids(1, 6)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


# --- Triton kernels (interpreter on CPU) -------------------------------------------------------------------------------


# the kernels run natively on a GPU, through Triton's interpreter on a CPU (fp32 either way; tf32 dots on a GPU)
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_TOL = 3e-3 if KERNEL_DEVICE == "cuda" else 1e-4


def test_kernel_path_matches_reference_forward_backward_and_decoding():
    """One packed launch through the Triton kernels: chunked forward + backward, and recurrent decoding whose
    packed batch has empty (memory, row) segments and per-segment initial states."""
    model = make_model(make_config(**CONFIGS["shared_gqa"], num_hidden_layers=1)).to(KERNEL_DEVICE)
    x = ids(2, 9).to(KERNEL_DEVICE)
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    with use_backend("reference"):
        ref = model(x, attention_mask=mask, labels=x)
        ref.loss.backward()
        ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            out = model(x[:, :5], attention_mask=mask[:, :5], use_cache=True)
            ref_step = model(x[:, 5:6], attention_mask=mask[:, :6], past_key_values=out.past_key_values).logits
    model.zero_grad()
    with use_backend("triton"):
        got = model(x, attention_mask=mask, labels=x)
        got.loss.backward()
        with torch.no_grad():
            out = model(x[:, :5], attention_mask=mask[:, :5], use_cache=True)
            step = model(x[:, 5:6], attention_mask=mask[:, :6], past_key_values=out.past_key_values).logits
    keep = mask.bool()
    assert rel_err(got.logits[keep], ref.logits[keep]) < KERNEL_TOL
    for n, p in model.named_parameters():
        assert rel_err(p.grad, ref_grads[n]) < KERNEL_TOL, n
    assert rel_err(step, ref_step) < KERNEL_TOL


def test_kernel_path_runs_one_recurrence_launch_per_layer(monkeypatch):
    """Every (memory, sequence) pair of a layer, shared memory included, goes through ONE op call: one chunked
    call in training, one recurrent kernel launch when decoding (counted by the launch module)."""
    from hfzoo.models.mom import modeling_mom
    from hfzoo.ops import launch

    model = make_model(make_config(**CONFIGS["shared_gqa"], num_hidden_layers=1)).train().to(KERNEL_DEVICE)
    calls = []
    real = modeling_mom.chunk_gla

    def spy(*args, **kwargs):
        calls.append(kwargs["cu_seqlens"].numel() - 1)
        return real(*args, **kwargs)

    monkeypatch.setattr(modeling_mom, "chunk_gla", spy)
    x = ids(2, 5).to(KERNEL_DEVICE)
    with use_backend("triton"):
        model(x, labels=x).loss.backward()
        assert calls == [model.config.num_states * 2] * model.config.num_hidden_layers
        model.eval()
        with torch.no_grad(), launch.count_launches() as n:
            model(x)
    assert n["gla.fused_recurrent"] == model.config.num_hidden_layers


def test_one_memory_top1_is_exactly_gla():
    """With a single memory (top-1, no shared memory) every token goes to it with weight 1: the model is GLA."""
    from hfzoo.models.gla import GLAConfig, GLAForCausalLM

    mom = make_model(make_config(num_heads=2, num_kv_heads=1, num_memories=1, topk=1, shared_mem=False))
    gla = GLAForCausalLM(GLAConfig(vocab_size=VOCAB, hidden_size=16, expand_k=1.0, expand_v=1.0, num_heads=2,
                                   num_kv_heads=1, num_hidden_layers=2, intermediate_size=32)).eval()
    state = {k.replace("_proj.0.", "_proj."): v for k, v in mom.state_dict().items() if ".attn.gate." not in k}
    gla.load_state_dict(state)
    x = ids(2, 11)
    with torch.no_grad():
        assert rel_err(mom(x).logits, gla(x).logits) < 1e-5
