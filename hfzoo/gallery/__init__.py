"""The gallery Space: one Gradio tab per architecture that has a demo.

A demo is a module ``hfzoo/gallery/<arch>_demo.py``, named by the architecture's registry entry
(``Architecture.demo``), that defines ``build_tab()``: it is called inside ``with gr.Tab(...)`` and lays out
components and events. Every event that does work carries
``api_name="<arch>_<verb>"`` so tests (and users) can call it through ``gradio_client``. Model loading is
lazy (first request), so the gallery starts fast. Architectures without a demo get an empty-state tab.
"""

from __future__ import annotations

import importlib


def demos() -> dict[str, str]:
    """Architecture name -> demo module under hfzoo.gallery, from the registry."""
    from ..models import ARCHITECTURES

    return {name: arch.demo for name, arch in ARCHITECTURES.items() if arch.demo}


def build_gallery():
    import gradio as gr

    from ..models import ARCHITECTURES

    with gr.Blocks(title="hfzoo gallery") as demo:
        gr.Markdown("# hfzoo gallery\nSmall models trained on data that ships with Python, scikit-learn "
                    "and scikit-image; every tab runs on a laptop CPU.")
        for name, arch in ARCHITECTURES.items():
            with gr.Tab(arch.title, id=name):
                if arch.demo:
                    importlib.import_module(f"{__name__}.{arch.demo}").build_tab()
                else:
                    gr.Markdown(f"**{arch.title}** ({arch.model_type}): {arch.summary}\n\n"
                                "No demo for this architecture yet.")
    return demo
