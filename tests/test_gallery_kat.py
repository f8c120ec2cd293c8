"""The KAT gallery tab: digit preprocessing, classification with the shipped tiny checkpoint, served over HTTP."""

import numpy as np
import pytest
from PIL import Image
from spaces_harness import serve

from hfzoo.gallery import kat_demo


def _held_out(n=20):
    """Test-split digits (never trained on), as 8x8 uint8 arrays and labels."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from train_tiny_kat import load_digits_split

    _, x_te, _, y_te = load_digits_split()
    return x_te[:n], y_te[:n]


def _as_drawing(digit8, size=96, transparent=False):
    """Dark ink on white (or opaque ink on a transparent canvas), upscaled and off-center, like a user's input."""
    big = np.kron(digit8, np.ones((size // 16, size // 16), np.uint8))   # 48x48 glyph
    canvas = np.zeros((size, size), np.uint8)
    canvas[10:10 + big.shape[0], 30:30 + big.shape[1]] = big
    if transparent:
        rgba = np.zeros((size, size, 4), np.uint8)
        rgba[..., 3] = canvas
        return {"background": None, "layers": [rgba], "composite": rgba}
    return np.stack([255 - canvas] * 3, -1)


def test_to_digit_recovers_the_8x8_form():
    digits, _ = _held_out(10)
    corr = []
    for d in digits:
        for drawing in (_as_drawing(d), _as_drawing(d, transparent=True)):
            out = kat_demo.to_digit(drawing)
            assert out.shape == (8, 8) and out.dtype == np.uint8 and out.max() == 255
            corr.append(np.corrcoef(out.ravel().astype(float), d.ravel().astype(float))[0, 1])
    assert np.median(corr) > 0.8, corr     # an upscaled, shifted, inverted digit comes back as itself
    with pytest.raises(ValueError, match="empty"):
        kat_demo.to_digit(np.full((32, 32, 3), 255, np.uint8))
    with pytest.raises(ValueError, match="no image"):
        kat_demo.classify_inputs(None, None)


def test_classifies_held_out_digits_drawn_as_pictures():
    digits, labels = _held_out(20)
    correct = 0
    for d, y in zip(digits, labels):
        top = kat_demo.classify(_as_drawing(d))
        assert len(top) == 5 and 0 < sum(top.values()) <= 1 + 1e-6
        assert list(top.values()) == sorted(top.values(), reverse=True)
        correct += next(iter(top)) == str(y)
    assert correct >= 15, correct     # the model scores ~95% on the native 8x8 test split


def test_tab_serves_kat_classify(tmp_path):
    import gradio as gr
    from gradio_client import handle_file

    digits, labels = _held_out(1)
    path = tmp_path / "digit.png"
    Image.fromarray(_as_drawing(digits[0])).save(path)
    with gr.Blocks() as demo:
        kat_demo.build_tab()
    with serve(demo) as client:
        label, seen = client.predict(handle_file(str(path)), None, api_name="/kat_classify")
    expected = kat_demo.classify(_as_drawing(digits[0]))
    assert label["label"] == next(iter(expected))
    assert {c["label"] for c in label["confidences"]} == set(expected)
    assert seen
