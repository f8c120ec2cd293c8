"""Remote code that stands alone: what a saved hfzoo folder needs so that
``AutoModel*.from_pretrained(folder, trust_remote_code=True)`` works where hfzoo is not installed.

transformers copies into its module cache only the module named in ``auto_map`` and the files that module
imports as ``from .x import y``, and at load time every absolute import must be an installed package. So the
bundle is the import closure of the model's modules inside hfzoo, written flat into the folder with every
import of an hfzoo module rewritten to a single-dot sibling import (module basenames inside hfzoo are unique).

Two places write it, through :func:`write_remote_code`:

* ``hfzoo export`` (``hfzoo.hub.export``), which adds a model card and preprocessing files;
* :class:`StandaloneSaveMixin`, inherited by every hfzoo ``PreTrainedModel``: ``model.save_pretrained(dir)``
  and ``model.push_to_hub(repo)`` write the same bundle and ``auto_map``, atomically.

A model that was itself loaded from such a folder (its classes live in ``transformers_modules``) is already
flat: saving it copies its folder's modules as they are, keeping the ``auto_map`` it was loaded with.

This module imports only the standard library, transformers/huggingface_hub lazily, and its sibling
``atomic_files``: it is part of every bundle.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import os
import sys
from pathlib import Path

from .atomic_files import staged_directory

PACKAGE = "hfzoo"


class ExportError(ValueError):
    """A model's code cannot be bundled as standalone remote code (the message says which line and why)."""


# ---------------------------------------------------------------------------------------------------------------
# The import-closure flattener (classes defined inside hfzoo)


