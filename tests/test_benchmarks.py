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
