"""Faults injected on purpose: each test asserts the outcome (bounded time, exit status, nothing left running,
nothing lost, a rerun identical)."""

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest

from charattr_hf.pipeline import Pipeline

from tests.test_blip2 import tiny  # noqa: F401 - fixture: a tiny BLIP-2 built locally
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


@pytest.mark.slow  # the fuller subprocess matrix: `pytest -m slow`, run by CI too
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


# --- 1. a model that cannot be loaded fails once, before any chunk ------------------------------------------


def _assert_nothing_ran(out: Path) -> None:
    assert not list(out.glob(".charattr/*/chunks/chunk-*.parquet")) and not (out / "data").exists()


@pytest.mark.parametrize(
    "options, what",
    [
        (dict(model="ViT-B-32", pretrained="laion2b_s34b_b79k"), "CLIP model ViT-B-32"),
        (dict(model="hf-hub:charattr-test/no-such-clip"), "CLIP model hf-hub:charattr-test/no-such-clip"),
        (dict(model=None, blip2="charattr-test/no-such-blip2"), "BLIP-2 model charattr-test/no-such-blip2"),
        (dict(model=None, fusion="charattr-test/no-such-policy"), "fusion policy charattr-test/no-such-policy"),
    ],
)
def test_a_model_that_is_not_cached_offline_fails_once_before_any_chunk(options, what, tmp_path, monkeypatch):
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.errors import ModelLoadError
    from charattr_hf.pipeline import PipelineOptions
    from tests.test_pipeline import image_dataset

    chunks_started = []
    real = Pipeline.cpu_part
    monkeypatch.setattr(Pipeline, "cpu_part", lambda self, *a, **k: chunks_started.append(1) or real(self, *a, **k))
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        annotate_to_disk(image_dataset(6), tmp_path / "out", options=PipelineOptions(use_cache=False, **options),
                         chunk_size=2, progress=False)
    message = str(info.value)
    assert what in message and "\n" not in message and len(message) < 400, message
    assert "HF_HUB_OFFLINE=1" in message  # what to do: it is offline and the model is not in the local cache
    assert not chunks_started and time.perf_counter() - start < 60
    _assert_nothing_ran(tmp_path / "out")


