"""Image processor for SimVQ: PIL/numpy only (no torchvision), images -> ``pixel_values`` in [-1, 1].

The reference trains on images scaled to [-1, 1] (``x / 127.5 - 1``); this processor resizes (shorter side to
``size`` then a center crop, or a plain resize with ``crop=False``), converts to RGB and rescales the same way.
``postprocess`` maps model outputs back to uint8 images.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from ...layers.image_inputs import to_pil_image
from ...utils.remote_code import StandaloneProcessorSaveMixin


class SimVQImageProcessor(StandaloneProcessorSaveMixin, BaseImageProcessor):
    r"""
    Args:
        size: output side length in pixels (square); must be a multiple of the model's downsampling factor.
        crop: resize the shorter side to ``size`` and center-crop (True), or resize to ``size x size`` (False).
        resample: PIL resampling filter (``PIL.Image.Resampling`` value; bicubic by default).
    """

    model_input_names = ["pixel_values"]

    def __init__(self, size: int = 128, crop: bool = True, resample: int = int(Image.Resampling.BICUBIC), **kwargs):
        super().__init__(**kwargs)
        if int(size) < 1:
            raise ValueError(f"size must be a positive int, got {size}")
        self.size = int(size)
        self.crop = bool(crop)
        self.resample = int(resample)

    def _resize(self, img: Image.Image, size: int) -> Image.Image:
        w, h = img.size
        if not self.crop:
            return img.resize((size, size), resample=self.resample)
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), resample=self.resample)
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))

    def preprocess(self, images, size: int | None = None, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """One image or a list -> ``BatchFeature(pixel_values=[B, 3, size, size])`` float32 in [-1, 1]."""
        size = int(size or self.size)
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("images: got an empty list")
        arrays = [np.asarray(self._resize(to_pil_image(im).convert("RGB"), size), dtype=np.float32) for im in images]
        batch = np.stack(arrays).transpose(0, 3, 1, 2) / 127.5 - 1.0
        data = {"pixel_values": torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))}
        if return_tensors in (None, "np"):
            data = {"pixel_values": data["pixel_values"].numpy()}
        return BatchFeature(data=data)

    def __call__(self, images, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def postprocess(self, pixel_values: torch.Tensor) -> list[np.ndarray]:
        """``[B, 3, H, W]`` in [-1, 1] -> list of ``H x W x 3`` uint8 arrays (values clipped)."""
        if pixel_values.dim() == 3:
            pixel_values = pixel_values[None]
        x = ((pixel_values.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return [img.permute(1, 2, 0).numpy() for img in x]


__all__ = ["SimVQImageProcessor"]
