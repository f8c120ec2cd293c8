"""The hfzoo gallery Space: one tab per architecture, each running a small model shipped with hfzoo."""

from hfzoo.gallery import build_gallery
from hfzoo.gallery.user_input import MAX_UPLOAD_BYTES

demo = build_gallery()

if __name__ == "__main__":
    demo.queue().launch(max_file_size=MAX_UPLOAD_BYTES)
