"""Kernels: each op module holds Triton kernels, a PyTorch reference and the call that picks one.

Shared plumbing: ``dispatch`` (which backend runs: Triton on CUDA tensors, the reference elsewhere),
``validate`` (argument checks every public op runs first), ``launch`` (SM count, launch-settings table with
``HFZOO_TUNE`` / ``tuning()`` overrides, launch counter).
"""

from .dispatch import BACKEND_ENV, interpreter_enabled, resolve_backend, use_backend
from .launch import count_launches, launch_counts, tuning
from .rmsnorm import rms_norm_gated, rms_norm_gated_reference
from .triton_shim import HAS_TRITON

__all__ = ["BACKEND_ENV", "HAS_TRITON", "count_launches", "interpreter_enabled", "launch_counts", "resolve_backend",
           "rms_norm_gated", "rms_norm_gated_reference", "tuning", "use_backend"]
