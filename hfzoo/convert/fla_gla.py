"""flash-linear-attention GLA checkpoints (``model_type: gla``, e.g. fla-hub/gla-340M-15B, gla-1.3B-100B)
-> hfzoo GLA folders (``model_type: hfzoo_gla``) that load without fla.

The parameter names already match (``model.embeddings``, ``model.layers.N.attn.{q,k,v,g,o}_proj``,
``attn.gk_proj.{0,1}``, ``attn.{q,k,v}_conv1d``, ``attn.g_norm_swish_gate``, ``mlp.{gate,up,down}_proj``,
``{attn,mlp}_norm``, ``model.norm``, ``lm_head``); the conversion maps the config, renames the few keys older
or unfused fla layouts use (``embed_tokens`` -> ``embeddings``, ``g_norm`` -> ``g_norm_swish_gate``), drops
non-parameters (rotary ``inv_freq``), checks every key and shape, and keeps the tokenizer files.
"""

from __future__ import annotations

from pathlib import Path

from ..hub.progress import say
from .checkpoint_io import (
    add_dtype_argument,
    assign_on_meta,
    cast_floats,
    load_folder_weights,
    read_checkpoint_folder,
    save_with_tokenizer_files,
    state_dict_problems,
)

SOURCE = "fla-gla"
DESCRIPTION = "flash-linear-attention GLA checkpoint folder (model_type 'gla') -> hfzoo GLA"

# fla GLAConfig fields copied as they are
_COPIED = ("vocab_size", "hidden_size", "expand_k", "expand_v", "hidden_ratio", "intermediate_size",
           "num_hidden_layers", "num_heads", "num_kv_heads", "use_short_conv", "conv_size", "use_output_gate",
           "clamp_min", "hidden_act", "max_position_embeddings", "elementwise_affine", "norm_eps", "attn",
           "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "initializer_range", "fuse_norm",
           "gate_low_rank_dim", "gate_logit_normalizer", "conv_bias")


def add_arguments(parser) -> None:
    add_dtype_argument(parser)


def convert_config(fla_config: dict):
    """An fla GLA ``config.json`` dict -> ``GLAConfig``. Raises ValueError for settings hfzoo does not implement."""
    from ..models.gla.configuration_gla import GLAConfig

    model_type = fla_config.get("model_type")
    if model_type != "gla":
        raise ValueError(f"expected an fla GLA config (model_type 'gla'); got model_type {model_type!r}")
    unsupported = []
    if fla_config.get("feature_map") is not None:
        unsupported.append(f"feature_map={fla_config['feature_map']!r}")
    if fla_config.get("use_gv", False):
        unsupported.append("use_gv=True")
    if not fla_config.get("use_gk", True):
        unsupported.append("use_gk=False")
    if fla_config.get("attnres_block_size") is not None:
        unsupported.append(f"attnres_block_size={fla_config['attnres_block_size']!r}")
    if fla_config.get("use_short_conv") and fla_config.get("share_conv_kernel", False):
        unsupported.append("share_conv_kernel=True")
    if fla_config.get("hidden_act", "swish") not in ("swish", "silu"):
        unsupported.append(f"hidden_act={fla_config['hidden_act']!r}")
    if unsupported:
        raise ValueError("this fla GLA config uses settings hfzoo's GLA does not implement: " + ", ".join(unsupported))
    kwargs = {k: fla_config[k] for k in _COPIED if k in fla_config}
    if "norm_eps" not in kwargs and "rms_norm_eps" in fla_config:   # older fla configs
        kwargs["norm_eps"] = fla_config["rms_norm_eps"]
    if fla_config.get("torch_dtype") or fla_config.get("dtype"):
        kwargs["dtype"] = fla_config.get("dtype") or fla_config.get("torch_dtype")
    return GLAConfig(**kwargs)


def rename_key(key: str, config) -> str | None:
    """fla key -> hfzoo key (None: not a parameter, dropped)."""
    if key.endswith("inv_freq"):
        return None
    key = key.replace("model.embed_tokens.", "model.embeddings.")
    if config.use_output_gate and ".attn.g_norm." in key:   # fla's unfused norm + gate (fuse_norm=False)
        key = key.replace(".attn.g_norm.", ".attn.g_norm_swish_gate.")
    return key


def convert_state_dict(state_dict: dict, config) -> dict:
    """Rename fla keys and check them against the hfzoo model; ValueError lists missing/unexpected/misshapen keys."""
    import torch

    from ..models.gla.modeling_gla import GLAForCausalLM

    with torch.device("meta"):
        expected = {k: v.shape for k, v in GLAForCausalLM(config).state_dict().items()}
    out = {}
    for key, value in state_dict.items():
        new = rename_key(key, config)
        if new is not None:
            out[new] = value
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
        expected.pop("lm_head.weight", None)
    problems = state_dict_problems(out, expected)
    if problems:
        raise ValueError("the checkpoint does not match an fla GLA model of its config; " + "; ".join(problems))
    return out


def convert(source, output, *, overwrite: bool = False, dtype: str = "keep") -> Path:
    """Convert the fla GLA checkpoint folder ``source`` into an hfzoo folder ``output`` (written atomically)."""

    from ..models.gla.modeling_gla import GLAForCausalLM

    folder, raw_config = read_checkpoint_folder(
        source, SOURCE, "download the fla checkpoint first, e.g. `huggingface-cli download fla-hub/gla-340M-15B "
                        f"--local-dir {Path(str(source)).name}`")
    config = convert_config(raw_config)
    state = load_folder_weights(folder, SOURCE)
    say(f"{SOURCE}: checking {len(state)} tensors against an hfzoo GLA of this config")
    state = convert_state_dict(state, config)
    state = cast_floats(state, config, dtype)

    model, leftover = assign_on_meta(GLAForCausalLM, config, state)
    buffers = dict(model.named_buffers())
    for name in leftover:   # non-persistent buffers (rotary inv_freq) are recomputed, not read
        if name in buffers:
            module = model.get_submodule(name.rsplit(".", 1)[0])
            module.inv_freq = _rotary_inv_freq(config, module)
    say(f"{SOURCE}: writing {output}")
    return save_with_tokenizer_files(model, folder, output, overwrite=overwrite)


def _rotary_inv_freq(config, attention):
    from ..layers.rotary import rope_inv_freq

    return rope_inv_freq(attention.head_dim, config.attention_spec(attention.layer_idx)["rope_theta"])
