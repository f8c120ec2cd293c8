"""What the gallery accepts from a visitor, checked before any model runs, with a message they can act on.

Every failure is a ``gr.Error`` (shown in the page as a red toast with the message), never Gradio's generic
"the upstream app has raised an exception": no image, a file that is not an image, an upload or picture
that is too large, an empty or too long prompt. The tabs' plain functions raise ``ValueError`` (so tests and
Python users get ordinary exceptions); ``as_gradio_errors`` turns those into ``gr.Error`` at the event.
"""

from __future__ import annotations

import functools
import inspect
import os

import gradio as gr

MAX_UPLOAD_BYTES = 10 * 2**20       # per uploaded picture
MAX_IMAGE_PIXELS = 4096 * 4096      # decoded size of a picture
MAX_PROMPT_CHARS = 2000             # prompts and texts typed into a tab


def checked_image(**kwargs) -> gr.Image:
    """A ``gr.Image`` whose upload is checked: a file that is not an image, or one that is too large, gets a clear
    ``gr.Error`` instead of a failure inside Gradio's decoding. (The check wraps this one component's
    ``preprocess``; a subclass would make Gradio write a type-stub file into the package.)"""
    image = gr.Image(**kwargs)
    decode = image.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        name = getattr(payload, "orig_name", None) or os.path.basename(getattr(payload, "path", "") or "") or "upload"
        path = getattr(payload, "path", None)
        if path and os.path.isfile(path) and os.path.getsize(path) > MAX_UPLOAD_BYTES:
            raise gr.Error(f"{name} is {os.path.getsize(path) / 2**20:.1f} MB; this demo takes pictures up to "
                           f"{MAX_UPLOAD_BYTES // 2**20} MB")
        try:
            value = decode(payload)
        except gr.Error:
            raise
        except Exception as e:   # PIL.UnidentifiedImageError, truncated files, decompression bombs
            raise gr.Error(f"{name} is not an image this demo can read (PNG, JPEG, WebP, ...): "
                           f"{type(e).__name__}") from e
        check_image_size(value, name)
        return value

    image.preprocess = preprocess
    return image


def check_image_size(image, name: str = "the picture") -> None:
    shape = getattr(image, "shape", None)
    pixels = shape[0] * shape[1] if shape is not None and len(shape) >= 2 else None
    if pixels is None and hasattr(image, "size") and isinstance(image.size, tuple):
        pixels = image.size[0] * image.size[1]
    if pixels is not None and pixels > MAX_IMAGE_PIXELS:
        raise gr.Error(f"{name} has {pixels:,} pixels; this demo takes pictures up to {MAX_IMAGE_PIXELS:,} "
                       "(4096 x 4096)")


def check_text(text, what: str = "prompt", max_chars: int = MAX_PROMPT_CHARS) -> str:
    """The visitor's text, or a ``gr.Error`` when it is empty or longer than ``max_chars``."""
    text = text or ""
    if not text.strip():
        raise gr.Error(f"the {what} is empty: type some text first")
    if len(text) > max_chars:
        raise gr.Error(f"the {what} has {len(text):,} characters; this demo takes at most {max_chars:,}")
    return text


def as_gradio_errors(fn):
    """Wrap an event handler: the ``ValueError``s of the tab's plain functions reach the page as ``gr.Error``."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except ValueError as e:
                raise gr.Error(str(e)) from e
        return generator

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise gr.Error(str(e)) from e
    return handler
