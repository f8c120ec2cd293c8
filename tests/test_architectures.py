"""One suite run over every entry of the registry (the ``ModelTesterMixin`` idea).

A new architecture gets all of it by adding its ``Architecture`` entry: save/load through the Auto classes,
reference-vs-Triton parity (kernels under the interpreter on CPU), gradient checkpointing, tuple vs dict
outputs, hidden-state counts, bf16 loading, ``Trainer`` gradient accumulation for every task head, and
packed-vs-alone documents for models that take packed batches. The export -> clean-subprocess check runs over
the same registry in ``tests/test_export.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from helpers import rel_err
from torch import nn

from hfzoo.models import ARCHITECTURES
from hfzoo.ops.dispatch import use_backend
from hfzoo.ops.launch import count_launches

NAMES = sorted(ARCHITECTURES)
HEADS = [(name, auto) for name in NAMES for auto in ARCHITECTURES[name].models]


def _tensors(out):
    return [t for t in out.to_tuple() if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _tiny(name, **overrides):
    config = ARCHITECTURES[name].tiny_config()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _without_dropout(config):
    for key, value in list(vars(config).items()):
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)
    return config


def _model(name, auto="main", seed=0, **overrides):
    arch = ARCHITECTURES[name]
    cls = arch.main_model if auto == "main" else arch.auto_models[auto]
    torch.manual_seed(seed)
    return cls(_without_dropout(_tiny(name, **overrides)))


# ---------------------------------------------------------------------------------------------------------------
# Registry entries


@pytest.mark.parametrize("name", NAMES)
def test_entry_describes_its_classes(name):
    arch = ARCHITECTURES[name]
    assert arch.config_class.model_type == arch.model_type
    for auto, cls in arch.auto_models.items():
        assert cls.config_class is arch.config_class, auto
        assert arch.auto_class_of(cls) == auto
        assert type(cls).__mro__ and any(c.__name__ == "HfzooPreTrainedModel" for c in cls.__mro__), cls
    assert arch.kernel_ops, "every architecture names the Triton op families it runs"
    import importlib.util
    from pathlib import Path

    import hfzoo

    root = Path(hfzoo.__file__).parent
    assert arch.demo is None or importlib.util.find_spec(f"hfzoo.gallery.{arch.demo}") is not None
    for converter in arch.converters:
        assert importlib.util.find_spec(f"hfzoo.convert.{converter}") is not None, converter
    assert (root / "model_cards" / arch.card_template).is_file(), arch.card_template
    assert arch.pipeline_tag
    assert isinstance(arch.tiny_config(), arch.config_class)


# ---------------------------------------------------------------------------------------------------------------
# Save / load, output formats, bf16


@pytest.mark.parametrize("name,auto", HEADS)
def test_save_load_round_trip_through_the_auto_class(name, auto, tmp_path):
    arch = ARCHITECTURES[name]
    model = _model(name, auto).eval()
    model.save_pretrained(tmp_path)
    loaded = getattr(transformers, auto).from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    inputs = arch.example_inputs(model.config)
    with torch.no_grad():
        for a, b in zip(_tensors(model(**inputs)), _tensors(loaded(**inputs)), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_tuple_output_is_the_dict_output(name):
    arch = ARCHITECTURES[name]
    model = _model(name).eval()
    inputs = arch.example_inputs(model.config)
    with torch.no_grad():
        as_dict = model(**inputs, return_dict=True)
        as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    expected = as_dict.to_tuple()
    assert len(as_tuple) == len(expected)
    for a, b in zip(as_tuple, expected):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_hidden_states_one_per_layer_plus_the_input(name):
    arch = ARCHITECTURES[name]
    model = _model(name).eval()
    inputs = arch.example_inputs(model.config)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    if "hidden_states" not in out.__dataclass_fields__:
        # a convolutional tokenizer (SimVQ) has no layer stack, and then it has no layer count either
        assert getattr(model.config, "num_hidden_layers", None) is None
        return
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    with torch.no_grad():
        assert model(**inputs, output_hidden_states=False).hidden_states is None


@pytest.mark.parametrize("name", NAMES)
def test_bf16_load_runs_in_bf16(name, tmp_path):
    arch = ARCHITECTURES[name]
    model = _model(name).eval()
    model.save_pretrained(tmp_path)
    auto = arch.auto_class_of(type(model))
    low = getattr(transformers, auto).from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in low.parameters() if p.is_floating_point()} == {torch.bfloat16}
    inputs = arch.example_inputs(model.config)   # fp32 inputs, as processors give them
    with torch.no_grad():
        ref, got = _tensors(model(**inputs)), _tensors(low(**inputs))
    assert len(ref) == len(got)
    main = got[0]
    assert main.dtype in (torch.bfloat16, torch.float32) and torch.isfinite(main.float()).all()
    # bf16 rounding (and, for SimVQ, a code picked differently where two are nearly equidistant); unrelated
    # outputs would be about 1.4 apart
    assert rel_err(main.float(), ref[0]) < 0.25


@pytest.mark.parametrize("name", [n for n in NAMES if ARCHITECTURES[n].checkpoint])
def test_shipped_checkpoint_loads_every_weight(name):
    """The checkpoints shipped in hfzoo/checkpoints (trained before the layers tier) still load key for key."""
    from hfzoo import checkpoint_path

    arch = ARCHITECTURES[name]
    folder = checkpoint_path(arch.checkpoint)
    config = transformers.AutoConfig.from_pretrained(folder)
    saved_as = config.architectures or []
    cls = next((c for c in arch.auto_models.values() if c.__name__ in saved_as), arch.main_model)
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(model) is cls


# ---------------------------------------------------------------------------------------------------------------
# Kernels vs reference (interpreter on CPU)


@pytest.mark.parametrize("name", NAMES)
def test_triton_path_matches_the_reference_and_runs_kernels(name):
    arch = ARCHITECTURES[name]
    model = _model(name).eval()
    inputs = arch.example_inputs(model.config)
    with torch.no_grad():
        with use_backend("reference"), count_launches() as none:
            ref = _tensors(model(**inputs))
        with use_backend("triton"), count_launches() as launched:
            got = _tensors(model(**inputs))
    assert none.total() == 0
    assert launched.total() > 0, "no Triton kernel ran with backend='triton'"
    ops = {k.split(".")[0] for k in launched}
    assert ops <= set(arch.kernel_ops) | {"rmsnorm"}, (ops, arch.kernel_ops)
    for a, b in zip(got, ref, strict=True):
        assert rel_err(a, b) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_gpu_bf16_auto_backend_runs_kernels_and_matches_the_reference(name):
    """On CUDA, ``auto`` picks the Triton kernels; in bf16 they agree with the reference ops."""
    arch = ARCHITECTURES[name]
    model = _model(name).eval().to("cuda", torch.bfloat16)
    inputs = {k: v.cuda() for k, v in arch.example_inputs(model.config).items()}
    with torch.no_grad():
        with count_launches() as launched:
            got = _tensors(model(**inputs))
        with use_backend("reference"):
            ref = _tensors(model(**inputs))
    assert launched.total() > 0
    # bf16 rounding; for SimVQ also a code picked differently where two are nearly equidistant
    assert rel_err(got[0].float(), ref[0].float()) < (0.25 if name == "simvq" else 0.05)


# ---------------------------------------------------------------------------------------------------------------
# Gradient checkpointing


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_gives_the_same_gradients(name):
    arch = ARCHITECTURES[name]

    def grads(checkpointing):
        model = _model(name).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        out = model(**arch.example_inputs(model.config))
        loss = sum(t.float().square().mean() for t in _tensors(out))
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain and plain.keys() == ckpt.keys()
    for key in plain:
        torch.testing.assert_close(ckpt[key], plain[key], rtol=1e-4, atol=1e-6, msg=key)


# ---------------------------------------------------------------------------------------------------------------
# Trainer gradient accumulation: batch 4 x 1 step == batch 2 x 2 steps, in loss and gradients


def _labelled_examples(name, auto, config):
    """Four examples with labels for ``auto``; token-level heads label different numbers of tokens per example
    (so a mean of micro-batch means would differ from the mean over the whole batch)."""
    g = torch.Generator().manual_seed(1)
    examples = []
    for i in range(4):
        ex = {k: v[i % v.shape[0]] for k, v in ARCHITECTURES[name].example_inputs(config).items()}
        if "input_ids" in ex:
            ex["input_ids"] = torch.randint(5, config.vocab_size, ex["input_ids"].shape, generator=g)
            ex["attention_mask"] = torch.ones_like(ex["input_ids"])
        T = ex["input_ids"].shape[0] if "input_ids" in ex else None
        if auto in ("AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForTokenClassification"):
            high = config.vocab_size if auto != "AutoModelForTokenClassification" else config.num_labels
            labels = torch.full((T,), -100)
            keep = 1 + 2 * i                                  # 1, 3, 5, 7 labelled tokens
            labels[:keep] = torch.randint(0, high, (keep,), generator=g)
            ex["labels"] = labels
        elif auto in ("AutoModelForSequenceClassification", "AutoModelForImageClassification"):
            ex["labels"] = torch.tensor(i % config.num_labels)
        examples.append(ex)
    return examples


class _GradCatcher(transformers.TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _train_one_step(name, auto, batch, accumulation, tmp_path):
    model = _model(name, auto, num_labels=3) if auto.endswith("Classification") else _model(name, auto)
    examples = _labelled_examples(name, auto, model.config)
    catcher = _GradCatcher()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / f"run{batch}x{accumulation}"), per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.0, max_grad_norm=0.0,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, remove_unused_columns=False,
        dataloader_num_workers=0, seed=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=examples, callbacks=[catcher])
    result = trainer.train()
    return result.training_loss, catcher.grads


@pytest.mark.parametrize("name,auto", [h for h in HEADS if h[1] != "AutoModel" or h[0] == "simvq"])
def test_trainer_gradient_accumulation_matches_one_big_batch(name, auto, tmp_path):
    loss_big, grads_big = _train_one_step(name, auto, 4, 1, tmp_path)
    loss_acc, grads_acc = _train_one_step(name, auto, 2, 2, tmp_path)
    assert grads_big and grads_big.keys() == grads_acc.keys()
    assert loss_acc == pytest.approx(loss_big, rel=1e-5)
    for key in grads_big:
        torch.testing.assert_close(grads_acc[key], grads_big[key], rtol=1e-4, atol=1e-7, msg=key)


# ---------------------------------------------------------------------------------------------------------------
# Packed documents (DataCollatorWithFlattening) give what each document gives alone

HYBRID = {"attn": {"layers": [1], "num_heads": 2, "num_kv_heads": 1, "window_size": None, "rope_theta": 10000.0}}
PACKING = [(n, {}) for n in NAMES if ARCHITECTURES[n].supports_packing] + [("gla", HYBRID)]


@pytest.mark.parametrize("name,overrides", PACKING, ids=[f"{n}{'-hybrid' if o else ''}" for n, o in PACKING])
def test_packed_documents_equal_the_documents_alone(name, overrides):
    # a larger init than the default, so that state leaking across documents shows clearly in the outputs
    model = _model(name, initializer_range=0.2, **overrides).eval()
    g = torch.Generator().manual_seed(3)
    docs = [torch.randint(5, model.config.vocab_size, (n,), generator=g).tolist() for n in (5, 11, 3)]
    batch = transformers.DataCollatorWithFlattening()([{"input_ids": d} for d in docs])
    flash = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True)([{"input_ids": d} for d in docs])
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([d])).logits[0] for d in docs]
        by_positions = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        by_offsets = model(input_ids=flash["input_ids"], cu_seq_lens_q=flash["cu_seq_lens_q"],
                           cu_seq_lens_k=flash["cu_seq_lens_k"], max_length_q=flash["max_length_q"],
                           max_length_k=flash["max_length_k"]).logits[0]
        unpacked = model(input_ids=batch["input_ids"]).logits[0]    # no document boundaries: they see each other
    expected = torch.cat(alone)
    assert rel_err(by_positions, expected) < 1e-5
    assert rel_err(by_offsets, expected) < 1e-5
    assert rel_err(unpacked[5:], expected[5:]) > 1e-2   # the check above is not vacuous


# ---------------------------------------------------------------------------------------------------------------
# Lazy registration


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_hfzoo_imports_no_model_module_and_no_torch():
    out = _run("""
        import sys, hfzoo
        packages = {"hfzoo.models." + name for name in hfzoo.ARCHITECTURES}
        allowed = {"hfzoo", "hfzoo.registry", "hfzoo.models", "hfzoo.peft", "hfzoo.peft.targets"} | packages
        watched = ("hfzoo", "torch", "triton", "gradio", "transformers", "numpy", "PIL")
        print(sorted(m for m in sys.modules if m.split(".")[0] in watched and m not in allowed))
        print(sorted(hfzoo.ARCHITECTURES))
    """)
    extra, names = out.strip().splitlines()
    assert extra == "[]"     # no model, layer, op, kernel, torch, transformers or Gradio module
    assert names == str(NAMES)


def test_auto_classes_load_a_saved_model_right_after_import_hfzoo(tmp_path):
    model = _model("gla", "AutoModelForCausalLM").eval()
    model.save_pretrained(tmp_path / "gla")
    ids = ARCHITECTURES["gla"].example_inputs(model.config)["input_ids"]
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        torch.save(model(input_ids=ids).logits, tmp_path / "expected.pt")
    _run(f"""
        import sys, hfzoo
        assert "hfzoo.models.gla.modeling_gla" not in sys.modules
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        assert type(AutoConfig.from_pretrained({str(tmp_path / 'gla')!r})).__name__ == "GLAConfig"
        assert "hfzoo.models.gla.modeling_gla" not in sys.modules   # configs do not pull model code
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'gla')!r}).eval()
        assert type(model).__module__ == "hfzoo.models.gla.modeling_gla", type(model)
        with torch.no_grad():
            logits = model(input_ids=torch.load({str(tmp_path / 'ids.pt')!r})).logits
        torch.testing.assert_close(logits, torch.load({str(tmp_path / 'expected.pt')!r}))
    """)


def test_registering_after_transformers_auto_modules_were_imported(tmp_path):
    """Importing transformers' Auto classes first and hfzoo second registers at once."""
    model = _model("kat", "AutoModelForImageClassification")
    model.save_pretrained(tmp_path / "kat")
    _run(f"""
        from transformers import AutoModelForImageClassification, AutoModel
        import hfzoo
        model = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'kat')!r})
        assert type(model).__name__ == "KATForImageClassification", type(model)
        assert type(AutoModel.from_config(model.config)).__name__ == "KATModel"
    """)


