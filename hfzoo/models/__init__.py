"""Every architecture hfzoo ships, as registry entries (data only: reading them imports no model)."""

from __future__ import annotations

import importlib

from ..registry import Architecture, register_all

# Packages under hfzoo/models, each defining ARCHITECTURE in its __init__.
_PACKAGES: tuple[str, ...] = ("gla", "mom", "simvq", "mosaicbert", "kat", "lit")

ARCHITECTURES: dict[str, Architecture] = {}
for _pkg in _PACKAGES:
    _arch = importlib.import_module(f"{__name__}.{_pkg}").ARCHITECTURE
    ARCHITECTURES[_arch.name] = _arch


def get_architecture(name_or_model_type: str) -> Architecture:
    """Look an architecture up by its short name (``gla``) or its model_type (``hfzoo_gla``)."""
    for arch in ARCHITECTURES.values():
        if name_or_model_type in (arch.name, arch.model_type):
            return arch
    known = ", ".join(sorted(ARCHITECTURES))
    raise ValueError(f"unknown architecture {name_or_model_type!r}; known: {known}")


__all__ = ["ARCHITECTURES", "get_architecture", "register_all"]
