"""The pipeline in-process: stages on small batches, the runner's output layout, resume and caching."""

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, Image as HFImage
from PIL import Image

from charattr_hf.api import annotate, annotate_to_disk
from charattr_hf.cache import FeatureCache
from charattr_hf.chunks import chunk_path
from charattr_hf.inputs import InputSpec
from charattr_hf.pipeline import Pipeline, PipelineOptions
from charattr_hf.schema import load_schema
from charattr_hf.sources.clip.model import ClipSpec
from charattr_hf.sources.clip.stage import ClipZeroShot
from charattr_hf.stages.decode import DecodeStage

TAGS = [
    "1girl, solo, long_hair, blonde_hair, blue_eyes, glasses, smile",
    "1boy, short_hair, black_hair, red_eyes, hat",
    None,
]


def png(seed: int, size=(40, 56)) -> bytes:
    arr = (np.random.default_rng(seed).random((*size, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def image_dataset(n: int, bad: tuple[int, ...] = (), duplicate_of: dict | None = None) -> Dataset:
    images = [{"bytes": png(i), "path": f"img_{i}.png"} for i in range(n)]
    for i in bad:
        images[i] = {"bytes": b"this is not an image", "path": f"img_{i}.png"}
    for i, j in (duplicate_of or {}).items():
        images[i] = {"bytes": images[j]["bytes"], "path": f"img_{i}.png"}
    tags = [TAGS[i % len(TAGS)] for i in range(n)]
    return Dataset.from_dict({"image": images, "tags": tags}).cast_column("image", HFImage())


def clip_batch(stage: ClipZeroShot, n: int, bad=()):
    ds = image_dataset(n, bad=bad)
    decode = DecodeStage({stage.pixels_column: stage.pixel_spec})
    batch = ds.cast_column("image", HFImage(decode=False))[:]
    batch.update(decode(batch))
    return batch


def test_clip_stage_outputs_distributions(tiny_clip_dir):
    schema = load_schema()
    stage = ClipZeroShot(schema, ClipSpec.parse(f"local-dir:{tiny_clip_dir}"), batch_size=4)
    batch = clip_batch(stage, 6, bad=(2,))
    out = stage(batch)
    probs = out["probs_clip"]
    assert probs[2] is None and out["error"][2]
    for row in (probs[i] for i in (0, 1, 3, 4, 5)):
        for attr in schema:
            vec = np.asarray(row[attr.name])
            assert vec.shape == (attr.num_labels,)
            if attr.multi_label:
                assert ((vec > 0) & (vec < 1)).all()
            else:
                assert vec.sum() == pytest.approx(1.0, abs=1e-5)
    # different images, different scores: the images reach the model
    assert not np.allclose(probs[0]["hair_color"], probs[1]["hair_color"])


def test_clip_batching_does_not_change_results(tiny_clip_dir):
    spec = ClipSpec.parse(f"local-dir:{tiny_clip_dir}")
    big = ClipZeroShot("default", spec, batch_size=8)
    small = ClipZeroShot("default", spec, batch_size=3)
    batch = clip_batch(big, 7)
    a, b = big(batch)["probs_clip"], small(batch)["probs_clip"]
    one = [small({k: v[i : i + 1] for k, v in batch.items()})["probs_clip"][0] for i in range(7)]
    for x, y, z in zip(a, b, one):
        np.testing.assert_allclose(x["eye_color"], y["eye_color"], atol=1e-5)
        np.testing.assert_allclose(x["eye_color"], z["eye_color"], atol=1e-5)


def test_clip_cache_skips_images_already_seen(tiny_clip_dir, cache_dir, monkeypatch):
    spec = ClipSpec.parse(f"local-dir:{tiny_clip_dir}")
    stage = ClipZeroShot("default", spec, batch_size=4, embedding=True)
    stage.cache = FeatureCache(cache_dir, stage.cache_namespace(), writer="a")
    batch = clip_batch(stage, 5)
    first = stage(batch)
    assert len(stage.cache) == 5

    # a second process (other writer file) reads what the first wrote and computes nothing
    other = ClipZeroShot("default", spec, batch_size=4, embedding=True)
    other.cache = FeatureCache(cache_dir, other.cache_namespace(), writer="b")
    calls = []
    real_forward = ClipZeroShot._forward
    monkeypatch.setattr(ClipZeroShot, "_forward", lambda self, blobs: calls.append(len(blobs)) or real_forward(self, blobs))
    second = other(batch)
    assert calls == []
    for x, y in zip(first["probs_clip"], second["probs_clip"]):
        np.testing.assert_allclose(x["hair_color"], y["hair_color"], rtol=1e-6)
    np.testing.assert_allclose(first["embedding"][0], second["embedding"][0], atol=1e-2)

    # a different schema is a different namespace: nothing stale is read
    restricted = load_schema().restrict({"hair_color": None})
    third = ClipZeroShot(restricted, spec)
    assert third.cache_namespace() != stage.cache_namespace()


def test_annotate_keeps_every_row_and_flags_bad_images(tiny_clip_dir, tmp_path):
    ds = image_dataset(30, bad=(3, 17))
    out_dir = tmp_path / "out"
    result, pipeline = annotate_to_disk(
        ds, out_dir, options=PipelineOptions(model=f"local-dir:{tiny_clip_dir}", cache_dir=str(tmp_path / "c")),
        chunk_size=8, num_proc=2, progress=False,
    )
    assert pipeline.sources == ["clip", "tags"]
    assert result.chunks == 4 and result.rows == 30 and result.complete
    loaded = datasets.load_dataset(str(out_dir), split="train")
    assert len(loaded) == 30
    assert loaded["index"] == list(range(30))
    assert loaded["id"][0] == "img_0.png"
    errors = loaded["error"]
    assert [i for i, e in enumerate(errors) if e] == [3, 17]
    assert "unreadable" in errors[3]
    assert loaded[3]["hair_color"] is None and loaded[3]["sha256"]
    assert loaded[0]["hair_color"] is not None
    assert isinstance(loaded.features["hair_color"], datasets.ClassLabel)
    # tags evidence reached the fused label where CLIP is random: blonde for row 0's tags
    assert loaded.features["hair_color"].int2str(loaded[0]["hair_color"]) == "blonde"
    # the same files through the plain parquet builder
    files = sorted(str(p) for p in (out_dir / "data").glob("train-*.parquet"))
    assert files and files[0].endswith("train-00000-of-00001.parquet")
    plain = datasets.load_dataset("parquet", data_files=files, split="train")
    assert plain.features == loaded.features and plain["sha256"] == loaded["sha256"]
    card = (out_dir / "README.md").read_text()
    assert "configs:" in card and "data/train-*" in card and "hair_color" in card


def _failing_chunk(monkeypatch, first_index: int) -> None:
    """The chunk whose first row is ``first_index`` fails (as if the run died while it was in flight)."""
    real = Pipeline.device_part

    def device_part(self, chunk, scratch, output_features):
        if chunk["index"][0] == first_index:
            raise RuntimeError("the device went away")
        return real(self, chunk, scratch, output_features)

    monkeypatch.setattr(Pipeline, "device_part", device_part)


def test_rerun_resumes_from_finished_chunks(tiny_clip_dir, tmp_path, monkeypatch):
    ds = image_dataset(20)
    opts = dict(model=f"local-dir:{tiny_clip_dir}", cache_dir=str(tmp_path / "c"), use_cache=False)
    whole, _ = annotate_to_disk(ds, tmp_path / "whole", options=PipelineOptions(**opts), chunk_size=6, progress=False)
    out_dir = tmp_path / "out"
    with monkeypatch.context() as m:
        _failing_chunk(m, 12)
        first, _ = annotate_to_disk(ds, out_dir, options=PipelineOptions(**opts), chunk_size=6, progress=False)
    assert first.failed_chunks == [2] and not first.data_files and not (out_dir / "README.md").exists()
    second, _ = annotate_to_disk(ds, out_dir, options=PipelineOptions(**opts), chunk_size=6, progress=False)
    assert second.chunks_skipped == 3 and second.rows_processed == 6
    assert second.ranks[0]["chunks_processed"] == [2]
    assert pq.read_table(second.data_files[0]).equals(pq.read_table(whole.data_files[0]))


def test_a_complete_run_leaves_its_output_and_a_record_only(tiny_clip_dir, tmp_path, monkeypatch):
    """#21: the lock file and the work folder go when the run is complete; the record left says that the same run
    has nothing to do, and the rerun loads no model."""
    ds = image_dataset(8)
    opts = PipelineOptions(model=f"local-dir:{tiny_clip_dir}", use_cache=False)
    out_dir = tmp_path / "out"
    first, _ = annotate_to_disk(ds, out_dir, options=opts, chunk_size=4, progress=False)
    assert first.complete and [p.name for p in (out_dir / ".charattr").iterdir()] == ["complete.json"]
    card = (out_dir / "README.md").read_text()
    monkeypatch.setattr(Pipeline, "load", lambda self: pytest.fail("a finished run loads no model"))
    again, _ = annotate_to_disk(ds, out_dir, options=opts, chunk_size=4, progress=False)
    assert again.already_complete and again.rows_processed == 0 and again.chunks_skipped == again.chunks == 2
    assert again.data_files == first.data_files and (out_dir / "README.md").read_text() == card
    assert again.summary["rows"] == 8
    # anything else is another run: a changed setting, or the output's files gone
    (out_dir / "data" / first.data_files[0].name).unlink()
    monkeypatch.undo()
    third, _ = annotate_to_disk(ds, out_dir, options=opts, chunk_size=4, progress=False)
    assert not third.already_complete and third.rows_processed == 8 and third.data_files


def test_changed_settings_do_not_reuse_chunks(tiny_clip_dir, tmp_path):
    ds = image_dataset(6)
    out_dir = tmp_path / "out"
    base = dict(model=f"local-dir:{tiny_clip_dir}", use_cache=False)
    annotate_to_disk(ds, out_dir, options=PipelineOptions(**base), chunk_size=4, progress=False)
    again, _ = annotate_to_disk(
        ds, out_dir, options=PipelineOptions(**base, fusion_method="vote"), chunk_size=4, progress=False
    )
    assert again.chunks_skipped == 0 and again.rows_processed == 6


def test_duplicates_share_one_forward(tiny_clip_dir, tmp_path, monkeypatch):
    ds = image_dataset(8, duplicate_of={5: 1, 6: 1})
    seen = []
    real_forward = ClipZeroShot._forward
    monkeypatch.setattr(ClipZeroShot, "_forward", lambda self, blobs: seen.append(len(blobs)) or real_forward(self, blobs))
    out = annotate(ds, model=f"local-dir:{tiny_clip_dir}", use_cache=False, progress=False)
    assert sum(seen) == 6
    assert out[5]["sha256"] == out[1]["sha256"]
    assert out[5]["probs_clip"] == out[1]["probs_clip"]


def test_no_model_and_no_tags_still_accounts_for_every_row(tmp_path):
    ds = image_dataset(5, bad=(1,)).remove_columns("tags")
    opts = PipelineOptions(model=None)
    result, pipeline = annotate_to_disk(ds, tmp_path / "o", options=opts, progress=False)
    assert pipeline.sources == ["tags"]  # no tags column: the tags source looks for prompts in the images
    assert any("CLIP source skipped" in m for m in pipeline.messages)
    out = Dataset.from_parquet([str(f) for f in result.data_files])
    assert len(out) == 5 and out["hair_color"] == [None] * 5 and out["tags_from"] == [None] * 5
    assert out["error"][1] and out["sha256"][0]


def test_limit_and_streaming_give_the_same_rows(tiny_clip_dir, tmp_path):
    ds = image_dataset(12)
    path = tmp_path / "in.parquet"
    ds.to_parquet(str(path))
    opts = dict(model=f"local-dir:{tiny_clip_dir}", use_cache=False)
    plain = annotate(str(path), limit=9, progress=False, **opts)
    streamed = annotate(str(path), limit=9, streaming=True, chunk_size=4, progress=False, **opts)
    assert len(plain) == len(streamed) == 9
    assert plain["sha256"] == streamed["sha256"]
    assert plain["hair_color"] == streamed["hair_color"]
    np.testing.assert_allclose(
        [r["eye_color"] for r in plain["probs_clip"]], [r["eye_color"] for r in streamed["probs_clip"]], atol=1e-6
    )


def test_empty_input_gives_an_empty_typed_dataset(tiny_clip_dir, tmp_path):
    ds = image_dataset(3).select([])
    out = annotate(ds, tmp_path / "o", model=f"local-dir:{tiny_clip_dir}", use_cache=False, progress=False)
    assert len(out) == 0 and isinstance(out.features["hair_color"], datasets.ClassLabel)


# --- failures: whose fault they are decides what happens --------------------------------------------------


def test_a_row_that_breaks_a_source_is_flagged_and_keeps_its_other_results(tiny_clip_dir, tmp_path, monkeypatch):
    from charattr_hf.sources.tags.stage import TagStage

    real = TagStage.process

    def process(self, batch):
        if any(t == "POISON" for t in batch.get("tags") or []):
            raise RuntimeError("parser bug")
        return real(self, batch)

    monkeypatch.setattr(TagStage, "process", process)
    ds = image_dataset(65)
    tags = list(ds["tags"])
    tags[64] = "POISON"  # alone in the last CPU batch (batch size 64): a batch of one must not fail the chunk
    tags[10] = "POISON"
    ds = ds.remove_columns("tags").add_column("tags", tags)
    out = annotate(ds, model=f"local-dir:{tiny_clip_dir}", use_cache=False, progress=False, chunk_size=100)
    assert len(out) == 65
    for i in (10, 64):
        assert out[i]["error"] is None and "tags_failed" in out[i]["flags"]
        assert out[i]["probs_tags"] is None
        assert out[i]["probs_clip"] is not None and out[i]["hair_color"] is not None
    assert "tags_failed" not in out[0]["flags"] and out[0]["probs_tags"] is not None


def test_an_unusable_cache_does_not_stop_the_run(tiny_clip_dir, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    ds = image_dataset(4)
    out = annotate(ds, model=f"local-dir:{tiny_clip_dir}", cache_dir=str(blocker), progress=False)
    assert len(out) == 4 and all(r is not None for r in out["probs_clip"])


def test_a_chunk_file_with_the_wrong_rows_is_recomputed(tiny_clip_dir, tmp_path, monkeypatch):
    ds = image_dataset(10)
    opts = dict(model=f"local-dir:{tiny_clip_dir}", use_cache=False)
    with monkeypatch.context() as m:
        _failing_chunk(m, 8)
        first, _ = annotate_to_disk(ds, tmp_path / "o", options=PipelineOptions(**opts), chunk_size=4, progress=False)
    # chunk 1 replaced by chunk 0's content: right size, wrong rows
    chunk_path(first.run_dir, 1).write_bytes(chunk_path(first.run_dir, 0).read_bytes())
    again, _ = annotate_to_disk(ds, tmp_path / "o", options=PipelineOptions(**opts), chunk_size=4, progress=False)
    assert again.chunks_skipped == 1 and again.rows_processed == 6
    assert datasets.load_dataset(str(tmp_path / "o"), split="train")["index"] == list(range(10))


def test_a_stream_object_needs_a_name_to_be_resumable(tiny_clip_dir, tmp_path):
    stream = image_dataset(4).to_iterable_dataset()
    with pytest.raises(ValueError, match="input_id"):
        annotate_to_disk(stream, tmp_path / "o", options=PipelineOptions(model=None), progress=False)
    result, _ = annotate_to_disk(stream, tmp_path / "o", input_id="my-stream-v1",
                                 options=PipelineOptions(model=None), progress=False)
    assert result.rows == 4 and result.complete


def test_split_name_and_images_are_kept(tiny_clip_dir, tmp_path):
    ds = image_dataset(5)
    result, _ = annotate_to_disk(ds, tmp_path / "o", input_spec=InputSpec(split="validation"),
                                 options=PipelineOptions(model=None, keep_images=True), progress=False)
    assert result.data_files[0].name == "validation-00000-of-00001.parquet"
    loaded = datasets.load_dataset(str(tmp_path / "o"), split="validation")
    assert isinstance(loaded.features["image"], datasets.Image)
    assert loaded[0]["image"].size == (56, 40)


def test_a_split_of_saved_and_parquet_dataset_dicts_is_read_alone(tmp_path):
    from charattr_hf.inputs import open_dataset

    dd = datasets.DatasetDict({"test": image_dataset(3), "test_sketch": image_dataset(5)})
    dd.save_to_disk(str(tmp_path / "saved"))
    for name in ("test", "test_sketch"):
        dd[name].to_parquet(str(tmp_path / "repo" / "data" / f"{name}-00000-of-00001.parquet"))
    for folder in ("saved", "repo"):
        ds = open_dataset(InputSpec(dataset=str(tmp_path / folder), split="test_sketch"))
        assert ds.num_rows == 5, folder  # that split only, not every table under the folder
        with pytest.raises(ValueError, match="validation"):
            open_dataset(InputSpec(dataset=str(tmp_path / folder), split="validation"))


def test_input_columns_may_not_overwrite_outputs(tmp_path):
    ds = image_dataset(2).add_column("width", [1, 2])
    with pytest.raises(ValueError, match="width"):
        annotate_to_disk(ds, tmp_path / "o", input_spec=InputSpec(keep_columns=["width"]),
                         options=PipelineOptions(model=None), progress=False)


def test_prefetching_the_next_chunk_gives_the_same_output(tiny_clip_dir, tmp_path):
    ds = image_dataset(40, bad=(5,))
    opts = dict(model=f"local-dir:{tiny_clip_dir}", use_cache=False)
    a, _ = annotate_to_disk(ds, tmp_path / "a", options=PipelineOptions(**opts), chunk_size=8, num_proc=2,
                            prefetch=False, progress=False)
    b, _ = annotate_to_disk(ds, tmp_path / "b", options=PipelineOptions(**opts), chunk_size=8, num_proc=2,
                            prefetch=True, progress=False)
    assert a.complete and b.complete
    ta, tb = pq.read_table(a.data_files[0]), pq.read_table(b.data_files[0])
    assert ta.column("sha256").equals(tb.column("sha256")) and ta.column("hair_color").equals(tb.column("hair_color"))
    assert ta.column("error").equals(tb.column("error"))


def test_image_folder_with_metadata_and_embeddings(tiny_clip_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    lines = []
    for i in range(5):
        (folder / f"char_{i}.png").write_bytes(png(i))
        lines.append(json.dumps({"file_name": f"char_{i}.png", "tags": TAGS[0] if i % 2 else TAGS[1]}))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    lines.append(json.dumps({"file_name": "broken.png", "tags": TAGS[0]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    out = annotate(str(folder), tmp_path / "o", model=f"local-dir:{tiny_clip_dir}", keep_embedding=True,
                   use_cache=False, progress=False)
    assert len(out) == 6
    by_name = {Path(p).name: row for p, row in zip(out["path"], out)}
    assert set(by_name) == {f"char_{i}.png" for i in range(5)} | {"broken.png"}
    # ids are relative to the folder (the same on any machine); path keeps where the file was read
    assert sorted(out["id"]) == sorted(by_name) and all(Path(p).is_absolute() for p in out["path"])
    assert by_name["broken.png"]["error"] and by_name["broken.png"]["embedding"] is None
    good = by_name["char_1.png"]
    assert good["error"] is None and len(good["embedding"]) == 16
    assert out.features["hair_color"].int2str(good["hair_color"]) == "blonde"  # its tags say blonde_hair
    assert good["probs_tags"]["hair_color"] is not None


def test_ids_relative_to_the_input_folder_only_below_it():
    from charattr_hf.stages.identity import Identify

    root = Path("/data/chars").resolve()
    stage = Identify(root=root)
    elsewhere = str(Path("/elsewhere/y.png").resolve())
    batch = {"index": [0, 1, 2, 3, 4, 5], "_source_id": None,
             "image": [{"path": str(root / "a" / "x.png")}, {"path": elsewhere}, {"path": None}, None,
                       {"path": "stored/z.png"}, {"path": str(root / "..a.png")}]}
    out = stage.process(batch)
    # below the folder: relative; outside it, or a stored relative string: as given; no path: the index
    assert out["id"] == ["a/x.png", elsewhere, "2", "3", "stored/z.png", "..a.png"]
    assert out["path"][:2] == [str(root / "a" / "x.png"), elsewhere]
    # the stage's fingerprint says that ids are relative, not where the folder is
    assert Identify(root="/mnt/other").fingerprint() == stage.fingerprint() != Identify().fingerprint()


def test_only_image_folders_give_an_id_root(tmp_path):
    from charattr_hf.inputs import image_folder_root, open_dataset

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png(0))
    image_dataset(2).to_parquet(str(tmp_path / "tables" / "data" / "train-00000-of-00001.parquet"))
    image_dataset(2).save_to_disk(str(tmp_path / "saved"))
    def root(spec):
        return image_folder_root(spec, open_dataset(spec))

    assert root(InputSpec(dataset=str(tmp_path / "imgs"))) == str((tmp_path / "imgs").resolve())
    for other in ("tables", "saved"):
        assert root(InputSpec(dataset=str(tmp_path / other))) is None
    assert root(InputSpec()) is None  # the synthetic sample
    assert image_folder_root(InputSpec(dataset="org/name"), image_dataset(1)) is None


def test_max_shard_rows_holds_even_when_a_chunk_is_larger(tmp_path):
    """Shards are cut by rows, across chunks: no shard holds more than --max_shard_rows, the rows keep their order,
    and load_dataset reads them all back."""
    import pyarrow.parquet as pq

    from charattr_hf.api import annotate_to_disk

    out = tmp_path / "out"
    result, _ = annotate_to_disk(image_dataset(7), out, options=PipelineOptions(model=None, use_cache=False),
                                 chunk_size=4, max_shard_rows=3, progress=False, num_proc=1)
    rows = [pq.ParquetFile(f).metadata.num_rows for f in result.data_files]
    assert rows == [3, 3, 1] and [f.name for f in result.data_files][-1] == "train-00002-of-00003.parquet"
    ds = datasets.load_dataset(str(out), split="train")
    assert ds["index"] == list(range(7))
