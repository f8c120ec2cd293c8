"""The list of architectures hfzoo provides, as data.

Each architecture package (``hfzoo/models/<arch>/__init__.py``) defines one ``Architecture``; the CLI,
the exporter, the gallery and the tests iterate over ``ARCHITECTURES`` instead of naming models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class Architecture:
    name: str                                  # short name used on the command line: "gla"
    title: str                                 # human title: "Gated Linear Attention"
    config_class: type                         # PreTrainedConfig subclass with a prefixed model_type
    auto_models: dict[str, type]               # transformers Auto class name -> model class
    summary: str = ""                          # one line for `hfzoo list` and the gallery
    paper: str = ""                            # paper URL
    processors: dict[str, type] = field(default_factory=dict)   # e.g. {"AutoImageProcessor": cls}
    tiny_config: Callable[[], Any] | None = None                # a small config for tests and export checks
    example_inputs: Callable[[Any], dict] | None = None         # config -> forward kwargs (CPU tensors)
    checkpoint: str | None = None              # name of the small trained checkpoint shipped in hfzoo/checkpoints
    # default LoRA/PiSSA targets (module-name suffixes as in peft's ``target_modules``), registered with peft
    # by ``hfzoo.peft`` so ``LoraConfig()`` without ``target_modules`` works on this architecture
    lora_target_modules: tuple[str, ...] = ()

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def main_model(self) -> type:
        """The task model exported by default: the first non-base model, else the base model."""
        for auto, cls in self.auto_models.items():
            if auto != "AutoModel":
                return cls
        return self.auto_models["AutoModel"]


def checkpoint_path(name: str) -> Path:
    """Folder of a small trained checkpoint shipped inside hfzoo (``tiny-gla``, ``tiny-kat``, ...)."""
    path = CHECKPOINT_DIR / name
    if not (path / "config.json").is_file():
        shipped = sorted(p.name for p in CHECKPOINT_DIR.iterdir() if (p / "config.json").is_file())
        raise ValueError(f"no shipped checkpoint named {name!r}; shipped: {', '.join(shipped)}")
    return path
