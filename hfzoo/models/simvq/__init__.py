"""SimVQ: vector-quantized image/sequence tokenizer with a linearly reparameterized codebook."""

from __future__ import annotations

from ...registry import Architecture, lazy_exports


def _tiny_config():
    from .configuration_simvq import SimVQConfig

    return SimVQConfig(ch=16, ch_mult=[1, 2], num_res_blocks=1, z_channels=16, codebook_size=64,
                       norm_num_groups=8, resolution=16)


def _example_inputs(config) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    side = 4 * config.downsample_factor
    shape = (2, config.in_channels) + (side,) * config.spatial_dims
    key = "pixel_values" if config.spatial_dims == 2 else "input_values"
    return {key: torch.rand(shape, generator=g) * 2 - 1}


ARCHITECTURE = Architecture(
    name="simvq",
    title="SimVQ",
    package=__name__,
    model_type="hfzoo_simvq",
    config="configuration_simvq.SimVQConfig",
    models={"AutoModel": "modeling_simvq.SimVQModel"},
    summary="VQ tokenizer whose codebook is a frozen random matrix through one learnable linear layer, "
            "so every code keeps being used",
    paper="https://arxiv.org/abs/2411.02038",
    processor_classes={"AutoImageProcessor": "image_processing_simvq.SimVQImageProcessor"},
    tiny_config=_tiny_config,
    example_inputs=_example_inputs,
    checkpoint="tiny-simvq",
    kernel_ops=("nearest_code",),
    demo="simvq_demo",
    converters=("simvq_ckpt",),
    card_template="simvq.md",
    pipeline_tag="image-feature-extraction",
    lora_target_modules=("embedding_proj",),
)

__getattr__ = lazy_exports(__name__, {
    "SimVQConfig": "configuration_simvq", "SimVQModel": "modeling_simvq", "SimVQModelOutput": "modeling_simvq",
    "SimVQQuantizer": "modeling_simvq", "codebook_utilization": "modeling_simvq", "depth_to_space": "modeling_simvq",
    "SimVQImageProcessor": "image_processing_simvq",
})

__all__ = ["ARCHITECTURE", "SimVQConfig", "SimVQModel", "SimVQModelOutput", "SimVQQuantizer",
           "SimVQImageProcessor", "codebook_utilization"]
