"""Reading checkpoint files for the converters, with errors that name the file.

A truncated or garbage safetensors file, a pickle that weights-only loading refuses or that is cut short, a
file that is not a checkpoint at all: each becomes one ``ValueError`` that starts with the file's path, which
the ``hfzoo`` command prints as one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


from ..hub.progress import files_bar, human_bytes, say


class CheckpointError(ValueError):
    """A checkpoint file cannot be read (the message starts with its path)."""


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def load_safetensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path))
    except Exception as e:   # SafetensorError (truncated header/data), OSError
        raise CheckpointError(f"{path}: not a readable safetensors file ({_reason(e)})") from e


def load_torch(path):
    """``torch.load(weights_only=True)``: pickles of arbitrary objects are refused, nothing in them runs."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # UnpicklingError, truncated zip ("PytorchStreamReader failed"), EOFError, OSError
        hint = (" Save only the tensors first, e.g. torch.save(ckpt['state_dict'], 'weights.pt')."
                if "weights_only" in str(e) or "Unsupported global" in str(e) else "")
        raise CheckpointError(f"{path}: could not be read with torch.load(weights_only=True) ({_reason(e)}).{hint}"
                              ) from e


def load_any(path) -> dict:
    """A safetensors or PyTorch pickle file, by suffix."""
    path = Path(path)
    return load_safetensors(path) if path.suffix == ".safetensors" else load_torch(path)


def load_files(paths, desc: str = "reading weights") -> dict:
    """Merge the tensors of several weight files (shards), announcing them; a bar for large checkpoints."""
    paths = list(paths)
    size = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    say(f"{desc}: {len(paths)} file(s), {human_bytes(size)}")
    state: dict = {}
    for path in files_bar(paths, desc):
        part = load_any(path)
        if not isinstance(part, dict):
            raise CheckpointError(f"{path}: expected a dict of tensors, got {type(part).__name__}")
        state.update(part)
    return state


def read_json(path) -> dict:
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({_reason(e)})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_checkpoint_folder(source, source_name: str, not_a_folder_hint: str) -> tuple[Path, dict]:
    """The folder of a Hugging Face-style checkpoint (``config.json`` and weights) and its parsed config;
    ``ValueError`` when ``source`` is not a folder (the message ends with ``not_a_folder_hint``) or has no
    ``config.json``."""
    folder = Path(source)
    if not folder.is_dir():
        raise ValueError(f"{source} is not a folder ({not_a_folder_hint})")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"no config.json in {folder}")
    say(f"{source_name}: reading {config_path}")
    return folder, read_json(config_path)


def load_folder_weights(folder: Path, source_name: str) -> dict:
    """All tensors of a checkpoint folder: (sharded) safetensors, else (sharded) pytorch_model*.bin."""
    safetensors = sorted(folder.glob("*.safetensors"))
    bins = sorted(p for p in folder.glob("*.bin") if p.name.startswith("pytorch_model"))
    if not safetensors and not bins:
        raise ValueError(f"no *.safetensors or pytorch_model*.bin weights in {folder}")
    return load_files(safetensors or bins, f"{source_name}: reading weights")


def state_dict_problems(state: dict, expected: dict) -> list[str]:
    """What keeps ``state`` from loading into a model whose tensors have the shapes ``expected`` (name → shape):
    missing, unexpected and misshapen keys, one line each; empty when it fits."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
                       for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if misshapen:
        problems.append(f"shape mismatches: {misshapen}")
    return problems


def cast_floats(state: dict, config, dtype: str) -> dict:
    """Cast the floating tensors to ``dtype`` (a torch dtype name) and record it in ``config.dtype``; with
    ``"keep"`` leave them, recording their dtype when they all share one."""
    if dtype != "keep":
        import torch

        target = getattr(torch, dtype)
        config.dtype = dtype
        return {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    floats = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(floats) == 1:
        config.dtype = str(next(iter(floats))).removeprefix("torch.")
    return state


def assign_on_meta(model_class, config, state: dict):
    """``model_class(config)`` built on the meta device with ``state``'s tensors assigned in place (no copy, no
    random init), the output embedding re-tied to the input one when ``config.tie_word_embeddings``. Returns the
    model and the names of the parameters and buffers ``state`` left on the meta device."""
    import torch

    with torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(state, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    leftover = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    return model, leftover


def add_dtype_argument(parser) -> None:
    """The ``--dtype`` option of converters whose weights ``cast_floats`` casts."""
    parser.add_argument("--dtype", choices=["keep", "float32", "bfloat16", "float16"], default="keep",
                        help="dtype of the written weights (default: as stored)")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "generation_config.json")


def save_with_tokenizer_files(model, source_folder: Path, output, *, overwrite: bool) -> Path:
    """``model.save_pretrained`` into ``output`` (atomically), with the tokenizer and generation files that
    ``source_folder`` has (``TOKENIZER_FILES``) copied beside it."""
    import shutil

    from ..hub.atomic import atomic_directory

    with atomic_directory(output, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            if (source_folder / name).is_file():
                shutil.copy2(source_folder / name, Path(tmp) / name)
    return Path(output)