def _resolve(module_name: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    """The absolute module an ``ImportFrom`` refers to, or None when it is not inside hfzoo."""
    if node.level == 0:
        target = node.module or ""
    else:
        parts = module_name.split(".") if is_package else module_name.split(".")[:-1]
        if node.level - 1 > len(parts) - 1:
            raise ExportError(f"{module_name}: relative import beyond the top-level package")
        base = parts[: len(parts) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    return target if target == PACKAGE or target.startswith(PACKAGE + ".") else None


def _is_plain_module(name: str) -> bool:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return False
    return not hasattr(module, "__path__")


def _module_imports(module_name: str):
    """Yield ``(node, target, submodules)`` for each import of an hfzoo module in ``module_name``'s source:
    ``from ..ops.rmsnorm import f`` gives ``(node, "hfzoo.ops.rmsnorm", False)``; ``from . import validate``
    (names that are modules of a package) gives ``(node, "hfzoo.ops", True)``."""
    module = importlib.import_module(module_name)
    path = Path(module.__file__)
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    raise ExportError(f"{path}:{node.lineno}: `import {alias.name}`: model code must import "
                                      "hfzoo modules relatively (`from .module import name`)")
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module_name, node, is_package)
            if target is None:
                continue
            target_mod = importlib.import_module(target)
            if not hasattr(target_mod, "__path__"):
                yield node, target, False
            elif all(_is_plain_module(f"{target}.{a.name}") for a in node.names):
                yield node, target, True
            else:
                raise ExportError(f"{path}:{node.lineno}: imports from the package {target!r}; model code must "
                                  "import names from a module (`from ..ops.rmsnorm import rms_norm_gated`)")


def _apply_edits(source: str, edits) -> str:
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def pos(lineno, col):  # ast columns are utf-8 byte offsets
        line = lines[lineno - 1]
        return offsets[lineno - 1] + len(line.encode()[:col].decode())

    out = source
    for node, text in sorted(edits, key=lambda e: (e[0].lineno, e[0].col_offset), reverse=True):
        start, end = pos(node.lineno, node.col_offset), pos(node.end_lineno, node.end_col_offset)
        out = out[:start] + text + out[end:]
    return out


def _hfzoo_bundle(module_names) -> dict[str, str]:
    todo = list(module_names)
    seen: dict[str, str] = {}  # module name -> basename
    files: dict[str, str] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if not name.startswith(PACKAGE + "."):
            raise ExportError(f"{name} is not an hfzoo module")
        basename = name.rsplit(".", 1)[-1]
        clash = [m for m, b in seen.items() if b == basename]
        if clash:
            raise ExportError(f"modules {clash[0]} and {name} share the basename {basename!r}; "
                              "flattened remote code needs unique module names")
        seen[name] = basename
        source = Path(importlib.import_module(name).__file__).read_text()
        edits = []
        for node, target, submodules in _module_imports(name):
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
            if not submodules:
                todo.append(target)
                edits.append((node, f"from .{target.rsplit('.', 1)[-1]} import {names}"))
                continue
            # `from . import validate` stays as it is, but transformers copies only the files named at the start
            # of a `from .x import y` line: one such line per module, at the import's own indentation.
            todo.extend(f"{target}.{a.name}" for a in node.names)
            lines = [f"from .{a.name} import __name__ as _bundled_{a.name}" for a in node.names]
            edits.append((node, ("\n" + " " * node.col_offset).join([*lines, f"from . import {names}"])))
        files[f"{basename}.py"] = _apply_edits(source, edits)
    return files


# ---------------------------------------------------------------------------------------------------------------
# Already-flat modules (a model loaded with trust_remote_code)


def _flat_bundle(module_names) -> dict[str, str]:
    """Sources of already-flat modules and the sibling files they import with ``from .x import``."""
    files: dict[str, str] = {}
    todo = [Path(sys.modules[name].__file__) for name in module_names]
    while todo:
        path = todo.pop()
        if path.name in files:
            continue
        if not path.is_file():
            raise ExportError(f"{path}: the remote code module is missing, so the model's code cannot be saved")
        source = path.read_text()
        files[path.name] = source
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                todo.extend(path.parent / f"{n.split('.')[0]}.py" for n in names)
            elif isinstance(node, ast.ImportFrom) and node.level > 1:
                raise ExportError(f"{path}:{node.lineno}: `from {'.' * node.level}{node.module or ''} import ...` "
                                  "cannot be loaded as remote code")
    return files


def _is_hfzoo(cls) -> bool:
    return cls.__module__.startswith(PACKAGE + ".")


def _is_remote(cls) -> bool:
    """Loaded by transformers from a folder's own code (``trust_remote_code``)."""
    return cls.__module__.startswith("transformers_modules.")


def collect_bundle(classes) -> dict[str, str]:
    """Flattened sources of the modules that define ``classes`` and everything they import from hfzoo.

    Returns ``{file name: source}``. For hfzoo classes, imports of hfzoo modules are rewritten to
    ``from .<basename> import``; classes loaded from remote code are copied with their sibling modules as they are.
    """
    classes = list(classes)
    ours = [c.__module__ for c in classes if _is_hfzoo(c)]
    flat = [c.__module__ for c in classes if not _is_hfzoo(c)]
    files = _hfzoo_bundle(ours) if ours else {}
    if flat:
        for name, text in _flat_bundle(flat).items():
            files.setdefault(name, text)
    return files


def qualname(cls) -> str:
    """``auto_map`` value of a class in the flattened bundle: ``<module basename>.<class name>``."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


# ---------------------------------------------------------------------------------------------------------------
# What a saved folder holds: the classes of an architecture and their auto_map


def architecture_classes(model_or_class):
    """``(config_class, {auto class: model class}, {auto class: processor class})`` for an hfzoo model.

    The registry entry is the ``ARCHITECTURE`` of the package that defines the model class
    (``hfzoo/models/<arch>/__init__.py``), looked up at call time so that this bottom-tier module does not
    import models. A model class without one saves itself alone (as ``AutoModel`` unless it was registered for
    another Auto class).
    """
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    package = sys.modules.get(cls.__module__.rpartition(".")[0])
    arch = getattr(package, "ARCHITECTURE", None)
    if arch is not None and cls in arch.auto_models.values():
        return arch.config_class, dict(arch.auto_models), dict(arch.processors)
    return cls.config_class, {getattr(cls, "_auto_class", None) or "AutoModel": cls}, {}


def _flat_auto_map(model) -> dict[str, str]:
    """auto_map of a model loaded from remote code: what it was loaded with (a ``repo--`` prefix dropped)."""
    loaded = dict(getattr(model.config, "auto_map", None) or {})
    entries = {k: (v.split("--", 1)[-1] if isinstance(v, str) else v) for k, v in loaded.items()}
    entries.setdefault("AutoConfig", qualname(type(model.config)))
    entries.setdefault(type(model)._auto_class or "AutoModel", qualname(type(model)))
    return entries


def remote_code_for(model) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """``(files, auto_map, processor_auto_map)`` that make a folder saved from ``model`` load without hfzoo."""
    if _is_hfzoo(type(model)):
        config_class, auto_models, processors = architecture_classes(model)
        files = collect_bundle([config_class, *auto_models.values(), *processors.values()])
        auto_map = {"AutoConfig": qualname(config_class), **{a: qualname(c) for a, c in auto_models.items()}}
        return files, auto_map, {a: qualname(c) for a, c in processors.items()}
    files = collect_bundle([type(model.config), type(model)])
    return files, _flat_auto_map(model), {}


def _patch_json(path: Path, key: str, value: dict) -> None:
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_remote_code(folder, model, code=None, existing=None) -> None:
    """Write the bundle into ``folder`` (which holds ``model``'s ``config.json``) and set ``auto_map`` in
    ``config.json`` and, when present, ``preprocessor_config.json``. ``existing``: a folder whose
    ``preprocessor_config.json`` (saved there earlier) gets its ``auto_map`` through a copy written into ``folder``.
    """
    folder = Path(folder)
    files, auto_map, processor_map = code or remote_code_for(model)
    for name, text in files.items():
        (folder / name).write_text(text)
    _patch_json(folder / "config.json", "auto_map", auto_map)
    if not processor_map:
        return
    proc = folder / "preprocessor_config.json"
    if not proc.is_file() and existing is not None and (Path(existing) / proc.name).is_file():
        text = (Path(existing) / proc.name).read_text()
        ours = {v.rsplit(".", 1)[-1] for v in processor_map.values()}
        if json.loads(text).get("image_processor_type") in ours:   # the processor saved there is this model's
            proc.write_text(text)
    if proc.is_file():
        _patch_json(proc, "auto_map", processor_map)


# ---------------------------------------------------------------------------------------------------------------
# save_pretrained / push_to_hub


@contextlib.contextmanager
def _without_custom_object_save(*objects):
    """transformers' own remote-code copier (``custom_object_save``, run when a class has ``_auto_class``) copies
    only single-dot imports and fails on ours; the bundle replaces it, so it is switched off while saving."""
    saved = []
    for obj in objects:
        cls = type(obj)
        if getattr(cls, "_auto_class", None) is not None:
            saved.append((cls, cls.__dict__.get("_auto_class", _MISSING)))
            cls._auto_class = None
    try:
        yield
    finally:
        for cls, value in reversed(saved):
            if value is _MISSING:
                del cls._auto_class
            else:
                cls._auto_class = value


_MISSING = object()


class StandaloneSaveMixin:
    """Mixin for hfzoo ``PreTrainedModel`` classes (put it first in the bases):

        class GLAPreTrainedModel(StandaloneSaveMixin, PreTrainedModel): ...

    ``save_pretrained(dir)`` (and so ``push_to_hub``) writes, besides what transformers writes, the flattened
    remote code and ``auto_map``, so the folder or repo loads with ``trust_remote_code=True`` where hfzoo is not
    installed. Everything is written into a temporary folder first and moved into ``dir`` only when complete
    (files already in ``dir``, e.g. a tokenizer, stay). ``register_for_auto_class()`` is honoured (the bundle
    replaces transformers' copier, which cannot follow hfzoo's imports).
    """

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        is_main = kwargs.get("is_main_process", args[0] if args else True)
        if not is_main or not (_is_hfzoo(type(self)) or _is_remote(type(self))):
            # other ranks write nothing; a user's own subclass (defined outside hfzoo) saves as transformers does
            return super().save_pretrained(save_directory, *args, push_to_hub=push_to_hub, **kwargs)
        hub = {k: kwargs.pop(k) for k in ("commit_message", "repo_id", "create_pr", "private") if k in kwargs}
        code = remote_code_for(self)   # before writing anything: a model that cannot be bundled fails cleanly
        with staged_directory(save_directory) as tmp:
            with _without_custom_object_save(self, self.config):
                super().save_pretrained(tmp, *args, **kwargs)
            if (tmp / "config.json").is_file():   # not an adapter-only save (a PEFT adapter loaded into the model)
                write_remote_code(tmp, self, code, existing=save_directory)
        if push_to_hub:
            _upload(save_directory, kwargs.get("token"), **hub)


def _upload(folder, token=None, repo_id=None, commit_message=None, create_pr=False, private=None):
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id or Path(os.path.abspath(folder)).name, private=private, exist_ok=True).repo_id
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message or
                             "Upload model", create_pr=create_pr)


def processor_code_for(processor) -> tuple[dict[str, str], dict[str, str]]:
    """``(files, auto_map)`` that make a saved image processor load without hfzoo (``AutoImageProcessor``)."""
    cls = type(processor)
    if _is_hfzoo(cls):
        package = sys.modules.get(cls.__module__.rpartition(".")[0])
        arch = getattr(package, "ARCHITECTURE", None)
        processors = dict(arch.processors) if arch is not None and cls in arch.processors.values() else {}
        processors = processors or {getattr(cls, "_auto_class", None) or "AutoImageProcessor": cls}
        return collect_bundle(processors.values()), {a: qualname(c) for a, c in processors.items()}
    return collect_bundle([cls]), {getattr(cls, "_auto_class", None) or "AutoImageProcessor": qualname(cls)}


class StandaloneProcessorSaveMixin:
    """The processor counterpart of :class:`StandaloneSaveMixin` (put it first in the bases of an hfzoo image
    processor): ``save_pretrained(dir)`` also writes the processor's flattened code and ``auto_map`` in
    ``preprocessor_config.json``, atomically, so ``AutoImageProcessor.from_pretrained(dir, trust_remote_code=True)``
    works without hfzoo whichever of the model and the processor is saved first."""

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        if not (_is_hfzoo(type(self)) or _is_remote(type(self))):   # a user's own subclass: transformers' rules
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        hub = {k: kwargs.pop(k) for k in ("commit_message", "repo_id", "create_pr", "private") if k in kwargs}
        files, auto_map = processor_code_for(self)
        with staged_directory(save_directory) as tmp:
            with _without_custom_object_save(self):
                written = super().save_pretrained(tmp, **kwargs)
            for name, text in files.items():
                (tmp / name).write_text(text)
            for path in tmp.glob("*processor_config.json"):
                _patch_json(path, "auto_map", auto_map)
        if push_to_hub:
            _upload(save_directory, kwargs.get("token"), **hub)
        return [str(Path(save_directory) / Path(p).name) for p in written or []]
