"""One rule for turning what users pass as an image into a PIL image (used by every image processor).

Accepted: a PIL image; a numpy array or torch tensor laid out ``H x W``, ``H x W x C`` or ``C x H x W``
(C in 1, 3, 4). Values: ``uint8`` is taken as 0-255; floating-point arrays whose values all lie in [0, 1] are
scaled by 255; any other numbers are read as 0-255 and clipped. Nothing else is accepted.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_pil_image(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if hasattr(image, "detach"):  # a torch tensor (torch is not imported here)
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"images: expected PIL images, numpy arrays or tensors, got {type(image).__name__}")
    arr = image
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)                      # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"images: expected an HxW, HxWxC or CxHxW array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.asarray(arr, dtype=np.float64)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0 and np.issubdtype(image.dtype, np.floating):
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


__all__ = ["to_pil_image"]
