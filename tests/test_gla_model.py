"""GLA model: shapes, losses, decoding == full forward, padding never leaks into the state, GQA, hybrid layers,
generate() with left padding, Trainer, gradient checkpointing, save/load.

Model-logic tests run the ops' reference path (``use_backend("reference")``); ``test_kernel_path_matches_reference``
runs the same model through the Triton kernels (the interpreter on CPU)."""

import pytest
import torch
from helpers import (
    assert_left_padded_generate_matches,
    assert_padded_batch_matches_each_sequence,
    assert_token_by_token_decoding_matches,
    rel_err,
)

from hfzoo.models.gla import (
    GLAConfig,
    GLAForCausalLM,
    GLAForSequenceClassification,
    GLAModel,
    modeling_gla,
)
from hfzoo.ops.dispatch import use_backend
from hfzoo.ops.launch import count_launches

VOCAB = 50


def make_config(**overrides):
    kw = dict(vocab_size=VOCAB, hidden_size=32, expand_k=0.5, expand_v=1.0, num_heads=2, num_hidden_layers=2,
              intermediate_size=48, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    return GLAConfig(**kw)


CONFIGS = {
    "plain": {},
    "conv_gqa": {"use_short_conv": True, "conv_size": 3, "num_heads": 4, "num_kv_heads": 2},
    "hybrid": {"num_hidden_layers": 3, "use_short_conv": True,
               "attn": {"layers": [1], "num_heads": 4, "num_kv_heads": 2, "window_size": 5}},
    "no_gate_clamp": {"use_output_gate": False, "clamp_min": -0.05},
}


def make_model(name_or_config, cls=GLAForCausalLM, seed=0):
    torch.manual_seed(seed)
    config = name_or_config if isinstance(name_or_config, GLAConfig) else make_config(**CONFIGS[name_or_config])
    model = cls(config).eval()
    # random (not near-identity) norms and decay biases so that every path matters
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "g_norm" in name:
                p.uniform_(0.5, 1.5)
            if "gk_proj.1.bias" in name:
                p.uniform_(-2, 3)
    return model


@pytest.fixture(autouse=True)
def reference_backend(request):
    if "kernel_path" in request.node.name:
        yield
        return
    with use_backend("reference"):
        yield


def ids(B, T, seed=1):
    return torch.randint(3, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def test_mlp_width_follows_fla_rounding():
    assert GLAConfig(hidden_size=256, hidden_ratio=4).mlp_width == 768
    assert GLAConfig(hidden_size=2048, hidden_ratio=4).mlp_width == 5632
    assert GLAConfig(hidden_size=256, intermediate_size=100).mlp_width == 100


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="num_kv_heads"):
        make_config(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        make_config(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        make_config(hidden_act="gelu")
    with pytest.raises(ValueError, match="outside"):
        make_config(attn={"layers": [5], "num_heads": 2})


def test_forward_shapes_loss_and_hidden_states():
    model = make_model("conv_gqa")
    x = ids(2, 11)
    out = model(x, labels=x, output_hidden_states=True)
    assert out.logits.shape == (2, 11, VOCAB)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, manual)
    assert model(x, logits_to_keep=1).logits.shape == (2, 1, VOCAB)
    base = GLAModel(model.config)
    assert base(x).last_hidden_state.shape == (2, 11, 32)


def test_tied_embeddings():
    model = GLAForCausalLM(make_config(tie_word_embeddings=True))
    assert model.lm_head.weight.data_ptr() == model.model.embeddings.weight.data_ptr()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_token_by_token_decoding_matches_full_forward(name):
    model = make_model(name)
    assert_token_by_token_decoding_matches(model, ids(2, 13), prefix=6)


@pytest.mark.parametrize("name", ["conv_gqa", "hybrid"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_per_sequence_forward(name, side):
    model = make_model(name)
    seqs = [ids(1, n, seed=10 + i)[0] for i, n in enumerate([9, 4, 6])]
    assert_padded_batch_matches_each_sequence(model, seqs, side)


def test_padded_training_batch_uses_varlen_and_matches_gradients(monkeypatch):
    """A padded batch runs the recurrence as one packed varlen sequence, and its loss gradients equal the sum of
    per-sequence gradients (no state leaks from padding)."""
    calls = []
    real = modeling_gla.chunk_gla

    def spy(*args, **kwargs):
        calls.append(kwargs.get("cu_seqlens"))
        return real(*args, **kwargs)

    monkeypatch.setattr(modeling_gla, "chunk_gla", spy)
    model = make_model("conv_gqa").train()
    seqs = [ids(1, n, seed=20 + n)[0] for n in (7, 3)]
    x = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros_like(x)
    for i, s in enumerate(seqs):
        x[i, 7 - len(s):], mask[i, 7 - len(s):] = s, 1
    logits = model(x, attention_mask=mask).logits
    loss_fn = torch.nn.functional.cross_entropy
    # predict every real token from the real token before it
    labels = x.masked_fill(mask == 0, -100)[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
    total = sum(loss_fn(logits[i, :-1], labels[i], ignore_index=-100, reduction="sum") for i in range(2))
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert calls and all(c is not None and c.tolist() == [0, 7, 10] for c in calls)

    model.zero_grad()
    for s in seqs:
        lg = model(s[None]).logits[0]
        loss_fn(lg[:-1], s[1:], reduction="sum").backward()
    for n, p in model.named_parameters():
        assert rel_err(grads[n], p.grad) < 1e-4, n


def test_grouped_query_heads_equal_repeated_full_heads():
    """num_kv_heads=1 equals a full-head model whose key/value/decay/conv weights repeat the single head."""
    gqa = make_model(make_config(num_heads=2, num_kv_heads=1, use_short_conv=True, conv_size=3))
    full = GLAForCausalLM(make_config(num_heads=2, num_kv_heads=2, use_short_conv=True, conv_size=3)).eval()
    sd = gqa.state_dict()
    rep = {}
    for name, t in sd.items():
        if any(s in name for s in ("k_proj.weight", "v_proj.weight", "gk_proj.1.weight", "gk_proj.1.bias",
                                   "k_conv1d.weight", "v_conv1d.weight")):
            rep[name] = t.repeat(2, *([1] * (t.dim() - 1)))
        else:
            rep[name] = t
    full.load_state_dict(rep)
    x = ids(2, 9)
    with torch.no_grad():
        assert rel_err(gqa(x).logits, full(x).logits) < 1e-5


@pytest.mark.parametrize("name", ["conv_gqa", "hybrid"])
def test_left_padded_batched_generate_equals_per_sequence_generate(name):
    model = make_model(name)
    assert_left_padded_generate_matches(model, [ids(1, n, seed=30 + n)[0] for n in (8, 3, 5)], 6)


def test_sampling_generate_and_cache_reordering():
    model = make_model("hybrid")
    x = ids(2, 5)
    torch.manual_seed(0)
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, top_p=0.9, temperature=0.8,
                         max_new_tokens=4, pad_token_id=0, eos_token_id=None, num_return_sequences=2)
    assert out.shape == (4, 9) and int(out.max()) < VOCAB
    beams = model.generate(x, attention_mask=torch.ones_like(x), num_beams=2, max_new_tokens=3, do_sample=False,
                           pad_token_id=0, eos_token_id=None)
    assert beams.shape == (2, 8)


def test_kernel_path_matches_reference():
    """The same model through the Triton kernels (interpreter on CPU, native on GPU) and the reference ops."""
    model = make_model("conv_gqa")
    x = ids(2, 70)   # long enough for the chunked kernel (prefill) ...
    mask = torch.ones_like(x)
    mask[1, :5] = 0
    with torch.no_grad():
        with use_backend("reference"):
            ref = model(x, attention_mask=mask, labels=x)
            ref_short = model(x[:, :12], attention_mask=mask[:, :12]).logits
        with use_backend("triton"), count_launches() as launched:
            out = model(x, attention_mask=mask, labels=x)      # the loss too: softmax_cross_entropy's kernel
            short = model(x[:, :12], attention_mask=mask[:, :12]).logits   # ... and short enough for the recurrent one
    assert launched.total() > 0, "no Triton kernel ran"
    assert launched["softmax_ce.fwd"] == 1 and rel_err(out.loss, ref.loss) < 1e-4
    out, ref = out.logits, ref.logits
    keep = mask.bool()
    assert rel_err(out[keep], ref[keep]) < 1e-4
    assert rel_err(short[keep[:, :12]], ref_short[keep[:, :12]]) < 1e-4


def test_trainer_runs_and_lowers_the_loss(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = make_model(make_config(num_hidden_layers=1)).train()
    pattern = torch.arange(3, 19)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            seq = pattern.roll(-i % 16)[:12]
            return {"input_ids": seq, "labels": seq, "attention_mask": torch.ones_like(seq)}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=24,
                             learning_rate=2e-2, logging_steps=4, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Data())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0], losses


def test_save_and_load_through_auto_classes(tmp_path):
    from transformers import AutoModelForCausalLM

    import hfzoo  # noqa: F401  (registers the Auto classes)

    model = make_model("hybrid")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is GLAForCausalLM and loaded.config.model_type == "hfzoo_gla"
    x = ids(1, 6)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_sequence_classification_reads_the_last_real_token():
    config = make_config(use_short_conv=True, num_labels=3)
    model = make_model(config, cls=GLAForSequenceClassification)
    s = ids(1, 5)[0]
    x = torch.cat([torch.zeros(3, dtype=torch.long), s])[None]
    mask = (x != 0).long()
    with torch.no_grad():
        padded = model(x, attention_mask=mask).logits
        single = model(s[None]).logits
    torch.testing.assert_close(padded, single, rtol=1e-5, atol=1e-6)
    out = model(s[None], labels=torch.tensor([2]))
    assert out.loss.ndim == 0 and out.loss > 0


def test_torch_compile_of_the_reference_path():
    model = make_model("plain")
    x = ids(1, 4)
    with torch.no_grad():
        eager = model(x).logits
        compiled = torch.compile(model, backend="eager")(x).logits
    torch.testing.assert_close(compiled, eager)


@pytest.mark.gpu
def test_gpu_kernel_path_bf16_forward_backward_and_padded_generate():
    """On CUDA: the kernels in bf16 against the fp32 reference ops (forward, gradients), and left-padded batched
    generation through the kernels equal to per-sequence generation."""
    model = make_model(make_config(hidden_size=256, num_heads=4, num_kv_heads=2, use_short_conv=True,
                                   num_hidden_layers=3, attn={"layers": [1], "num_heads": 4},
                                   intermediate_size=512)).cuda()
    x = ids(2, 300).cuda()
    mask = torch.ones_like(x)
    mask[1, :37] = 0
    keep = mask.bool()
    model.train()
    with use_backend("reference"):
        ref = model(x, attention_mask=mask).logits
        ref[keep].float().pow(2).mean().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    fast = model.to(torch.bfloat16)
    out = fast(x, attention_mask=mask).logits
    out[keep].float().pow(2).mean().backward()
    print(f"bf16 kernels vs fp32 reference: logits rel err {rel_err(out[keep], ref[keep]):.2e}")
    assert rel_err(out[keep], ref[keep]) < 3e-2
    for n, p in fast.named_parameters():
        assert rel_err(p.grad, ref_grads[n]) < 0.1, n

    model = model.float().eval()
    assert_left_padded_generate_matches(model, [ids(1, n, seed=40 + n)[0].cuda() for n in (90, 17)], 8)


def test_shipped_checkpoint_reproduces_its_recorded_heldout_loss():
    """The tiny GLA (trained before the layers tier existed) scores what its training run recorded on the
    held-out topics of the Python language reference (same split, tokenizer and blocks as the script)."""
    import json
    from pydoc_data.topics import topics

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfzoo import checkpoint_path

    folder = checkpoint_path("tiny-gla")
    recorded = json.loads((folder / "training_results.json").read_text())
    held = [topics[n] for n in recorded["heldout_topics"]]
    assert recorded["heldout_topics"] == sorted(topics)[::8]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = []
    for text in held:
        ids += [tokenizer.bos_token_id] + tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    block = recorded["block"]
    blocks = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(blocks), 32):
            x = blocks[i:i + 32]
            logits = model(x).logits[:, :-1]
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
    loss = total / (blocks.shape[0] * (block - 1))
    assert loss == pytest.approx(recorded["heldout_loss"], abs=2e-4)
