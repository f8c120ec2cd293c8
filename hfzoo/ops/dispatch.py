"""How every op chooses where to run.

Each op has two implementations: Triton kernels and a plain PyTorch reference. Per call, the choice is:

* ``triton``    -- all tensors on CUDA and Triton importable (the fast path), or all tensors on CPU
                   with ``TRITON_INTERPRET=1`` set before Triton was imported (Triton's interpreter runs
                   the very same kernels on CPU; this is how CPU CI tests kernel code);
* ``reference`` -- everything else: correct results on any device, never a silent wrong answer.

Override, from most to least specific: the op's ``backend=`` argument; the context manager
``use_backend("reference")``; the environment variable ``HFZOO_BACKEND`` (``auto``, ``triton`` or
``reference``). Forcing ``triton`` where it cannot run raises ``RuntimeError`` instead of falling back.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import torch

from .triton_shim import HAS_TRITON

BACKEND_ENV = "HFZOO_BACKEND"
CHOICES = ("auto", "triton", "reference")

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("hfzoo_backend", default=None)


def interpreter_enabled() -> bool:
    """True when Triton kernels run through Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@contextlib.contextmanager
def use_backend(backend: str):
    """Force a backend for every op called inside the block: ``with use_backend("reference"): ...``."""
    _check_choice(backend, "backend")
    token = _override.set(backend)
    try:
        yield
    finally:
        _override.reset(token)


def _check_choice(choice: str, source: str) -> None:
    if choice not in CHOICES:
        raise ValueError(f"{source} must be one of {', '.join(CHOICES)}; got {choice!r}")


def triton_unavailable_reason(*tensors: torch.Tensor) -> str | None:
    """Why the Triton backend cannot run on these tensors, or None when it can."""
    if not HAS_TRITON:
        return "Triton is not installed"
    devices = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
    if devices == {"cuda"}:
        return None
    if devices <= {"cpu"} and interpreter_enabled():
        return None
    if devices <= {"cpu"}:
        return "tensors are on the CPU and TRITON_INTERPRET=1 is not set"
    return f"tensors are on {sorted(devices)}; Triton kernels need them all on CUDA"


def resolve_backend(*tensors: torch.Tensor, backend: str | None = None, op: str = "op") -> str:
    """Return ``"triton"`` or ``"reference"`` for a call of ``op`` on ``tensors``."""
    if backend is not None:
        _check_choice(backend, f"{op}(backend=...)")
        choice = backend
    elif _override.get() is not None:
        choice = _override.get()
    else:
        choice = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
        _check_choice(choice, f"environment variable {BACKEND_ENV}")
    if choice == "reference":
        return "reference"
    reason = triton_unavailable_reason(*tensors)
    if choice == "triton" and reason is not None:
        raise RuntimeError(f"{op}: the triton backend was forced but cannot run: {reason}")
    return "triton" if reason is None else "reference"
