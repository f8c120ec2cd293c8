"""Inherit a trained DiT's weights into LiT (or convert the DiT itself into hfzoo's softmax variant).

Sources:

* a diffusers ``DiTTransformer2DModel`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), or a
  pipeline folder holding one under ``transformer/`` (the facebook/DiT-XL-2-256 layout);
* the original DiT checkpoint (facebookresearch/DiT ``DiT-XL-2-256x256.pt``, or a training checkpoint whose
  ``ema``/``model`` entry is the state dict), read with ``torch.load(weights_only=True)``.

LiT's recipe: load every DiT parameter except the attention ones (qkv, output projection); LiT's attention
parameters (qkv, proj, the depthwise conv on V) start from their init (Xavier-uniform linears). With
``--target dit`` everything is loaded into ``attention_type="softmax"`` and the result is the same DiT.

Key mapping (diffusers -> hfzoo; the original DiT's names are hfzoo's)::

    pos_embed.proj.*                                    -> x_embedder.proj.*
    pos_embed.pos_embed (fixed sin-cos)                 -> checked against ours, not stored
    transformer_blocks.0.norm1.emb.timestep_embedder.linear_{1,2}.* -> t_embedder.mlp.{0,2}.*
    transformer_blocks.0.norm1.emb.class_embedder.embedding_table.* -> y_embedder.embedding_table.*
      (diffusers keeps a copy in every block; they must be equal, as in converted DiT checkpoints)
    transformer_blocks.N.norm1.linear.*                 -> blocks.N.adaLN_modulation.1.*
    transformer_blocks.N.attn1.to_{q,k,v}.*             -> blocks.N.attn.qkv.* (concatenated; --target dit only)
    transformer_blocks.N.attn1.to_out.0.*               -> blocks.N.attn.proj.*            (--target dit only)
    transformer_blocks.N.ff.net.0.proj.* / ff.net.2.*   -> blocks.N.mlp.fc1.* / fc2.*
    proj_out_1.* / proj_out_2.*                         -> final_layer.adaLN_modulation.1.* / final_layer.linear.*

diffusers' timestep features use frequencies 10000^(-i/(half-1)) and its MLP-side LayerNorm eps 1e-5; the
original code uses 10000^(-i/half) and 1e-6: the converted config records which (``timestep_freq_shift``,
``mlp_norm_eps``) so outputs match the source.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint_io import load_any, read_json

if TYPE_CHECKING:   # imported where used, so `hfzoo --help` does not load torch
    import torch

SOURCE = "dit"
DESCRIPTION = "DiT (diffusers DiTTransformer2DModel folder or original .pt) -> LiT (inherit all but attention)"

_LEGACY = (".pt", ".pth", ".bin", ".ckpt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", choices=("lit", "dit"), default="lit",
                        help="lit: linear attention, attention weights initialized (default); dit: keep softmax attention")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="LiT heads (default: the LiT preset's few heads for the DiT width, else 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialized attention weights")


# ----------------------------------------------------------------------------------------------------
# Reading the source


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    import torch

    sd = load_any(path)   # safetensors, or torch.load(weights_only=True); errors name the file
    for key in ("ema", "model", "state_dict"):       # training checkpoints: prefer the EMA weights
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path.name}: expected a state dict (a dict of tensors)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_source(source) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, diffusers config or None) of a diffusers folder, a pipeline folder, or an original .pt."""
    path = Path(source)
    if path.is_dir():
        if (path / "transformer" / "config.json").is_file():
            path = path / "transformer"
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ValueError(f"{path}: no config.json (expected a diffusers DiTTransformer2DModel folder)")
        config = read_json(cfg_file)
        if config.get("_class_name") not in (None, "DiTTransformer2DModel", "Transformer2DModel"):
            raise ValueError(f"{cfg_file}: _class_name is {config.get('_class_name')!r}, not DiTTransformer2DModel")
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if (path / name).is_file():
                return _read_weights(path / name), config
        raise ValueError(f"{path}: no diffusion_pytorch_model.safetensors / .bin")
    if path.is_file() and (path.suffix in _LEGACY or path.suffix == ".safetensors"):
        return _read_weights(path), None
    raise ValueError(f"checkpoint {source!r}: expected a diffusers folder or a .pt/.pth/.safetensors file")


def _require(sd, keys, what):
    missing = [k for k in keys if k not in sd]
    if missing:
        raise ValueError(f"not a {what} state dict: missing keys {missing}")


# ----------------------------------------------------------------------------------------------------
# diffusers -> DiT (original) names


