"""MosaicBERT model: padding-free execution against per-sequence and padded references, MLM masked-only
logits, the classification heads, gradient checkpointing, bad input, save/load."""

import pytest
import torch
from helpers import rel_err
from mosaicbert_padded_reference import padded_forward

from hfzoo.models.mosaicbert import (
    MosaicBertConfig,
    MosaicBertForMaskedLM,
    MosaicBertForSequenceClassification,
    MosaicBertForTokenClassification,
    MosaicBertModel,
)
from hfzoo.ops.dispatch import use_backend


@pytest.fixture(autouse=True)
def _reference_attention(request):
    """The model tests run the attention reference (fast on CPU); the kernels have their own tests, and
    ``test_matches_padded_per_layer_reference_and_backends`` runs the model through both backends."""
    if "backends" in request.node.name or "gpu" in request.keywords:
        yield
        return
    with use_backend("reference"):
        yield


def tiny(**kw):
    base = dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=40,
                alibi_starting_size=16, hidden_dropout_prob=0.0)
    return MosaicBertConfig(**{**base, **kw})


def batch(lengths, S=None, vocab=97, left=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = S or max(lengths)
    ids = torch.randint(1, vocab, (len(lengths), S), generator=g)
    mask = torch.zeros(len(lengths), S, dtype=torch.long)
    for b, L in enumerate(lengths):
        if left:
            mask[b, S - L:] = 1
        else:
            mask[b, :L] = 1
    return ids * mask, mask


@pytest.mark.parametrize("left", [False, True])
def test_unpadded_batch_equals_each_sequence_alone(left):
    torch.manual_seed(0)
    model = MosaicBertModel(tiny()).eval()
    lengths = [7, 21, 1, 13]  # 21 > alibi_starting_size
    ids, mask = batch(lengths, S=24, left=left)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        for b in range(len(lengths)):
            keep = mask[b].bool()
            alone = model(input_ids=ids[b:b + 1, keep]).last_hidden_state[0]
            assert rel_err(out.last_hidden_state[b, keep], alone) < 1e-5
            assert out.last_hidden_state[b, ~keep].abs().max().item() == 0 if (~keep).any() else True
            pooled_alone = model(input_ids=ids[b:b + 1, keep]).pooler_output[0]
            assert rel_err(out.pooler_output[b], pooled_alone) < 1e-5


def test_matches_padded_per_layer_reference_and_backends():
    torch.manual_seed(1)
    cfg = tiny(num_attention_heads=12, hidden_size=48, num_hidden_layers=1)  # 12 heads: non-power-of-two slopes
    model = MosaicBertForMaskedLM(cfg).eval()
    ids, mask = batch([9, 20, 4], S=20)
    sd = model.state_dict()
    ref_seq, ref_logits = padded_forward(sd, cfg.to_dict(), ids, mask)
    keep = mask.bool()
    with torch.no_grad():
        for backend in ("reference", "triton"):  # triton runs through the interpreter on CPU
            with use_backend(backend):
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            assert rel_err(out.hidden_states[-1][keep], ref_seq[keep]) < 1e-5
            assert rel_err(out.logits[keep], ref_logits[keep]) < 1e-5


def test_mlm_logits_only_for_masked_tokens():
    torch.manual_seed(2)
    model = MosaicBertForMaskedLM(tiny()).eval()
    ids, mask = batch([10, 6, 12])
    labels = torch.full_like(ids, -100)
    where = [(0, 2), (0, 9), (1, 0), (2, 11)]
    for b, s in where:
        labels[b, s] = ids[b, s]
    labels[1, 8] = 5  # a label on a padding position is ignored
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        dense = model(input_ids=ids, attention_mask=mask, labels=labels, return_full_logits=True)
    assert full.shape == (3, 12, 97)
    assert out.logits.shape == (len(where), 97)
    assert out.masked_positions.tolist() == [b * 12 + s for b, s in where]
    expected = torch.stack([full[b, s] for b, s in where])
    assert rel_err(out.logits, expected) < 1e-5
    targets = torch.stack([ids[b, s] for b, s in where])
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(expected, targets).item(), rel=1e-5)
    assert dense.logits.shape == (3, 12, 97)
    assert rel_err(dense.logits[0, 9], full[0, 9]) < 1e-5 and dense.logits[0, 3].abs().max().item() == 0
    # no labelled token: a zero loss that still backpropagates
    none = model(input_ids=ids, attention_mask=mask, labels=torch.full_like(ids, -100))
    assert none.loss.item() == 0.0 and none.logits.shape == (0, 97)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_classification_heads():
    torch.manual_seed(3)
    cfg = tiny(num_labels=3)
    ids, mask = batch([5, 11, 8])
    seq = MosaicBertForSequenceClassification(cfg).eval()
    out = seq(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2, 1]))
    assert out.logits.shape == (3, 3)
    out.loss.backward()
    assert seq.classifier.weight.grad.abs().sum() > 0 and seq.bert.embeddings.word_embeddings.weight.grad is not None
    with torch.no_grad():  # logits = classifier(pooler(first real token))
        base = seq.bert(input_ids=ids, attention_mask=mask)
        assert rel_err(seq.classifier(base.pooler_output), out.logits) < 1e-5
    tok = MosaicBertForTokenClassification(cfg).eval()
    labels = torch.randint(0, 3, ids.shape).masked_fill(mask == 0, -100)
    out = tok(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (3, 11, 3)
    assert out.logits[0, 5:].abs().max().item() == 0
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(out.logits[keep], labels[keep])
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    reg = MosaicBertForSequenceClassification(tiny(num_labels=1)).eval()
    assert reg(input_ids=ids, attention_mask=mask, labels=torch.randn(3)).loss.item() > 0


def test_bad_and_edge_inputs():
    torch.manual_seed(5)
    model = MosaicBertModel(tiny(max_sequence_length=12)).eval()
    with pytest.raises(ValueError, match="empty batch"):
        model(input_ids=torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="max_sequence_length=12"):
        model(input_ids=torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        MosaicBertConfig(hidden_size=50, num_attention_heads=4)
    # an all-padding row: zeros for it, the other rows unchanged; an all-padding batch: zeros
    ids, mask = batch([5, 0, 3], S=6)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        alone = model(input_ids=ids[:1, :5]).last_hidden_state[0]
        empty = model(input_ids=ids, attention_mask=torch.zeros_like(mask))
    assert out.last_hidden_state[1].abs().max().item() == 0
    assert torch.isfinite(out.pooler_output).all()
    assert rel_err(out.last_hidden_state[0, :5], alone) < 1e-5
    assert empty.last_hidden_state.abs().max().item() == 0 and torch.isfinite(empty.pooler_output).all()


def test_save_load_roundtrip_through_auto_classes(tmp_path):
    from transformers import AutoModelForMaskedLM

    import hfzoo  # noqa: F401  (registers the Auto classes)

    torch.manual_seed(6)
    model = MosaicBertForMaskedLM(tiny()).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MosaicBertForMaskedLM)
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    ids, mask = batch([4, 7])
    with torch.no_grad():
        assert rel_err(loaded(input_ids=ids, attention_mask=mask).logits,
                       model(input_ids=ids, attention_mask=mask).logits) < 1e-6


@pytest.mark.gpu
def test_gpu_bf16_unpadded_matches_reference_backend():
    torch.manual_seed(7)
    cfg = tiny(hidden_size=768, num_attention_heads=12, intermediate_size=512, vocab_size=1000)
    model = MosaicBertForMaskedLM(cfg).to("cuda", torch.bfloat16).eval()
    ids, mask = batch([300, 64, 513, 7], vocab=1000)
    ids, mask = ids.cuda(), mask.cuda()
    keep = mask.bool()
    with torch.no_grad():
        fast = model(input_ids=ids, attention_mask=mask).logits
        with use_backend("reference"):
            ref = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[2:3, :513]).logits[0]
    assert rel_err(fast[keep], ref[keep]) < 2e-2
    assert rel_err(fast[2], alone) < 2e-2
    labels = ids.masked_fill(torch.rand(ids.shape, device="cuda") > 0.3, -100).masked_fill(~keep, -100)
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _autocast_steps(model, ids, mask, labels, backend, dtype):
    """(loss, flat gradients) of one MLM step under autocast to ``dtype``, with ``backend`` and then the reference."""
    results = []
    for b in (backend, "reference"):
        model.zero_grad()
        with use_backend(b), torch.autocast(ids.device.type, dtype=dtype):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    return results


