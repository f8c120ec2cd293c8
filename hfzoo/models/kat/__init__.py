"""KAT (Kolmogorov-Arnold Transformer): a ViT with group-rational KAN MLPs."""

from __future__ import annotations

from ...registry import Architecture, lazy_exports


def _tiny_config():
    from .configuration_kat import KATConfig

    return KATConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, rational_groups=4, num_labels=10)


def _example_inputs(config) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(2, config.num_channels, config.image_size, config.image_size, generator=g)}


ARCHITECTURE = Architecture(
    name="kat",
    title="KAT (Kolmogorov-Arnold Transformer)",
    package=__name__,
    model_type="hfzoo_kat",
    config="configuration_kat.KATConfig",
    models={"AutoModel": "modeling_kat.KATModel",
            "AutoModelForImageClassification": "modeling_kat.KATForImageClassification"},
    summary="Vision Transformer whose MLPs are group-rational KAN layers (GR-KAN), with a Triton rational kernel.",
    paper="https://arxiv.org/abs/2409.10594",
    processor_classes={"AutoImageProcessor": "image_processing_kat.KATImageProcessor"},
    tiny_config=_tiny_config,
    example_inputs=_example_inputs,
    checkpoint="tiny-kat",
    kernel_ops=("group_rational",),
    demo="kat_demo",
    converters=("timm_kat",),
    card_template="kat.md",
    pipeline_tag="image-classification",
    lora_target_modules=("qkv", "proj", "fc1", "fc2"),
)

__getattr__ = lazy_exports(__name__, {
    "KAT_PRESETS": "configuration_kat", "KATConfig": "configuration_kat", "KATImageProcessor": "image_processing_kat",
    "KATModel": "modeling_kat", "KATForImageClassification": "modeling_kat",
})

__all__ = ["ARCHITECTURE", "KAT_PRESETS", "KATConfig", "KATForImageClassification", "KATImageProcessor",
           "KATModel"]
