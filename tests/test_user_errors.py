"""A user's mistakes, run through the recipes as users run them (subprocesses): exit status 2, one or two short
lines on stderr naming the problem, no traceback, in seconds. Plus the inputs users have and the demo model's
warning on real images."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ANNOTATE = ROOT / "recipes" / "annotate.py"
# generous for a shared 2-core machine; a mistake is found in about a second (nothing heavy is imported)
SECONDS = 30


def annotate(*args: str, cwd: Path | None = None, timeout: int = 300) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ANNOTATE), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or ROOT)
    return proc, time.perf_counter() - start


def assert_user_error(proc: subprocess.CompletedProcess, seconds: float, *words: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:{proc.stdout[-2000:]}\nstderr:{err[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    lines = err.splitlines()
    assert 1 <= len(lines) <= 2, err
    assert lines[0].startswith("annotate.py: error:"), err
    for word in words:
        assert word in err, (word, err)
    assert seconds < SECONDS, f"{seconds:.1f}s"
    return err


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of 'real' images: no ground truth, as users have."""
    folder = tmp_path_factory.mktemp("my_images")
    for i, color in enumerate(["red", "blue", "green", "yellow"]):
        (folder / f"img_{i}.png").write_bytes(png(color))
    return folder


def test_path_that_does_not_exist(tmp_path):
    proc, s = annotate("--dataset", str(tmp_path / "nowhere" / "images"), "--output_dir", str(tmp_path / "o"))
    assert_user_error(proc, s, "nowhere/images", "no such file or folder")


def test_bare_name_neither_a_folder_nor_reachable_on_the_hub(tmp_path):
    proc, s = annotate("--dataset", "my_images", "--output_dir", str(tmp_path / "o"), cwd=tmp_path)
    err = assert_user_error(proc, s, "my_images", "HF_HUB_OFFLINE")
    # both readings: a local folder that is not there, and a Hub id that cannot be reached
    assert "no folder or file" in err and "Hub dataset id" in err


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    proc, s = annotate("--dataset", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o"))
    assert_user_error(proc, s, "holds no images")


def test_schema_yaml_that_does_not_parse_or_lacks_labels(tmp_path, photos):
    broken = tmp_path / "broken.yaml"
    broken.write_text("attributes: [unclosed\n")
    proc, s = annotate("--dataset", str(photos), "--schema", str(broken), "--output_dir", str(tmp_path / "o"))
    assert_user_error(proc, s, "broken.yaml", "YAML")
    no_labels = tmp_path / "no_labels.yaml"
    no_labels.write_text("name: mine\nattributes:\n  hair_color:\n    description: hair\n")
    proc, s = annotate("--dataset", str(photos), "--schema", str(no_labels), "--output_dir", str(tmp_path / "o"))
    assert_user_error(proc, s, "no_labels.yaml", "labels")
    assert not (tmp_path / "o" / ".charattr").exists()  # checked before any work


def test_local_dir_model_that_does_not_exist(tmp_path, photos):
    proc, s = annotate("--dataset", str(photos), "--model", f"local-dir:{tmp_path / 'no-model'}",
                       "--output_dir", str(tmp_path / "o"))
    assert_user_error(proc, s, "local-dir:", "no-model")


@pytest.mark.parametrize("option,value", [("--batch_size", "0"), ("--limit", "-1"), ("--chunk_size", "0"),
                                          ("--num_proc", "0"), ("--max_shard_rows", "0"), ("--sample_size", "0")])
def test_options_out_of_range(tmp_path, option, value):
    proc, s = annotate(option, value, "--output_dir", str(tmp_path / "o"))
    assert_user_error(proc, s, option, ">=")


def test_option_values_from_yaml_are_checked_too(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("batch_size: 0\n")
    proc, s = annotate("--config", str(config), "--output_dir", str(tmp_path / "o"))
    assert_user_error(proc, s, "--batch_size")


def test_argparse_errors_are_short(tmp_path):
    proc, s = annotate("--no_such_option", "--output_dir", str(tmp_path / "o"))
    assert_user_error(proc, s, "--no_such_option")
    proc, s = annotate("--batch_size", "many")
    assert_user_error(proc, s, "--batch_size", "many")
    proc, s = annotate("--precision", "fp8")
    assert_user_error(proc, s, "--precision", "fp8")


def test_output_folder_that_cannot_be_written(tmp_path, photos):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    proc, s = annotate("--dataset", str(photos), "--output_dir", str(a_file / "out"))
    assert_user_error(proc, s, "--output_dir", "cannot write")


def test_debug_shows_the_traceback(tmp_path):
    proc, _ = annotate("--dataset", str(tmp_path / "nowhere"), "--debug")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "UserError" in proc.stderr and "nowhere" in proc.stderr


def test_printed_once_under_a_two_process_launch(tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ANNOTATE),
           "--dataset", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode != 0
    # accelerate's launcher adds its own report of a failed process; ours is one line, once
    assert proc.stderr.count("annotate.py: error:") == 1, proc.stderr


# ---------------------------------------------------------------------------------------- what users have
def test_pyarrow_parquet_with_an_image_struct_is_read(tmp_path):
    """A Parquet file written by plain pyarrow (no datasets metadata) whose image column is {bytes, path}."""
    from charattr_hf.inputs import InputSpec, open_dataset

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": png("red"), "path": "a.png"}, {"bytes": png("blue"), "path": None},
                       {"bytes": b"not an image", "path": "c.png"}], type=struct)
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"image": images, "tags": ["red_hair", "blue_hair", ""]}), path)
    assert b"huggingface" not in (pq.read_schema(path).metadata or {})  # no datasets features stored
    ds = open_dataset(InputSpec(dataset=str(path)))
    assert len(ds) == 3 and ds[0]["image"]["bytes"] == png("red") and ds[0]["image"]["path"] == "a.png"

    from charattr_hf import annotate as annotate_api

    out = annotate_api(str(path), model=None, progress=False)
    assert len(out) == 3 and out["error"][:2] == [None, None] and out["error"][2] is not None
    assert out["width"][:2] == [48, 48]


