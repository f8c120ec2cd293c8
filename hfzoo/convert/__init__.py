"""Converters from original research checkpoint formats to hfzoo folders.

Each converter module defines ``SOURCE`` (the name used by ``hfzoo convert SOURCE ...``), ``DESCRIPTION``
(one line), ``add_arguments(parser)`` (its extra CLI options, may be empty) and
``convert(source, output, *, overwrite=False, **options) -> Path`` which writes a loadable hfzoo folder
atomically (``hfzoo.hub.atomic.atomic_directory``) and raises ``ValueError`` with the offending keys when a
checkpoint does not match the expected format.
"""

from __future__ import annotations

import importlib

# module name under hfzoo.convert, in the order `hfzoo convert --help` lists them
_MODULES: tuple[str, ...] = ("fla_gla", "timm_kat", "mosaicml_bert", "simvq_ckpt", "mom_gla")


def converters() -> dict:
    """SOURCE name -> converter module."""
    out = {}
    for name in _MODULES:
        mod = importlib.import_module(f"{__name__}.{name}")
        out[mod.SOURCE] = mod
    return out
