"""Conversion of released SimVQ Lightning checkpoints, on synthetic checkpoints with the real key names."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import AutoImageProcessor, AutoModel

from hfzoo.convert import converters
from hfzoo.convert.simvq_ckpt import convert, load_lightning_checkpoint
from hfzoo.models.simvq import SimVQConfig, SimVQModel
from hfzoo.ops.dispatch import use_backend

DD = {"double_z": False, "z_channels": 8, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
      "ch_mult": [1, 2], "num_res_blocks": 1}


def _yaml(n_e=16, e_dim=8, class_path="taming.models.vq.VQModel", target="taming.modules.vqvae.quantize.SimVQ"):
    return {"seed_everything": True, "trainer": {"precision": "16-mixed"},
            "model": {"class_path": class_path, "init_args": {
                "ddconfig": dict(DD),
                "quantconfig": {"target": target, "params": {"n_e": n_e, "e_dim": e_dim, "beta": 0.25,
                                                             "legacy": False}},
                "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"},
                "learning_rate": 1e-4, "use_ema": True}}}


def _source_state():
    """A state dict with the reference's names: our model uses them, plus loss.* and model_ema.* entries."""
    torch.manual_seed(0)
    cfg = SimVQConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=8, codebook_size=16, resolution=16)
    raw = {k: v.clone() for k, v in SimVQModel(cfg).state_dict().items()}
    state = dict(raw)
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 4, 1, 1)
    ema = {}
    for k, v in raw.items():
        if k != "quantize.embedding.weight":  # frozen: not averaged
            ema[k] = v + 0.01 * torch.randn_like(v)
            state["model_ema." + k.replace(".", "")] = ema[k]
    state["model_ema.lossdiscriminatormain0weight"] = torch.randn(4, 3, 4, 4)
    state["model_ema.decay"] = torch.tensor(0.999)
    state["model_ema.num_updates"] = torch.tensor(100, dtype=torch.int)
    return raw, ema, state


def _write(tmp_path, state, conf=None, extra=None):
    folder = tmp_path / "vq_log" / "simvq_1k"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(conf or _yaml()))
    ckpt = {"epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.2.5", "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 2}}}},
            "callbacks": {"ModelCheckpoint{'monitor': None}": {"kth_value": torch.tensor(float("inf")),
                                                              "best_model_path": "x.ckpt", "best_k_models": {}}},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2)}},
                                  "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.9), "params": [0]}]}],
            "lr_schedulers": [], "MixedPrecision": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 3}}
    ckpt.update(extra or {})
    torch.save(ckpt, folder / "checkpoints" / "epoch=1-step=10.ckpt")
    return folder


