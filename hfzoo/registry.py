"""The list of architectures hfzoo provides, as data, and their registration with the transformers Auto classes.

Each architecture package (``hfzoo/models/<arch>/__init__.py``) defines one ``Architecture``; the CLI, the
exporter, the gallery, the cards, the converters and the tests iterate over ``ARCHITECTURES`` instead of naming
models. An entry names its classes as strings (``"modeling_gla.GLAForCausalLM"``, relative to its package), so
reading the registry imports neither torch nor any model; ``config_class``, ``auto_models`` and ``processors``
import what they return on first use.

Registration is lazy too (``register_all``): importing transformers' Auto modules costs about a second (they
import torch), so ``import hfzoo`` does not import them. It installs an import hook instead: when
``transformers.models.auto.configuration_auto`` (``modeling_auto``, ``image_processing_auto``) is imported -- or
at once, if it already was -- our configs (models, processors) are registered. Model classes are registered as
references that import the modeling module the first time an Auto class looks the config up, so
``AutoModelForCausalLM.from_pretrained(folder)`` imports GLA's modeling code and kernels only then.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


def _load(package: str, dotted: str):
    """``"modeling_gla.GLAModel"`` inside ``package`` -> the class (imports its module)."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(f"{package}.{module}"), name)


@dataclass(frozen=True)
class Architecture:
    name: str                                  # short name used on the command line: "gla"
    title: str                                 # human title: "Gated Linear Attention"
    package: str                               # the architecture's package: "hfzoo.models.gla"
    model_type: str                            # the config's model_type (prefixed): "hfzoo_gla"
    config: str                                # "configuration_gla.GLAConfig" (relative to package)
    models: dict[str, str]                     # transformers Auto class name -> "modeling_gla.GLAForCausalLM"
    summary: str = ""                          # one line for `hfzoo list` and the gallery
    paper: str = ""                            # paper URL
    processor_classes: dict[str, str] = field(default_factory=dict)  # {"AutoImageProcessor": "image_processing_kat.X"}
    tiny_config: Callable[[], Any] | None = None                # a small config for tests and export checks
    example_inputs: Callable[[Any], dict] | None = None         # config -> forward kwargs (CPU tensors)
    checkpoint: str | None = None              # name of the small trained checkpoint shipped in hfzoo/checkpoints
    kernel_ops: tuple[str, ...] = ()           # Triton op families the model runs (names of the compile harness)
    supports_packing: bool = False             # forward takes packed documents (cu_seqlens / position_ids restarts)
    demo: str | None = None                    # module under hfzoo.gallery: "gla_demo"
    converters: tuple[str, ...] = ()           # modules under hfzoo.convert: ("fla_gla",)
    card_template: str = ""                    # file under hfzoo/model_cards: "gla.md"
    pipeline_tag: str = ""                     # the Hub pipeline tag of main_model: "text-generation"
    lora_target_modules: tuple[str, ...] = ()  # module names LoRA adapts by default (peft: hfzoo.peft.targets)

    @property
    def config_class(self) -> type:
        """The ``PreTrainedConfig`` subclass (imports the configuration module)."""
        return _load(self.package, self.config)

    @property
    def auto_models(self) -> dict[str, type]:
        """transformers Auto class name -> model class (imports the modeling module)."""
        return {auto: _load(self.package, dotted) for auto, dotted in self.models.items()}

    @property
    def processors(self) -> dict[str, type]:
        """transformers Auto class name -> processor class (imports the processing module)."""
        return {auto: _load(self.package, dotted) for auto, dotted in self.processor_classes.items()}

    @property
    def main_model(self) -> type:
        """The task model exported by default: the first non-base model, else the base model."""
        for auto, dotted in self.models.items():
            if auto != "AutoModel":
                return _load(self.package, dotted)
        return _load(self.package, self.models["AutoModel"])

    def auto_class_of(self, model_class: type) -> str:
        """The Auto class name under which ``model_class`` is registered."""
        for auto, dotted in self.models.items():
            if dotted.rpartition(".")[2] == model_class.__name__:
                return auto
        raise ValueError(f"{model_class.__name__} is not a model of {self.name}")


def checkpoint_path(name: str) -> Path:
    """Folder of a small trained checkpoint shipped inside hfzoo (``tiny-gla``, ``tiny-kat``, ...)."""
    path = CHECKPOINT_DIR / name
    if not (path / "config.json").is_file():
        shipped = sorted(p.name for p in CHECKPOINT_DIR.iterdir() if (p / "config.json").is_file())
        raise ValueError(f"no shipped checkpoint named {name!r}; shipped: {', '.join(shipped)}")
    return path


