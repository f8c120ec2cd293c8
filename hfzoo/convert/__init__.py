"""Converters from original research checkpoint formats to hfzoo folders.

Each converter module defines ``SOURCE`` (the name used by ``hfzoo convert SOURCE ...``), ``DESCRIPTION``
(one line), ``add_arguments(parser)`` (its extra CLI options, may be empty) and
``convert(source, output, *, overwrite=False, <its options>) -> Path`` which writes a loadable hfzoo folder
atomically (``hfzoo.hub.atomic.atomic_directory``), takes no option it does not declare, and raises
``ValueError`` naming the file and the offending keys when a checkpoint does not match the expected format.
Each architecture's registry entry lists its converter modules (``Architecture.converters``).
"""

from __future__ import annotations

import importlib


def converter_modules() -> dict[str, str]:
    """Converter module name -> architecture name, from the registry, in registry order."""
    from ..models import ARCHITECTURES

    return {module: arch.name for arch in ARCHITECTURES.values() for module in arch.converters}


def converters() -> dict:
    """SOURCE name -> converter module."""
    out = {}
    for name in converter_modules():
        mod = importlib.import_module(f"{__name__}.{name}")
        out[mod.SOURCE] = mod
    return out
