"""Convert timm-format KAT checkpoints (and plain timm ViTs) into hfzoo KAT folders.

Sources:

* the released KAT checkpoints (``adamdad/kat_{tiny,small,base}_patch16_224`` and their ``.vitft`` variants
  on the Hub, or the ``.pth`` files of the KAT release): timm ``VisionTransformer`` keys plus
  ``blocks.N.mlp.act{1,2}.weight_numerator`` (1, 6) and ``.weight_denominator`` (G, 4);
* a plain timm ViT state dict (``blocks.N.mlp.fc1.weight`` and no rational keys): the paper's "initialize
  from ViT" recipe. The linear layers are copied and the rationals start at their init (identity before
  fc1, ``--rational-init`` before fc2); with ``--mlp-type mlp`` the ViT is converted as-is (GELU MLP).

Key mapping (timm -> hfzoo ``KATForImageClassification``)::

    cls_token                      -> kat.embeddings.cls_token
    pos_embed                      -> kat.embeddings.position_embeddings
    patch_embed.proj.{weight,bias} -> kat.embeddings.patch_embeddings.{weight,bias}
    blocks.N.<rest>                -> kat.layers.N.<rest>   (norm1, attn.qkv, attn.proj, norm2, mlp.*)
    norm.{weight,bias}             -> kat.norm.{weight,bias}
    head.{weight,bias}             -> classifier.{weight,bias}

The number of heads is not stored in a state dict: it follows the released sizes (192 -> 3, 384 -> 6,
768 -> 12, else width / 64) unless ``--num-heads`` is given. The rationals keep the released denominator form
(``Q = 1 + sum |b_i| |x|^(i+1)``) the checkpoints were trained with.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


from ..hub.progress import say
from .checkpoint_io import load_files

SOURCE = "timm-kat"
DESCRIPTION = "released KAT checkpoints (timm format) or a plain timm ViT state dict -> KAT"

_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_LEGACY = (".pth", ".pt", ".bin", ".ckpt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-heads", type=int, default=None, help="attention heads (default: from the width)")
    parser.add_argument("--mlp-type", choices=("kan", "mlp"), default="kan",
                        help="for a plain ViT source: kan (rationals at init) or mlp (keep the GELU MLP)")
    parser.add_argument("--rational-init", choices=("swish", "gelu", "identity"), default="swish",
                        help="init of the second rational when the source has none (plain ViT)")
    parser.add_argument("--rational-groups", type=int, default=8, help="groups when the source has no rationals")
    parser.add_argument("--num-labels", type=int, default=None,
                        help="classes for a new (randomly initialized) head when the source has none")


def load_state_dict(source) -> dict[str, torch.Tensor]:
    """Read a timm state dict from a .safetensors/.pth/.pt/.bin file or a folder holding one."""
    import torch

    path = Path(source)
    if path.is_dir():
        found = [path / n for n in _WEIGHT_FILES if (path / n).is_file()]
        found += sorted(p for p in path.iterdir() if p.suffix in (".safetensors", *_LEGACY)) if not found else []
        if not found:
            raise ValueError(f"no weights file in {path} (looked for {', '.join(_WEIGHT_FILES)}, *.pth)")
        path = found[0]
    if not path.is_file():
        raise ValueError(f"checkpoint {source!r} is neither a weights file nor a folder")
    if path.suffix == ".safetensors" or path.suffix in _LEGACY:
        sd = load_files([path], f"{SOURCE}: reading weights")
    else:
        raise ValueError(f"{path}: expected .safetensors or one of {', '.join(_LEGACY)}")
    for key in ("model", "state_dict", "model_ema"):   # training checkpoints wrap the weights
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _require(sd, keys, what):
    missing = [k for k in keys if k not in sd]
    if missing:
        raise ValueError(f"not a timm {what} state dict: missing keys {missing}")


def config_from_state_dict(sd: dict, *, num_heads: int | None = None, mlp_type: str = "kan",
                           rational_init: str = "swish", rational_groups: int = 8, num_labels: int | None = None):
    """Infer the KATConfig of a timm KAT / ViT state dict."""
    from ..models.kat.configuration_kat import KATConfig

    _require(sd, ["cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "norm.weight"],
             "ViT/KAT")
    D = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"]
    if patch.dim() != 4:
        raise ValueError(f"patch_embed.proj.weight: expected a conv kernel [D, C, p, p], got {tuple(patch.shape)}")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    tokens = sd["pos_embed"].shape[1]
    grid = int(round((tokens - 1) ** 0.5))
    if grid * grid + 1 != tokens:
        raise ValueError(f"pos_embed has {tokens} positions; expected a class token plus a square grid "
                         "(checkpoints without class-token positions are not supported)")
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    kan = "blocks.0.mlp.act1.weight_numerator" in sd
    kw = {}
    if kan:
        den = sd["blocks.0.mlp.act1.weight_denominator"]
        kw = dict(rational_groups=den.shape[0], rational_init="swish",
                  rational_shared_numerator=sd["blocks.0.mlp.act1.weight_numerator"].shape[0] == 1)
    elif mlp_type == "kan":
        kw = dict(rational_groups=rational_groups, rational_init=rational_init)
    if "head.weight" in sd:
        labels = sd["head.weight"].shape[0]
    elif num_labels is not None:
        labels = num_labels
    else:
        raise ValueError("the state dict has no classifier (head.weight): pass num_labels / --num-labels")
    return KATConfig(image_size=grid * patch.shape[-1], patch_size=patch.shape[-1], num_channels=patch.shape[1],
                     hidden_size=D, num_hidden_layers=depth,
                     num_attention_heads=num_heads or _HEADS.get(D, max(1, D // 64)), mlp_ratio=hidden / D,
                     mlp_type="kan" if kan else mlp_type, qkv_bias="blocks.0.attn.qkv.bias" in sd,
                     num_labels=labels, **kw)


def rename_key(key: str) -> str:
    if key == "cls_token":
        return "kat.embeddings.cls_token"
    if key == "pos_embed":
        return "kat.embeddings.position_embeddings"
    if key.startswith("patch_embed.proj."):
        return "kat.embeddings.patch_embeddings." + key[len("patch_embed.proj."):]
    if key.startswith("blocks."):
        return "kat.layers." + key[len("blocks."):]
    if key.startswith("norm."):
        return "kat.norm." + key[len("norm."):]
    if key.startswith("head."):
        return "classifier." + key[len("head."):]
    return key


def convert_state_dict(sd: dict, config) -> tuple[dict, list[str]]:
    """timm keys -> hfzoo keys; returns (state dict, hfzoo keys left at their init). Raises on a mismatch."""
    import torch

    from ..models.kat.modeling_kat import KATForImageClassification

    with torch.device("meta"):
        expected = KATForImageClassification(config).state_dict()
    out = {rename_key(k): v for k, v in sd.items()}
    unexpected = sorted(k for k in out if k not in expected)
    if unexpected:
        raise ValueError(f"unexpected keys in the checkpoint (after renaming): {unexpected[:20]}"
                         + (f" and {len(unexpected) - 20} more" if len(unexpected) > 20 else ""))
    may_init = {k for k in expected if ".act1." in k or ".act2." in k or k.startswith("classifier.")}
    missing = sorted(k for k in expected if k not in out and k not in may_init)
    if missing:
        raise ValueError(f"missing keys in the checkpoint: {missing[:20]}"
                         + (f" and {len(missing) - 20} more" if len(missing) > 20 else ""))
    if any(".act" in k for k in out) and any(k not in out for k in expected if ".act" in k):
        raise ValueError("the checkpoint has some rational coefficients but not all: "
                         f"{sorted(k for k in expected if '.act' in k and k not in out)[:10]}")
    for k, v in out.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"{k}: checkpoint shape {tuple(v.shape)} != model shape {tuple(expected[k].shape)}")
    return out, sorted(k for k in expected if k not in out)


def load_model(source, **options):
    """Build a KATForImageClassification from a timm checkpoint (file, folder or state dict)."""
    from ..models.kat.modeling_kat import KATForImageClassification

    sd = source if isinstance(source, dict) else load_state_dict(source)
    say(f"{SOURCE}: inferring the config from {len(sd)} tensors and checking every key and shape")
    config = config_from_state_dict(sd, **options)
    converted, initialized = convert_state_dict(sd, config)
    model = KATForImageClassification(config)
    missing, _ = model.load_state_dict(converted, strict=False)
    assert sorted(missing) == initialized
    return model.eval(), initialized


def convert(source, output, *, overwrite: bool = False, num_heads: int | None = None, mlp_type: str = "kan",
            rational_init: str = "swish", rational_groups: int = 8, num_labels: int | None = None) -> Path:
    """Write an hfzoo KAT folder (weights, config, ImageNet eval preprocessing) for a timm checkpoint."""
    from ..hub.atomic import atomic_directory
    from ..models.kat.image_processing_kat import KATImageProcessor

    model, initialized = load_model(source, num_heads=num_heads, mlp_type=mlp_type, rational_init=rational_init,
                                    rational_groups=rational_groups, num_labels=num_labels)
    cfg = model.config
    say(f"{SOURCE}: {cfg.num_hidden_layers} blocks of width {cfg.hidden_size}, {cfg.mlp_type} MLPs, "
        f"{cfg.num_labels} classes; {len(initialized)} tensors start at their init; writing {output}")
    size = int(round(cfg.image_size / 0.875))   # timm eval: resize to crop / crop_pct, center crop
    with atomic_directory(output, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if cfg.num_channels == 3:
            KATImageProcessor(size=size, crop_size=cfg.image_size).save_pretrained(tmp)
        if initialized:
            (tmp / "CONVERSION.md").write_text(
                "Initialized at conversion (not in the source checkpoint):\n\n"
                + "\n".join(f"- `{k}`" for k in initialized) + "\n")
    return Path(output)
