"""Default LoRA target modules of every hfzoo architecture, declared to peft.

peft picks ``target_modules`` for a ``LoraConfig()`` that names none from one dict keyed by ``model_type``
(``peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``; ``LoraModel`` reads it at
``get_peft_model`` time). hfzoo adds one entry per architecture from its registry entry
(``Architecture.lora_target_modules``). This covers LoRA and every LoRA initialization (PiSSA, OLoRA, ...) and
DoRA, which share that mapping.

When the entries are added, without ``import hfzoo`` importing peft (peft takes about a second to import):

- using hfzoo's PEFT tools (``hfzoo.peft.pissa``, ``hfzoo.peft.lego``, the ``hfzoo pissa``/``hfzoo merge``
  commands) registers at once;
- ``import hfzoo`` registers at once if peft is already imported, and otherwise installs a post-import hook
  (:func:`install_import_hook`) that registers right after ``import peft`` finishes, whichever comes first.

:func:`register_target_modules` can also be called by hand; it is idempotent and never overrides an entry
that someone else put there for the same ``model_type``.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading

_lock = threading.Lock()
_registered = False


def default_target_modules() -> dict[str, list[str]]:
    """``{model_type: [module name suffixes]}`` for every hfzoo architecture that declares LoRA targets."""
    from ..models import ARCHITECTURES

    return {arch.model_type: list(arch.lora_target_modules)
            for arch in ARCHITECTURES.values() if arch.lora_target_modules}


def register_target_modules() -> dict[str, list[str]]:
    """Add hfzoo's default LoRA targets to peft's mapping (imports peft). Returns what hfzoo declares."""
    global _registered
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    targets = default_target_modules()
    with _lock:
        for model_type, modules in targets.items():
            mapping.setdefault(model_type, modules)
        _registered = True
    return targets


class _AfterPeftImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of the top-level ``peft`` package so that, once peft's
    ``__init__`` has run, hfzoo's targets are registered. Removes itself after peft's first import."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "peft":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        # find_spec is also called by probes that never import (importlib.util.find_spec("peft") in
        # transformers' is_peft_available): keep the hook until peft's __init__ actually runs
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _remove_hook()
            try:
                register_target_modules()
            except Exception as e:  # never break `import peft` because of hfzoo
                import warnings

                warnings.warn(f"hfzoo could not register its LoRA target modules with peft: {e}", stacklevel=2)

        spec.loader = _WrappedLoader(loader, exec_then_register)
        return spec


class _WrappedLoader(importlib.abc.Loader):
    def __init__(self, loader, exec_module):
        self._loader = loader
        self._exec_module = exec_module

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._exec_module(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, get_source, ... of the real loader
        return getattr(self._loader, name)


_hook = _AfterPeftImport()


def _remove_hook() -> None:
    try:
        sys.meta_path.remove(_hook)
    except ValueError:
        pass


def install_import_hook() -> None:
    """Register now if peft is imported already; else register right after peft's first import. Cheap."""
    if _registered:
        return
    if "peft" in sys.modules and getattr(sys.modules["peft"], "__spec__", None) is not None:
        register_target_modules()
    elif _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)
