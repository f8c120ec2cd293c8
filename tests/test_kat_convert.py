"""timm-format KAT / ViT checkpoints -> hfzoo KAT, on synthetic state dicts with the released key names.

The expected outputs come from a small functional forward written here directly from the timm structure
(not from hfzoo's modules), so a wrong key mapping, q/k/v order or rational convention fails the test.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModelForImageClassification

import hfzoo  # noqa: F401
from hfzoo.convert import converters, timm_kat

D, DEPTH, HEADS, PATCH, IMG, C, HIDDEN, G, CLASSES = 32, 2, 2, 4, 16, 3, 128, 8, 5


def timm_state_dict(kan: bool = True, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.1):
        return torch.randn(*shape, generator=g) * s

    sd = {"cls_token": r(1, 1, D), "pos_embed": r(1, (IMG // PATCH) ** 2 + 1, D),
          "patch_embed.proj.weight": r(D, C, PATCH, PATCH), "patch_embed.proj.bias": r(D),
          "norm.weight": 1 + r(D), "norm.bias": r(D), "head.weight": r(CLASSES, D), "head.bias": r(CLASSES)}
    for i in range(DEPTH):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(D), p + "norm1.bias": r(D), p + "norm2.weight": 1 + r(D),
                   p + "norm2.bias": r(D), p + "attn.qkv.weight": r(3 * D, D, s=0.2), p + "attn.qkv.bias": r(3 * D),
                   p + "attn.proj.weight": r(D, D, s=0.2), p + "attn.proj.bias": r(D),
                   p + "mlp.fc1.weight": r(HIDDEN, D, s=0.2), p + "mlp.fc1.bias": r(HIDDEN),
                   p + "mlp.fc2.weight": r(D, HIDDEN, s=0.2), p + "mlp.fc2.bias": r(D)})
        if kan:  # released shapes: numerator (1, 6) shared by the groups, denominator (G, 4)
            for act in ("act1", "act2"):
                sd[p + f"mlp.{act}.weight_numerator"] = r(1, 6, s=0.3) + torch.tensor([[0, 1.0, 0, 0, 0, 0]])
                sd[p + f"mlp.{act}.weight_denominator"] = r(G, 4, s=0.3)
    return sd


def released_rational(x, num, den):
    """Released kernel formula: P(x) / (1 + sum |b_i| |x|^(i+1)), group = channel // (D / G)."""
    groups = den.shape[0]
    idx = torch.arange(x.shape[-1]) // (x.shape[-1] // groups)
    a, b = num.expand(groups, 6)[idx], den[idx]
    p = sum(a[:, i] * x ** i for i in range(6))
    return p / (1 + sum(b[:, i].abs() * x.abs() ** (i + 1) for i in range(4)))


