"""Writers that never leave half-written output: build in a temporary sibling folder, then move it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder next to ``path``; on success it replaces ``path``, on error it is removed.

    Raises ``FileExistsError`` up front when ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path).resolve()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
    try:
        tmp.rename(path)
    except BaseException:
        if old is not None:
            old.rename(path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_pretrained_atomic(path: str | os.PathLike, *parts, files: dict[str, str] | None = None,
                           overwrite: bool = False) -> Path:
    """Write a model folder in one atomic step: each part's ``save_pretrained`` output (model, tokenizer,
    processor) and ``files`` (name -> text) beside them. Returns ``Path(path)``."""
    with atomic_directory(path, overwrite=overwrite) as tmp:
        for part in parts:
            part.save_pretrained(tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
    return Path(path)
