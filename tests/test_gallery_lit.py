"""The LiT gallery tab: sampling digits with the shipped tiny checkpoint."""

import numpy as np
import pytest

from hfzoo.gallery import lit_demo


def _digits_classifier():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from sklearn.linear_model import LogisticRegression
    from train_tiny_lit import load_digits_split

    x_tr, _, y_tr, _ = load_digits_split(0)
    return LogisticRegression(max_iter=2000).fit(x_tr.reshape(len(x_tr), 64), y_tr)


def test_samples_are_the_requested_digits():
    grid, images = lit_demo.sample_grid([0, 3, 7, 9], per_digit=3, guidance_scale=2.0, steps=25, seed=1, scale=4)
    assert grid.shape == (4 * 8 * 4, 3 * 8 * 4) and grid.dtype == np.uint8
    assert images.shape == (12, 8, 8) and images.min() >= 0 and images.max() <= 1
    predicted = _digits_classifier().predict(images.reshape(12, 64) * 2 - 1)
    # the shipped checkpoint's samples were recognized as the requested class 98% of the time (200 samples)
    assert (predicted == np.repeat([0, 3, 7, 9], 3)).mean() >= 0.75, predicted


def test_seed_and_bad_choices():
    a = lit_demo.sample_grid([5], per_digit=2, steps=5, seed=3)[1]
    b = lit_demo.sample_grid([5], per_digit=2, steps=5, seed=3)[1]
    c = lit_demo.sample_grid([5], per_digit=2, steps=5, seed=4)[1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="at least one digit"):
        lit_demo.sample_grid([])
    with pytest.raises(ValueError, match="0-9"):
        lit_demo.sample_grid([12])
    with pytest.raises(ValueError, match="images in all"):
        lit_demo.sample_grid(list(range(10)), per_digit=5)
    with pytest.raises(ValueError, match="scheduler"):
        lit_demo.sample_grid([1], scheduler="euler")


def test_tab_builds():
    gr = pytest.importorskip("gradio")
    with gr.Blocks():
        lit_demo.build_tab()
