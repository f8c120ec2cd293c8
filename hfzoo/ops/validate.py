"""Argument checks shared by every public op: one cheap layer between the caller and the kernels.

Every public op (``chunk_gla``, ``fused_recurrent_gla``, ``rms_norm_gated``, ``group_rational``, ``nearest_code``,
``varlen_alibi_attention``) calls these before it dispatches, so bad input gets a ``TypeError``/``ValueError``
naming the op and the argument instead of a crash, an out-of-bounds write or a silently wrong answer.

What is checked, and what it costs
----------------------------------
* Types, dtypes, ranks, shapes, devices: metadata only, free.
* dtypes: the Triton kernels take float32, float16 and bfloat16 (``KERNEL_DTYPES``); the references also take
  float64. With ``backend="auto"`` a float64 call runs the reference (correct, slower); forcing ``"triton"``
  with float64 is a ``TypeError`` (it would otherwise run in lower precision). Integer, bool and complex
  inputs are a ``TypeError`` on every path.
* Layout: kernels index raw pointers, so every tensor they receive is made contiguous here or in the op
  (a strided view is never passed raw); ``cu_seqlens`` is returned as a contiguous int32 tensor.
* ``cu_seqlens`` values (1-D integer, starts at 0, ends at ``total``, non-decreasing): reading values needs
  them on the host. CPU tensors: free. CUDA tensors: one small device-to-host copy (a sync) per distinct tensor
  -- the result is remembered per tensor object and version, so the layers of one forward that share one
  ``cu_seqlens`` pay it once. Skipped while a CUDA graph is being captured, under ``torch.compile`` tracing,
  and inside ``with trusted():`` (for callers that built the offsets themselves).
* Gate sign of GLA (``g <= 0``, log decays): a full read of ``g``. Checked for CPU tensors; for CUDA tensors
  only when ``HFZOO_CHECK_VALUES=1`` (it would cost a reduction and a sync per call). Positive gates (growth)
  are otherwise computed as written while ``e^(cumsum g)`` stays finite; they are not a supported input.

NaN semantics (the same on the reference and the Triton path; tested)
---------------------------------------------------------------------
* Sequences never contaminate each other: a NaN or inf in one sequence of a packed (``cu_seqlens``) batch or
  in one batch row leaves every other sequence's outputs and gradients unchanged (GLA, varlen attention).
* Inside a sequence NaN propagates as the math says (attention: to every query of that sequence; GLA: to
  every later output through the state, and in the chunked forms also to the earlier tokens of its chunk;
  row-wise ops: to that row).
* ``nearest_code``: a score that is NaN counts as +inf, so a code containing NaN is never chosen; a vector
  containing NaN gets index 0 and distance NaN.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .dispatch import requested_backend, resolve_backend
from .launch import getenv

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REFERENCE_DTYPES = KERNEL_DTYPES + (torch.float64,)
CHECK_VALUES_ENV = "HFZOO_CHECK_VALUES"

_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}
_trusted: contextvars.ContextVar[bool] = contextvars.ContextVar("hfzoo_trusted", default=False)
_checked_offsets: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _dtype_list(dtypes) -> str:
    return ", ".join(_NAMES.get(d, str(d)) for d in dtypes)


def check_tensor(op: str, name: str, t, *, dims=None, dtypes=REFERENCE_DTYPES, device=None) -> torch.Tensor:
    """Check one tensor argument: a ``torch.Tensor`` of a supported floating dtype, rank in ``dims``, on ``device``.

    ``dims`` is an int, a tuple of allowed ranks, or ``(n, None)`` for "at least n".
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must be one of {_dtype_list(dtypes)}; got {t.dtype}")
    if dims is not None:
        if isinstance(dims, tuple) and len(dims) == 2 and dims[1] is None:
            if t.dim() < dims[0]:
                raise ValueError(f"{op}: {name} must have at least {dims[0]} dimension(s); got shape {tuple(t.shape)}")
        elif t.dim() not in ((dims,) if isinstance(dims, int) else dims):
            raise ValueError(f"{op}: {name} must have {dims} dimensions; got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but the other inputs are on {device}")
    return t


def check_shape(op: str, name: str, t: torch.Tensor, expected: tuple, what: str = "") -> None:
    """``t.shape`` must equal ``expected``."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}{' ' + what if what else ''}; "
                         f"got {tuple(t.shape)}")


def kernel_dtype_problem(*tensors: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot take these tensors' dtypes (None when they can)."""
    if all(t.dtype in KERNEL_DTYPES for t in tensors if isinstance(t, torch.Tensor)):
        return None
    bad = sorted({_NAMES.get(t.dtype, str(t.dtype)) for t in tensors
                  if isinstance(t, torch.Tensor) and t.dtype not in KERNEL_DTYPES})
    if bad:
        return (f"the Triton kernels take {_dtype_list(KERNEL_DTYPES)}, got {', '.join(bad)} "
                f"(use backend='reference' or cast the inputs)")
    return None


