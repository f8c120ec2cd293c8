"""Gated Linear Attention (GLA) language model."""

from __future__ import annotations

from ...registry import Architecture, lazy_exports


def tiny_config():
    """A small GLA for tests: two layers, grouped-query heads, short convolutions."""
    from .configuration_gla import GLAConfig

    return GLAConfig(vocab_size=97, hidden_size=32, expand_k=0.5, expand_v=1.0, num_heads=2, num_kv_heads=1,
                     num_hidden_layers=2, hidden_ratio=2, intermediate_size=64, use_short_conv=True, conv_size=3,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2)


def example_inputs(config) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, config.vocab_size, (2, 7), generator=g)
    attention_mask = torch.ones_like(input_ids)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


ARCHITECTURE = Architecture(
    name="gla",
    title="Gated Linear Attention",
    package=__name__,
    model_type="hfzoo_gla",
    config="configuration_gla.GLAConfig",
    models={"AutoModel": "modeling_gla.GLAModel", "AutoModelForCausalLM": "modeling_gla.GLAForCausalLM",
            "AutoModelForSequenceClassification": "modeling_gla.GLAForSequenceClassification"},
    summary="Linear-time language model: a decaying matrix state with data-dependent gates instead of softmax attention.",
    paper="https://arxiv.org/abs/2312.06635",
    tiny_config=tiny_config,
    example_inputs=example_inputs,
    checkpoint="tiny-gla",
    kernel_ops=("gla", "rmsnorm", "softmax_ce"),
    demo="gla_demo",
    converters=("fla_gla",),
    card_template="gla.md",
    pipeline_tag="text-generation",
    supports_packing=True,
    lora_target_modules=("q_proj", "k_proj", "v_proj", "g_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
)

__getattr__ = lazy_exports(__name__, {
    "GLACache": "cache_gla", "GLAConfig": "configuration_gla", "GLAModel": "modeling_gla",
    "GLAForCausalLM": "modeling_gla", "GLAForSequenceClassification": "modeling_gla",
})

__all__ = ["ARCHITECTURE", "GLACache", "GLAConfig", "GLAModel", "GLAForCausalLM", "GLAForSequenceClassification"]
