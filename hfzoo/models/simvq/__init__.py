"""SimVQ: vector-quantized image/sequence tokenizer with a linearly reparameterized codebook."""

from __future__ import annotations

import torch

from ...registry import Architecture
from .configuration_simvq import SimVQConfig
from .image_processing_simvq import SimVQImageProcessor
from .modeling_simvq import SimVQModel, SimVQModelOutput, SimVQQuantizer, codebook_utilization


def _tiny_config() -> SimVQConfig:
    return SimVQConfig(ch=16, ch_mult=[1, 2], num_res_blocks=1, z_channels=16, codebook_size=64,
                       norm_num_groups=8, resolution=16)


def _example_inputs(config: SimVQConfig) -> dict:
    g = torch.Generator().manual_seed(0)
    side = 4 * config.downsample_factor
    shape = (2, config.in_channels) + (side,) * config.spatial_dims
    key = "pixel_values" if config.spatial_dims == 2 else "input_values"
    return {key: torch.rand(shape, generator=g) * 2 - 1}


ARCHITECTURE = Architecture(
    name="simvq",
    title="SimVQ",
    config_class=SimVQConfig,
    auto_models={"AutoModel": SimVQModel},
    summary="VQ tokenizer whose codebook is a frozen random matrix through one learnable linear layer, "
            "so every code keeps being used",
    paper="https://arxiv.org/abs/2411.02038",
    processors={"AutoImageProcessor": SimVQImageProcessor},
    tiny_config=_tiny_config,
    example_inputs=_example_inputs,
    checkpoint="tiny-simvq",
    lora_target_modules=("embedding_proj",),
)

__all__ = ["ARCHITECTURE", "SimVQConfig", "SimVQModel", "SimVQModelOutput", "SimVQQuantizer",
           "SimVQImageProcessor", "codebook_utilization"]