def diffusers_to_dit_names(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], dict]:
    """Rename a diffusers DiT state dict to the original DiT names.

    Returns (renamed, source keys not used, {original name: [diffusers names it came from]})."""
    import torch

    _require(sd, ["pos_embed.proj.weight", "transformer_blocks.0.norm1.linear.weight", "proj_out_2.weight"],
             "diffusers DiTTransformer2DModel")
    out, unused, origin = {}, [], {}
    emb0 = "transformer_blocks.0.norm1.emb."
    for k, v in sd.items():
        m = re.match(r"transformer_blocks\.(\d+)\.(.+)", k)
        if k.startswith("pos_embed.proj."):
            out["x_embedder.proj." + k.split(".")[-1]] = v
        elif k == "pos_embed.pos_embed":
            out["pos_embed"] = v
        elif k.startswith("proj_out_1."):
            out["final_layer.adaLN_modulation.1." + k.split(".")[-1]] = v
        elif k.startswith("proj_out_2."):
            out["final_layer.linear." + k.split(".")[-1]] = v
        elif m:
            i, rest = m.group(1), m.group(2)
            kind = k.split(".")[-1]
            if rest.startswith("norm1.emb."):
                if i != "0":
                    ref = sd.get(emb0 + rest[len("norm1.emb."):])
                    if ref is None or not torch.equal(ref, v):
                        raise ValueError(f"{k} differs from block 0's copy: LiT/DiT share one timestep and class "
                                         "embedder (converted DiT checkpoints hold identical copies)")
                    continue
                sub = rest[len("norm1.emb."):]
                if sub.startswith("timestep_embedder.linear_1."):
                    out["t_embedder.mlp.0." + kind] = v
                elif sub.startswith("timestep_embedder.linear_2."):
                    out["t_embedder.mlp.2." + kind] = v
                elif sub.startswith("class_embedder.embedding_table."):
                    out["y_embedder.embedding_table." + kind] = v
                else:
                    unused.append(k)
            elif rest.startswith("norm1.linear."):
                out[f"blocks.{i}.adaLN_modulation.1.{kind}"] = v
            elif rest.startswith("ff.net.0.proj."):
                out[f"blocks.{i}.mlp.fc1.{kind}"] = v
            elif rest.startswith("ff.net.2."):
                out[f"blocks.{i}.mlp.fc2.{kind}"] = v
            elif rest.startswith("attn1.to_out.0."):
                out[f"blocks.{i}.attn.proj.{kind}"] = v
            elif rest.startswith(("attn1.to_q.", "attn1.to_k.", "attn1.to_v.")):
                if rest.startswith("attn1.to_q."):
                    names = [f"transformer_blocks.{i}.attn1.to_{x}.{kind}" for x in "qkv"]
                    out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd[n] for n in names], dim=0)
                    origin[f"blocks.{i}.attn.qkv.{kind}"] = names
                continue
            else:
                unused.append(k)
        else:
            unused.append(k)
        if m is None or not rest.startswith("norm1.emb.") or m.group(1) == "0":
            new = [n for n, t in out.items() if t is v and n not in origin]
            for n in new:
                origin[n] = [k]
    return out, unused, origin


# ----------------------------------------------------------------------------------------------------
# Config and weights