def test_damaged_weights_fail_once_before_any_chunk(tiny_clip_dir, tmp_path):
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.errors import ModelLoadError
    from charattr_hf.pipeline import PipelineOptions
    from tests.test_pipeline import image_dataset

    broken = tmp_path / "broken-clip"
    broken.mkdir()
    (broken / "open_clip_config.json").write_bytes((tiny_clip_dir / "open_clip_config.json").read_bytes())
    (broken / "open_clip_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelLoadError, match=f"cannot load the CLIP model local-dir:{broken}"):
        annotate_to_disk(image_dataset(6), tmp_path / "out",
                         options=PipelineOptions(model=f"local-dir:{broken}", use_cache=False), chunk_size=3,
                         progress=False)
    _assert_nothing_ran(tmp_path / "out")
    # the weights repaired, the same command does the whole run, as one that never failed
    weights = "open_clip_model.safetensors"
    (broken / weights).write_bytes((tiny_clip_dir / weights).read_bytes())
    result, _ = annotate_to_disk(image_dataset(6), tmp_path / "out",
                                 options=PipelineOptions(model=f"local-dir:{broken}", use_cache=False), chunk_size=3,
                                 progress=False)
    clean, _ = annotate_to_disk(image_dataset(6), tmp_path / "clean",
                                options=PipelineOptions(model=f"local-dir:{tiny_clip_dir}", use_cache=False),
                                chunk_size=3, progress=False)
    assert result.complete and result.rows_processed == 6
    a = datasets.load_dataset(str(tmp_path / "out"), split="train")
    b = datasets.load_dataset(str(tmp_path / "clean"), split="train")
    assert a["probs_clip"][:] == b["probs_clip"][:] and a["hair_color"][:] == b["hair_color"][:]


@pytest.mark.slow  # the fuller subprocess matrix: `pytest -m slow`, run by CI too
def test_recipe_offline_with_an_uncached_model_exits_at_once_with_one_line(tmp_path):
    env = shared_env(tmp_path)
    env["HF_HUB_OFFLINE"] = "1"
    out = tmp_path / "out"
    start = time.perf_counter()
    proc = subprocess.Popen(recipe("--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k", "--limit", "8",
                                   "--chunk_size", "2", "--output_dir", str(out), "--quiet"),
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    seconds = time.perf_counter() - start
    assert proc.returncode != 0 and seconds < 120
    lines = [line for line in stderr.splitlines() if "cannot load the CLIP model ViT-B-32" in line]
    assert len(lines) == 1, stderr[-3000:]  # said once, not once per chunk
    assert "HF_HUB_OFFLINE=1" in lines[0] and "rerun the same command" not in stderr
    with pytest.raises(ProcessLookupError):  # nothing of it left running
        os.killpg(proc.pid, 0)
    _assert_nothing_ran(out)
    from charattr_hf import cli

    if hasattr(cli, "run_main"):  # the recipes show a UserError as one line and exit status 2
        assert proc.returncode == 2 and "Traceback" not in stderr


# --- 3. an upgrade never reuses chunks or cached outputs of the older code ----------------------------------


def test_a_version_bump_invalidates_cached_chunks_and_model_outputs(tiny_clip_dir, tmp_path, monkeypatch):
    import charattr_hf
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.pipeline import PipelineOptions
    from charattr_hf.sources.clip.stage import ClipZeroShot
    from tests.test_pipeline import image_dataset

    seen = []
    real = ClipZeroShot._forward
    monkeypatch.setattr(ClipZeroShot, "_forward", lambda self, blobs: seen.extend(blobs) or real(self, blobs))
    ds = image_dataset(6)
    opts = PipelineOptions(model=f"local-dir:{tiny_clip_dir}", cache_dir=str(tmp_path / "cache"))

    def annotate():
        result, pipeline = annotate_to_disk(ds, tmp_path / "out", options=opts, chunk_size=2, progress=False)
        assert result.complete
        ids = (pipeline.fingerprint(), pipeline.device[0].cache.namespace)  # computed under the current version
        return result, ids, datasets.load_dataset(str(tmp_path / "out"), split="train")

    first, p1, out1 = annotate()
    assert first.chunks_skipped == 0 and len(seen) == 6
    again, _, _ = annotate()
    assert again.chunks_skipped == 3 and len(seen) == 6  # same version: everything reused
    monkeypatch.setattr(charattr_hf, "__version__", charattr_hf.__version__ + "+upgraded")
    bumped, p2, out2 = annotate()
    assert bumped.chunks_skipped == 0 and bumped.rows_processed == 6  # no chunk of the older code reused
    assert len(seen) == 12  # and no cached model output either: every image went through the model again
    assert p1[0] != p2[0] and p1[1] != p2[1]
    for column in ("id", "path", "sha256", "hair_color", "probs_clip"):
        assert out1[column][:] == out2[column][:]  # the same code, so the same annotations


# --- 4. a fusion error on every row fails the chunk once; a BLIP-2 read failure keeps the other labels ------


def test_a_fusion_error_on_every_row_fails_the_chunk_once(tiny_clip_dir, tmp_path, monkeypatch, caplog):
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.pipeline import PipelineOptions
    from charattr_hf.stages.fusion import SimpleFusion
    from tests.test_pipeline import image_dataset

    ds = image_dataset(200)
    opts = PipelineOptions(model=f"local-dir:{tiny_clip_dir}", use_cache=False)
    calls = []
    real = SimpleFusion.fuse

    def broken(self, batch):
        calls.append(len(next(iter(batch.values()))))
        raise RuntimeError("fusion is broken")

    monkeypatch.setattr(SimpleFusion, "fuse", broken)
    start = time.perf_counter()
    with caplog.at_level("WARNING"):
        result, _ = annotate_to_disk(ds, tmp_path / "out", options=opts, chunk_size=100, progress=False)
    assert result.failed_chunks == [0, 1] and not result.data_files
    # per chunk: the batch, then a few rows one by one, then the chunk fails (not 100 retries and warnings)
    assert len(calls) <= 2 * 9, calls
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "fusion" in r.getMessage()]
    assert len(warnings) <= 2 * 4, [r.getMessage() for r in warnings]
    assert time.perf_counter() - start < 120
    assert not list((tmp_path / "out").glob(".charattr/*/chunks/chunk-*.parquet"))

    monkeypatch.setattr(SimpleFusion, "fuse", real)  # fixed: the rerun does the work, as a clean run does
    again, _ = annotate_to_disk(ds, tmp_path / "out", options=opts, chunk_size=100, progress=False)
    clean, _ = annotate_to_disk(ds, tmp_path / "clean", options=opts, chunk_size=100, progress=False)
    assert again.complete and again.chunks_skipped == 0
    a = datasets.load_dataset(str(tmp_path / "out"), split="train")
    b = datasets.load_dataset(str(tmp_path / "clean"), split="train")
    for column in ("id", "sha256", "hair_color", "eye_color", "error"):
        assert a[column][:] == b[column][:]


def test_rows_that_fail_alike_after_good_rows_are_flagged_not_systemic():
    """Only failing *first* rows look systemic: bad rows among good ones are the rows' own fault."""
    from charattr_hf.stages.base import Stage

    class Parse(Stage):
        name = "parse"

        def features(self):
            return {"n": datasets.Value("int64")}

        def process(self, batch):
            if any(v == "bad" for v in batch["v"]):
                raise ValueError("cannot parse")
            return {"n": [len(v) for v in batch["v"]]}

    values = ["ok"] + ["bad"] * 20 + ["fine"]
    out = Parse()({"v": values, "flags": [[] for _ in values]})
    assert out["n"][0] == 2 and out["n"][-1] == 4 and out["n"][1] is None
    assert all("parse_failed" in f for f in out["flags"][1:-1])
    with pytest.raises(ValueError, match="cannot parse"):
        Parse()({"v": ["bad"] * 20 + ["ok"], "flags": [[] for _ in range(21)]})


def test_a_blip2_read_failure_keeps_the_rows_clip_and_tag_labels(tiny, tiny_clip_dir, tmp_path, monkeypatch):
    from charattr_hf.api import annotate
    from charattr_hf.sources.blip2.stage import Blip2Source
    from tests.test_pipeline import image_dataset

    real = Blip2Source._row_image

    def row_image(self, batch, i):
        if batch["id"][i] == "img_3.png":
            raise OSError("cannot read this one")
        return real(self, batch, i)

    monkeypatch.setattr(Blip2Source, "_row_image", row_image)
    out = annotate(image_dataset(6), tmp_path / "out", model=f"local-dir:{tiny_clip_dir}", blip2=tiny,
                   use_cache=False, progress=False, chunk_size=6)
    assert len(out) == 6
    row = out[3]
    assert row["error"] is None and "blip2_failed" in row["flags"] and row["probs_blip2"] is None
    assert row["probs_clip"] is not None and row["probs_tags"] is not None and row["hair_color"] is not None
    others = [r for i, r in enumerate(out) if i != 3]
    assert all(r["probs_blip2"] is not None and "blip2_failed" not in r["flags"] for r in others)


def test_blip2_reads_the_shared_decode_stages_pixels(tiny, tmp_path, monkeypatch):
    """BLIP-2 never decodes files itself in a run: EXIF orientation, 16-bit samples and the size limit are the
    decode stage's, for every source alike."""
    from datasets import Dataset, Image as HFImage
    from PIL import Image

    from charattr_hf.api import annotate
    from charattr_hf.pipeline import PipelineOptions, build_pipeline
    from tests import images

    rotated = images.with_orientation(images.scene(48, 32), 6)
    deep, _ = images.png_rgb16(40, 30)
    bomb = images.header_only_png(20_000, 20_000)  # 400 M pixels: over the decode stage's limit
    ds = Dataset.from_dict({"image": [{"bytes": b, "path": f"{k}.img"} for k, b in
                                      (("rotated", rotated), ("deep", deep), ("bomb", bomb))]})
    ds = ds.cast_column("image", HFImage(decode=False))
    out = annotate(ds, tmp_path / "out", model=None, blip2=tiny, use_cache=False, progress=False)
    assert out["probs_blip2"][0] is not None and "exif_rotated" in out["flags"][0]
    assert out["probs_blip2"][1] is not None and "high_bit_depth" in out["flags"][1]
    assert "too large" in out["error"][2] and out["probs_blip2"][2] is None

    pipeline = build_pipeline(PipelineOptions(model=None, blip2=tiny, tags=False), ["image"])
    (source,) = pipeline.device
    decode = pipeline.cpu[1]
    (column,) = source.input_columns()
    assert column in decode.features() and decode.pixels[column] == source.pixel_spec()
    row = decode({"image": [{"bytes": rotated, "path": None}]})
    h, w = source.pixel_shape
    pixels = np.frombuffer(row[column][0], dtype=np.uint8).reshape(h, w, 3)
    upright = np.asarray(Image.open(io.BytesIO(rotated)).transpose(Image.Transpose.ROTATE_270).convert("RGB")
                         .resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(pixels - upright).mean() < 3  # the oriented picture, squashed to the processor's size


# --- 6. small ones -------------------------------------------------------------------------------------------


def test_table_suffixes_are_case_insensitive(tmp_path):
    from charattr_hf.inputs import InputSpec, open_dataset
    from tests.test_pipeline import image_dataset

    image_dataset(3).to_parquet(str(tmp_path / "X.PARQUET"))
    (tmp_path / "folder").mkdir()
    image_dataset(4).to_parquet(str(tmp_path / "folder" / "part.Parquet"))
    assert open_dataset(InputSpec(dataset=str(tmp_path / "X.PARQUET"))).num_rows == 3
    assert open_dataset(InputSpec(dataset=str(tmp_path / "folder"))).num_rows == 4


def test_the_sha256_of_an_empty_file_is_that_of_empty_bytes(tmp_path):
    import hashlib

    from charattr_hf.stages.decode import DecodeStage

    (tmp_path / "empty.png").write_bytes(b"")
    out = DecodeStage()({"image": [{"bytes": None, "path": str(tmp_path / "empty.png")}, {"bytes": b"", "path": None}]})
    assert out["sha256"] == [hashlib.sha256(b"").hexdigest()] * 2
    assert all(e and "empty" in e for e in out["error"])


def test_the_dataset_card_declares_each_splits_own_features(tmp_path):
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.inputs import InputSpec
    from charattr_hf.pipeline import PipelineOptions
    from tests.test_pipeline import image_dataset

    out = tmp_path / "out"
    annotate_to_disk(image_dataset(3), out, input_spec=InputSpec(split="train"), options=PipelineOptions(model=None),
                     progress=False)
    annotate_to_disk(image_dataset(2), out, input_spec=InputSpec(split="test"),
                     options=PipelineOptions(model=None, keep_images=True), progress=False)
    test = datasets.load_dataset(str(out), split="test")  # this run's split: the default config
    assert test.num_rows == 2 and "image" in test.features
    train = datasets.load_dataset(str(out), "train", split="train")
    assert train.num_rows == 3 and "image" not in train.features
    # the same columns again: one config for both splits
    annotate_to_disk(image_dataset(2), out, input_spec=InputSpec(split="test"), options=PipelineOptions(model=None),
                     progress=False)
    both = datasets.load_dataset(str(out))
    assert both["train"].num_rows == 3 and both["test"].num_rows == 2


# --- 5. prefetch: CPU workers are safe next to a running model ----------------------------------------------


def test_cpu_workers_never_inherit_locks_held_by_the_model_thread(tmp_path):
    """The CPU part runs in a background thread (as with prefetch) while the main thread holds a lock, as torch
    holds its own while a model runs. Workers forked from this process would inherit the lock held and wait
    forever; workers from the forkserver start clean, so the chunk finishes."""
    from concurrent.futures import ThreadPoolExecutor

    from datasets import Value

    from charattr_hf.schema import load_schema
    from charattr_hf.stages.decode import DecodeStage
    from charattr_hf.stages.fusion import SimpleFusion
    from charattr_hf.stages.identity import Identify
    from charattr_hf.workers import CpuWorkers
    from tests import fork_probe
    from tests.test_pipeline import image_dataset

    schema = load_schema("default")
    pipeline = Pipeline(schema, cpu=[Identify(), DecodeStage(), fork_probe.Probe()], device=[],
                        fusion=SimpleFusion(schema, []))
    chunk = image_dataset(256).add_column("index", list(range(256)), feature=Value("int64"))
    with CpuWorkers(2) as workers, ThreadPoolExecutor(1) as background:
        with fork_probe.LOCK:  # held by "the model" for the whole CPU part
            done = background.submit(pipeline.cpu_part, chunk, tmp_path / "scratch", 2, workers)
            out = done.result(timeout=120)
        again = pipeline.cpu_part(chunk, tmp_path / "scratch2", 2, workers)  # the same pool serves the next chunk
    assert out.num_rows == 256 and out["index"] == list(range(256))  # every row, in order
    pids = set(out["worker_pid"])
    assert len(pids) == 2 and os.getpid() not in pids
    assert os.getpid() not in set(out["worker_parent"])  # not forked from this process
    assert set(again["worker_pid"]) == pids and out["sha256"] == again["sha256"]


def test_model_load_errors_say_what_to_do(monkeypatch):
    """The Hub's answers (test doubles of its errors: the Hub is not reachable here) become one line each."""
    import httpx
    from huggingface_hub import errors as hub

    from charattr_hf.loading import model_load_error

    response = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/x"))

    def wrapped(exc):  # as open_clip and transformers raise them: their own error, the Hub's as its cause
        try:
            raise exc
        except Exception as inner:
            try:
                raise RuntimeError("Failed to download weights") from inner
            except RuntimeError as outer:
                return outer

    cases = {
        hub.GatedRepoError("gated", response=response): "hf auth login",
        hub.RepositoryNotFoundError("404", response=response): "check the name",
        hub.RevisionNotFoundError("no rev", response=response): "revision",
        hub.LocalEntryNotFoundError("not cached"): "HF_HUB_OFFLINE=1",
        ConnectionError("network unreachable"): "HF_HUB_OFFLINE=1",
        FileNotFoundError("no such folder"): "check the path",
    }
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for exc, advice in cases.items():
        message = str(model_load_error("CLIP model", "org/model", wrapped(exc)))
        assert message.startswith("cannot load the CLIP model org/model: ") and advice in message, message
        assert "\n" not in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = str(model_load_error("BLIP-2 model", "org/blip", hub.LocalEntryNotFoundError("not cached")))
    assert "not in the local cache and HF_HUB_OFFLINE=1" in message


def test_a_streamed_copy_elsewhere_is_another_input(tmp_path, monkeypatch):
    from charattr_hf.inputs import InputSpec, input_identity

    image_folder(tmp_path / "x" / "images", n=2)
    shutil.copytree(tmp_path / "x" / "images", tmp_path / "y" / "images")
    ids = []
    for where in ("x", "y"):
        monkeypatch.chdir(tmp_path / where)
        ids.append(input_identity(InputSpec(dataset="images", streaming=True)))
    assert ids[0] != ids[1]  # same relative name, same files and times: still not the same rows (paths)
    monkeypatch.chdir(tmp_path / "x")
    assert input_identity(InputSpec(dataset="images", streaming=True)) == ids[0]


def test_a_rerun_with_nothing_to_do_loads_no_model(tiny_clip_dir, tmp_path, monkeypatch):
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.pipeline import PipelineOptions
    from tests.test_pipeline import image_dataset

    opts = PipelineOptions(model=f"local-dir:{tiny_clip_dir}", use_cache=False)
    first, _ = annotate_to_disk(image_dataset(4), tmp_path / "out", options=opts, chunk_size=2, progress=False)
    loads = []
    monkeypatch.setattr(Pipeline, "load", lambda self: loads.append(1))
    again, _ = annotate_to_disk(image_dataset(4), tmp_path / "out", options=opts, chunk_size=2, progress=False)
    assert first.complete and again.complete and again.chunks_skipped == 2 and not loads
