"""How kernels are launched: device facts, one table of launch settings, overrides, and a launch counter.

Every op module asks this module, and only this one:

* ``is_interpreted()`` -- are ``@triton.jit`` kernels run by Triton's CPU interpreter (``TRITON_INTERPRET=1``)?
* ``sm_count(device)`` -- streaming multiprocessors of a CUDA device (cached); ``INTERPRETER_SM_COUNT`` (a small
  constant) for CPU tensors, so persistent grids stay small under the interpreter;
* ``persistent_grid(n_tiles, device, per_sm)`` -- how many programs a persistent kernel launches;
* ``bucket(n, lo)`` -- the power of two an autotune key or a constexpr is rounded up to (coarse keys: a new
  sequence length or batch size does not compile or tune again);
* ``settings("<op>.<kernel>", **shape_defaults)`` -- the launch settings of one kernel (below);
* ``launch(name, kernel, grid, *args, configs=None, key=None, **kwargs)`` -- launch and count one kernel,
  autotuning over ``configs`` when there are several.

Launch settings
---------------
``DEFAULTS`` maps ``"<op>.<kernel>"`` to that kernel's settings: tile sizes, ``num_warps``/``num_stages``, op
specific switches, or a short list of autotune ``configs``. ``settings(name, **shape_defaults)`` returns, from
least to most specific:

1. ``DEFAULTS[name]`` (measured on an H200; see ``benchmarks/NOTES.md``);
2. ``DEFAULTS[name]["interpreted"]`` when the interpreter runs the kernels (small tiles: CPU test time);
3. ``shape_defaults`` -- values the op computes from the shapes (e.g. ``BV=64`` for a given head dim);
4. the environment variable ``HFZOO_TUNE``: JSON ``{"<op>.<kernel>": {"num_warps": 8}, ...}``, read per call;
5. the innermost ``tuning({...})`` blocks, outermost first (for sweeps; nothing mutates module globals).

Only kernel names in ``DEFAULTS`` are accepted (a typo is an error, not a silent no-op).

Launch counter
--------------
Ops launch through ``launch()`` (or call ``note_launch(name)`` where they launch themselves), so tests can
check that a "kernel path" really ran kernels: ``with count_launches() as n: ...; assert n["rmsnorm.fwd"] == 1``
or ``n.total()``; ``launch_counts()`` is the process-wide tally since import.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import threading

import torch

from .triton_shim import HAS_TRITON, triton

TUNE_ENV = "HFZOO_TUNE"
# CPU tensors (the interpreter, or a compile check on the CPU) see a small machine: persistent kernels then
# launch few programs, each walking several tiles -- the path a large GPU input takes.
INTERPRETER_SM_COUNT = 2
_COMPILE_OPTIONS = ("num_warps", "num_stages", "maxnreg")


_ENVIRON_DATA = getattr(os.environ, "_data", None)
_ENVIRON_ENCODE = getattr(os.environ, "encodekey", None)
_ENVIRON_DECODE = getattr(os.environ, "decodevalue", None)
_encoded_keys: dict[str, object] = {}


def getenv(name: str, default: str | None = None) -> str | None:
    """``os.environ.get(name, default)`` for the variables ops read on every call.

    Reads ``os.environ``'s own (encoded) store with the key encoded once, instead of encoding the key on each
    lookup (~1 us per read on the GPU machine's host; an op call made several). Changes through ``os.environ``
    (``monkeypatch.setenv`` included) are seen at once, as with ``os.environ.get``.
    """
    if _ENVIRON_DATA is None or _ENVIRON_ENCODE is None or _ENVIRON_DECODE is None:
        return os.environ.get(name, default)
    key = _encoded_keys.get(name)
    if key is None:
        key = _encoded_keys[name] = _ENVIRON_ENCODE(name)
    value = _ENVIRON_DATA.get(key)
    return default if value is None else _ENVIRON_DECODE(value)


def is_interpreted() -> bool:
    """True when ``@triton.jit`` kernels run through Triton's CPU interpreter (``TRITON_INTERPRET=1``).

    The flag must be set before Triton and the kernel modules are imported (Triton reads it when a kernel is
    decorated), so this reports the environment the process was started with.
    """
    return getenv("TRITON_INTERPRET", "0").strip() not in ("", "0")


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device | str | int | None = None) -> int:
    """Streaming multiprocessors of ``device`` (cached per device); ``INTERPRETER_SM_COUNT`` for non-CUDA devices."""
    if device is None:
        if not torch.cuda.is_available():
            return INTERPRETER_SM_COUNT
        device = torch.device("cuda", torch.cuda.current_device())
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type != "cuda":
        return INTERPRETER_SM_COUNT
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


def persistent_grid(n_tiles: int, device=None, per_sm: int = 1) -> int:
    """Programs for a persistent kernel over ``n_tiles`` tiles: ``per_sm`` per SM, never more than the tiles."""
    return max(1, min(int(n_tiles), int(per_sm) * sm_count(device)))


def bucket(n: int, lo: int = 16) -> int:
    """The next power of two ``>= n``, at least ``lo``: a coarse autotune key or block size."""
    n = max(int(n), int(lo), 1)
    return 1 << (n - 1).bit_length()


# ----------------------------------------------------------------------------------------------------
# The table. Keys are "<op>.<kernel>"; "interpreted" overlays apply under TRITON_INTERPRET=1. Values that
# depend on shapes are computed by the op and passed to settings() as shape_defaults.

DEFAULTS: dict[str, dict] = {
    # rmsnorm.py. fwd: rows per program = min(max_rows, tile // BLOCK_D). bwd: persistent, programs_per_sm
    # programs per SM, each walks its rows and writes one partial weight gradient.
    "rmsnorm.fwd": {"tile": 4096, "max_rows": 16, "num_warps": 4},
    "rmsnorm.bwd": {"tile": 4096, "max_rows": 16, "num_warps": 4, "programs_per_sm": 4},
    # group_rational.py (benchmarks/NOTES.md). fwd: bytes of x per thread per tile. bwd (per element size of the
    # wider of x and dy): values per thread per row block, programs per SM (persistent over rows), max_chunk (columns
    # per chunk, the unit whose coefficients a thread holds once and whose sums stay in the thread; None = one
    # 16-byte load, 1 = single columns), prefetch (load the next row block before computing the current one).
    # coef_grad: how the coefficient gradients are summed over the backward's programs -- "kernel": partials per
    # program and chunk, summed by a second kernel on [BLOCK_P programs, BLOCK_K chunks] tiles; "last_program": partials
    # per program and group, summed in fixed order by the last program to finish (an atomic ticket; one launch, the
    # same bits every run; it loads [BLOCK_P programs, all partials of a program] tiles of at most last_program_tile
    # values); "atomic": atomic adds of each program's per-group sums (FlashKAT's scheme; order-dependent bits).
    "group_rational.fwd": {"bytes_per_thread": 32, "num_warps": 4,
                           "interpreted": {"bytes_per_thread": 64, "num_warps": 2}},
    "group_rational.bwd_fp32": {"values_per_thread": 8, "num_warps": 8, "programs_per_sm": 8, "max_chunk": None,
                                "prefetch": True,
                                "interpreted": {"values_per_thread": 8, "num_warps": 4, "programs_per_sm": 2}},
    "group_rational.bwd_16bit": {"values_per_thread": 16, "num_warps": 4, "programs_per_sm": 8, "max_chunk": None,
                                 "prefetch": True,
                                 "interpreted": {"values_per_thread": 8, "num_warps": 4, "programs_per_sm": 2}},
    "group_rational.coef_grad": {"reduce": "kernel", "BLOCK_P": 64, "BLOCK_K": 64, "last_program_tile": 8192,
                                 "num_warps": 8,
                                 "interpreted": {"BLOCK_P": 4, "BLOCK_K": 4, "last_program_tile": 64}},
    # rational_linear.py: F(x) @ W^T with the group rational in the GEMM's prologue, autotuned (key N, K). fwd: output
    # tiles BLOCK_M x BN0; fwd_wide (N <= max_n, KAT's fc2): one program covers all of N (BN0 + BN1 set by the op), so
    # the prologue runs once per element. A K tile inside one group (BLOCK_K dividing the group size) loads its
    # coefficients as scalars, otherwise per column. sm_90 (Triton 3.9 on the CPU, ints and pointers specialised as
    # the JIT does, ptxas -v): every config below compiles without spills for KAT-S (fc1 K 384 -> N 1536: 119-244
    # registers; fc2 1536 -> 384: 143-249); 128 x 384 with 32-column K tiles spills.
    # fwd.fused: whether rational_linear() uses the fused forward (else the rational kernel + cuBLAS). mlp: which of
    # grkan_mlp's two linears use the fused kernels, and whether fp32 matmuls do.
    "rational_linear.fwd": {"fused": False, "configs": [
        {"BLOCK_M": 128, "BN0": 256, "BLOCK_K": 16, "num_warps": 8, "num_stages": 3},
        {"BLOCK_M": 128, "BN0": 128, "BLOCK_K": 16, "num_warps": 8, "num_stages": 4},
        {"BLOCK_M": 128, "BN0": 256, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3},
        {"BLOCK_M": 128, "BN0": 128, "BLOCK_K": 32, "num_warps": 8, "num_stages": 4}],
        "interpreted": {"configs": [{"BLOCK_M": 16, "BN0": 32, "BLOCK_K": 32}]}},
    "rational_linear.fwd_wide": {"max_n": 512, "configs": [
        {"BLOCK_M": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3},
        {"BLOCK_M": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 4},
        {"BLOCK_M": 64, "BLOCK_K": 16, "num_warps": 8, "num_stages": 4},
        {"BLOCK_M": 128, "BLOCK_K": 16, "num_warps": 8, "num_stages": 3}],
        "interpreted": {"configs": [{"BLOCK_M": 16, "BLOCK_K": 16}]}},
    # bwd: dF = dY @ W with the rational's backward in the epilogue (dF never written): tile BLOCK_M x BLOCK_K of dF
    # over BLOCK_N-wide steps of the output features; BLOCK_K the largest power of two <= max_block_k dividing the
    # group size if >= min_uniform_k (one group per tile: one partial per tile), else max_block_k (per-column
    # partials). "fused": whether rational_linear's backward uses it (grkan_mlp: mlp.fuse_bwd_fc1 / _fc2).
    "rational_linear.bwd": {"BLOCK_M": 64, "BLOCK_N": 64, "max_block_k": 64, "min_uniform_k": 32, "num_warps": 8,
                            "num_stages": 3, "fused": False,
                            "interpreted": {"BLOCK_M": 16, "BLOCK_N": 16, "max_block_k": 32, "min_uniform_k": 16}},
    # Measured on the H200 (2026-12-01 night, benchmarks/NOTES.md): both fused kernels are slower than the rational
    # kernel + cuBLAS at KAT-S's shapes (forward fc1 0.199 vs 0.072 ms, fc2 0.124 vs 0.086 ms; fused backward +0.15
    # to +0.68 ms per MLP), so they are off by default: grkan_mlp runs the unfused kernels as one autograd node.
    "rational_linear.mlp": {"fuse_fc1": False, "fuse_fc2": False, "fuse_bwd_fc1": False, "fuse_bwd_fc2": False,
                            "fuse_fp32": False},
    # nearest_code.py: scores passes autotuned over these (key: power-of-two buckets of N and K, D and the pass's
    # switches). Every config compiles without spills in its loop (sm_90 SASS) and fits shared memory (227 KB);
    # 256-row tiles halve the codebook's L2 -> SM traffic (the codebook is re-read once per row block); OVERLAP
    # issues the next tile's dot before reducing the current one (Triton 3.6 then interleaves the wgmma with the
    # compares instead of waiting for it first). The 2026-12-01 sweep (benchmarks/NOTES.md) measured 16-bit
    # 128 x 64 / 8 warps fastest of the 128-row configs, bf16x3 candidates fastest at 64 x 64 (before the 256-row
    # and OVERLAP configs existed). "candidates" is the exact mode's first pass (TOP2: three
    # values per slot), "prepare" its codebook pass, "collect" lists the candidates of unsettled rows over
    # "codebook_parts" codebook slices, "resolve" scores them in fp64 (persistent). "exact": the candidates pass
    # for fp32 inputs, the list length per row (more -> a full fp64 scan of the row), the bound's safety factor.
    # "vq": the SimVQ quantizer's gather + loss (with the fp64 step of its block's rows) and backward kernels.
    "nearest_code.fwd_fp32": {"configs": [
        {"BLOCK_M": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 2},
        {"BLOCK_M": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3},
        {"BLOCK_M": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}],
        "interpreted": {"configs": [{"BLOCK_M": 32, "BLOCK_K": 32}]}},
    "nearest_code.fwd_16bit": {"configs": [
        {"BLOCK_M": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3},
        {"BLOCK_M": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3, "OVERLAP": True},
        {"BLOCK_M": 256, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3},
        {"BLOCK_M": 256, "BLOCK_K": 32, "num_warps": 8, "num_stages": 4, "OVERLAP": True}],
        "interpreted": {"configs": [{"BLOCK_M": 32, "BLOCK_K": 32}]}},
    # TOP2 keeps three values per slot: these compile without spills (sm_90). No OVERLAP here: with bf16x3's
    # three chained dots Triton 3.6 waits after every wgmma when the result crosses the iteration.
    "nearest_code.candidates": {"configs": [
        {"BLOCK_M": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 2},
        {"BLOCK_M": 256, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3},
        {"BLOCK_M": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}],
        "interpreted": {"configs": [{"BLOCK_M": 32, "BLOCK_K": 32}]}},
    "nearest_code.prepare": {"BLOCK_K": 32, "num_warps": 4, "interpreted": {"BLOCK_K": 16}},
    "nearest_code.vq": {"BLOCK_M": 64, "BLOCK_K": 32, "num_warps": 4, "interpreted": {"BLOCK_M": 16}},
    "nearest_code.collect": {"BLOCK_M": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2, "codebook_parts": 8,
                             "interpreted": {"BLOCK_M": 16, "BLOCK_K": 32, "codebook_parts": 2}},
    "nearest_code.resolve": {"BLOCK_K": 32, "num_warps": 4, "programs_per_sm": 8,
                             "interpreted": {"BLOCK_K": 32, "programs_per_sm": 2}},
    "nearest_code.exact": {"candidates": "bf16x3", "max_candidates": 16, "bound_scale": 2.0,
                           "interpreted": {"candidates": "tf32"}},  # the interpreter's bf16 dots are not exact
    # varlen_alibi_attention.py: autotuned (key: head-dim block and a power-of-two bucket of the longest
    # sequence). Under the interpreter one 16 x 16 tile, so short test sequences cross block edges.
    "varlen_alibi.fwd": {"configs": [
        {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
        {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
        {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2}],
        "interpreted": {"configs": [{"BLOCK_M": 16, "BLOCK_N": 16}]}},
    # bwd: one kernel; BLOCK = keys (dK/dV phase) and queries (dQ phase) owned by a program, STEP = the tile it walks
    # over the sequence with; SPLIT: the two phases in separate programs of the same launch (twice the programs, half
    # the work each). Mid-round sweep (H200, before SPLIT existed): 128 x 32 with 4 warps beat 64 x 64, 128 x 64,
    # 64 x 32 and 8-warp variants clearly. Under the interpreter BLOCK != STEP so tests cross both kinds of tile edge.
    "varlen_alibi.bwd": {"configs": [
        {"BLOCK": 128, "STEP": 32, "SPLIT": False, "num_warps": 4, "num_stages": 3},
        {"BLOCK": 128, "STEP": 32, "SPLIT": True, "num_warps": 4, "num_stages": 3}],
        "interpreted": {"configs": [{"BLOCK": 32, "STEP": 16, "SPLIT": True}]}},
    # geglu.py: one row per program, BLOCK of its I outputs (MosaicBERT's GeGLU); elementwise, bandwidth bound.
    # Mid round (H200, [8993, 2 x 3072] bf16, dropout 0.1, one Philox call per element): fwd 114 us, bwd 130 us.
    "geglu.fwd": {"BLOCK": 1024, "num_warps": 4, "interpreted": {"BLOCK": 16}},
    "geglu.bwd": {"BLOCK": 1024, "num_warps": 4, "interpreted": {"BLOCK": 16}},
    # softmax_cross_entropy.py: one row per program, walking the classes BLOCK at a time.
    "softmax_ce.fwd": {"BLOCK": 2048, "num_warps": 8, "interpreted": {"BLOCK": 16}},
    "softmax_ce.bwd": {"BLOCK": 2048, "num_warps": 8, "interpreted": {"BLOCK": 16}},
    # linear_attention.py (LiT's mixer), measured by `benchmarks/lit.py --sweep` on an H200 (LiT-XL, 4 heads of
    # 288, 4096 tokens; benchmarks/results/lit.json rows "hfzoo_tune"): tokens per block BLOCK_N; BLOCK_D tiles
    # both head dims (None: 64, or 32 where 64 pads the head dim by more than 1/8).
    "linear_attention.state": {"BLOCK_N": 64, "BLOCK_D": None, "num_warps": 4, "interpreted": {"BLOCK_N": 16, "BLOCK_D": 16}},
    "linear_attention.out": {"BLOCK_N": 64, "BLOCK_D": None, "num_warps": 4, "interpreted": {"BLOCK_N": 16, "BLOCK_D": 16}},
    "linear_attention.bwd_delta": {"BLOCK_N": 64, "BLOCK_D": None, "num_warps": 4, "interpreted": {"BLOCK_N": 16, "BLOCK_D": 16}},
    "linear_attention.bwd_state": {"BLOCK_N": 64, "BLOCK_D": None, "num_warps": 4, "interpreted": {"BLOCK_N": 16, "BLOCK_D": 16}},
    "linear_attention.bwd_qkv": {"BLOCK_N": 64, "BLOCK_D": None, "num_warps": 4, "interpreted": {"BLOCK_N": 16, "BLOCK_D": 16}},
    # gla_recurrent.py: the register-resident state slice [BK, BV] holds at most max_state fp32 values.
    "gla.fused_recurrent": {"max_state": 8192, "max_bv": 64},
    # gla_chunk.py: tile sizes and warps are computed from K and V (gla_chunk._conf) and passed as shape_defaults;
    # entries here or in HFZOO_TUNE override them (BK, BV, num_warps, num_stages). fwd_h serves both state scans.
    "gla.prep": {},
    "gla.fwd_h": {},
    "gla.fwd_A": {},
    "gla.fwd_o": {},
    "gla.bwd_dh": {},
    "gla.bwd_dv": {},
    "gla.bwd_dqk": {},
}

class _TuningBlocks:
    """The active ``tuning()`` blocks, process-wide rather than per thread: autograd runs CUDA backward passes on
    a thread of its own, which a per-thread (context variable) setting made in the caller's thread would not reach,
    so a sweep would time the backward kernels' defaults every time."""

    def __init__(self):
        self._blocks: tuple = ()
        self._lock = threading.Lock()

    def get(self) -> tuple:
        return self._blocks

    def push(self, block: dict) -> None:
        with self._lock:
            self._blocks = self._blocks + (block,)

    def remove(self, block: dict) -> None:
        with self._lock:
            self._blocks = tuple(b for b in self._blocks if b is not block)


_tuning = _TuningBlocks()


def _check_overrides(overrides, source: str) -> dict[str, dict]:
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise ValueError(f"{source} must map kernel names to dicts, e.g. {{\"gla.fwd_o\": {{\"num_warps\": 8}}}}; "
                         f"got {overrides!r}")
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{source}: unknown kernel name(s) {unknown}; known: {sorted(DEFAULTS)}")
    return overrides


@functools.lru_cache(maxsize=8)
def _env_overrides(raw: str) -> dict[str, dict]:
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{TUNE_ENV} must be JSON, e.g. '{{\"gla.fwd_o\": {{\"num_warps\": 8}}}}'; got {raw!r}") from e
    return _check_overrides(parsed, f"environment variable {TUNE_ENV}")


_merged: dict = {}


def settings(kernel: str, **shape_defaults) -> dict:
    """Launch settings of ``kernel`` (``"<op>.<kernel>"``): defaults, then overrides (see the module docstring).

    Returns a fresh dict the caller may modify (its nested values, e.g. config lists, are shared: replace them
    rather than change them in place). Outside ``tuning()`` blocks the merge is remembered per kernel, shape
    defaults, ``HFZOO_TUNE`` and interpreter flag, so an op pays one lookup per launch.
    """
    if not _tuning.get():
        try:
            key = (kernel, getenv(TUNE_ENV), is_interpreted(),
                   tuple(sorted(shape_defaults.items())) if shape_defaults else ())
            hit = _merged.get(key)
        except TypeError:  # an unhashable shape default: merge every time
            key = hit = None
        if hit is None:
            hit = _merge(kernel, shape_defaults)
            if key is not None:
                _merged[key] = hit
        return dict(hit)
    return _merge(kernel, shape_defaults)


def settings_token():
    """A hashable value that changes whenever ``settings()`` may return something else (``HFZOO_TUNE``, the
    interpreter flag), or None inside ``tuning()`` blocks: ops may cache what they derive from settings under it,
    and must not cache when it is None."""
    if _tuning.get():
        return None
    return getenv(TUNE_ENV), is_interpreted()


def _merge(kernel: str, shape_defaults: dict) -> dict:
    try:
        base = DEFAULTS[kernel]
    except KeyError:
        raise KeyError(f"no launch settings for kernel {kernel!r}; known: {sorted(DEFAULTS)}") from None
    out = {k: v for k, v in base.items() if k != "interpreted"}
    if is_interpreted():
        out.update(base.get("interpreted", {}))
    out.update(shape_defaults)
    raw = getenv(TUNE_ENV, "").strip()
    if raw:
        out.update(_env_overrides(raw).get(kernel, {}))
    for block in _tuning.get():
        out.update(block.get(kernel, {}))
    return out


@contextlib.contextmanager
def tuning(overrides: dict[str, dict]):
    """Override launch settings inside a block: ``with tuning({"gla.fwd_o": {"num_warps": 8}}): ...``.

    Blocks nest (the innermost wins per key) and are undone on exit, also when a candidate raises, so a sweep
    never leaves modified settings behind. They hold process-wide, so they reach the backward kernels that
    autograd launches from its own thread; sweeps are meant to run one at a time.
    """
    _check_overrides(overrides, "tuning()")
    block = {k: dict(v) for k, v in overrides.items()}
    _tuning.push(block)
    try:
        yield
    finally:
        _tuning.remove(block)


def compile_options(conf: dict) -> dict:
    """The Triton compile options (``num_warps``, ``num_stages``, ``maxnreg``) of a settings dict, if given."""
    return {k: conf[k] for k in _COMPILE_OPTIONS if conf.get(k) is not None}


# ----------------------------------------------------------------------------------------------------
# Launching and counting

_counts: collections.Counter = collections.Counter()
_scopes: list[collections.Counter] = []


def note_launch(kernel: str, n: int = 1) -> None:
    """Record that ``kernel`` (``"<op>.<kernel>"``) was launched ``n`` times (``launch()`` does this itself)."""
    _counts[kernel] += n
    for scope in _scopes:
        scope[kernel] += n


def launch_counts() -> dict[str, int]:
    """Launches per kernel name since the process started (a copy)."""
    return dict(_counts)


@contextlib.contextmanager
def count_launches():
    """Count the kernel launches made inside the block: yields a ``collections.Counter`` keyed by kernel name.

    ``with count_launches() as n: model(x)`` then ``n.total() > 0``, ``n["rmsnorm.fwd"]``. Reference-path ops
    launch nothing, so an empty counter means no Triton kernel ran.
    """
    scope: collections.Counter = collections.Counter()
    _scopes.append(scope)
    try:
        yield scope
    finally:   # by identity: Counters with equal counts compare equal, and nested scopes often have them
        del _scopes[next(i for i, s in enumerate(_scopes) if s is scope)]


def _split_config(conf: dict):
    meta = {k: v for k, v in conf.items() if k not in _COMPILE_OPTIONS}
    return meta, compile_options(conf)


@functools.cache
def _autotuner(kernel, configs: tuple, key: tuple):
    cfgs = []
    for conf in configs:
        meta, opts = _split_config(dict(conf))
        cfgs.append(triton.Config(meta, **opts))
    return triton.autotune(configs=cfgs, key=list(key))(kernel)


def _freeze(configs) -> tuple:
    return tuple(tuple(sorted(c.items())) for c in configs)


# ----------------------------------------------------------------------------------------------------
# The fast launch path (CUDA, Triton 3.6 - 3.9)
#
# ``kernel[grid](...)`` spends most of its host time (about 14 us per call on the H200 machine's host, against
# 5.5 us for the compiled launcher alone) re-deriving what it derived the last time: binding the arguments,
# specialising each one, building the cache key from a string of the options, checking globals and hooks. A
# whole-model step makes hundreds of such launches, and several steps are bound by the host (benchmarks/NOTES.md).
# Here the compiled kernel that Triton's own launch returned is remembered under a key that is at least as fine as
# Triton's specialisation: the current device; per runtime argument its type class -- tensors: dtype and whether the
# address is 16-byte aligned; ints: == 1, divisible by 16, and the i32 / i64 / u64 range; floats, bools, None --
# and the value of every constexpr; and every keyword (constexprs and compile options). A later launch with the
# same key calls the compiled launcher directly. Anything else (an unknown argument type, a runtime argument
# passed by keyword, launch hooks installed, pre-run hooks, the interpreter) takes Triton's own path, which also
# compiles on a miss. ``HFZOO_FAST_LAUNCH=0`` (read at import) or ``fast_launch(False)`` turns the path off.

FAST_LAUNCH_ENV = "HFZOO_FAST_LAUNCH"
_fast_enabled = os.environ.get(FAST_LAUNCH_ENV, "1").strip() not in ("0", "false", "False")
_fast_entries: dict = {}
_fast_kernels: dict = {}
_fast_runtime: list = []   # [get_current_device, get_current_stream, knobs.runtime], filled on first use


class _NoFastPath(Exception):
    pass


def _triton_version_ok() -> bool:
    try:
        major, minor = (int(p) for p in triton.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        return False
    return (3, 6) <= (major, minor) <= (3, 9)


_FAST_SUPPORTED = HAS_TRITON and _triton_version_ok()   # False for good once Triton finds no GPU driver


@contextlib.contextmanager
def fast_launch(enabled: bool):
    """Turn the fast launch path on or off inside a block (process-wide; for tests and A/B timing)."""
    global _fast_enabled
    before = _fast_enabled
    _fast_enabled = bool(enabled)
    try:
        yield
    finally:
        _fast_enabled = before


def _kernel_facts(kernel):
    """(arg names, constexpr flags, defaults) of a ``@triton.jit`` function, or None when it is not one."""
    facts = _fast_kernels.get(kernel)
    if facts is None:   # the interpreter's kernels (no ``params``) and kernels with pre-run hooks: Triton's path
        params = getattr(kernel, "params", None)
        if params is None or getattr(kernel, "pre_run_hooks", None):
            facts = False
        else:
            facts = (tuple(p.name for p in params), tuple(bool(p.is_constexpr) for p in params),
                     tuple(p.default for p in params))
        _fast_kernels[kernel] = facts
    return facts


_I32 = 2 ** 31
_I64 = 2 ** 63


def _arg_class(a):
    """The part of a runtime argument that Triton specialises on (or more of it)."""
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    t = type(a)
    if t is int:
        return (a == 1, a % 16 == 0, a >= _I32 or a < -_I32, a >= _I64)
    if t is float or a is None:
        return t
    if t is bool:
        return (t, a)
    raise _NoFastPath


def _hooks_idle(rt) -> bool:
    for hook in (rt.launch_enter_hook, rt.launch_exit_hook):
        if hook is not None and (not hasattr(hook, "calls") or hook.calls):
            return False
    return True


def _launch_fast(kernel, grid, args, kwargs):
    """Launch through the remembered compiled kernel; False when this launch must take Triton's own path."""
    facts = _kernel_facts(kernel)
    if not facts:
        return False
    global _FAST_SUPPORTED
    names, constexpr, defaults = facts
    n = len(args)
    if not _fast_runtime:
        try:
            from triton import knobs
            from triton.runtime import driver

            _fast_runtime.extend([driver.active.get_current_device, driver.active.get_current_stream, knobs.runtime])
        except Exception:   # no GPU driver (e.g. compiling kernels for a GPU on a CPU machine): Triton's path only
            _FAST_SUPPORTED = False
            return False
    get_device, get_stream, rt = _fast_runtime
    if not _hooks_idle(rt):
        return False
    device = get_device()
    try:
        key = (kernel, device, tuple(a if c else _arg_class(a) for a, c in zip(args, constexpr)),
               tuple(kwargs.items()))
        entry = _fast_entries.get(key)
    except (_NoFastPath, TypeError):   # an argument type the key does not model, or an unhashable constexpr
        return False
    if entry is None:
        if any(name in kwargs and not c for name, c in zip(names[n:], constexpr[n:])):
            return False               # a runtime argument passed by keyword: keep Triton's path
        compiled = kernel[grid](*args, **kwargs)
        if compiled is not None and not hasattr(compiled, "result"):
            tail = tuple(kwargs.get(name, d) for name, d in zip(names[n:], defaults[n:]))
            _fast_entries[key] = (compiled.run, compiled.function, compiled.packed_metadata, tail)
        return True
    run, function, metadata, tail = entry
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    run(grid[0], g1, g2, get_stream(device), function, metadata, None, None, None, *args, *tail)
    return True


_tuned_picks: dict = {}


def _tuned_key(kernel, frozen, keys, args, kwargs):
    """The key under which an autotuned launch's pick is remembered: what Triton's autotuner keys on (the values of
    the ``key`` arguments and the dtypes of the tensor arguments) plus the kernel and its config list; None when the
    kernel is not one the fast path handles."""
    facts = _kernel_facts(kernel)
    if not facts:
        return None
    names = facts[0]
    values = []
    for k in keys:
        i = names.index(k) if k in names else -1
        if 0 <= i < len(args):
            values.append(args[i])
        elif k in kwargs:
            values.append(kwargs[k])
    dtypes = tuple(a.dtype for a in args if isinstance(a, torch.Tensor))
    dtypes += tuple(v.dtype for v in kwargs.values() if isinstance(v, torch.Tensor))
    try:
        out = (kernel, frozen, tuple(values), dtypes)
        hash(out)
    except TypeError:
        return None
    return out


def tuned_pick(kernel, configs, key, args, kwargs) -> dict | None:
    """The config the autotuner picked for this launch (as ``launch()`` remembers it for the fast path), or None
    while it is not tuned or off the fast path. An op may then launch that config alone (``configs=[pick]``)."""
    if not (_fast_enabled and _FAST_SUPPORTED):
        return None
    pick_key = _tuned_key(kernel, _freeze(configs), tuple(key or ()), args, kwargs)
    return None if pick_key is None else _tuned_picks.get(pick_key)


def launch(name: str, kernel, grid, *args, configs=None, key=None, **kwargs):
    """Launch ``kernel[grid](*args, **kwargs)`` and count it under ``name``.

    ``grid`` is a tuple or a function of the launch's meta-parameters (as in Triton). With ``configs`` (dicts of
    constexprs plus ``num_warps``/``num_stages``): one config is launched directly; several are autotuned
    over the argument names in ``key`` (one autotuner per kernel, config list and key, built on first use).
    On CUDA every launch goes through the fast launch path above; an autotuned one once its key has been tuned
    (Triton's autotuner picks the config, which is then launched like a single config).
    """
    if not HAS_TRITON:
        raise RuntimeError(f"Triton is not installed: cannot launch kernel {name!r}")
    note_launch(name)
    fast = _fast_enabled and _FAST_SUPPORTED
    if configs is not None and len(configs) > 1:
        frozen, keys = _freeze(configs), tuple(key or ())
        pick_key = _tuned_key(kernel, frozen, keys, args, kwargs) if fast else None
        pick = _tuned_picks.get(pick_key) if pick_key is not None else None
        if pick is None:
            tuned = _autotuner(kernel, frozen, keys)
            out = tuned[grid](*args, **kwargs)
            best = getattr(tuned, "best_config", None)
            if pick_key is not None and best is not None:
                _tuned_picks[pick_key] = best.all_kwargs()
            return out
        configs = [pick]   # the autotuner's pick for this key: launched like a single config
    if configs:
        meta, opts = _split_config(configs[0])
        kwargs = {**kwargs, **meta, **opts}
    if callable(grid):
        grid = grid(kwargs)
    if fast and _launch_fast(kernel, grid, args, kwargs):
        return None
    return kernel[grid](*args, **kwargs)


__all__ = ["DEFAULTS", "FAST_LAUNCH_ENV", "INTERPRETER_SM_COUNT", "TUNE_ENV", "bucket", "compile_options",
           "count_launches", "fast_launch", "getenv", "is_interpreted", "launch", "launch_counts", "note_launch",
           "persistent_grid", "settings", "settings_token", "sm_count", "tuned_pick", "tuning"]
