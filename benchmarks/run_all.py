"""Run every benchmark in this folder on an NVIDIA GPU, one after another, each in its own process.

    python benchmarks/run_all.py [name ...]     # e.g. `gla kat`; default: all

Results go to benchmarks/results/<name>.json and .png (or $HFZOO_BENCH_OUT).
"""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"common", "run_all", "__init__",
        # experiments, not speed benchmarks: small training runs on the CPU (minutes to tens of minutes each)
        "peft_pissa_vs_lora", "lora_merge", "mqar", "import_time"}


def main(argv):
    import torch

    if not torch.cuda.is_available():
        print("benchmarks need an NVIDIA GPU; none found", file=sys.stderr)
        return 2
    names = argv or sorted(p.stem for p in HERE.glob("*.py") if p.stem not in SKIP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / f"{name}.py")], env=env, cwd=HERE.parent).returncode:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
