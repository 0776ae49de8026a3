"""Where the annotate recipe's start-up time goes, for one or more checkouts side by side (before/after).

For each checkout (``--repos``, default: this one), in fresh subprocesses, each group with its own temporary
``HF_HOME``, offline:

- ``--help``: ``python recipes/annotate.py --help``;
- phases, timed inside one process: the library's imports (``charattr_hf.api`` and the process group: datasets,
  torch, accelerate), ``import open_clip``, loading the demo model, computing its label embeddings (the
  synthetic schema's prompts), reading them back from the cache file the recipe keeps;
- a 16-image run of the synthetic sample (``--limit 16``) in a fresh ``HF_HOME``: its wall time, and the time
  of the chunk loop itself (``run_info.json``'s ``seconds``: the first chunk);
- the same command again: a rerun with nothing to do.

Each measurement is repeated (``--repeat``) and the median kept; wall time and CPU time (user + system of the
subprocess) are both shown, since on a shared machine wall time also measures the neighbours. Checkouts are
measured in turns, so a ratio compares like with like.

    python benchmarks/startup.py                                    # this checkout
    git worktree add /tmp/before 19206dd
    python benchmarks/startup.py --repos /tmp/before . --repeat 3   # before/after table
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

PHASES = r"""
import json, time
t = [time.perf_counter()]
import charattr_hf.api
from charattr_hf.distributed import get_state
get_state()
t.append(time.perf_counter())
import open_clip
t.append(time.perf_counter())
from charattr_hf.sources.clip.model import ClipSpec, label_embeddings, load_model
from charattr_hf.schema import load_schema
model, tokenizer = load_model(ClipSpec.parse("demo"), "cpu")
t.append(time.perf_counter())
sets = []
for attr in load_schema("synthetic"):
    sets += [lab.prompts for lab in attr.labels]
    if attr.multi_label:
        sets += [lab.negative_prompts for lab in attr.labels]
emb = label_embeddings(model, tokenizer, sets, "cpu")
t.append(time.perf_counter())
import tempfile, os
from safetensors.torch import load_file, save_file
path = os.path.join(tempfile.mkdtemp(), "label_embeddings.safetensors")
save_file({"embeddings": emb.float().contiguous()}, path)
t.append(time.perf_counter())
load_file(path)["embeddings"]
t.append(time.perf_counter())
names = ["imports (library, datasets, torch, accelerate)", "import open_clip", "model load (demo)",
         "label embeddings (computed)", "", "label embeddings (from the cache file)"]
print(json.dumps({n: t[i + 1] - t[i] for i, n in enumerate(names) if n}))
"""


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the child, the completed process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed in {cwd}:\n{proc.stderr[-3000:]}")
    return wall, cpu, proc


def environment(repo: Path, hf_home: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo), HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for key in ("HF_DATASETS_CACHE", "HF_HUB_CACHE", "CHARATTR_CACHE", "TQDM_DISABLE"):
        env.pop(key, None)
    return env


def measure_once(repo: Path, scratch: Path) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    recipe = str(repo / "recipes" / "annotate.py")
    home = Path(tempfile.mkdtemp(prefix="hf-", dir=scratch))
    env = environment(repo, home)
    wall, cpu, _ = timed([sys.executable, recipe, "--help"], repo, env)
    out["--help"] = (wall, cpu)

    home = Path(tempfile.mkdtemp(prefix="hf-", dir=scratch))
    wall, cpu, proc = timed([sys.executable, "-c", PHASES], repo, environment(repo, home))
    for name, seconds in json.loads(proc.stdout.strip().splitlines()[-1]).items():
        out[name] = (seconds, float("nan"))

    home = Path(tempfile.mkdtemp(prefix="hf-", dir=scratch))
    env = environment(repo, home)
    output = Path(tempfile.mkdtemp(prefix="out-", dir=scratch))
    cmd = [sys.executable, recipe, "--limit", "16", "--output_dir", str(output), "--quiet"]
    wall, cpu, _ = timed(cmd, repo, env)
    out["16-image run (fresh HF_HOME)"] = (wall, cpu)
    info = json.loads((output / "run_info.json").read_text())
    out["  of which the first chunk"] = (info["seconds"], float("nan"))
    wall, cpu, proc = timed(cmd, repo, env)
    assert "0 images" in proc.stdout, proc.stdout[-2000:]
    out["rerun with nothing to do"] = (wall, cpu)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", nargs="+", default=[str(Path(__file__).resolve().parents[1])],
                        help="checkouts to measure (e.g. a worktree of the old commit, then this one)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is shown")
    parser.add_argument("--json", default=None, help="also write the medians to this file")
    args = parser.parse_args(argv)
    repos = [Path(r).resolve() for r in args.repos]
    scratch = Path(tempfile.mkdtemp(prefix="charattr-startup-"))
    runs: dict[Path, list[dict]] = {r: [] for r in repos}
    try:
        for i in range(args.repeat):
            for repo in repos:  # in turns: drift of the machine's speed hits every checkout alike
                runs[repo].append(measure_once(repo, scratch))
                print(f"round {i + 1}/{args.repeat}: {repo} done", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    medians = {
        str(r): {k: tuple(statistics.median(run[k][j] for run in rs) for j in (0, 1)) for k in rs[0]}
        for r, rs in runs.items()
    }
    names = list(next(iter(medians.values())))
    head = "| phase | " + " | ".join(f"{Path(r).name} wall s (CPU s)" for r in medians)
    if len(repos) == 2:
        head += " | ratio (wall) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name in names:
        cells = []
        for r in medians:
            wall, cpu = medians[r][name]
            cells.append(f"{wall:.2f}" + (f" ({cpu:.2f})" if cpu == cpu else ""))
        row = f"| {name} | " + " | ".join(cells)
        if len(repos) == 2:
            a, b = (medians[str(r)][name][0] for r in repos)
            row += f" | {b / a:.2f} |" if a > 0 else " | - |"
        print(row)
    if args.json:
        Path(args.json).write_text(json.dumps(medians, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