def test_autocast_training_step_agrees_between_backends():
    """fp32 parameters under fp16 autocast on the CPU: the kernels (interpreter, forced) take the half-precision
    projections autocast produces and agree with the reference ops in loss and gradients."""
    from hfzoo.ops.dispatch import interpreter_enabled

    if not interpreter_enabled():
        pytest.skip("needs TRITON_INTERPRET=1")
    torch.manual_seed(8)
    model = MosaicBertForMaskedLM(tiny(hidden_size=64, num_attention_heads=4, intermediate_size=48,
                                       vocab_size=100)).train()
    ids, mask = batch([20, 7, 33], vocab=100)
    labels = ids.masked_fill(torch.rand(ids.shape) > 0.3, -100).masked_fill(~mask.bool(), -100)
    (loss, grads), (ref_loss, ref_grads) = _autocast_steps(model, ids, mask, labels, "triton", torch.float16)
    assert abs(loss.item() - ref_loss.item()) < 1e-3 * abs(ref_loss.item())
    assert rel_err(grads, ref_grads) < 1e-3


@pytest.mark.gpu
def test_gpu_autocast_training_step_matches_reference_backend():
    """fp32 parameters under bf16 autocast (what Trainer(bf16=True) runs): the kernels take bf16 projections and
    logits; loss and gradients agree with the reference ops (dropout off)."""
    torch.manual_seed(8)
    cfg = tiny(hidden_size=256, num_attention_heads=4, intermediate_size=384, vocab_size=1000)
    model = MosaicBertForMaskedLM(cfg).to("cuda").train()
    ids, mask = batch([100, 37, 250], vocab=1000)
    ids, mask = ids.cuda(), mask.cuda()
    labels = ids.masked_fill(torch.rand(ids.shape, device="cuda") > 0.3, -100).masked_fill(~mask.bool(), -100)
    (loss, grads), (ref_loss, ref_grads) = _autocast_steps(model, ids, mask, labels, "auto", torch.bfloat16)
    assert loss.dtype == torch.float32 and torch.isfinite(grads).all()
    assert abs(loss.item() - ref_loss.item()) < 2e-2 * abs(ref_loss.item())
    assert rel_err(grads, ref_grads) < 5e-2


def test_shipped_checkpoint_reproduces_its_recorded_heldout_masked_loss():
    """The tiny MosaicBERT (trained before the layers tier existed) scores what its training run recorded on
    the held-out topics, masked with the script's own seeded collator."""
    import json
    import random
    import sys
    from pathlib import Path

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    import hfzoo

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    try:
        import train_tiny_mosaicbert as script
    finally:
        sys.path.pop(0)
    folder = hfzoo.checkpoint_path("tiny-mosaicbert")
    recorded = json.loads((folder / "training_results.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    _, held_texts, _ = script.split_topics()
    held = script.chunk(tokenizer, held_texts, random.Random(1))
    gen = torch.Generator().manual_seed(123)
    batches = [script.collate(held[i:i + 64], tokenizer, gen) for i in range(0, len(held), 64)]
    model = AutoModelForMaskedLM.from_pretrained(folder).eval()
    with torch.no_grad():
        loss, accuracy = script.evaluate(model, batches)
    assert loss == pytest.approx(recorded["heldout_masked_loss"], abs=2e-4)
    assert accuracy == pytest.approx(recorded["heldout_masked_accuracy"], abs=2e-4)
