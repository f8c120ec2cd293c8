"""Run a Gradio app in-process and talk to it over HTTP with gradio_client, as a user's browser would.

    with serve(build_gallery()) as client:
        result = client.predict("hello", api_name="/gla_generate")
"""

from __future__ import annotations

import contextlib
import os
import socket

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(demo):
    """Launch ``demo`` (a gr.Blocks) on a free local port without blocking; yield a connected Client."""
    from gradio_client import Client

    demo.queue()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                ssr_mode=False)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()