def lazy_exports(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that imports ``names[attr]`` (a module of ``package``) on first use, so
    ``from hfzoo.models.gla import GLAForCausalLM`` works without the package importing its modules eagerly."""

    def __getattr__(attr: str):
        if attr not in names:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        return getattr(importlib.import_module(f"{package}.{names[attr]}"), attr)

    return __getattr__


# ---------------------------------------------------------------------------------------------------------------
# Registration with the transformers Auto classes


class _ClassRef:
    """A model class named but not imported yet (a value of an Auto mapping until first looked up)."""

    def __init__(self, arch: Architecture, dotted: str):
        self.arch, self.dotted = arch, dotted

    def load(self) -> type:
        return _load(self.arch.package, self.dotted)

    def __repr__(self):
        return f"<hfzoo class {self.arch.package}.{self.dotted}, imported on first use>"


class _ResolvingDict(dict):
    """The ``_extra_content`` of a transformers ``_LazyAutoMapping``, whose values may be ``_ClassRef``s: every
    read returns the class (importing it once and storing it in place)."""

    def _resolved(self, key):
        value = dict.__getitem__(self, key)
        if isinstance(value, _ClassRef):
            value = value.load()
            dict.__setitem__(self, key, value)
        return value

    def __getitem__(self, key):
        return self._resolved(key)

    def __iter__(self):
        # defining __iter__ makes dict(self) (transformers' __reduce__) read values through __getitem__
        return iter(list(dict.keys(self)))

    def get(self, key, default=None):
        return self._resolved(key) if key in self else default

    def values(self):
        return [self._resolved(k) for k in list(self.keys())]

    def items(self):
        return [(k, self._resolved(k)) for k in list(self.keys())]

    def pop(self, key, *default):
        if key in self:
            value = self._resolved(key)
            dict.__delitem__(self, key)
            return value
        return dict.pop(self, key, *default)

    def copy(self):
        return dict(self.items())


def _architectures():
    from .models import ARCHITECTURES

    return ARCHITECTURES.values()


def _register_configs(configuration_auto) -> None:
    for arch in _architectures():
        configuration_auto.CONFIG_MAPPING.register(arch.model_type, arch.config_class, exist_ok=True)


def _register_models(modeling_auto) -> None:
    for arch in _architectures():
        config_class = arch.config_class
        for auto_name, dotted in arch.models.items():
            mapping = getattr(modeling_auto, auto_name)._model_mapping
            extra = getattr(mapping, "_extra_content", None)
            if type(extra) is dict:
                mapping._extra_content = extra = _ResolvingDict(extra)
            if isinstance(extra, _ResolvingDict):
                extra[config_class] = _ClassRef(arch, dotted)
            else:  # a transformers whose mapping we do not know: register the class itself
                getattr(modeling_auto, auto_name).register(config_class, _load(arch.package, dotted), exist_ok=True)


def _register_processors(image_processing_auto) -> None:
    for arch in _architectures():
        for auto_name, cls in arch.processors.items():
            auto = getattr(image_processing_auto, auto_name, None)
            if auto is None:
                continue
            try:
                auto.register(arch.config_class, slow_image_processor_class=cls, exist_ok=True)
            except ImportError:
                # Some transformers 5.x releases make AutoImageProcessor a placeholder that needs torchvision;
                # there the Auto class cannot be used at all, and our processors still work when imported.
                continue


_REGISTRARS: dict[str, Callable] = {
    "transformers.models.auto.configuration_auto": _register_configs,
    "transformers.models.auto.modeling_auto": _register_models,
    "transformers.models.auto.image_processing_auto": _register_processors,
}


def _run_registrar(name: str, module) -> None:
    try:
        _REGISTRARS[name](module)
    except Exception as e:  # never break the user's transformers import; say what failed
        warnings.warn(f"hfzoo could not register its architectures with {name}: {type(e).__name__}: {e}",
                      stacklevel=2)


class _RegisteringLoader(importlib.abc.Loader):
    """Runs the real loader, then registers hfzoo's architectures with the module it loaded."""

    def __init__(self, loader, name: str):
        self._loader, self._name = loader, name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _run_registrar(self._name, module)

    def __getattr__(self, attr):
        return getattr(self._loader, attr)


class _AutoModuleHook(importlib.abc.MetaPathFinder):
    """Finds transformers' Auto modules through the other finders and wraps their loader."""

    def __init__(self):
        self._busy: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _REGISTRARS or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisteringLoader(spec.loader, fullname)
        return spec


def register_all() -> None:
    """Register every config, model and processor with the transformers Auto classes (idempotent): now for
    the Auto modules already imported, on their import for the others."""
    if not any(isinstance(f, _AutoModuleHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _AutoModuleHook())
    for name in _REGISTRARS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__spec__", None) is not None \
                and not getattr(module.__spec__, "_initializing", False):
            _run_registrar(name, module)
