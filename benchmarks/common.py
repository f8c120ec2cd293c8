"""Shared pieces of every benchmark: timing, the results file (format in the README) and the plot."""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def bench_ms(fn, warmup: int = 10, rep: int = 50) -> float:
    """Median milliseconds of ``fn()`` on the GPU (triton.testing.do_bench)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def cuda_kernels(fn, n: int = 20) -> list:
    """torch.profiler's CUDA kernel averages (``FunctionEventAvg``, one per kernel name) over ``n`` calls of ``fn``
    after one warm-up call."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    return [e for e in prof.key_averages() if e.device_type.name == "CUDA"]


def device_ms(fn, n: int = 20) -> float:
    """GPU milliseconds per call of ``fn``: the summed durations of the CUDA kernels it launches (torch.profiler),
    without the gaps in which the GPU waits for the host. do_bench times a call from its first to its last kernel,
    so where issuing a call takes the host longer than the GPU needs to run it (as for a backward through autograd
    on the H200 machine's host: 0.35-0.75 ms to issue against 0.14-0.26 ms of kernels), it measures the host."""
    return sum(e.self_device_time_total for e in cuda_kernels(fn, n)) / n / 1e3


def first_call_s(fn) -> float:
    """Wall seconds of one call including compilation/autotuning (cold start), synchronized."""
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def peak_gb(fn) -> float:
    """Peak GPU memory (GB) allocated while running ``fn()`` once, above what was allocated before."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def seconds_per_step(step, n: int = 10, warmup: int = 3) -> float:
    """Wall seconds per call of ``step()`` over ``n`` calls after ``warmup`` ones, synchronized: what a training
    loop sees, host time included (``bench_ms`` reports the GPU's pace)."""
    import torch

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def wall_s(fn) -> float:
    """Wall seconds of one call of ``fn()`` (no synchronisation: for the CPU dry runs)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timers(dry: bool, **bench_kwargs):
    """``(bench_ms, first_call_s, peak_gb)``: the GPU measures above (``bench_kwargs`` go to ``bench_ms``), or for
    a CPU dry run, one wall-clock call each and a peak of 0."""
    if dry:
        return (lambda fn: 1e3 * wall_s(fn)), wall_s, (lambda fn: (fn(), 0.0)[1])
    return (lambda fn: bench_ms(fn, **bench_kwargs)), first_call_s, peak_gb


class Results:
    """Collects rows ``{case, contender, metric, value}`` and writes ``results/<name>.json`` (+ PNG)."""

    def __init__(self, name: str):
        self.name = name
        self.rows: list[dict] = []

    def add(self, case: str, contender: str, metric: str, value: float, **extra) -> None:
        row = {"case": case, "contender": contender, "metric": metric, "value": float(value), **extra}
        self.rows.append(row)
        print(f"{self.name:>10} | {case:<48} | {contender:<16} | {value:10.4g} {metric}", flush=True)

    def versions(self) -> dict:
        out = {}
        for mod in ("torch", "triton", "transformers"):
            try:
                out[mod] = __import__(mod).__version__
            except Exception:
                pass
        return out

    def save(self, out_dir: str | os.PathLike | None = None, plot_metric: str | None = "ms") -> Path:
        import torch

        out_dir = Path(out_dir or os.environ.get("HFZOO_BENCH_OUT", RESULTS))
        out_dir.mkdir(parents=True, exist_ok=True)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        doc = {"benchmark": self.name, "device": device, "date": datetime.date.today().isoformat(),
               "versions": self.versions(), "rows": self.rows}
        path = out_dir / f"{self.name}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        if plot_metric:
            plot(doc, out_dir / f"{self.name}.png", plot_metric)
        return path


def plot(doc: dict, path: Path, metric: str) -> None:
    """Grouped bar chart of one metric: a group per case, a bar per contender."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    rows = [r for r in doc["rows"] if r["metric"] == metric]
    if not rows:
        return
    cases = list(dict.fromkeys(r["case"] for r in rows))
    contenders = list(dict.fromkeys(r["contender"] for r in rows))
    width = 0.8 / len(contenders)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cases)), 4))
    for i, c in enumerate(contenders):
        vals = {r["case"]: r["value"] for r in rows if r["contender"] == c}
        xs = [j + i * width for j, case in enumerate(cases) if case in vals]
        ax.bar(xs, [vals[case] for case in cases if case in vals], width, label=c)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
    ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{doc['benchmark']} on {doc['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
