"""Export an hfzoo model to a Hub-ready folder whose remote code stands alone.

The folder holds ``config.json`` (with ``auto_map``), ``model.safetensors``, the model's code, tokenizer or
processor files, and a model card. ``AutoModel*.from_pretrained(folder, trust_remote_code=True)`` works where
hfzoo is not installed: transformers copies into its module cache only the module named in ``auto_map`` and
the files it imports as ``from .x import y``, so we collect the import closure of the model's modules inside
hfzoo and write it flat, rewriting every import of an hfzoo module to a single-dot sibling import.
"""

from __future__ import annotations

import ast
import importlib
import json
import shutil
import sys
from pathlib import Path

from ..registry import CHECKPOINT_DIR
from .atomic import atomic_directory
from .cards import render_card

PACKAGE = "hfzoo"
# files describing how to preprocess inputs, copied from a source folder when present
PREPROCESSING_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                       "vocab.json", "merges.txt", "added_tokens.json", "preprocessor_config.json",
                       "processor_config.json", "chat_template.jinja")


class ExportError(ValueError):
    """A model's code cannot be bundled as standalone remote code (the message says which line and why)."""


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


def _module_imports(module_name: str):
    """Yield ``(node, target_module)`` for each import of an hfzoo module in ``module_name``'s source."""
    module = importlib.import_module(module_name)
    path = Path(module.__file__)
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
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
            if hasattr(target_mod, "__path__"):
                raise ExportError(f"{path}:{node.lineno}: imports from the package {target!r}; model code must "
                                  "import names from a module (`from ..ops.rmsnorm import rms_norm_gated`)")
            yield node, target
    return source, tree


def collect_bundle(classes) -> dict[str, str]:
    """Flattened sources of the hfzoo modules that define ``classes`` and everything they import from hfzoo.

    Returns ``{file name: source}`` with imports of hfzoo modules rewritten to ``from .<basename> import``.
    """
    todo = [cls.__module__ for cls in classes]
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
        path = Path(sys.modules[name].__file__) if name in sys.modules else None
        if path is None:
            path = Path(importlib.import_module(name).__file__)
        source = path.read_text()
        edits = []
        for node, target in _module_imports(name):
            todo.append(target)
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
            edits.append((node, f"from .{target.rsplit('.', 1)[-1]} import {names}"))
        files[f"{basename}.py"] = _apply_edits(source, edits)
    return files


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


def auto_map(arch) -> dict[str, str]:
    """``auto_map`` entries of config.json for an architecture (module basenames as flattened)."""
    entries = {"AutoConfig": _qualname(arch.config_class)}
    for auto, cls in arch.auto_models.items():
        entries[auto] = _qualname(cls)
    return entries


def _qualname(cls) -> str:
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def load_model(source):
    """A model instance from a model object, a folder, a shipped checkpoint name or a Hub repo id."""
    from transformers import AutoConfig, PreTrainedModel

    from ..models import get_architecture

    if isinstance(source, PreTrainedModel):
        return source, None
    folder = resolve_folder(source)
    config = AutoConfig.from_pretrained(folder)
    arch = get_architecture(config.model_type)
    names = {cls.__name__: cls for cls in arch.auto_models.values()}
    cls = next((names[a] for a in (config.architectures or []) if a in names), arch.main_model)
    return cls.from_pretrained(folder), folder


def shipped_name(folder) -> str | None:
    """The name of a checkpoint shipped inside hfzoo if ``folder`` is one, else None."""
    if isinstance(folder, Path) and folder.resolve().parent == CHECKPOINT_DIR:
        return folder.name
    return None


def resolve_folder(source) -> Path | str:
    """A local folder for ``source`` (path or shipped checkpoint name like ``tiny-gla``), else the repo id."""
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} has no config.json: not a model folder")
        return path
    shipped = CHECKPOINT_DIR / str(source)
    if (shipped / "config.json").is_file():
        return shipped
    if path.exists():
        raise ValueError(f"{path} is a file; expected a model folder")
    if str(source).count("/") == 1 and not str(source).startswith((".", "/")):
        return str(source)  # a Hub repo id
    raise ValueError(f"{source!r} is neither a model folder, a shipped checkpoint nor a Hub repo id")


def export(source, output, *, model_id: str | None = None, overwrite: bool = False, card: bool = True,
           tokenizer=None, processor=None, card_extra: str = "") -> Path:
    """Write a Hub-ready folder for ``source`` (model instance, folder, checkpoint name or repo id).

    ``tokenizer``/``processor`` objects are saved into the folder when given; otherwise preprocessing
    files from a source folder are copied. Returns the output path. The folder appears only when complete.
    """
    from ..models import get_architecture

    model, folder = load_model(source)
    arch = get_architecture(model.config.model_type)
    bundle = collect_bundle([arch.config_class, *arch.auto_models.values(), *arch.processors.values()])
    output = Path(output)
    with atomic_directory(output, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        for name, text in bundle.items():
            (tmp / name).write_text(text)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["auto_map"] = auto_map(arch)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        if folder is not None and isinstance(folder, Path):
            for fname in PREPROCESSING_FILES:
                if (folder / fname).is_file() and not (tmp / fname).exists():
                    shutil.copy2(folder / fname, tmp / fname)
        _add_processor_auto_map(tmp, arch)
        if card:
            render_card(model, model_id=model_id or output.name, extra=card_extra,
                        checkpoint=shipped_name(folder)).save(tmp / "README.md")
    return output


def _add_processor_auto_map(folder: Path, arch) -> None:
    path = folder / "preprocessor_config.json"
    if not path.is_file() or not arch.processors:
        return
    data = json.loads(path.read_text())
    data["auto_map"] = {auto: _qualname(cls) for auto, cls in arch.processors.items()}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
