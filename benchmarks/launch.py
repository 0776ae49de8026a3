"""What ``accelerate launch`` adds to one process of the annotate recipe: its start-up time and its warning.

The same command is run in turns, in fresh subprocesses, offline, with its own temporary ``HF_HOME``:

- ``python recipes/annotate.py ...`` (one process needs no launcher);
- ``accelerate launch recipes/annotate.py ...`` with no accelerate config anywhere (a new user's machine: the
  launcher guesses ``--num_processes`` and friends and prints its "values were not passed" warning);
- ``accelerate launch --config_file recipes/accelerate_configs/single_process.yaml recipes/annotate.py ...``.

The command is a rerun with nothing to do (the output of a first run is there), so what is measured is start-up:
imports, the process group, opening the input and the finished run. Wall time and CPU time (user + system of the
subprocess and its children) are both shown, medians of ``--repeat`` rounds; on a shared machine the CPU seconds
are the comparable figure.

    python benchmarks/launch.py --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "annotate.py")
CONFIG = str(ROOT / "recipes" / "accelerate_configs" / "single_process.yaml")
WARNING = "values were not passed to `accelerate launch`"


def timed(cmd: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the child and its children, the completed process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the median is shown")
    parser.add_argument("--json", default=None, help="also write the medians to this file")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="charattr-launch-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HOME=str(scratch / "hf"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    recipe = [RECIPE, "--limit", "16", "--sample_size", "16", "--output_dir", str(scratch / "out"), "--quiet"]
    variants = {
        "python recipes/annotate.py": [sys.executable, *recipe],
        "accelerate launch recipes/annotate.py (no config)": [*launch, *recipe],
        "accelerate launch --config_file .../single_process.yaml recipes/annotate.py": [*launch, "--config_file",
                                                                                       CONFIG, *recipe],
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    warned: dict[str, bool] = {}
    try:
        timed(variants["python recipes/annotate.py"], env)  # the first run: the output the reruns find finished
        for i in range(args.repeat):
            for name, cmd in variants.items():  # in turns: drift of the machine's speed hits every variant alike
                wall, cpu, proc = timed(cmd, env)
                assert "0 images" in proc.stdout, proc.stdout[-2000:]
                runs[name].append((wall, cpu))
                warned[name] = WARNING in proc.stderr
            print(f"round {i + 1}/{args.repeat} done", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    medians = {name: tuple(statistics.median(r[j] for r in rs) for j in (0, 1)) for name, rs in runs.items()}
    base_wall, base_cpu = medians["python recipes/annotate.py"]
    print(f"| command (a rerun with nothing to do; medians of {args.repeat}) | wall s | CPU s | added wall s | "
          "added CPU s | launcher warning |")
    print("|---|---:|---:|---:|---:|---|")
    for name, (wall, cpu) in medians.items():
        print(f"| `{name}` | {wall:.2f} | {cpu:.2f} | {wall - base_wall:+.2f} | {cpu - base_cpu:+.2f} | "
              f"{'yes' if warned[name] else 'no'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": medians, "warned": warned}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
