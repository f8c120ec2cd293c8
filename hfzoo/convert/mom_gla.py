"""MoM repository checkpoints (``MomGLAForCausalLM``, ``model_type: mom_gla``; OpenSparseLLMs/MoM) -> hfzoo MoM
folders (``model_type: hfzoo_mom``) that load without fla or the MoM code.

What maps onto what:

* config: ``num_memories`` (older checkpoints: ``num_experts``), ``single_kv_proj`` (older: ``single_expert``),
  ``topk``, ``shared_mem``, ``aux_loss_scale`` and the GLA fields carry over. The source's ``capacity`` must be
  >= 1 (then it never drops a token, like hfzoo's MoM, which never drops). Short convolutions, feature maps,
  hybrid softmax-attention layers and non-swish activations are refused with the setting named.
* weights: the layer keys already match (``attn.q_proj``, router ``attn.gate``, per-memory ``attn.k_proj.N``,
  ``attn.v_proj.N``, ``attn.gk_proj.N.{0,1}``, ``attn.shared_{k,v,gk}``, ``attn.g_proj``, ``attn.o_proj``);
  ``attn.g_norm`` (unfused) becomes ``attn.g_norm_swish_gate``; the source MLP's fused ``mlp.gate_proj``
  (``[2 * I, d]``: gate rows, then up rows) is split into ``mlp.gate_proj`` and ``mlp.up_proj``.
  Every key and shape is checked; the tokenizer files are kept.
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

SOURCE = "mom-gla"
DESCRIPTION = "MoM repository MomGLAForCausalLM checkpoint folder (model_type 'mom_gla') -> hfzoo MoM"

# MomGLAConfig fields copied as they are
_COPIED = ("vocab_size", "hidden_size", "expand_k", "expand_v", "hidden_ratio", "intermediate_size",
           "num_hidden_layers", "num_heads", "num_kv_heads", "topk", "shared_mem", "aux_loss_scale",
           "use_output_gate", "clamp_min", "hidden_act", "max_position_embeddings", "elementwise_affine",
           "norm_eps", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "initializer_range",
           "fuse_norm")
_RENAMED = {"num_memories": ("num_memories", "num_experts"), "single_kv_proj": ("single_kv_proj", "single_expert")}


def add_arguments(parser) -> None:
    add_dtype_argument(parser)


def convert_config(source: dict):
    """A MoM-repository ``mom_gla`` ``config.json`` dict -> ``MoMConfig``; ValueError for what hfzoo lacks."""
    from ..models.mom.configuration_mom import MoMConfig

    model_type = source.get("model_type")
    if model_type != "mom_gla":
        raise ValueError(f"expected a MoM GLA config (model_type 'mom_gla', MomGLAForCausalLM); got model_type "
                         f"{model_type!r}" + (" (fla's gated-DeltaNet MoM is not supported yet)"
                                              if model_type in ("mom", "mom_gated_deltanet") else ""))
    unsupported = []
    if source.get("use_short_conv", False):
        unsupported.append("use_short_conv=True")
    if source.get("feature_map") is not None:
        unsupported.append(f"feature_map={source['feature_map']!r}")
    if source.get("attn") is not None:
        unsupported.append(f"attn={source['attn']!r} (hybrid softmax-attention layers)")
    if source.get("use_gv", False):
        unsupported.append("use_gv=True")
    if not source.get("use_gk", True):
        unsupported.append("use_gk=False")
    if source.get("hidden_act", "swish") not in ("swish", "silu"):
        unsupported.append(f"hidden_act={source['hidden_act']!r}")
    if float(source.get("capacity", 1.0)) < 1.0:
        unsupported.append(f"capacity={source['capacity']} (drops tokens; hfzoo's MoM never drops)")
    if unsupported:
        raise ValueError("this MoM config uses settings hfzoo's MoM does not implement: " + ", ".join(unsupported))
    kwargs = {k: source[k] for k in _COPIED if k in source}
    for ours, names in _RENAMED.items():
        found = [n for n in names if n in source]
        if len(found) == 2 and source[found[0]] != source[found[1]]:
            raise ValueError(f"config has both {found[0]}={source[found[0]]!r} and {found[1]}={source[found[1]]!r}")
        if found:
            kwargs[ours] = source[found[0]]
    kwargs.setdefault("num_memories", 8)    # MomGLAConfig's defaults where a field is absent
    kwargs.setdefault("shared_mem", False)
    if source.get("torch_dtype") or source.get("dtype"):
        kwargs["dtype"] = source.get("dtype") or source.get("torch_dtype")
    return MoMConfig(**kwargs)


def convert_state_dict(state_dict: dict, config) -> dict:
    """Rename/split the source keys and check them against the hfzoo model; ValueError lists missing,
    unexpected and misshapen keys."""
    import torch

    from ..models.mom.modeling_mom import MoMForCausalLM

    with torch.device("meta"):
        expected = {k: v.shape for k, v in MoMForCausalLM(config).state_dict().items()}
    width = config.mlp_width
    out, problems = {}, []
    for key, value in state_dict.items():
        if key.endswith("inv_freq"):
            continue
        key = key.replace("model.embed_tokens.", "model.embeddings.")
        if config.use_output_gate and ".attn.g_norm." in key:
            key = key.replace(".attn.g_norm.", ".attn.g_norm_swish_gate.")
        if key.endswith(".mlp.gate_proj.weight") and value.shape[0] == 2 * width:
            gate, up = value.split(width, dim=0)
            out[key] = gate
            out[key.replace(".gate_proj.", ".up_proj.")] = up
            continue
        out[key] = value
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
        expected.pop("lm_head.weight", None)
    problems += state_dict_problems(out, expected)
    if problems:
        raise ValueError("the checkpoint does not match a MoM GLA model of its config; " + "; ".join(problems))
    return out


def convert(source, output, *, overwrite: bool = False, dtype: str = "keep") -> Path:
    """Convert the MoM ``mom_gla`` checkpoint folder ``source`` into an hfzoo folder ``output`` (atomically)."""

    from ..models.mom.modeling_mom import MoMForCausalLM

    folder, raw_config = read_checkpoint_folder(source, SOURCE, "a MomGLAForCausalLM checkpoint folder with config.json")
    config = convert_config(raw_config)
    state = load_folder_weights(folder, SOURCE)
    say(f"{SOURCE}: checking {len(state)} tensors against an hfzoo MoM of this config")
    state = convert_state_dict(state, config)
    state = cast_floats(state, config, dtype)

    model, leftover = assign_on_meta(MoMForCausalLM, config, state)
    if leftover:
        raise ValueError(f"parameters left unset by the checkpoint: {leftover}")
    say(f"{SOURCE}: writing {output}")
    return save_with_tokenizer_files(model, folder, output, overwrite=overwrite)
