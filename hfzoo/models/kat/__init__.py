"""KAT (Kolmogorov-Arnold Transformer): a ViT with group-rational KAN MLPs."""

import torch

from ...registry import Architecture
from .configuration_kat import KAT_PRESETS, KATConfig
from .image_processing_kat import KATImageProcessor
from .modeling_kat import KATForImageClassification, KATModel


def _tiny_config() -> KATConfig:
    return KATConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, rational_groups=4, num_labels=10)


def _example_inputs(config: KATConfig) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(2, config.num_channels, config.image_size, config.image_size, generator=g)}


ARCHITECTURE = Architecture(
    name="kat",
    title="KAT (Kolmogorov-Arnold Transformer)",
    config_class=KATConfig,
    auto_models={"AutoModel": KATModel, "AutoModelForImageClassification": KATForImageClassification},
    summary="Vision Transformer whose MLPs are group-rational KAN layers (GR-KAN), with a Triton rational kernel.",
    paper="https://arxiv.org/abs/2409.10594",
    processors={"AutoImageProcessor": KATImageProcessor},
    tiny_config=_tiny_config,
    example_inputs=_example_inputs,
    checkpoint="tiny-kat",
    lora_target_modules=("qkv", "proj", "fc1", "fc2"),
)

__all__ = ["ARCHITECTURE", "KAT_PRESETS", "KATConfig", "KATForImageClassification", "KATImageProcessor",
           "KATModel"]
