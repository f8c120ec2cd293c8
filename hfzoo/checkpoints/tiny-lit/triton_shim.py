"""Import Triton if it is installed; otherwise stand in for it so kernel modules still import.

Kernel modules write ``from .triton_shim import triton, tl`` and decorate kernels with ``@triton.jit``
as usual. Without Triton, the decorators return a placeholder that raises a clear error when launched,
and ``tl.<anything>`` resolves to an inert object so kernel signatures (``BLOCK: tl.constexpr``) still
evaluate. The dispatcher never picks the Triton backend when ``HAS_TRITON`` is false, so the placeholder
is only reached by code that bypasses it.
"""

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs without Triton: reference kernels only
    HAS_TRITON = False

    class _Inert:
        def __getattr__(self, name):
            return _Inert()

        def __call__(self, *args, **kwargs):
            return _Inert()

    class _MissingKernel:
        def __init__(self, fn):
            self.fn = fn
            self.__name__ = getattr(fn, "__name__", "kernel")

        def __getitem__(self, grid):
            raise RuntimeError(f"Triton is not installed: cannot launch kernel {self.__name__!r}")

    class _MissingTriton:
        Config = _Inert()

        @staticmethod
        def jit(fn=None, **kwargs):
            if fn is None:
                return _MissingKernel
            return _MissingKernel(fn)

        @staticmethod
        def autotune(*args, **kwargs):
            return lambda fn: fn

        @staticmethod
        def heuristics(*args, **kwargs):
            return lambda fn: fn

        @staticmethod
        def cdiv(a, b):
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n):
            return 1 << max(int(n) - 1, 0).bit_length()

    triton = _MissingTriton()
    tl = _Inert()

__all__ = ["HAS_TRITON", "triton", "tl"]
