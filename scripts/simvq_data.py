"""Small real images for SimVQ's tiny checkpoint and the SimVQ-vs-VQ experiment: crops of the photos that ship
inside scikit-image (nothing is downloaded). Pixel values in [-1, 1], channels first.

Split: ``astronaut``, ``coffee``, ``chelsea`` and ``camera`` (grey, as RGB) are for training; ``rocket`` is held
out for evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "camera")
EVAL_PHOTOS = ("rocket",)


def load_photo(name: str, scale: float = 0.5) -> torch.Tensor:
    """One photo as ``[3, H, W]`` float32 in [-1, 1], downscaled by ``scale`` (bicubic, via PIL)."""
    import skimage.data
    from PIL import Image

    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(arr))


def grid_crops(photos, size: int, stride: int, scale: float = 0.5) -> torch.Tensor:
    """Every ``size x size`` crop on a ``stride`` grid of each photo: ``[N, 3, size, size]``."""
    out = []
    for name in photos:
        x = load_photo(name, scale)
        patches = x.unfold(1, size, stride).unfold(2, size, stride)  # [3, nh, nw, size, size]
        out.append(patches.permute(1, 2, 0, 3, 4).reshape(-1, 3, size, size))
    return torch.cat(out)


def random_crops(pool: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of crops from a grid pool with random horizontal flips."""
    idx = torch.randint(0, pool.shape[0], (batch,), generator=generator)
    x = pool[idx]
    flip = torch.rand(batch, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