@pytest.mark.slow  # the fuller subprocess matrix: `pytest -m slow`, run by CI too
def test_demo_model_on_real_images_says_so_everywhere(tmp_path, photos):
    out = tmp_path / "out"
    proc, _ = annotate("--dataset", str(photos), "--output_dir", str(out), "--quiet", "--no_cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    hint = "--model ViT-B-32 --pretrained laion2b_s34b_b79k"
    assert "synthetic drawings" in proc.stderr and hint in proc.stderr  # the log
    assert "WARNING" in proc.stdout and hint in proc.stdout  # the printed summary
    card = (out / "README.md").read_text()
    assert "> **Warning**" in card and hint in card  # the dataset card
    info = json.loads((out / "run_info.json").read_text())
    assert info["warnings"] and hint in info["warnings"][0]
    # --quiet: no progress bar at all (ours, datasets')
    assert "%|" not in proc.stderr and "it/s]" not in proc.stderr and "examples/s]" not in proc.stderr


@pytest.mark.slow  # the fuller subprocess matrix: `pytest -m slow`, run by CI too
def test_no_warning_on_the_synthetic_sample(tmp_path):
    proc, _ = annotate("--limit", "8", "--sample_size", "8", "--output_dir", str(tmp_path / "o"), "--quiet",
                       "--no_cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING" not in proc.stdout and "> **Warning**" not in (tmp_path / "o" / "README.md").read_text()
    assert "%|" not in proc.stderr and "examples/s]" not in proc.stderr


def test_preprocess_defaults_read_without_open_clip_agree_with_open_clip():
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg

    from charattr_hf.sources.clip.model import _OPEN_CLIP_PREPROCESS_DEFAULTS

    assert {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in asdict(PreprocessCfg()).items()} == {
        k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in _OPEN_CLIP_PREPROCESS_DEFAULTS.items()}


def test_a_file_given_as_output_folder_and_nothing_created_on_error(tmp_path, photos):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    proc, s = annotate("--dataset", str(photos), "--output_dir", str(a_file))
    assert_user_error(proc, s, "--output_dir", "is a file")
    proc, s = annotate("--dataset", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "new" / "out"))
    assert_user_error(proc, s, "nowhere")
    assert not (tmp_path / "new").exists()


@pytest.mark.slow  # the fuller subprocess matrix: `pytest -m slow`, run by CI too
def test_other_recipes_report_mistakes_the_same_way(tmp_path):
    proc, s = annotate("--batch_size", "0")  # warm-up of the helper's shape: annotate itself
    assert proc.returncode == 2
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "evaluate_annotations.py"), "--dataset",
                           str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "e")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith("evaluate_annotations.py: error:") and "nowhere" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2 and time.perf_counter() - start < 60
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "train_fusion.py"), "--output_dir",
                           str(tmp_path / "p")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith("train_fusion.py: error:") and "--dataset" in proc.stderr


@pytest.mark.parametrize("flag, word", [("--image_column", "image column 'zzz' not found"),
                                        ("--tags_column", "--tags_column 'zzz' is not a column"),
                                        ("--keep_columns", "--keep_columns ['zzz'] not found")])
def test_a_column_the_input_does_not_have(photos, tmp_path, flag, word):
    proc, seconds = annotate("--dataset", str(photos), "--model", "", "--output_dir", str(tmp_path / "out"), flag, "zzz")
    # the folder is read to know its columns (datasets' progress lines come first), then one line and exit 2
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("annotate.py: error:") and word in last and "columns: ['image']" in last, last
    assert not (tmp_path / "out").exists()
