"""Mixture-of-Memories (MoM) language model."""

from __future__ import annotations

from ...registry import Architecture, lazy_exports


def tiny_config():
    """A small MoM for tests: two layers, 3 memories, top-2, a shared memory, grouped-query heads."""
    from .configuration_mom import MoMConfig

    return MoMConfig(vocab_size=97, hidden_size=32, expand_k=0.5, expand_v=1.0, num_heads=2, num_kv_heads=1,
                     num_hidden_layers=2, intermediate_size=64, num_memories=3, topk=2, shared_mem=True,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2)


def example_inputs(config) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, config.vocab_size, (2, 7), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0     # a left-padded row
    return {"input_ids": input_ids, "attention_mask": attention_mask}


ARCHITECTURE = Architecture(
    name="mom",
    title="Mixture-of-Memories",
    package=__name__,
    model_type="hfzoo_mom",
    config="configuration_mom.MoMConfig",
    models={"AutoModel": "modeling_mom.MoMModel", "AutoModelForCausalLM": "modeling_mom.MoMForCausalLM"},
    summary="Linear-time language model whose layers route each token to a few of several gated-linear-attention "
            "memories (plus a shared one), so that different memories hold different parts of the text.",
    paper="https://arxiv.org/abs/2502.13685",
    tiny_config=tiny_config,
    example_inputs=example_inputs,
    checkpoint="tiny-mom",
    kernel_ops=("gla", "rmsnorm", "softmax_ce"),
    demo="mom_demo",
    converters=("mom_gla",),
    card_template="mom.md",
    pipeline_tag="text-generation",
    supports_packing=True,
    # per-memory key/value projections sit in ModuleLists (k_proj.0, ...), which a name suffix cannot pick alone
    lora_target_modules=("q_proj", "shared_k", "shared_v", "g_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
)

__getattr__ = lazy_exports(__name__, {
    "MoMCache": "modeling_mom", "MoMConfig": "configuration_mom", "MoMModel": "modeling_mom",
    "MoMForCausalLM": "modeling_mom",
})

__all__ = ["ARCHITECTURE", "MoMCache", "MoMConfig", "MoMForCausalLM", "MoMModel"]
