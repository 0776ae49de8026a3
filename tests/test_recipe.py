"""The annotate recipe as users run it: a subprocess, under `accelerate launch`, with 1 and 2 processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest

from tests.test_pipeline import image_dataset

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "annotate.py"


def accelerate(*args: str, processes: int = 1) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if processes > 1:
        launch += ["--multi_gpu", "--num_processes", str(processes)]
    else:
        launch += ["--num_processes", "1"]
    return [*launch, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(RECIPE), *args]


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def input_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "images.parquet"
    image_dataset(40, bad=(7,)).to_parquet(str(path))
    return path


def common(input_parquet, tiny_clip_dir, out, *extra):
    return ["--dataset", str(input_parquet), "--model", f"local-dir:{tiny_clip_dir}", "--output_dir", str(out),
            "--chunk_size", "5", "--no_cache", "--quiet", *extra]


def load(out: Path):
    return datasets.load_dataset(str(out), split="train")


def run_dir(out: Path) -> Path:
    """The work folder of an unfinished run (a finished one leaves only its record)."""
    (folder,) = [p for p in (out / ".charattr").iterdir() if p.is_dir()]
    return folder


def rank_records(out: Path) -> list[dict]:
    """Each process's record of the launch that finished ``out`` (its chunks, rows, seconds; a stream's reads)."""
    return json.loads((out / "run_info.json").read_text())["ranks"]


def test_help_explains_every_option():
    proc = run([sys.executable, str(RECIPE), "--help"])
    for option in ["--dataset", "--output_dir", "--model", "--schema", "--batch_size", "--num_proc", "--streaming",
                   "--limit", "--config", "--fusion", "--tags_column"]:
        assert option in proc.stdout
    assert "first N rows" in proc.stdout


@pytest.fixture(scope="module")
def single_run(input_parquet, tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    proc = run(accelerate(*common(input_parquet, tiny_clip_dir, out)))
    return out, proc


def test_single_process_run_prints_summary_and_writes_dataset(single_run):
    out, proc = single_run
    assert "annotated dataset:" in proc.stdout and "images/s" in proc.stdout
    assert "hair_color" in proc.stdout and "errors: 1" in proc.stdout
    ds = load(out)
    assert len(ds) == 40 and sum(e is not None for e in ds["error"]) == 1
    info = json.loads((out / "run_info.json").read_text())
    assert info["processes"] == 1
    # a plain `accelerate launch` (OMP_NUM_THREADS=1) still uses every core
    assert info["torch_threads"] == len(os.sched_getaffinity(0))


def test_two_processes_split_the_work_and_agree(single_run, input_parquet, tiny_clip_dir, tmp_path):
    out = tmp_path / "two"
    run(accelerate(*common(input_parquet, tiny_clip_dir, out), processes=2))
    ranks = rank_records(out)
    assert all(r["world"] == 2 for r in ranks)
    done = [set(r["chunks_processed"]) for r in ranks]
    assert done[0] and done[1] and not (done[0] & done[1])
    assert done[0] | done[1] == set(range(8))
    one, two = load(single_run[0]), load(out)
    assert one["id"] == two["id"] and one["sha256"] == two["sha256"] and one["error"] == two["error"]
    for column in ("hair_color", "eye_color", "accessories", "art_style"):
        assert one[column] == two[column]
    a = np.array([r["hair_color"] for r in one["probs_clip"] if r], dtype=float)
    b = np.array([r["hair_color"] for r in two["probs_clip"] if r], dtype=float)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow  # the fuller subprocess matrix: `pytest -m slow`, run by CI too
def test_plain_num_processes_on_cpu_starts_that_many_processes(input_parquet, tiny_clip_dir, tmp_path):
    """`accelerate launch --num_processes 2` (no --multi_gpu) on a machine without GPU: 2 real CPU processes, each
    annotating its own chunks, and a summary of the whole run (both ranks' rows), not rank 0's share."""
    out = tmp_path / "plain"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", str(RECIPE)]
    proc = run([*launch, *common(input_parquet, tiny_clip_dir, out)])
    ranks = rank_records(out)
    assert all(r["world"] == 2 for r in ranks)
    done = [set(r["chunks_processed"]) for r in ranks]
    assert done[0] and done[1] and not (done[0] & done[1]) and done[0] | done[1] == set(range(8))
    assert "processes: 2" in proc.stdout and "this run: 40 images" in proc.stdout
    info = json.loads((out / "run_info.json").read_text())
    assert info["rows_processed"] == 40 and [r["rows_processed"] for r in info["ranks"]] == [
        r["rows_processed"] for r in ranks] and all(r["rows_processed"] for r in info["ranks"])
    # fewer chunks than processes: said so
    few = tmp_path / "few"
    proc = run([*launch, *common(input_parquet, tiny_clip_dir, few, "--limit", "5")])
    assert "this run: 5 images" in proc.stdout and "1 of 2 processes had no chunk" in proc.stdout


@pytest.mark.slow  # the fuller subprocess matrix: `pytest -m slow`, run by CI too
def test_killed_run_resumes_to_the_same_output(single_run, input_parquet, tiny_clip_dir, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(RECIPE), *common(input_parquet, tiny_clip_dir, out, "--num_proc", "1")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            chunks = list((out / ".charattr").glob("*/chunks/chunk-*.parquet")) if (out / ".charattr").exists() else []
            if len(chunks) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished_before = len(list(run_dir(out).glob("chunks/chunk-*.parquet")))
    assert 0 < finished_before < 8, "the kill should land mid-run"
    assert not (out / "data").exists()

    run([sys.executable, str(RECIPE), *common(input_parquet, tiny_clip_dir, out)])
    (record,) = rank_records(out)
    assert record["chunks_skipped"] == finished_before
    assert [p.name for p in (out / ".charattr").iterdir()] == ["complete.json"]  # the work folder and lock: gone
    resumed, reference = load(out), load(single_run[0])
    assert len(resumed) == 40 and resumed["index"] == list(range(40))
    for column in ("id", "sha256", "error", "hair_color", "accessories", "flags"):
        assert resumed[column] == reference[column]


@pytest.mark.slow  # the fuller subprocess matrix: `pytest -m slow`, run by CI too
def test_config_file_with_flag_override(input_parquet, tiny_clip_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"dataset: {input_parquet}\nmodel: local-dir:{tiny_clip_dir}\nlimit: 30\nno_cache: true\n"
                      f"output_dir: {tmp_path / 'from-config'}\nchunk_size: 8\n")
    run([sys.executable, str(RECIPE), "--config", str(config), "--limit", "12", "--quiet"])
    assert len(load(tmp_path / "from-config")) == 12
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_option: 1\n")
    proc = subprocess.run([sys.executable, str(RECIPE), "--config", str(bad)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode != 0 and "no_such_option" in proc.stderr


@pytest.mark.slow  # the fuller subprocess matrix: `pytest -m slow`, run by CI too
def test_annotate_recipe_runs_a_learned_fusion_policy(tiny_clip_dir, tmp_path):
    """--fusion: the policy (trained here on a first annotation) replaces the simple rule as the fusion stage."""
    from charattr_hf import fusion_training as ft
    from charattr_hf import synthetic
    from charattr_hf.api import annotate

    sample = synthetic.generate(96, seed=5, noise="mixed")
    parquet = tmp_path / "sample.parquet"
    sample.to_parquet(str(parquet))
    first = annotate(str(parquet), model=f"local-dir:{tiny_clip_dir}", schema="synthetic", use_cache=False,
                     progress=False)
    config = ft.build_config("synthetic", first, hidden_size=16)
    policy = ft.build_model(config, seed=0)
    ft.train_supervised(policy, ft.build_features(first, config), args=ft.FusionTrainingConfig(max_epochs=5, seed=0))
    policy.save_pretrained(tmp_path / "policy")

    out = tmp_path / "with-policy"
    proc = run([sys.executable, str(RECIPE), "--dataset", str(parquet), "--model", f"local-dir:{tiny_clip_dir}",
                "--schema", "synthetic", "--fusion", str(tmp_path / "policy"), "--output_dir", str(out),
                "--no_cache", "--quiet"])
    assert f"fusion: {tmp_path / 'policy'}" in proc.stdout
    ds = load(out)
    assert len(ds) == 96
    # the policy's confidences are its own, not the simple rule's
    simple = first["hair_color_confidence"]
    assert any(abs(a - b) > 1e-3 for a, b in zip(ds["hair_color_confidence"], simple) if a is not None and b is not None)
    assert all(c is None or 0.0 <= c <= 1.0 for c in ds["hair_color_confidence"])
