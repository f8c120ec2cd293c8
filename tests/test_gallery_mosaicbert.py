"""The MosaicBERT gallery tab: fill-mask with the shipped tiny checkpoint, as plain functions and over HTTP."""

import pytest
from spaces_harness import serve

from hfzoo.gallery import mosaicbert_demo


def test_fill_mask_gives_top_k_candidates_per_mask():
    filled, rows = mosaicbert_demo.fill_mask("the [MASK] statement is used to [MASK] over a sequence.", top_k=4)
    assert len(rows) == 8
    assert [r[0] for r in rows] == [1] * 4 + [2] * 4 and [r[1] for r in rows] == [1, 2, 3, 4] * 2
    for m in (1, 2):
        probs = [r[3] for r in rows if r[0] == m]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert "[MASK]" not in filled and filled.startswith("the ")
    # the model learned something: for the reference text the best guesses beat uniform guessing by far
    assert rows[0][3] > 20 / len(mosaicbert_demo.load()[0])


def test_fill_mask_bad_input():
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        mosaicbert_demo.fill_mask("no mask here")
    with pytest.raises(ValueError, match="at most 512"):
        mosaicbert_demo.fill_mask("word " * 600 + "[MASK]")
    _, rows = mosaicbert_demo.fill_mask("a [MASK]", top_k=1000)
    assert len(rows) == mosaicbert_demo.MAX_TOP_K


def test_tab_serves_mosaicbert_fill_mask():
    import gradio as gr

    with gr.Blocks() as demo:
        mosaicbert_demo.build_tab()
    text = "an exception is [MASK] when an error is detected."
    with serve(demo) as client:
        filled, table = client.predict(text, 3, api_name="/mosaicbert_fill_mask")
    expected_filled, expected_rows = mosaicbert_demo.fill_mask(text, 3)
    assert filled == expected_filled
    assert [row[2] for row in table["data"]] == [row[2] for row in expected_rows]
