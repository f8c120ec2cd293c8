"""LiT model: shapes, adaLN-Zero init, the mixer against a per-head loop, kernel vs reference through the
model, classifier-free guidance, label dropout, presets, save/load through AutoModel."""

import pytest
import torch
from helpers import rel_err
from transformers import AutoModel

import hfzoo  # noqa: F401  (registers the Auto classes)
from hfzoo.models.lit import ARCHITECTURE, LIT_PRESETS, LiTConfig, LiTModel
from hfzoo.models.lit.modeling_lit import LiTAttention, sincos_2d
from hfzoo.ops import use_backend
from hfzoo.ops.launch import count_launches


def _randomize(model, std=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _tiny(**kw):
    return LiTConfig(**{**ARCHITECTURE.tiny_config().to_dict(), **kw})


def test_adaln_zero_init_gives_zero_output_and_shapes():
    cfg = _tiny()
    model = LiTModel(cfg).eval()
    inputs = ARCHITECTURE.example_inputs(cfg)
    out = model(**inputs).sample
    assert out.shape == (2, 2 * cfg.in_channels, cfg.sample_size, cfg.sample_size)
    assert out.abs().max() == 0            # final layer and every adaLN modulation start at zero
    assert model.blocks[0].attn.qkv.weight.abs().max() > 0


def test_mixer_matches_per_head_loop():
    cfg = _tiny(hidden_size=24, num_attention_heads=3)
    attn = _randomize(LiTAttention(cfg), std=0.3)
    B, h, w = 2, 3, 5
    x = torch.randn(B, h * w, 24)
    with use_backend("reference"):
        out = attn(x, (h, w))
    q, k, v = attn.qkv(x).view(B, h * w, 3, 3, 8).unbind(2)
    heads = []
    for i in range(3):
        fq, fk, vi = q[:, :, i].relu(), k[:, :, i].relu(), v[:, :, i]
        w_ = fq @ fk.transpose(1, 2)
        o = (w_ @ vi) / (w_.sum(-1, keepdim=True) + cfg.attention_eps)
        img = vi.transpose(1, 2).reshape(B, 8, h, w)                      # same conv kernel for every head
        o = o + attn.conv(img).reshape(B, 8, h * w).transpose(1, 2)
        heads.append(o)
    expected = attn.proj(torch.cat(heads, dim=-1))
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize("attention_type", ["linear", "softmax"])
def test_triton_and_reference_backends_agree_with_gradients(attention_type):
    cfg = _tiny(attention_type=attention_type, sample_size=10)      # 5x5 grid: 25 tokens, not a block multiple
    model = _randomize(LiTModel(cfg)).eval()
    inputs = ARCHITECTURE.example_inputs(cfg)
    results = []
    for backend in ("triton", "reference"):
        model.zero_grad()
        with use_backend(backend), count_launches() as launches:
            out = model(**inputs).sample
            out.square().mean().backward()
        # the kernel path really ran the kernels (forward and backward, once per block), the reference none
        expected = cfg.num_hidden_layers if backend == "triton" and attention_type == "linear" else 0
        assert launches["linear_attention.out"] == launches["linear_attention.bwd_qkv"] == expected
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert rel_err(results[0][0], results[1][0]) < 1e-5
    for a, b in zip(results[0][1], results[1][1]):
        assert rel_err(a, b) < 1e-4


def test_fused_and_separate_convolution_agree():
    cfg = _tiny(sample_size=10)
    model = _randomize(LiTModel(cfg)).eval()
    inputs = ARCHITECTURE.example_inputs(cfg)
    attn = model.blocks[0].attn
    assert attn.fuse_conv(torch.zeros(1, requires_grad=True)) is False      # training: separate conv
    with torch.no_grad():
        assert attn.fuse_conv(torch.zeros(1)) is True                      # sampling: fused
    outs = []
    for fused in (True, False):
        for blk in model.blocks:
            blk.attn.fused_conv = fused
        model.zero_grad()
        with use_backend("triton"):
            out = model(**inputs).sample
        out.square().mean().backward()
        outs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert rel_err(outs[0][0], outs[1][0]) < 1e-5
    for a, b in zip(outs[0][1], outs[1][1]):
        assert rel_err(a, b) < 1e-4


def test_guidance_and_null_class():
    cfg = _tiny()
    model = _randomize(LiTModel(cfg)).eval()
    inputs = ARCHITECTURE.example_inputs(cfg)
    x, t, y = inputs["sample"], inputs["timestep"], torch.tensor([3, 7])
    cond = model(x, t, y).sample
    uncond = model(x, t, torch.full_like(y, cfg.num_classes)).sample
    assert rel_err(cond, uncond) > 1e-3
    C = cfg.in_channels
    g1 = model.forward_with_cfg(x, t, y, guidance_scale=1.0)
    assert rel_err(g1, cond) < 1e-5
    g4 = model.forward_with_cfg(x, t, y, guidance_scale=4.0)
    assert rel_err(g4[:, :C], uncond[:, :C] + 4 * (cond[:, :C] - uncond[:, :C])) < 1e-5
    assert rel_err(g4[:, C:], cond[:, C:]) < 1e-6
    dropped = model(x, t, y, force_drop_ids=torch.tensor([True, False])).sample
    assert rel_err(dropped[0], uncond[0]) < 1e-6 and rel_err(dropped[1], cond[1]) < 1e-6


def test_label_dropout_only_in_training():
    cfg = _tiny(class_dropout_prob=0.5)
    model = _randomize(LiTModel(cfg))
    y = torch.zeros(400, dtype=torch.long)
    table = model.y_embedder.embedding_table.weight
    model.train()
    emb = model.y_embedder(y)
    nulls = (emb == table[cfg.num_classes]).all(-1).float().mean().item()
    assert 0.35 < nulls < 0.65
    model.eval()
    assert (model.y_embedder(y) == table[0]).all()


def test_sincos_positions_and_other_grid_sizes():
    pos = sincos_2d(8, 2, 3)          # 2 rows, 3 columns
    assert pos.shape == (6, 8)
    # token (row 1, col 2): first half encodes the column, second half the row; omega = [1, 1e-2]
    col, row = 2.0, 1.0
    expected = torch.tensor([torch.sin(torch.tensor(col)), torch.sin(torch.tensor(col / 100)),
                             torch.cos(torch.tensor(col)), torch.cos(torch.tensor(col / 100)),
                             torch.sin(torch.tensor(row)), torch.sin(torch.tensor(row / 100)),
                             torch.cos(torch.tensor(row)), torch.cos(torch.tensor(row / 100))])
    assert rel_err(pos[5], expected) < 1e-6
    model = _randomize(LiTModel(_tiny())).eval()
    out = model(torch.randn(1, 1, 12, 6), torch.tensor([5]), torch.tensor([1])).sample
    assert out.shape == (1, 2, 12, 6)


def test_presets_are_dit_sizes():
    assert len(LIT_PRESETS) == 12
    cfg = LiTConfig.from_preset("LiT-XL/2", attention_type="softmax", num_attention_heads=16)
    with torch.device("meta"):
        model = LiTModel(cfg)
    # DiT-XL/2 has 675,129,632 parameters, 294,912 of them the fixed positions we compute instead of storing
    assert sum(p.numel() for p in model.parameters()) == 675_129_632 - 256 * 1152
    assert LiTConfig.from_preset("LiT-S/4").num_attention_heads == 2
    with pytest.raises(ValueError, match="unknown LiT preset"):
        LiTConfig.from_preset("LiT-XXL/2")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="patch_size"):
        LiTConfig(sample_size=9, patch_size=2)
    with pytest.raises(ValueError, match="attention_type"):
        LiTConfig(attention_type="flash")
    model = LiTModel(_tiny()).eval()
    with pytest.raises(ValueError, match="sample must be"):
        model(torch.randn(1, 3, 8, 8), torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="class_labels must be in"):
        model(torch.randn(1, 1, 8, 8), torch.tensor([1]), torch.tensor([11]))
    with pytest.raises(ValueError, match="class_labels is required"):
        model(torch.randn(1, 1, 8, 8), torch.tensor([1]))


def test_save_load_auto_model(tmp_path):
    cfg = _tiny()
    model = _randomize(LiTModel(cfg)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, LiTModel)
    inputs = ARCHITECTURE.example_inputs(cfg)
    assert rel_err(loaded(**inputs).sample, model(**inputs).sample) < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_model_matches_reference(dtype):
    cfg = LiTConfig(sample_size=32, patch_size=2, in_channels=4, hidden_size=384, num_hidden_layers=2,
                    num_attention_heads=2, num_classes=10)
    model = _randomize(LiTModel(cfg), std=0.02).cuda().to(dtype)
    x = torch.randn(4, 4, 32, 32, device="cuda", dtype=dtype)
    t, y = torch.tensor([1, 10, 100, 999], device="cuda"), torch.tensor([0, 3, 9, 10], device="cuda")
    outs = []
    for backend in ("triton", "reference"):
        with use_backend(backend):
            outs.append(model(x, t, y).sample.float())
    assert rel_err(outs[0], outs[1]) < 2e-2
