"""DiT -> LiT weight inheritance: against a randomly initialized diffusers DiTTransformer2DModel (outputs match
exactly with softmax attention kept; with attention zeroed on both sides for LiT), the original .pt layout,
and the `hfzoo convert dit` command end to end."""

import diffusers  # a [dev] requirement: these tests run in CI, never skipped
import pytest
import torch
from helpers import rel_err
from transformers import AutoModel

from hfzoo.cli import main
from hfzoo.convert.dit_lit import load_model
from hfzoo.models.lit import LiTModel


def _diffusers_dit(seed=0, num_classes=10):
    torch.manual_seed(seed)
    dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                          num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dit.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        # as in every converted DiT checkpoint: all blocks hold the same timestep/class embedder
        emb0 = dit.transformer_blocks[0].norm1.emb
        for blk in dit.transformer_blocks[1:]:
            blk.norm1.emb.load_state_dict(emb0.state_dict())
    return dit.eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 8, 8, generator=g), torch.tensor([0, 17, 999]), torch.tensor([1, 5, 10])


def test_softmax_target_reproduces_diffusers_dit():
    dit = _diffusers_dit()
    x, t, y = _inputs()
    model, report = load_model_from_diffusers(dit, target="dit")
    assert report["initialized"] == []
    with torch.no_grad():
        ref = dit(x, timestep=t, class_labels=y).sample
        out = model(x, t, y).sample
    assert out.shape == ref.shape == (3, 8, 8, 8)
    assert rel_err(out, ref) < 1e-5


def load_model_from_diffusers(dit, tmp=None, **kw):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        dit.save_pretrained(d)
        return load_model(d, **kw)


def test_lit_inherits_everything_but_attention():
    dit = _diffusers_dit()
    with torch.no_grad():                 # remove attention's contribution on both sides
        for blk in dit.transformer_blocks:
            blk.attn1.to_out[0].weight.zero_()
            blk.attn1.to_out[0].bias.zero_()
    model, report = load_model_from_diffusers(dit, target="lit", num_heads=1)
    assert isinstance(model, LiTModel) and model.config.attention_type == "linear"
    assert all(".attn." in k for k in report["initialized"])
    assert {k.split(".attn.")[1] for k in report["initialized"]} == {"qkv.weight", "qkv.bias", "proj.weight",
                                                                     "proj.bias", "conv.weight", "conv.bias"}
    assert any("attn1.to_q" in k for k in report["dropped"])
    assert not any(".attn." in k for k in report["loaded"])
    x, t, y = _inputs()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.proj.weight.zero_()
            blk.attn.proj.bias.zero_()
        ref = dit(x, timestep=t, class_labels=y).sample
        out = model(x, t, y).sample
    assert rel_err(out, ref) < 1e-5
    # and the attention is really LiT's: with its projection back, outputs differ from DiT's
    torch.nn.init.xavier_uniform_(model.blocks[0].attn.proj.weight)
    with torch.no_grad():
        assert rel_err(model(x, t, y).sample, ref) > 1e-3


def _original_dit_state_dict(dit):
    """The original facebookresearch/DiT key layout, written out from a diffusers model (independent of the
    converter's renaming), with DiT's pos_embed parameter."""
    sd = dit.state_dict()
    out = {"x_embedder.proj.weight": sd["pos_embed.proj.weight"], "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
           "pos_embed": dit.pos_embed.pos_embed.clone(),
           "final_layer.linear.weight": sd["proj_out_2.weight"], "final_layer.linear.bias": sd["proj_out_2.bias"],
           "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
           "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"]}
    e = "transformer_blocks.0.norm1.emb."
    out["t_embedder.mlp.0.weight"] = sd[e + "timestep_embedder.linear_1.weight"]
    out["t_embedder.mlp.0.bias"] = sd[e + "timestep_embedder.linear_1.bias"]
    out["t_embedder.mlp.2.weight"] = sd[e + "timestep_embedder.linear_2.weight"]
    out["t_embedder.mlp.2.bias"] = sd[e + "timestep_embedder.linear_2.bias"]
    out["y_embedder.embedding_table.weight"] = sd[e + "class_embedder.embedding_table.weight"]
    for i in range(len(dit.transformer_blocks)):
        b = f"transformer_blocks.{i}."
        for w in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{w}"] = torch.cat([sd[b + f"attn1.to_{c}.{w}"] for c in "qkv"])
            out[f"blocks.{i}.attn.proj.{w}"] = sd[b + f"attn1.to_out.0.{w}"]
            out[f"blocks.{i}.mlp.fc1.{w}"] = sd[b + f"ff.net.0.proj.{w}"]
            out[f"blocks.{i}.mlp.fc2.{w}"] = sd[b + f"ff.net.2.{w}"]
            out[f"blocks.{i}.adaLN_modulation.1.{w}"] = sd[b + f"norm1.linear.{w}"]
    return out


def test_original_pt_checkpoint(tmp_path):
    dit = _diffusers_dit(seed=3)
    path = tmp_path / "DiT-test.pt"
    # a training checkpoint: the EMA weights are the ones to inherit
    noise = {k: torch.randn_like(v) for k, v in _original_dit_state_dict(dit).items()}
    torch.save({"model": noise, "ema": _original_dit_state_dict(dit), "args": None}, path)
    from_pt, report = load_model(path, target="dit")
    from_diffusers, _ = load_model_from_diffusers(dit, target="dit")
    assert report["initialized"] == [] and report["dropped"] == ["pos_embed (fixed sin-cos, recomputed)"]
    a, b = from_pt.state_dict(), from_diffusers.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the original code's timestep frequencies and LayerNorm eps, recorded in the config
    assert from_pt.config.timestep_freq_shift == 0 and from_diffusers.config.timestep_freq_shift == 1
    assert from_pt.config.mlp_norm_eps == 1e-6 and from_diffusers.config.mlp_norm_eps == 1e-5
    lit, report = load_model(path)
    assert lit.config.attention_type == "linear" and len(report["initialized"]) == 2 * 6


def test_cli_end_to_end(tmp_path, capsys):
    dit = _diffusers_dit(seed=5)
    src = tmp_path / "pipeline" / "transformer"
    dit.save_pretrained(src)
    out = tmp_path / "lit"
    assert main(["convert", "dit", str(tmp_path / "pipeline"), str(out), "--num-heads", "2"]) == 0
    assert "initialized 12" in capsys.readouterr().out
    model = AutoModel.from_pretrained(out)
    assert isinstance(model, LiTModel) and model.config.num_attention_heads == 2
    report = (out / "CONVERSION.md").read_text()
    assert "blocks.0.attn.conv.weight" in report and "transformer_blocks.0.attn1.to_q.weight" in report
    assert main(["convert", "dit", str(tmp_path / "pipeline"), str(out)]) != 0      # exists: refused
    assert "already exists" in capsys.readouterr().err


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path)
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="missing keys"):
        load_model(tmp_path / "x.pt")
    dit = _diffusers_dit()
    with torch.no_grad():
        dit.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.weight.add_(1)
    with pytest.raises(ValueError, match="differs from block 0"):
        load_model_from_diffusers(dit)
