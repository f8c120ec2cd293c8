"""Every architecture hfzoo ships, and their registration with the transformers Auto classes."""

from __future__ import annotations

import importlib

from ..registry import Architecture

# Packages under hfzoo/models, each defining ARCHITECTURE in its __init__.
_PACKAGES: tuple[str, ...] = ("gla", "simvq", "mosaicbert", "kat", "mom")

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


def register_all() -> None:
    """Register every config, model and processor with the transformers Auto classes (idempotent)."""
    import transformers

    for arch in ARCHITECTURES.values():
        transformers.AutoConfig.register(arch.model_type, arch.config_class, exist_ok=True)
        for auto_name, cls in {**arch.auto_models}.items():
            getattr(transformers, auto_name).register(arch.config_class, cls, exist_ok=True)
        for auto_name, cls in arch.processors.items():
            auto = getattr(transformers, auto_name)
            try:
                if auto_name == "AutoImageProcessor":
                    auto.register(arch.config_class, slow_image_processor_class=cls, exist_ok=True)
                else:
                    auto.register(arch.config_class, cls, exist_ok=True)
            except ImportError:
                # Some transformers 5.x releases make AutoImageProcessor a placeholder that needs torchvision;
                # there the Auto class cannot be used at all, and our processors still work when imported.
                continue
