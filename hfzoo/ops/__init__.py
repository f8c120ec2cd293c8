"""Kernels: each op module holds Triton kernels, a PyTorch reference and the call that picks one."""

from .dispatch import BACKEND_ENV, interpreter_enabled, resolve_backend, use_backend
from .rmsnorm import rms_norm_gated, rms_norm_gated_reference
from .triton_shim import HAS_TRITON

__all__ = ["BACKEND_ENV", "HAS_TRITON", "interpreter_enabled", "resolve_backend", "use_backend",
           "rms_norm_gated", "rms_norm_gated_reference"]
