"""LiT (linear diffusion transformer): DiT with ReLU linear attention + depthwise conv, few heads."""

from __future__ import annotations

from ...registry import Architecture, lazy_exports


def _tiny_config():
    from .configuration_lit import LiTConfig

    return LiTConfig(sample_size=8, patch_size=2, in_channels=1, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, num_classes=10, conv_kernel_size=5)


def _example_inputs(config) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    B = 2
    inputs = {"sample": torch.randn(B, config.in_channels, config.sample_size, config.sample_size, generator=g),
              "timestep": torch.randint(0, 1000, (B,), generator=g)}
    if config.num_classes > 0:
        inputs["class_labels"] = torch.randint(0, config.num_classes + 1, (B,), generator=g)
    return inputs


ARCHITECTURE = Architecture(
    name="lit",
    title="LiT (Linear Diffusion Transformer)",
    package=__name__,
    model_type="hfzoo_lit",
    config="configuration_lit.LiTConfig",
    models={"AutoModel": "modeling_lit.LiTModel"},
    summary="Class-conditional diffusion transformer (DiT design) with ReLU linear attention + 5x5 depthwise conv "
            "on V, few heads, and a fused Triton linear-attention kernel.",
    paper="https://arxiv.org/abs/2501.12976",
    tiny_config=_tiny_config,
    example_inputs=_example_inputs,
    checkpoint="tiny-lit",
    kernel_ops=("linear_attention",),
    demo="lit_demo",
    converters=("dit_lit",),
    card_template="lit.md",
    pipeline_tag="unconditional-image-generation",
    lora_target_modules=("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
)

__getattr__ = lazy_exports(__name__, {
    "LIT_PRESETS": "configuration_lit", "LIT_SIZES": "configuration_lit", "LiTConfig": "configuration_lit",
    "LiTModel": "modeling_lit", "LiTPipeline": "pipeline_lit",
})

__all__ = ["ARCHITECTURE", "LIT_PRESETS", "LIT_SIZES", "LiTConfig", "LiTModel", "LiTPipeline"]
