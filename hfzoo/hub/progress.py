"""What writers (export, converters) tell the user while they work.

Messages go to the ``hfzoo`` logger at INFO level: silent in library use, printed on stdout by the ``hfzoo``
command (stderr keeps only errors and progress bars). A tqdm bar over a writer's steps (or a checkpoint's weight files) appears too when the logger is
shown and the checkpoint is large (``LARGE_BYTES``), or always with ``HFZOO_PROGRESS=1``.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("hfzoo")
LARGE_BYTES = 256 * 2**20


def say(message: str) -> None:
    logger.info(message)


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _bar_wanted(nbytes: int) -> bool:
    flag = os.environ.get("HFZOO_PROGRESS")
    if flag is not None:
        return flag not in ("", "0")
    return logger.isEnabledFor(logging.INFO) and nbytes >= LARGE_BYTES


class Steps:
    """Announce each step of a writer; a progress bar over the steps for a large checkpoint.

        steps = Steps("export", ["load", "save", "card"], nbytes=size)
        steps("load", "reading tiny-gla") ... steps.close()
    """

    def __init__(self, name: str, steps, nbytes: int = 0):
        self.name, self.steps = name, list(steps)
        self.bar = None
        if _bar_wanted(nbytes):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(self.steps), desc=name, unit="step", leave=True)

    def __call__(self, step: str, message: str = "") -> None:
        say(f"{self.name}: {message or step}")
        if self.bar is not None:
            self.bar.set_postfix_str(step)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def files_bar(paths, desc: str):
    """Iterate over weight files, with a bar when the files are large (see ``Steps``)."""
    paths = list(paths)
    nbytes = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    if _bar_wanted(nbytes) and len(paths) > 0:
        from tqdm.auto import tqdm

        return tqdm(paths, desc=desc, unit="file")
    return paths


def folder_bytes(folder) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            with_path = os.path.join(root, f)
            if os.path.isfile(with_path):
                total += os.path.getsize(with_path)
    return total