def timm_forward(sd, img, kan=True):
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(len(img), -1, -1), x], 1) + sd["pos_embed"]
    B, N, _ = x.shape
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        q, k, v = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(
            B, N, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / math.sqrt(D // HEADS)).softmax(-1)
        x = x + F.linear((att @ v).transpose(1, 2).reshape(B, N, D), sd[p + "attn.proj.weight"],
                         sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        if kan:
            h = released_rational(h, sd[p + "mlp.act1.weight_numerator"], sd[p + "mlp.act1.weight_denominator"])
        h = F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])
        if kan:
            h = released_rational(h, sd[p + "mlp.act2.weight_numerator"], sd[p + "mlp.act2.weight_denominator"])
        else:
            h = F.gelu(h)
        x = x + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    x = F.layer_norm(x, (D,), sd["norm.weight"], sd["norm.bias"], 1e-6)
    return F.linear(x[:, 0], sd["head.weight"], sd["head.bias"])


def test_released_kat_checkpoint_converts_and_matches(tmp_path):
    sd = timm_state_dict()
    torch.save({"model": sd, "epoch": torch.tensor(300)}, tmp_path / "kat.pth")   # training-checkpoint wrapper
    out = timm_kat.convert(tmp_path / "kat.pth", tmp_path / "out", num_heads=HEADS)
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert model.config.rational_groups == G and model.config.rational_shared_numerator
    assert model.config.rational_denominator == "released"
    assert not (out / "CONVERSION.md").exists()
    img = torch.randn(2, C, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(img).logits, timm_forward(sd, img), rtol=1e-4, atol=1e-5)
    proc = AutoImageProcessor.from_pretrained(out)
    assert proc.crop_size == IMG and proc.size == round(IMG / 0.875)
    with pytest.raises(FileExistsError):
        timm_kat.convert(tmp_path / "kat.pth", tmp_path / "out", num_heads=HEADS)


def test_plain_vit_state_dict(tmp_path):
    sd = timm_state_dict(kan=False)
    save_file(sd, str(tmp_path / "model.safetensors"))
    # as-is: a plain ViT inside the hfzoo model
    vit = timm_kat.convert(tmp_path, tmp_path / "vit", num_heads=HEADS, mlp_type="mlp")
    model = AutoModelForImageClassification.from_pretrained(vit).eval()
    img = torch.randn(2, C, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(img).logits, timm_forward(sd, img, kan=False), rtol=1e-4, atol=1e-5)
    # "initialize from ViT": linears copied, rationals at init (identity, swish)
    kat = timm_kat.convert(tmp_path, tmp_path / "kat", num_heads=HEADS)
    model = AutoModelForImageClassification.from_pretrained(kat).eval()
    mlp = model.kat.layers[1].mlp
    torch.testing.assert_close(mlp.fc1.weight, sd["blocks.1.mlp.fc1.weight"])
    assert mlp.act1.weight_denominator.abs().sum() == 0 and mlp.act1.weight_numerator[0, 1] == 1
    x = torch.linspace(-3, 3, 128)
    assert (mlp.act2(x[None]) - F.silu(x)).abs().max() < 1e-5
    assert "blocks" not in (kat / "CONVERSION.md").read_text() and "mlp.act2" in (kat / "CONVERSION.md").read_text()


def test_heads_follow_released_widths():
    sd = {"cls_token": torch.zeros(1, 1, 384), "pos_embed": torch.zeros(1, 197, 384),
          "patch_embed.proj.weight": torch.zeros(384, 3, 16, 16), "blocks.0.mlp.fc1.weight": torch.zeros(1536, 384),
          "blocks.11.norm1.weight": torch.zeros(384), "norm.weight": torch.zeros(384),
          "head.weight": torch.zeros(1000, 384), "blocks.0.mlp.act1.weight_numerator": torch.zeros(1, 6),
          "blocks.0.mlp.act1.weight_denominator": torch.zeros(8, 4)}
    cfg = timm_kat.config_from_state_dict(sd)
    assert (cfg.num_attention_heads, cfg.num_hidden_layers, cfg.image_size, cfg.mlp_ratio) == (6, 12, 224, 4.0)
    assert cfg.num_labels == 1000 and cfg.mlp_type == "kan"


def test_clear_errors(tmp_path):
    sd = timm_state_dict()
    bad = dict(sd)
    del bad["blocks.1.attn.proj.weight"]
    with pytest.raises(ValueError, match=r"missing keys.*layers\.1\.attn\.proj\.weight"):
        timm_kat.load_model(bad, num_heads=HEADS)
    bad = {**sd, "blocks.0.ls1.gamma": torch.ones(D)}
    with pytest.raises(ValueError, match=r"unexpected keys.*ls1\.gamma"):
        timm_kat.load_model(bad, num_heads=HEADS)
    bad = {**sd, "blocks.0.mlp.act2.weight_denominator": torch.zeros(4, 4)}
    with pytest.raises(ValueError, match="shape"):
        timm_kat.load_model(bad, num_heads=HEADS)
    bad = {k: v for k, v in sd.items() if k != "blocks.1.mlp.act2.weight_numerator"}
    with pytest.raises(ValueError, match="some rational coefficients but not all"):
        timm_kat.load_model(bad, num_heads=HEADS)
    with pytest.raises(ValueError, match="missing keys.*cls_token"):
        timm_kat.load_model({"foo": torch.zeros(1)})
    with pytest.raises(ValueError, match="neither a weights file nor a folder"):
        timm_kat.convert(tmp_path / "nope.pth", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no weights file"):
        timm_kat.convert(tmp_path / "empty", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    assert converters()["timm-kat"] is timm_kat
