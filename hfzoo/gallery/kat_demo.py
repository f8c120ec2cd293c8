"""Gallery tab: draw or upload a digit; the tiny KAT trained on scikit-learn's 8x8 digits names it (top 5).

The model only knows sklearn's digits: light strokes on a dark 8x8 grid, centered, spanning its height. So an
input is first turned into that form (``to_digit``): ink found (alpha of a transparent sketch, else the
pixels that differ from the background), cropped to its bounding box, padded to a centered square,
area-averaged to 8x8 and stretched to the full 0-255 range. The logic is in plain functions that tests call;
``build_tab`` only lays out components.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..registry import checkpoint_path

CHECKPOINT = checkpoint_path("tiny-kat")
MARGIN = 0.0    # blank fraction per side: sklearn digits span all 8 rows (and ~5.4 of 8 columns)


@functools.lru_cache(maxsize=1)
def load():
    """The image processor and model of the shipped checkpoint (loaded on first use)."""
    from ..models.kat.image_processing_kat import KATImageProcessor
    from ..models.kat.modeling_kat import KATForImageClassification

    if not (CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(f"the tiny KAT checkpoint is missing at {CHECKPOINT} "
                                "(train it with scripts/train_tiny_kat.py)")
    return KATImageProcessor.from_pretrained(CHECKPOINT), KATForImageClassification.from_pretrained(CHECKPOINT).eval()


def _ink(image) -> np.ndarray:
    """A float map in [0, 1] of where the strokes are, from a sketch dict, PIL image or array."""
    if isinstance(image, dict):                       # gr.Sketchpad / ImageEditor value
        image = image.get("composite") if image.get("composite") is not None else image.get("background")
    if image is None:
        raise ValueError("no image: draw a digit or upload a picture")
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        alpha = arr[..., 3].astype(np.float32) / 255.0
        if alpha.min() < 0.5 < alpha.max():           # transparent canvas: the strokes are the opaque part
            return alpha
        arr = arr[..., :3]
    gray = arr.astype(np.float32).mean(-1) if arr.ndim == 3 else arr.astype(np.float32)
    if gray.max() > 1.0:
        gray = gray / 255.0
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return np.abs(gray - np.median(border))            # distance from the background, dark or light


def to_digit(image) -> np.ndarray:
    """Any picture of one digit -> a uint8 8x8 image in sklearn-digits form (bright strokes on black)."""
    from PIL import Image

    ink = _ink(image)
    if ink.max() < 0.1:
        raise ValueError("the image looks empty: no strokes found")
    ys, xs = np.nonzero(ink > 0.25 * ink.max())
    crop = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    side = int(np.ceil(max(h, w) / (1 - 2 * MARGIN)))
    square = np.zeros((side, side), np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top:top + h, left:left + w] = crop
    small = np.asarray(Image.fromarray(square).resize((8, 8), resample=Image.Resampling.BOX), dtype=np.float32)
    return np.clip(np.round(small / max(small.max(), 1e-6) * 255), 0, 255).astype(np.uint8)


def classify(image, top: int = 5) -> dict[str, float]:
    """Probabilities of the ``top`` most likely digits for a picture (sketch dict, PIL image or array)."""
    processor, model = load()
    pixel_values = processor(to_digit(image), return_tensors="pt").pixel_values
    with torch.no_grad():
        probs = model(pixel_values=pixel_values).logits.softmax(-1)[0]
    values, indices = probs.topk(top)
    return {model.config.id2label[int(i)]: float(v) for v, i in zip(values, indices)}


def classify_inputs(upload, sketch):
    """The tab's event: prefer an uploaded picture, else the sketch; returns (top-5, the 8x8 the model sees)."""
    image = upload if upload is not None else sketch
    digit = to_digit(image)
    big = np.kron(digit, np.ones((16, 16), np.uint8))   # 128x128 preview, nearest-neighbour
    return classify(image), big


def sample_digit(index: int = 0) -> np.ndarray:
    """A held-out sklearn digit drawn as dark ink on white at 128x128, to try the tab without drawing."""
    from sklearn.datasets import load_digits

    d = load_digits()
    img = 255 - np.clip(d.images[int(index) % len(d.images)] * 16, 0, 255).astype(np.uint8)
    return np.kron(img, np.ones((16, 16), np.uint8))


def build_tab():
    import gradio as gr

    from .user_input import as_gradio_errors, checked_image

    gr.Markdown("**KAT** — a Vision Transformer whose MLPs are group-rational KAN layers, ~90K parameters, trained "
                "for a couple of minutes on a CPU on scikit-learn's 1,797 8×8 digits. Draw one digit (or upload "
                "a picture); it is cropped, centered and reduced to 8×8 like the training data.")
    with gr.Row():
        with gr.Column():
            sketch = gr.Sketchpad(label="Draw a digit", type="numpy")
            upload = checked_image(label="…or upload a picture", type="numpy")
            with gr.Row():
                button = gr.Button("Classify", variant="primary")
                sample = gr.Button("Load a digit from the dataset")
        with gr.Column():
            label = gr.Label(label="Prediction", num_top_classes=5)
            seen = gr.Image(label="What the model sees (8×8)", type="numpy", interactive=False)
    counter = gr.State(0)

    def on_sample(i):
        return sample_digit(1500 + i), i + 1

    sample.click(on_sample, inputs=counter, outputs=[upload, counter], api_name="kat_sample")
    button.click(as_gradio_errors(classify_inputs), inputs=[upload, sketch], outputs=[label, seen], api_name="kat_classify")
