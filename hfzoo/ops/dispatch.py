"""How every op chooses where to run.

Each op has two implementations: Triton kernels and a plain PyTorch reference. Per call, ``auto`` picks:

* ``triton``    -- when every tensor is on CUDA and Triton is importable: the fast path;
* ``reference`` -- everywhere else (CPU tensors included, also under ``TRITON_INTERPRET=1``): correct results
                   on any device, never a silent wrong answer.

Forcing ``triton`` runs the kernels on CUDA tensors, or on CPU tensors through Triton's interpreter when
``TRITON_INTERPRET=1`` was set before Triton was imported (how CPU CI tests kernel code: the tests force the
backend explicitly). Forcing it where it cannot run raises ``RuntimeError`` instead of falling back.

Override, from most to least specific: the op's ``backend=`` argument; the context manager
``use_backend("triton")``; the environment variable ``HFZOO_BACKEND`` (``auto``, ``triton`` or ``reference``).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

from .launch import getenv, is_interpreted
from .triton_shim import HAS_TRITON

BACKEND_ENV = "HFZOO_BACKEND"
CHOICES = ("auto", "triton", "reference")

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("hfzoo_backend", default=None)


def interpreter_enabled() -> bool:
    """True when Triton kernels run through Triton's CPU interpreter (same as ``is_interpreted()``)."""
    return is_interpreted()


@contextlib.contextmanager
def use_backend(backend: str):
    """Force a backend for every op called inside the block: ``with use_backend("triton"): ...``."""
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
    """Why the Triton backend cannot run on these tensors when forced, or None when it can."""
    if not HAS_TRITON:
        return "Triton is not installed"
    devices = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
    if devices == {"cuda"}:
        return None
    if devices <= {"cpu"} and is_interpreted():
        return None
    if devices <= {"cpu"}:
        return "tensors are on the CPU and TRITON_INTERPRET=1 is not set"
    return f"tensors are on {sorted(devices)}; Triton kernels need them all on CUDA"


def requested_backend(backend: str | None = None, op: str = "op") -> str:
    """The backend asked for (``auto``, ``triton`` or ``reference``): argument, then ``use_backend``, then env."""
    if backend is not None:
        _check_choice(backend, f"{op}(backend=...)")
        return backend
    forced = _override.get()
    if forced is not None:
        return forced
    choice = getenv(BACKEND_ENV, "auto").strip().lower() or "auto"
    _check_choice(choice, f"environment variable {BACKEND_ENV}")
    return choice


def resolve_backend(*tensors: torch.Tensor, backend: str | None = None, op: str = "op") -> str:
    """Return ``"triton"`` or ``"reference"`` for a call of ``op`` on ``tensors``."""
    choice = requested_backend(backend, op)
    if choice == "reference":
        return "reference"
    if choice == "auto":   # the common case, decided from each tensor's is_cuda flag (no device objects)
        found = False
        for t in tensors:
            if isinstance(t, torch.Tensor):
                if not t.is_cuda:
                    return "reference"
                found = True
        return "triton" if found and HAS_TRITON else "reference"
    reason = triton_unavailable_reason(*tensors)   # "triton" was forced
    if reason is not None:
        raise RuntimeError(f"{op}: the triton backend was forced but cannot run: {reason}")
    return "triton"


class _NoGradContext:
    """The ``ctx`` an autograd.Function's forward gets when it runs without a graph node: it keeps attributes and
    drops what only a backward would read."""

    def __init__(self, n_inputs: int):
        self.needs_input_grad = (False,) * n_inputs

    def save_for_backward(self, *tensors):
        pass

    def mark_non_differentiable(self, *tensors):
        pass

    def mark_dirty(self, *tensors):
        pass

    def set_materialize_grads(self, value):
        pass


def apply_function(function, *args):
    """``function.apply(*args)`` for an op's ``torch.autograd.Function``; when no tensor argument needs a gradient
    (inference, ``torch.no_grad()``), its ``forward`` alone, without an autograd node -- the same kernels and
    result, less host time per call (about 50 us for ``group_rational`` on the H200 machine's host)."""
    if torch.is_grad_enabled():
        for a in args:
            if isinstance(a, torch.Tensor) and a.requires_grad:
                return function.apply(*args)
    with torch.no_grad():
        return function.forward(_NoGradContext(len(args)), *args)

