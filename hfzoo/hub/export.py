"""Export an hfzoo model to a Hub-ready folder whose remote code stands alone.

The folder holds ``config.json`` (with ``auto_map``), ``model.safetensors``, the model's code, tokenizer or
processor files, and a model card. ``AutoModel*.from_pretrained(folder, trust_remote_code=True)`` works where
hfzoo is not installed: transformers copies into its module cache only the module named in ``auto_map`` and
the files it imports as ``from .x import y``, so we collect the import closure of the model's modules inside
hfzoo and write it flat, rewriting every import of an hfzoo module to a single-dot sibling import.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..registry import CHECKPOINT_DIR
from ..utils.remote_code import ExportError, collect_bundle, qualname, write_remote_code
from .atomic import atomic_directory
from .cards import render_card
from .progress import say

__all__ = ["ExportError", "auto_map", "collect_bundle", "export", "load_model", "resolve_folder"]
# files describing how to preprocess inputs, copied from a source folder when present
PREPROCESSING_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                       "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model", "spiece.model",
                       "preprocessor_config.json", "processor_config.json", "chat_template.jinja",
                       "chat_template.json")


def auto_map(arch) -> dict[str, str]:
    """``auto_map`` entries of config.json for an architecture (module basenames as flattened)."""
    return {"AutoConfig": qualname(arch.config_class), **{a: qualname(c) for a, c in arch.auto_models.items()}}


def load_model(source):
    """A model instance from a model object, a folder, a shipped checkpoint name or a Hub repo id."""
    from transformers import AutoConfig, PreTrainedModel

    from ..models import get_architecture

    if isinstance(source, PreTrainedModel):
        return source, None
    folder = resolve_folder(source)
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{_where(folder, 'config.json')}: not a readable model config ({_first_line(e)})") from e
    arch = get_architecture(config.model_type)
    names = {cls.__name__: cls for cls in arch.auto_models.values()}
    cls = next((names[a] for a in (config.architectures or []) if a in names), arch.main_model)
    try:
        return cls.from_pretrained(folder), folder
    except Exception as e:   # truncated/garbage weights, shape mismatches with the config, bad pickles
        weights = _weights_name(folder)
        raise ValueError(f"{_where(folder, weights)}: could not load the weights into {cls.__name__} "
                         f"({type(e).__name__}: {_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _where(folder, name: str) -> str:
    return str(Path(folder) / name) if isinstance(folder, Path) else f"{folder} ({name})"


def _weights_name(folder) -> str:
    if isinstance(folder, Path):
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
        if len(found) == 1:
            return found[0]
        if found:
            return "{" + ",".join(found) + "}"
    return "model.safetensors"


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


def _preprocessing_files(folder: Path) -> list[Path]:
    return [folder / name for name in PREPROCESSING_FILES if (folder / name).is_file()]


def _source_folder(model, folder) -> Path | None:
    """Where the model came from, for its preprocessing files: the folder it was read from, else the local folder
    or shipped checkpoint recorded as its ``name_or_path`` (a model merged or fine-tuned in memory)."""
    if isinstance(folder, Path):
        return folder
    if isinstance(folder, str):   # a Hub repo id: fetch only its preprocessing files
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(folder, allow_patterns=list(PREPROCESSING_FILES)))
        except Exception as e:   # offline, gated: the export goes on without them, and says so
            say(f"export: no tokenizer/processor files from {folder} ({type(e).__name__}); add them with --tokenizer/"
                "--processor")
            return None
    name = getattr(model, "name_or_path", "") or ""
    for candidate in (Path(name), CHECKPOINT_DIR / name) if name else ():
        if candidate.is_dir() and _preprocessing_files(candidate):
            return candidate
    return None


def _add_preprocessing(tmp: Path, what: str, source) -> str:
    """Put a tokenizer/processor into ``tmp``: an object (saved), a folder (its files copied) or a Hub repo id."""
    if hasattr(source, "save_pretrained"):
        source.save_pretrained(tmp)
        return type(source).__name__
    path = Path(source)
    if path.is_dir():
        files = _preprocessing_files(path)
        if not files:
            raise ValueError(f"{path}: no {what} files in this folder (looked for {', '.join(PREPROCESSING_FILES)})")
        for f in files:
            shutil.copy2(f, tmp / f.name)
        return str(path)
    if path.exists():
        raise ValueError(f"{path}: expected a folder with {what} files, got a file")
    import transformers

    auto = transformers.AutoTokenizer if what == "tokenizer" else transformers.AutoProcessor
    try:
        auto.from_pretrained(str(source)).save_pretrained(tmp)
    except (OSError, ValueError) as e:
        raise ValueError(f"{source}: could not load a {what} from it ({str(e).splitlines()[0] if str(e) else e})") from e
    return str(source)


def export(source, output, *, model_id: str | None = None, overwrite: bool = False, card: bool = True,
           tokenizer=None, processor=None, card_extra: str = "") -> Path:
    """Write a Hub-ready folder for ``source`` (model instance, folder, checkpoint name or repo id).

    The source's tokenizer and image-processor files are kept: copied from the folder it was read from (for a
    model instance, the folder its ``name_or_path`` names). ``tokenizer``/``processor`` add or replace them: an
    object with ``save_pretrained``, a folder holding the files, or a Hub repo id. Returns the output path. The
    folder appears only when complete.
    """
    from .progress import Steps, folder_bytes

    output = Path(output)
    if output.exists() and not overwrite:   # checked again when the folder moves into place
        raise FileExistsError(f"{output.resolve()} already exists (pass overwrite=True / --overwrite to replace it)")
    size = folder_bytes(source) if isinstance(source, (str, Path)) and Path(source).is_dir() else 0
    with Steps("export", ["load", "weights", "preprocessing", "card", "done"], nbytes=size) as step:
        step("load", f"loading {source if isinstance(source, (str, Path)) else type(source).__name__}")
        model, folder = load_model(source)
        with atomic_directory(output, overwrite=overwrite) as tmp:
            step("weights", "writing weights, config and the standalone remote code")
            model.save_pretrained(tmp)
            step("preprocessing", "adding tokenizer / processor files")
            origin = _source_folder(model, folder)
            if origin is not None:
                for f in _preprocessing_files(origin):
                    shutil.copy2(f, tmp / f.name)
            for what, extra in (("tokenizer", tokenizer), ("processor", processor)):
                if extra is not None:
                    _add_preprocessing(tmp, what, extra)
            write_remote_code(tmp, model)   # auto_map of preprocessor_config.json too
            step("card", "writing the model card" if card else "no model card")
            if card:
                render_card(model, model_id=model_id or output.name, extra=card_extra,
                            checkpoint=shipped_name(folder)).save(tmp / "README.md")
        step("done", f"wrote {output}")
    return output
