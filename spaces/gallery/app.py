"""The hfzoo gallery Space: one tab per architecture, each running a small model shipped with hfzoo."""

from hfzoo.gallery import build_gallery

demo = build_gallery()

if __name__ == "__main__":
    demo.queue().launch()
