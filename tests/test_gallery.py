"""The gallery Space starts, has a tab per architecture, and exposes every demo's endpoints."""

import runpy
from pathlib import Path

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