def _reference_forward(sd, x, ch_mult, nrb):
    """The reference image tokenizer written out functionally from its state-dict names (independent of hfzoo's
    module code): GroupNorm(32)+swish ResBlocks, stride-2 convs, W(C) nearest code, conv + depth-to-space."""
    gn = lambda h, p: F.group_norm(h, 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)
    conv = lambda h, p, **kw: F.conv2d(h, sd[p + ".weight"], sd.get(p + ".bias"), **kw)

    def res(h, p):
        y = conv(F.silu(gn(h, p + ".norm1")), p + ".conv1", padding=1)
        y = conv(F.silu(gn(y, p + ".norm2")), p + ".conv2", padding=1)
        return y + (conv(h, p + ".nin_shortcut") if p + ".nin_shortcut.weight" in sd else h)

    h = conv(x, "encoder.conv_in", padding=1)
    for i in range(len(ch_mult)):
        for j in range(nrb):
            h = res(h, f"encoder.down.{i}.block.{j}")
        if i < len(ch_mult) - 1:
            h = conv(h, f"encoder.down.{i}.downsample", stride=2, padding=1)
    for j in range(nrb):
        h = res(h, f"encoder.mid_block.{j}")
    z = conv(F.silu(gn(h, "encoder.norm_out")), "encoder.conv_out")
    cb = F.linear(sd["quantize.embedding.weight"], sd["quantize.embedding_proj.weight"], sd["quantize.embedding_proj.bias"])
    zf = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    d = zf.pow(2).sum(1, keepdim=True) + cb.pow(2).sum(1) - 2 * zf @ cb.t()
    idx = d.argmin(1)
    h = cb[idx].reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    h = conv(h, "decoder.conv_in", padding=1)
    for j in range(nrb):
        h = res(h, f"decoder.mid_block.{j}")
    for i in reversed(range(len(ch_mult))):
        for j in range(nrb):
            h = res(h, f"decoder.up.{i}.block.{j}")
        if i > 0:
            h = conv(h, f"decoder.up.{i}.upsample.conv1", padding=1)
            b, c, hh, ww = h.shape
            h = h.view(b, 2, 2, c // 4, hh, ww).permute(0, 3, 4, 1, 5, 2).reshape(b, c // 4, hh * 2, ww * 2)
    return conv(F.silu(gn(h, "decoder.norm_out")), "decoder.conv_out", padding=1), idx.reshape(z.shape[0], -1)


@pytest.mark.parametrize("weights", ["auto", "raw"])
def test_convert_matches_a_functional_reference(tmp_path, weights):
    raw, ema, state = _source_state()
    folder = _write(tmp_path, state)
    # the folder, or the .ckpt file itself (config.yaml is found one level up)
    source = folder if weights == "auto" else next(folder.rglob("*.ckpt"))
    out = convert(source, tmp_path / "out", weights=weights)
    model = AutoModel.from_pretrained(out).eval()
    assert AutoImageProcessor.from_pretrained(out).size == 16
    assert model.config.codebook_size == 16 and model.config.legacy_loss is False and model.config.ch_mult == [1, 2]
    used = {**raw, **ema} if weights == "auto" else raw
    for k, v in model.state_dict().items():
        assert torch.equal(v, used[k]), k
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad(), use_backend("reference"):
        ours = model(pixel_values=x)
    want, idx = _reference_forward(used, x, [1, 2], 1)
    assert torch.equal(ours.indices.reshape(2, -1), idx)
    torch.testing.assert_close(ours.reconstruction, want, rtol=1e-4, atol=1e-5)
    assert "simvq" in converters()


def test_unknown_and_missing_keys_are_listed(tmp_path):
    _, _, state = _source_state()
    state["encoder.extra_layer.weight"] = torch.zeros(1)
    del state["decoder.conv_out.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['decoder.conv_out.bias'\].*unexpected keys \['encoder.extra_layer.weight'\]"):
        convert(_write(tmp_path, state), tmp_path / "out", weights="raw")
    assert not (tmp_path / "out").exists()


def test_incomplete_ema_and_shape_mismatch(tmp_path):
    raw, _, state = _source_state()
    del state["model_ema.encoderconv_inweight"]
    with pytest.raises(ValueError, match="model_ema.encoderconv_inweight"):
        convert(_write(tmp_path / "a", state), tmp_path / "out", weights="ema")
    with pytest.raises(ValueError, match="no model_ema"):
        convert(_write(tmp_path / "b", raw), tmp_path / "out", weights="ema")
    with pytest.raises(ValueError, match="quantize.embedding.weight"):
        convert(_write(tmp_path / "c", raw, conf=_yaml(n_e=32)), tmp_path / "out")


def test_config_errors(tmp_path):
    raw, _, _ = _source_state()
    with pytest.raises(ValueError, match="audio"):
        convert(_write(tmp_path / "a", raw, conf=_yaml(class_path="taming.models.vq_audio.VQModel")), tmp_path / "o")
    with pytest.raises(ValueError, match="e_dim"):
        convert(_write(tmp_path / "b", raw, conf=_yaml(e_dim=4)), tmp_path / "o")
    with pytest.raises(ValueError, match="quantconfig.target"):
        convert(_write(tmp_path / "c", raw, conf=_yaml(target="taming.modules.vqvae.quantize.VectorQuantizer2")),
                tmp_path / "o")


class Payload:
    """Stands for an arbitrary object in a pickle: must be refused without running."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_only_loading_tolerates_known_data_holders_and_refuses_the_rest(tmp_path, monkeypatch):
    raw, _, _ = _source_state()
    # what a module calling save_hyperparameters adds: Lightning's AttributeDict (faked here without Lightning)
    mod = types.ModuleType("lightning.fabric.utilities.data")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = "lightning.fabric.utilities.data", "AttributeDict"
    mod.AttributeDict = AttributeDict
    for name in ("lightning", "lightning.fabric", "lightning.fabric.utilities"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "lightning.fabric.utilities.data", mod)
    hp = AttributeDict(ddconfig={"ch": 32}, learning_rate=1e-4)
    folder = _write(tmp_path / "a", raw, extra={"hyper_parameters": hp})
    ckpt = next(folder.rglob("*.ckpt"))
    with pytest.raises(Exception, match="AttributeDict"):
        torch.load(ckpt, weights_only=True)  # what plain weights-only loading says
    loaded = load_lightning_checkpoint(ckpt)
    assert loaded["hyper_parameters"]["learning_rate"] == 1e-4
    assert type(loaded["hyper_parameters"]) is dict  # a plain dict stands in; the original class is never built
    convert(folder, tmp_path / "out")

    bad = _write(tmp_path / "b", raw, extra={"payload": Payload()})
    with pytest.raises(ValueError, match="builtins.print"):
        load_lightning_checkpoint(next(bad.rglob("*.ckpt")))


def test_several_checkpoints_pick_the_latest_or_ask(tmp_path):
    raw, _, _ = _source_state()
    folder = _write(tmp_path, raw)
    later = dict(raw)
    later["decoder.conv_out.bias"] = raw["decoder.conv_out.bias"] + 1
    torch.save({"state_dict": later}, folder / "checkpoints" / "epoch=3-step=40.ckpt")
    model = AutoModel.from_pretrained(convert(folder, tmp_path / "out"))
    assert torch.equal(model.decoder.conv_out.bias, later["decoder.conv_out.bias"])
    torch.save({"state_dict": later}, folder / "checkpoints" / "last.ckpt")
    torch.save({"state_dict": later}, folder / "checkpoints" / "epoch=3-step=40-v1.ckpt")
    with pytest.raises(ValueError, match="several checkpoints"):
        convert(folder, tmp_path / "out2")