def pick_backend(op: str, tensors, backend: str | None, problem: str | None = None, error=TypeError) -> str:
    """``"triton"`` or ``"reference"`` for this call; ``problem`` says why the kernels cannot take these inputs.

    With a problem, ``auto`` runs the reference and a forced ``"triton"`` raises ``error`` naming the problem.
    """
    choice = resolve_backend(*tensors, backend=backend, op=op)
    if choice == "triton" and problem is not None:
        if requested_backend(backend, op) == "triton":
            raise error(f"{op}: {problem}")
        return "reference"
    return choice


def make_contiguous(*tensors):
    """The tensors, made contiguous where they are not (None passes through)."""
    out = tuple(t if t is None or t.is_contiguous() else t.contiguous() for t in tensors)
    return out if len(out) != 1 else out[0]


@contextlib.contextmanager
def trusted():
    """Skip the checks that read tensor values (``cu_seqlens`` offsets, gate signs) inside the block.

    For callers that built ``cu_seqlens`` themselves and cannot afford a device sync (e.g. a loop of decoding
    steps); bad offsets inside the block are undefined behaviour, as in any raw kernel.
    """
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


def _values_readable(t: torch.Tensor) -> bool:
    if _trusted.get():
        return False
    if torch.compiler.is_compiling():
        return False
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    return True


def check_cu_seqlens(op: str, cu, total: int, device: torch.device, name: str = "cu_seqlens"):
    """Check packed-sequence offsets ``[0, ..., total]``; return ``(contiguous int32 tensor on device, offsets)``.

    ``offsets`` is the Python list of values when they were read (always for CPU tensors; once per tensor for
    CUDA ones, see the module docstring), else None. ``cu`` may live on the CPU for CUDA inputs (it is moved).
    """
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{op}: {name} must be an integer torch.Tensor, got {type(cu).__name__}")
    if cu.is_floating_point() or cu.is_complex() or cu.dtype == torch.bool:
        raise TypeError(f"{op}: {name} must be an integer tensor (int32 or int64); got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{op}: {name} must be a 1-D tensor [0, ..., {total}] with at least 2 entries; "
                         f"got shape {tuple(cu.shape)}")
    if cu.device != device and cu.device.type != "cpu":
        raise ValueError(f"{op}: {name} is on {cu.device} but the inputs are on {device}")
    if total >= 2 ** 31:
        raise ValueError(f"{op}: {total} packed tokens do not fit the kernels' int32 offsets")
    offsets = None
    if _values_readable(cu):
        seen = _checked_offsets.get(cu)
        if seen is not None and seen[0] == cu._version and seen[1] == total:
            offsets = seen[2]
        else:
            offsets = cu.tolist()  # the one host read (a sync for CUDA tensors)
            bad = offsets[0] != 0 or offsets[-1] != total or any(b < a for a, b in zip(offsets, offsets[1:]))
            if bad:
                shown = offsets if len(offsets) <= 12 else offsets[:6] + ["..."] + offsets[-3:]
                raise ValueError(f"{op}: {name} must rise (non-decreasing) from 0 to the packed length {total}; "
                                 f"got {shown}")
            _checked_offsets[cu] = (cu._version, total, offsets)
    out = cu.to(device=device, dtype=torch.int32)
    return make_contiguous(out), offsets


def check_nonpositive(op: str, name: str, t: torch.Tensor, what: str = "log decays") -> None:
    """``t <= 0`` everywhere (NaN passes), checked where free (CPU) or when ``HFZOO_CHECK_VALUES=1``."""
    if t.numel() == 0 or not _values_readable(t):
        return
    if t.is_cuda and getenv(CHECK_VALUES_ENV, "0") in ("", "0"):
        return
    if bool((t > 0).any()):
        raise ValueError(f"{op}: {name} must be {what} <= 0 (e.g. logsigmoid(x)); the largest entry is "
                         f"{t.max().item():.4g}")


__all__ = ["CHECK_VALUES_ENV", "KERNEL_DTYPES", "REFERENCE_DTYPES", "check_cu_seqlens", "check_nonpositive",
           "check_shape", "check_tensor", "kernel_dtype_problem", "make_contiguous", "pick_backend", "trusted"]