def config_from_dit(sd: dict, diffusers_config: dict | None, *, target: str = "lit", num_heads: int | None = None):
    """The LiTConfig of a DiT state dict in original names (plus diffusers' config where given)."""
    from ..models.lit.configuration_lit import LIT_SIZES, LiTConfig

    _require(sd, ["x_embedder.proj.weight", "t_embedder.mlp.0.weight", "blocks.0.mlp.fc1.weight",
                  "final_layer.linear.weight"], "DiT")
    patch_w = sd["x_embedder.proj.weight"]
    D, C, p = patch_w.shape[0], patch_w.shape[1], patch_w.shape[-1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    out_ch = sd["final_layer.linear.weight"].shape[0] // (p * p)
    if out_ch not in (C, 2 * C):
        raise ValueError(f"final_layer.linear has {out_ch} output channels per pixel; expected {C} or {2 * C}")
    kw = {}
    if diffusers_config is not None:
        sample = diffusers_config["sample_size"]
        dit_heads = diffusers_config["num_attention_heads"]
        kw.update(timestep_freq_shift=1.0, mlp_norm_eps=diffusers_config.get("norm_eps", 1e-5))
    else:
        if "pos_embed" not in sd:
            raise ValueError("the original DiT state dict has no pos_embed: cannot tell the input size")
        sample = int(round(sd["pos_embed"].shape[1] ** 0.5)) * p
        dit_heads = next((s["dit_heads"] for s in LIT_SIZES.values() if s["hidden_size"] == D), max(1, D // 72))
    if "y_embedder.embedding_table.weight" in sd:
        rows = sd["y_embedder.embedding_table.weight"].shape[0]
        num_classes = diffusers_config.get("num_embeds_ada_norm", rows - 1) if diffusers_config else rows - 1
    else:
        num_classes = 0
    if target == "dit":
        heads = dit_heads
    else:
        heads = num_heads or next((s["num_attention_heads"] for s in LIT_SIZES.values() if s["hidden_size"] == D), 4)
    return LiTConfig(sample_size=sample, patch_size=p, in_channels=C, learn_sigma=out_ch == 2 * C, hidden_size=D,
                     num_hidden_layers=depth, num_attention_heads=heads,
                     mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / D,
                     attention_type="softmax" if target == "dit" else "linear", num_classes=num_classes,
                     qkv_bias="blocks.0.attn.qkv.bias" in sd or target == "lit", **kw)


def inherit(sd: dict, config, seed: int = 0):
    """Build the model of ``config`` and load every parameter of the DiT state dict ``sd`` (original names) that
    it has, leaving LiT's attention at its init. Returns (model, report) where report lists ``loaded``,
    ``initialized`` (model keys not from the source) and ``dropped`` (source keys not used)."""
    import torch

    from ..models.lit.modeling_lit import LiTModel, sincos_2d

    torch.manual_seed(seed)
    model = LiTModel(config)
    expected = model.state_dict()
    sd = dict(sd)
    dropped = []
    if "pos_embed" in sd:
        pos = sd.pop("pos_embed").float().reshape(-1, config.hidden_size)
        ours = sincos_2d(config.hidden_size, config.grid_size, config.grid_size)
        if pos.shape != ours.shape or not torch.allclose(pos, ours, atol=1e-5):
            raise ValueError("the source's pos_embed is not DiT's fixed 2D sin-cos grid; learned positions are "
                             "not supported by this converter")
        dropped.append("pos_embed (fixed sin-cos, recomputed)")
    table = sd.get("y_embedder.embedding_table.weight")
    if table is not None and table.shape[0] == config.num_classes:      # trained without a null class
        sd["y_embedder.embedding_table.weight"] = torch.cat([table, expected["y_embedder.embedding_table.weight"][-1:]])
    loaded = {}
    for k, v in sd.items():
        if k not in expected:
            dropped.append(k)
        elif tuple(v.shape) != tuple(expected[k].shape):
            if ".attn." in k and config.attention_type == "linear":
                dropped.append(k)
                continue
            raise ValueError(f"{k}: source shape {tuple(v.shape)} != model shape {tuple(expected[k].shape)}")
        elif ".attn." in k and config.attention_type == "linear":
            dropped.append(k)                    # LiT's recipe: everything except the attention parameters
        else:
            loaded[k] = v
    missing = sorted(k for k in expected if k not in loaded)
    if config.attention_type == "softmax" and missing:
        raise ValueError(f"missing keys in the DiT checkpoint: {missing[:20]}")
    not_attention = [k for k in missing if ".attn." not in k and not k.startswith("y_embedder.")]
    if not_attention:
        raise ValueError(f"missing non-attention keys in the DiT checkpoint: {not_attention[:20]}")
    model.load_state_dict(loaded, strict=False)
    initialized = missing
    if table is not None and table.shape[0] == config.num_classes:
        initialized = sorted({*initialized, "y_embedder.embedding_table.weight (null-class row)"})
    return model.eval(), {"loaded": sorted(loaded), "initialized": initialized, "dropped": sorted(dropped)}


def load_model(source, *, target: str = "lit", num_heads: int | None = None, seed: int = 0):
    """(model, report) from a diffusers DiT folder, an original DiT .pt, or a state dict (either naming)."""
    if isinstance(source, dict):
        sd, dcfg = source, None
    else:
        sd, dcfg = load_source(source)
    unused, origin = [], {}
    if "pos_embed.proj.weight" in sd:                       # diffusers names
        sd, unused, origin = diffusers_to_dit_names(sd)
    config = config_from_dit(sd, dcfg, target=target, num_heads=num_heads)
    model, report = inherit(sd, config, seed=seed)
    # name the source's own tensors in the report
    dropped = [src for k in report["dropped"] for src in origin.get(k, [k])]
    report["dropped"] = sorted(dropped + unused)
    return model, report


def report_markdown(report: dict, source) -> str:
    lines = [f"# Converted from DiT: {Path(str(source)).name}", "",
             f"Loaded from the source: {len(report['loaded'])} tensors. "
             f"Initialized here: {len(report['initialized'])}. Source tensors not used: {len(report['dropped'])}.", ""]
    for title, key in (("Initialized (not from the source)", "initialized"), ("Source tensors not used", "dropped")):
        lines += [f"## {title}", ""] + [f"- `{k}`" for k in report[key]] + [""]
    return "\n".join(lines)


def convert(source, output, *, overwrite: bool = False, target: str = "lit", num_heads: int | None = None,
            seed: int = 0) -> Path:
    """Write an hfzoo LiT folder (weights, config, CONVERSION.md with the loaded/initialized report)."""
    from ..hub.atomic import atomic_directory
    from ..hub.progress import say

    say(f"{SOURCE}: reading {source}")
    model, report = load_model(source, target=target, num_heads=num_heads, seed=seed)
    say(f"{SOURCE}: writing {output}")
    with atomic_directory(output, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        (tmp / "CONVERSION.md").write_text(report_markdown(report, source))
    print(f"loaded {len(report['loaded'])} tensors, initialized {len(report['initialized'])}, "
          f"left out {len(report['dropped'])} source tensors (see CONVERSION.md)")
    return Path(output)
