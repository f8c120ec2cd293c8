"""Gallery tab: an image goes through the tiny SimVQ tokenizer -- pixels -> a grid of code indices -> pixels.

The tab shows the input as the model sees it (resized and center-cropped to 128 px), the grid of tokens (one
colour per code index, 4x4 pixels per token) and the reconstruction decoded from those indices alone, with the
PSNR and how many distinct codes the image used. The logic is in plain functions that tests call; ``build_tab``
only lays out components.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..registry import checkpoint_path

CHECKPOINT = checkpoint_path("tiny-simvq")
SAMPLES = ("rocket", "astronaut", "coffee", "chelsea", "camera")  # rocket was held out of training


@functools.lru_cache(maxsize=1)
def load():
    """The image processor and model of the shipped checkpoint (loaded on first use)."""
    from ..models.simvq.image_processing_simvq import SimVQImageProcessor
    from ..models.simvq.modeling_simvq import SimVQModel

    if not (CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(f"the tiny SimVQ checkpoint is missing at {CHECKPOINT} "
                                "(train it with scripts/train_tiny_simvq.py)")
    return SimVQImageProcessor.from_pretrained(CHECKPOINT), SimVQModel.from_pretrained(CHECKPOINT).eval()


def token_colors(tokens: np.ndarray, codebook_size: int, cell: int) -> np.ndarray:
    """A ``[h, w]`` grid of code indices as an RGB image, one fixed colour per index, ``cell`` pixels per token."""
    golden = 0.6180339887498949
    hue = (tokens.astype(np.float64) * golden) % 1.0           # spreads neighbouring indices around the wheel
    light = 0.45 + 0.35 * (tokens.astype(np.float64) / max(codebook_size - 1, 1))
    rgb = np.stack([np.clip(np.abs((hue * 6 + s) % 6 - 3) - 1, 0, 1) for s in (0, 4, 2)], -1)
    rgb = (rgb - 0.5) * 0.8 + light[..., None]
    img = np.clip(rgb * 255, 0, 255).astype(np.uint8)
    return np.kron(img, np.ones((cell, cell, 1), np.uint8))


def reconstruct(image):
    """Picture (numpy array or PIL image) -> (model input, token grid picture, reconstruction, summary dict)."""
    if image is None:
        raise ValueError("no image: upload a picture or load a sample")
    processor, model = load()
    pixel_values = processor(image)["pixel_values"]
    with torch.no_grad():
        tokens = model.encode(pixel_values)
        rec = model.decode(tokens)
    seen, out = processor.postprocess(pixel_values)[0], processor.postprocess(rec)[0]
    mse = float(((rec.clamp(-1, 1) - pixel_values) ** 2).mean())
    grid = tokens[0].numpy()
    summary = {
        "tokens_shape": list(grid.shape),
        "distinct_codes": int(np.unique(grid).size),
        "codebook_size": model.config.codebook_size,
        "psnr_db": round(10 * math.log10(4.0 / max(mse, 1e-12)), 2),
        "bits": int(grid.size * math.ceil(math.log2(model.config.codebook_size))),
        "tokens": grid.tolist(),
    }
    return seen, token_colors(grid, model.config.codebook_size, model.config.downsample_factor), out, summary


def sample_image(name: str = "rocket") -> np.ndarray:
    """One of scikit-image's bundled photos as an RGB uint8 array."""
    import skimage.data

    if name not in SAMPLES:
        raise ValueError(f"sample must be one of {SAMPLES}, got {name!r}")
    img = getattr(skimage.data, name)()
    return np.stack([img] * 3, -1) if img.ndim == 2 else img


def build_tab():
    import gradio as gr

    from .user_input import as_gradio_errors, checked_image

    gr.Markdown("**SimVQ** — a VQ image tokenizer whose codebook is a frozen random matrix seen through one "
                "learned linear layer, so all 1,024 codes stay in use. Trained for a few minutes on a CPU on "
                "crops of four scikit-image photos (the rocket was held out). Upload a picture: it becomes a "
                "32×32 grid of code indices, and the image on the right is decoded from those indices alone.")
    with gr.Row():
        with gr.Column():
            upload = checked_image(label="Picture", type="numpy")
            with gr.Row():
                choice = gr.Dropdown(list(SAMPLES), value="rocket", label="Sample photo")
                sample = gr.Button("Load sample")
            button = gr.Button("Tokenize and reconstruct", variant="primary")
        with gr.Column():
            seen = gr.Image(label="Model input (128 px)", type="numpy", interactive=False)
            grid = gr.Image(label="Tokens (one colour per code)", type="numpy", interactive=False)
            rec = gr.Image(label="Decoded from the tokens", type="numpy", interactive=False)
    summary = gr.JSON(label="Tokens")
    sample.click(sample_image, inputs=choice, outputs=upload, api_name="simvq_sample")
    button.click(as_gradio_errors(reconstruct), inputs=upload, outputs=[seen, grid, rec, summary], api_name="simvq_reconstruct")
