"""Writers that never leave half-written output: build in a temporary folder, then move it into place.

Two shapes of "into place":

* ``atomic_directory(path)``: the folder *is* the output (``hfzoo export``, converters). It appears complete or
  not at all; replacing an existing folder needs ``overwrite=True``.
* ``staged_directory(path)``: files are *added* to a folder that may already hold others (``save_pretrained``
  beside a tokenizer saved earlier). Everything is written into a temporary folder first; only when that
  succeeded are the files moved in (each move is an atomic rename on the same file system).

Every failure path removes the temporary folder (and restores a replaced folder). A symbolic link at the
output path is refused rather than followed: replacing it would replace whatever it points to. What is written
gets the usual permissions (folders ``0777 & ~umask``, files ``0666 & ~umask``), not ``mkdtemp``'s private
``0700`` or the ``0600`` of files written through private temporaries.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mkdtemp(prefix: str, parent: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _normal_modes(folder: Path) -> None:
    """Files ``0666 & ~umask``, folders ``0777 & ~umask``: writers that use private temporary files (safetensors
    weights come out ``0600``) would otherwise publish folders that other users cannot read."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            if not os.path.islink(os.path.join(root, d)):
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            if not os.path.islink(os.path.join(root, f)):
                os.chmod(os.path.join(root, f), 0o666 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


def _remove(path: Path) -> None:
    """Remove a file or folder if it exists (a leftover temporary is an error worth seeing, not ignoring)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise FileExistsError(f"{path} is a symbolic link (to {os.readlink(path)}); refusing to replace what it points "
                              "to: remove the link or choose another output folder")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder next to ``path``; on success it replaces ``path``, on error it is removed.

    Raises ``FileExistsError`` up front when ``path`` exists and ``overwrite`` is false, when ``path`` is a
    symbolic link, or when it exists and is not a folder.
    """
    path = Path(os.path.abspath(path))
    _refuse_symlink(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _mkdtemp(f".{path.name}.tmp-", path.parent)
    old = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    moved_old = False
    try:
        yield tmp
        _normal_modes(tmp)
        _refuse_symlink(path)   # checked again: the folder may have changed while we wrote
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} appeared while it was being written; not replacing it")
            path.rename(old)
            moved_old = True
        tmp.rename(path)
    except BaseException:
        try:
            if moved_old and not path.exists():
                old.rename(path)
                moved_old = False
        finally:
            _remove(tmp)
        raise
    finally:
        if moved_old:
            _remove(old)


_WEIGHT_PREFIXES = ("model", "pytorch_model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def _is_weights_file(name: str) -> bool:
    return name.startswith(_WEIGHT_PREFIXES) and name.endswith(_WEIGHT_SUFFIXES)


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike):
    """Yield a temporary folder; on success its entries are moved into ``path`` (created if missing), replacing
    entries of the same name and removing stale weight shards of an earlier save; on error nothing in ``path``
    changes and the temporary folder is removed.
    """
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; save_pretrained needs a folder")
    if not path.exists():
        with atomic_directory(path) as tmp:
            yield tmp
        return
    real = path.resolve()   # writing *into* a linked folder is fine: nothing is replaced but its files
    tmp = _mkdtemp(".hfzoo-save-", real)
    try:
        yield tmp
        _normal_modes(tmp)
        new = sorted(p.name for p in tmp.iterdir())
        writes_weights = any(_is_weights_file(n) for n in new)
        for name in new:
            dest = real / name
            if (tmp / name).is_dir() and dest.exists() and not dest.is_symlink():
                _remove(dest)
            os.replace(tmp / name, dest)
        if writes_weights:   # an earlier save with other shards would otherwise leave its files beside ours
            for stale in real.iterdir():
                if stale.is_file() and _is_weights_file(stale.name) and stale.name not in new:
                    stale.unlink()
    finally:
        _remove(tmp)


def save_pretrained_atomic(path: str | os.PathLike, *parts, files: dict[str, str] | None = None,
                           overwrite: bool = False, standalone: bool = True) -> Path:
    """Write a model folder in one atomic step: each part's ``save_pretrained`` output (model, tokenizer,
    processor) and ``files`` (name -> text) beside them. Returns ``Path(path)``.

    ``standalone=False`` leaves out the remote code and ``auto_map`` that hfzoo models write for the Hub: for
    the checkpoints shipped inside the package, which load through the installed hfzoo."""
    with atomic_directory(path, overwrite=overwrite) as tmp:
        for part in parts:
            part.save_pretrained(tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        if not standalone:
            drop_remote_code(tmp)
    return Path(path)


def drop_remote_code(folder: str | os.PathLike) -> None:
    """Remove the bundled ``*.py`` files and every ``auto_map`` from a saved model folder."""
    import json

    folder = Path(folder)
    for code in folder.glob("*.py"):
        code.unlink()
    for name in ("config.json", "preprocessor_config.json", "tokenizer_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            if data.pop("auto_map", None) is not None:
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
