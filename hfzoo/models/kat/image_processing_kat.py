"""Image processor of KAT: resize the short side, center-crop, scale to [0, 1], normalize. PIL + numpy only.

Defaults reproduce the released models' evaluation transform (timm: bicubic resize to 224 / 0.875 = 256,
center crop 224, ImageNet mean/std). ``image_mode="L"`` gives one grayscale channel (the tiny digits model; mean/std default to 0.5).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from ...layers.image_inputs import to_pil_image
from ...utils.remote_code import StandaloneProcessorSaveMixin

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class KATImageProcessor(StandaloneProcessorSaveMixin, BaseImageProcessor):
    model_input_names = ["pixel_values"]

    def __init__(self, image_mode: str = "RGB", do_resize: bool = True, size: int = 256, resample: int = 3,
                 do_center_crop: bool = True, crop_size: int = 224, do_rescale: bool = True,
                 rescale_factor: float = 1 / 255, do_normalize: bool = True, image_mean=None, image_std=None,
                 **kwargs):
        super().__init__(**kwargs)
        if image_mode not in ("RGB", "L"):
            raise ValueError(f"KATImageProcessor: image_mode must be 'RGB' or 'L', got {image_mode!r}")
        self.image_mode = image_mode
        self.do_resize = do_resize
        self.size = int(size)
        self.resample = int(resample)
        self.do_center_crop = do_center_crop
        self.crop_size = int(crop_size)
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        channels = 3 if image_mode == "RGB" else 1
        self.image_mean = list(image_mean if image_mean is not None else (IMAGENET_MEAN if channels == 3 else (0.5,)))
        self.image_std = list(image_std if image_std is not None else (IMAGENET_STD if channels == 3 else (0.5,)))
        for name, v in (("image_mean", self.image_mean), ("image_std", self.image_std)):
            if len(v) != channels:
                raise ValueError(f"KATImageProcessor: {name} needs {channels} values for image_mode "
                                 f"{image_mode!r}, got {len(v)}")

    def _one(self, image) -> np.ndarray:
        img = to_pil_image(image).convert(self.image_mode)
        if self.do_resize:
            w, h = img.size
            s = self.size / min(w, h)
            img = img.resize((max(1, round(w * s)), max(1, round(h * s))), resample=self.resample)
        if self.do_center_crop:
            w, h = img.size
            c = self.crop_size
            left, top = int(round((w - c) / 2.0)), int(round((h - c) / 2.0))
            img = img.crop((left, top, left + c, top + c))
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[..., None]
        if self.do_rescale:
            arr = arr * self.rescale_factor
        if self.do_normalize:
            arr = (arr - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return arr.transpose(2, 0, 1)                      # CHW

    def preprocess(self, images, return_tensors="pt", **kwargs) -> BatchFeature:
        """images: one image or a list (PIL, numpy or torch) -> ``{"pixel_values": [B, C, crop, crop]}``."""
        if isinstance(images, Image.Image) or (hasattr(images, "ndim") and images.ndim in (2, 3)):
            images = [images]
        if not isinstance(images, (list, tuple)) and hasattr(images, "ndim") and images.ndim == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError("images: expected an image or a non-empty list of images")
        pixel_values = np.stack([self._one(im) for im in images]).astype(np.float32)
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)
