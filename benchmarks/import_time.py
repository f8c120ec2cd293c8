"""Start-up time: ``import hfzoo`` and ``hfzoo --help`` against ``import transformers``.

Each statement runs in a fresh interpreter (``python -c``), several times, interleaved; the median wall time
of the whole process is reported (metric ``s``), with the ratio and the difference to ``import transformers``
(the floor an hfzoo user pays anyway). Targets (issue 10): ``import hfzoo`` at most 0.5 s more than
``import transformers``; ``hfzoo --help`` at most 1 s.

    python benchmarks/import_time.py [--repeats 7]     # -> benchmarks/results/import_time.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    # case -> (contender, python -c statement)
    "import transformers": ("transformers", "import transformers"),
    "import hfzoo": ("hfzoo", "import hfzoo"),
    "import hfzoo + AutoConfig": ("hfzoo", "import hfzoo; from transformers import AutoConfig"),
    "import torch + transformers Auto": ("transformers", "from transformers import AutoConfig"),
    "hfzoo --help": ("hfzoo", "import sys; sys.argv = ['hfzoo', '--help']; from hfzoo.cli import main; main()"),
}


def _once(statement: str) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", statement], env=env, cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode not in (0,) and "--help" not in statement:
        raise RuntimeError(f"{statement!r} failed: {proc.stderr[-2000:]}")
    return took


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="fresh interpreters per case (median reported)")
    args = parser.parse_args(argv)
    _once("pass")  # warm the file system cache
    times: dict[str, list[float]] = {case: [] for case in CASES}
    for _ in range(args.repeats):
        for case, (_, statement) in CASES.items():
            times[case].append(_once(statement))
    floor = statistics.median(times["import transformers"])
    load = round(os.getloadavg()[0], 2)   # a shared machine: other work slows every case alike
    results = Results("import_time")
    for case, (contender, _) in CASES.items():
        median = statistics.median(times[case])
        results.add(case, contender, "s", median, ratio_to_import_transformers=round(median / floor, 3),
                    over_import_transformers_s=round(median - floor, 3), runs=[round(t, 3) for t in times[case]],
                    load_average=load, cpus=os.cpu_count())
    print(results.save(plot_metric=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
