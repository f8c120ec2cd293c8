"""The gallery Space starts, has a tab per architecture, and exposes every demo's endpoints."""

import runpy
from pathlib import Path

import pytest
from spaces_harness import serve

from hfzoo.gallery import build_gallery, demos
from hfzoo.models import ARCHITECTURES

ROOT = Path(__file__).resolve().parent.parent


def _tab_labels(demo):
    import gradio as gr

    return [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]


def test_gallery_has_a_tab_per_architecture():
    demo = build_gallery()
    labels = _tab_labels(demo)
    for arch in ARCHITECTURES.values():
        assert arch.title in labels


def test_gallery_serves_every_demo_endpoint():
    with serve(build_gallery()) as client:
        endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert demos()   # every demo named by the registry has endpoints
    for name in demos():
        assert any(e.startswith(f"/{name}_") for e in endpoints), (name, sorted(endpoints))


def test_space_app_builds_the_gallery():
    """spaces/gallery/app.py is what the Space runs: it must build without launching."""
    ns = runpy.run_path(str(ROOT / "spaces" / "gallery" / "app.py"), run_name="space_app")
    assert _tab_labels(ns["demo"]) == _tab_labels(build_gallery())
    header = (ROOT / "spaces" / "gallery" / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in header and "app_file: app.py" in header


def test_bad_input_gets_a_clear_message_in_every_tab(tmp_path):
    """Over HTTP, as a visitor's browser: each bad input gets its own message, not Gradio's generic error."""
    import numpy as np
    from gradio_client import handle_file
    from PIL import Image

    from hfzoo.gallery import user_input

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a picture")
    huge = tmp_path / "huge.png"
    Image.fromarray(np.zeros((4200, 4200), np.uint8)).save(huge)
    cases = [
        ("/gla_generate", ("", 0.0, 0.9, 4), "prompt is empty"),
        ("/gla_generate", ("x" * (user_input.MAX_PROMPT_CHARS + 1), 0.0, 0.9, 4), "at most 2,000"),
        ("/mosaicbert_fill_mask", ("a sentence with no mask token.", 5), "put at least one [MASK]"),
        ("/mosaicbert_fill_mask", ("   ", 5), "text is empty"),
        ("/kat_classify", (None, None), "no image"),
        ("/kat_classify", (handle_file(str(not_an_image)), None), "notes.png is not an image"),
        ("/kat_classify", (handle_file(str(huge)), None), "pixels"),
        ("/simvq_reconstruct", (None,), "no image"),
        ("/simvq_reconstruct", (handle_file(str(not_an_image)),), "notes.png is not an image"),
    ]
    with serve(build_gallery()) as client:
        for endpoint, args, message in cases:
            with pytest.raises(Exception) as e:
                client.predict(*args, api_name=endpoint)
            assert message in str(e.value), (endpoint, message, str(e.value))
            assert "upstream" not in str(e.value).lower()
