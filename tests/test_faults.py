"""Faults injected on purpose: each test asserts the outcome (bounded time, exit status, nothing left running,
nothing lost, a rerun identical)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from tests.test_pipeline import png

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "annotate.py"


def recipe(*args: str) -> list[str]:
    return [sys.executable, str(RECIPE), *args]


def image_folder(path: Path, n: int = 6) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        (path / f"char_{i}.png").write_bytes(png(i))
    return path


def shared_env(tmp_path: Path) -> dict:
    """One HF_HOME and one feature cache for every run of a test, as on a user's machine."""
    env = dict(os.environ)
    env["HF_HOME"] = str(tmp_path / "hf-home")
    env["HF_DATASETS_CACHE"] = str(tmp_path / "hf-home" / "datasets")
    env["CHARATTR_CACHE"] = str(tmp_path / "charattr-cache")
    return env


def load_paths(out: Path, env: dict) -> list[str]:
    """Read an output as a user does (``load_dataset(folder)``), with the runs' own datasets cache."""
    code = ("import datasets, json, sys; "
            "print(json.dumps(datasets.load_dataset(sys.argv[1], split='train')['path'][:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- 2. per-row facts come from this run's input ------------------------------------------------------------


def test_concurrent_runs_over_copies_of_one_folder_name_their_own_files(tiny_clip_dir, tmp_path):
    env = shared_env(tmp_path)
    first = image_folder(tmp_path / "a" / "images")
    shutil.copytree(first, tmp_path / "b" / "images")  # identical files, identical sizes and times
    procs = []
    for copy in ("a", "b"):
        out = tmp_path / copy / "out"  # the same folder name: datasets' cache key for a local folder
        cmd = recipe("--dataset", str(tmp_path / copy / "images"), "--model", f"local-dir:{tiny_clip_dir}",
                     "--output_dir", str(out), "--chunk_size", "2", "--num_proc", "1", "--quiet")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    for copy in ("a", "b"):
        paths = load_paths(tmp_path / copy / "out", env)
        folder = str((tmp_path / copy / "images").resolve())
        assert len(paths) == 6 and all(Path(p).parent == Path(folder) for p in paths), (copy, paths)

    # the first copy is deleted, a third one made; its output (same name again) names its own files
    shutil.rmtree(tmp_path / "a")
    shutil.copytree(tmp_path / "b" / "images", tmp_path / "c" / "images")
    proc = subprocess.run(recipe("--dataset", str(tmp_path / "c" / "images"), "--model", f"local-dir:{tiny_clip_dir}",
                                 "--output_dir", str(tmp_path / "c" / "out"), "--chunk_size", "2", "--num_proc", "1",
                                 "--quiet"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = load_paths(tmp_path / "c" / "out", env)
    assert sorted(Path(p).name for p in paths) == [f"char_{i}.png" for i in range(6)]
    assert all(Path(p).parent == (tmp_path / "c" / "images").resolve() for p in paths)


def test_outputs_alike_but_for_their_rows_do_not_share_a_datasets_cache_entry(tmp_path):
    """The cause of the stale rows: datasets keys a local folder's cache by its name and card header only."""
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.pipeline import PipelineOptions

    image_folder(tmp_path / "a" / "images", n=3)
    shutil.copytree(tmp_path / "a" / "images", tmp_path / "b" / "images")
    for copy in ("a", "b"):
        annotate_to_disk(str(tmp_path / copy / "images"), tmp_path / copy / "out",
                         options=PipelineOptions(model=None), progress=False)
        ds = datasets.load_dataset(str(tmp_path / copy / "out"), split="train")
        assert {Path(p).parent.parent.name for p in ds["path"]} == {copy}