class ProbeConfig(transformers.PreTrainedConfig):
    model_type = "hfzoo_probe_for_tests"


class ProbeModel(transformers.PreTrainedModel):
    config_class = ProbeConfig

    def __init__(self, config):
        super().__init__(config)
        self.w = nn.Linear(1, 1)
        self.post_init()


def test_lazy_models_do_not_hide_other_registrations():
    """Our lazy entries live beside other packages' ordinary ones in the same Auto mapping."""
    import pickle

    from transformers import AutoModel

    transformers.AutoConfig.register("hfzoo_probe_for_tests", ProbeConfig, exist_ok=True)
    AutoModel.register(ProbeConfig, ProbeModel, exist_ok=True)
    assert type(AutoModel.from_config(ProbeConfig())) is ProbeModel
    gla = ARCHITECTURES["gla"]
    assert type(AutoModel.from_config(gla.tiny_config())) is gla.auto_models["AutoModel"]
    values = AutoModel._model_mapping._extra_content.values()
    assert ProbeModel in values and gla.auto_models["AutoModel"] in values
    # transformers pickles a mapping as a plain dict copy: it must hold classes, not references
    copy = pickle.loads(pickle.dumps(AutoModel._model_mapping))
    assert copy[gla.config_class] is gla.auto_models["AutoModel"] and copy[ProbeConfig] is ProbeModel
