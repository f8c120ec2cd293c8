"""Configuration of SimVQ: a convolutional VQ tokenizer whose codebook is a frozen random matrix seen through
one learnable linear layer (Zhu et al., "Addressing Representation Collapse in Vector Quantized Models with
One Linear Layer", arXiv:2411.02038)."""

from __future__ import annotations

from transformers import PreTrainedConfig


class SimVQConfig(PreTrainedConfig):
    r"""
    Args:
        spatial_dims: 2 for images (``[B, C, H, W]``, Conv2d), 1 for sequences such as audio features
            (``[B, C, T]``, Conv1d). Everything else is shared.
        in_channels / out_channels: channels of the input and of the reconstruction (3 for RGB).
        ch: base width of the encoder/decoder; level ``i`` has ``ch * ch_mult[i]`` channels.
        ch_mult: width multipliers, one per resolution level; the encoder downsamples by 2 between levels,
            so tokens are ``2 ** (len(ch_mult) - 1)`` times coarser than pixels in each spatial dimension.
        num_res_blocks: residual blocks per level (and in the middle).
        z_channels: channels of the latent, which is also the code dimension (there are no quant convs).
        codebook_size: number of codes ``K``.
        beta: weight of the commitment term ``beta * ||sg(z_q) - z||^2``; the codebook term
            ``||z_q - sg(z)||^2`` has weight 1 (the reference's ``legacy=False``, used by all its configs).
        legacy_loss: swap the two weights, as the reference's ``legacy=True`` default does.
        norm_num_groups: groups of every GroupNorm (the reference uses 32).
        resolution: nominal input size the model was trained at (informational; any multiple of the
            downsampling factor works).
        initializer_range: kept for transformers' generic utilities; convolutions use PyTorch's default init.
    """

    model_type = "hfzoo_simvq"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 3,
        ch: int = 128,
        ch_mult=(1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 128,
        codebook_size: int = 1024,
        beta: float = 0.25,
        legacy_loss: bool = False,
        norm_num_groups: int = 32,
        resolution: int = 128,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        if spatial_dims not in (1, 2):
            raise ValueError(f"SimVQConfig: spatial_dims must be 1 (sequences) or 2 (images), got {spatial_dims}")
        ch_mult = [int(m) for m in ch_mult]
        if not ch_mult or min(ch_mult) < 1:
            raise ValueError(f"SimVQConfig: ch_mult must be a non-empty list of positive ints, got {ch_mult}")
        for name, value in (("ch", ch), ("z_channels", z_channels), ("codebook_size", codebook_size),
                            ("num_res_blocks", num_res_blocks), ("in_channels", in_channels),
                            ("out_channels", out_channels), ("norm_num_groups", norm_num_groups)):
            if int(value) < 1:
                raise ValueError(f"SimVQConfig: {name} must be a positive int, got {value}")
        for m in ch_mult:
            if (ch * m) % norm_num_groups:
                raise ValueError(f"SimVQConfig: every level width ch * ch_mult[i] must be divisible by norm_num_groups "
                                 f"({norm_num_groups}); ch={ch}, ch_mult={ch_mult}")
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.ch = int(ch)
        self.ch_mult = ch_mult
        self.num_res_blocks = int(num_res_blocks)
        self.z_channels = int(z_channels)
        self.codebook_size = int(codebook_size)
        self.beta = float(beta)
        self.legacy_loss = bool(legacy_loss)
        self.norm_num_groups = int(norm_num_groups)
        self.resolution = int(resolution)
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def code_dim(self) -> int:
        return self.z_channels
