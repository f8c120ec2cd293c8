"""KAT model: shapes, init, presets, save/load through the Auto classes, kernel path vs reference, processor."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

import hfzoo  # noqa: F401  (registers the Auto classes)
from hfzoo.models.kat import KATConfig, KATForImageClassification, KATImageProcessor, KATModel
from hfzoo.ops.dispatch import use_backend


def tiny(**kw):
    base = dict(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, rational_groups=4, num_labels=10)
    return KATConfig(**{**base, **kw})


def test_forward_shapes_loss_and_hidden_states():
    torch.manual_seed(0)
    model = KATForImageClassification(tiny()).eval()
    x = torch.randn(3, 1, 8, 8)
    out = model(pixel_values=x, labels=torch.tensor([1, 2, 3]), output_hidden_states=True)
    assert out.logits.shape == (3, 10)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (3, 17, 32)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.tensor([1, 2, 3])))
    base = model.kat(x)
    assert base.last_hidden_state.shape == (3, 17, 32)
    torch.testing.assert_close(model.classifier(base.pooler_output), out.logits)


def test_gr_kan_init_and_parameter_shapes():
    torch.manual_seed(0)
    config = tiny(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, rational_groups=8)
    mlp = KATModel(config).layers[0].mlp
    assert mlp.act1.weight_numerator.shape == (1, 6) and mlp.act1.weight_denominator.shape == (8, 4)
    x = torch.linspace(-3, 3, 64).repeat(4, 1)
    torch.testing.assert_close(mlp.act1(x), x)                                # identity
    assert (mlp.act2(x) - F.silu(x)).abs().max() < 1e-5                       # swish
    # variance preserving: Var(fc1) = 1 / fan_in, Var(fc2) = 2.8178 / fan_in
    assert abs(mlp.fc1.weight.var().item() * 64 - 1.0) < 0.1
    assert abs(mlp.fc2.weight.var().item() * 256 - 2.8178) < 0.25
    per_group = KATModel(tiny(rational_shared_numerator=False)).layers[0].mlp.act2
    assert per_group.weight_numerator.shape == (4, 6)


def test_presets_match_released_parameter_counts():
    # KAT-T from the release: 5,718,328 parameters; the same size with a GELU MLP is ViT-Ti (5,717,416).
    kat = KATForImageClassification(KATConfig.from_preset("kat_tiny", num_labels=1000))
    assert sum(p.numel() for p in kat.parameters()) == 5_718_328
    vit = KATConfig.from_preset("kat_tiny", mlp_type="mlp", num_labels=1000)
    assert sum(p.numel() for p in KATForImageClassification(vit).parameters()) == 5_717_416
    assert KATConfig.from_preset("kat_base").hidden_size == 768
    with pytest.raises(ValueError, match="unknown KAT preset"):
        KATConfig.from_preset("kat_huge")


def test_plain_vit_option():
    model = KATModel(tiny(mlp_type="mlp"))
    assert not any("act1" in n for n, _ in model.named_parameters())
    assert model(torch.randn(2, 1, 8, 8)).last_hidden_state.shape == (2, 17, 32)


def test_kernel_path_matches_reference_with_gradients():
    # On CPU CI the Triton kernels run through the interpreter (TRITON_INTERPRET=1 from conftest).
    torch.manual_seed(0)
    model = KATForImageClassification(tiny())
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    grads = []
    for backend in ("triton", "reference"):
        model.zero_grad()
        with use_backend(backend):
            loss = model(pixel_values=x, labels=labels).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert rel_err(g, grads[1][name]) < 1e-4, name
    assert grads[0]["kat.layers.0.mlp.act1.weight_denominator"].abs().sum() > 0   # b = 0 still learns


def test_rational_writes_the_autocast_dtype():
    # Under autocast the rational's output is what fc1 would cast it to; its gradient w.r.t. x stays fp32.
    from hfzoo.models.kat.modeling_kat import KATRational

    torch.manual_seed(0)
    act = KATRational(32, num_groups=4, init_name="swish")
    x = torch.randn(3, 5, 32, requires_grad=True)
    with use_backend("reference"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = act(x)
        plain = act(x)
    assert y.dtype == torch.bfloat16 and plain.dtype == torch.float32
    assert rel_err(y, plain) < 1e-2
    (gx,) = torch.autograd.grad(y.float().sum(), x)
    assert gx.dtype == torch.float32


def test_save_load_auto_classes_and_gradient_checkpointing(tmp_path):
    torch.manual_seed(0)
    model = KATForImageClassification(tiny()).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(AutoModel.from_pretrained(tmp_path), KATModel)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x).logits, model(x).logits)
    loaded.train()
    loaded.gradient_checkpointing_enable()
    loaded(pixel_values=x, labels=torch.tensor([0, 1])).loss.backward()
    assert loaded.kat.layers[0].mlp.act2.weight_numerator.grad is not None


def test_position_interpolation_and_bad_inputs():
    model = KATModel(tiny()).eval()
    assert model(torch.randn(1, 1, 12, 12), interpolate_pos_encoding=True).last_hidden_state.shape == (1, 37, 32)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(torch.randn(1, 1, 12, 12))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="rational_groups"):
        tiny(rational_groups=5)
    with pytest.raises(ValueError, match="mlp_type"):
        tiny(mlp_type="kan2")


def test_image_processor(tmp_path):
    proc = KATImageProcessor()          # released eval transform: 256 bicubic, crop 224, ImageNet stats
    img = Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8))
    pv = proc(img, return_tensors="pt").pixel_values
    assert pv.shape == (1, 3, 224, 224)
    gray = KATImageProcessor(image_mode="L", size=8, crop_size=8)
    digit = np.zeros((8, 8), np.uint8)
    digit[2:6, 3] = 255
    out = gray([digit, Image.fromarray(digit)], return_tensors="pt").pixel_values
    assert out.shape == (2, 1, 8, 8)
    torch.testing.assert_close(out[0], out[1])
    assert out[0, 0, 3, 3].item() == pytest.approx(1.0) and out[0, 0, 0, 0].item() == pytest.approx(-1.0)
    gray.save_pretrained(tmp_path)
    tiny().save_pretrained(tmp_path)
    again = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(again, KATImageProcessor) and again.image_mode == "L"
    with pytest.raises(ValueError, match="image_mean"):
        KATImageProcessor(image_mode="L", image_mean=[0.5, 0.5, 0.5])


@pytest.mark.gpu
def test_kat_small_kernel_path_gpu_bf16_autocast():
    torch.manual_seed(0)
    model = KATForImageClassification(KATConfig.from_preset("kat_small", num_hidden_layers=2, num_labels=10)).cuda()
    x, labels = torch.randn(4, 3, 224, 224, device="cuda"), torch.tensor([1, 2, 3, 4], device="cuda")
    results = []
    for backend in ("triton", "reference"):
        model.zero_grad()
        with use_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(pixel_values=x, labels=labels)
        out.loss.backward()
        results.append((out.logits.float(), {n: p.grad.float().clone() for n, p in model.named_parameters()}))
    assert rel_err(results[0][0], results[1][0]) < 2e-2
    for name, g in results[0][1].items():
        assert rel_err(g, results[1][1][name]) < 5e-2, name


def test_shipped_checkpoint_reproduces_its_recorded_test_accuracy():
    """The tiny KAT (trained before the layers tier existed) with its saved processor still scores exactly what
    its training run recorded on the same held-out digits."""
    import json

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from hfzoo import checkpoint_path

    folder = checkpoint_path("tiny-kat")
    recorded = json.loads((folder / "training.json").read_text())
    d = load_digits()
    images = np.clip(np.round(d.images * 255.0 / 16.0), 0, 255).astype(np.uint8)   # as scripts/train_tiny_kat.py
    _, x_te, _, y_te = train_test_split(images, d.target, test_size=0.2, random_state=recorded["seed"],
                                        stratify=d.target)
    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**processor(list(x_te), return_tensors="pt")).logits
    accuracy = (logits.argmax(-1) == torch.as_tensor(y_te)).float().mean().item()
    assert len(y_te) == recorded["test_size"]
    assert accuracy == pytest.approx(recorded["test_accuracy"], abs=1.5 / len(y_te))   # within one image
