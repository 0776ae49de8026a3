"""The benchmark scripts that cannot run here in full still run: their smoke settings, on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the fuller subprocess matrix: `pytest -m slow`, run by CI too
def test_gpu_benchmark_smoke_path(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    (row,) = result["rows"]
    assert row["model"] == "tiny" and result["info"]["images"] == 16 and result["info"]["smoke"]
    for key in ("model_only", "pipeline", "gpu_decode_loop", "cpu_decode_per_worker"):
        assert row[key] > 0, key
    assert set(row["cpu_decode"]) == {"1", "2"} and row["workers_to_feed_gpu"] >= 1
    table = (out / "results.md").read_text()
    assert "| tiny | 8 | fp32 |" in table and "workers to feed the GPU" in table


def test_gpu_script_refuses_to_run_without_a_gpu(tmp_path):
    if subprocess.run(["bash", "-c", "command -v nvidia-smi && nvidia-smi -L"], capture_output=True).returncode == 0:
        pytest.skip("a GPU machine: gpu.sh would run the whole benchmark (minutes) instead of refusing")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path / "x")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--smoke" in proc.stderr


@pytest.mark.slow
def test_adaptation_benchmark_smoke_path(tmp_path):
    """The adaptation benchmark end to end on a few images: both image sets annotated, every seed scored on its
    test split and on the fresh images, the targets table written, and the adapted policy's card per style."""
    out = tmp_path / "adaptation"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "adaptation.py"), "--output_dir", str(out), "--images", "240",
         "--fresh_images", "120", "--fresh_sizes", "48,96", "--events", "40", "--train_seeds", "0,1",
         "--max_epochs", "3", "--num_proc", "1"],
        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "adaptation.json").read_text())
    assert [r["seed"] for r in result["runs"]] == [0, 1]
    for run in result["runs"]:
        assert set(run["fresh"]) == set(run["own"]) == {"before", "reference", "adapted-40"}
        assert "lit" in run["fresh"]["before"] and "all" in run["fresh"]["before"]
    assert set(result["summary"]["fresh"]["adapted-40"]["loss_worst"]) == {"chibi", "flat", "pixel", "sketch",
                                                                           "watercolor"}
    report = (out / "adaptation.md").read_text()
    assert "## Fresh images (120: seed 23, sizes 48,96 px" in report and "## The benchmark's own test split" in report
    assert "| lit: >= 85 % (mean over seeds) |" in report
    card = (out / "seed1" / "adapted" / "README.md").read_text()
    assert "Before -> after of round 2" in card and "| watercolor |" in card
