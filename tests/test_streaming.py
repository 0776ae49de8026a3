"""Streamed input split between processes: each reads only its shards, and the output is the 1-process output."""

import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets import Dataset
from datasets.distributed import split_dataset_by_node

from charattr_hf.api import annotate_to_disk
from charattr_hf.chunks import plan_stream
from charattr_hf.inputs import InputSpec
from tests.test_pipeline import _failing_chunk, image_dataset
from tests.test_recipe import accelerate, rank_records

ROOT = Path(__file__).resolve().parents[1]
SIZES = (7, 5, 9, 6)  # rows per Parquet file: uneven, so a shard's place in the stream is not a multiple of anything


@pytest.fixture(scope="module")
def parquet_folder(tmp_path_factory):
    """Four Parquet files; the rows of the third have no path (ids come from the row's place in the stream)."""
    folder = tmp_path_factory.mktemp("stream") / "data"
    folder.mkdir()
    ds = image_dataset(sum(SIZES), bad=(3, 20))
    start = 0
    for i, n in enumerate(SIZES):
        part = ds.select(range(start, start + n))
        if i == 2:
            part = part.cast_column("image", datasets.Image(decode=False)).map(
                lambda r: {"image": {"bytes": r["image"]["bytes"], "path": None}}
            ).cast_column("image", datasets.Image())
        part.to_parquet(str(folder / f"part-{i}.parquet"))
        start += n
    return folder


def streamed(folder: Path) -> datasets.IterableDataset:
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    return datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)


def test_which_streams_split_by_shard(parquet_folder):
    """The plan follows from what the input is (files named by the user, read as they are), not from datasets'
    internals: a datasets object handed over may have been cut or shuffled across its shards."""
    ds = streamed(parquet_folder)
    assert [plan_stream(ds, independent_shards=True, world=w).units for w in (1, 2, 4)] == [4, 4, 4]
    assert plan_stream(ds, independent_shards=True, world=5).units == 0  # fewer shards than processes
    assert plan_stream(ds, independent_shards=False, world=2).units == 0  # a caller's object: one stream
    assert plan_stream(Dataset.from_dict({"x": [1, 2]}).to_iterable_dataset(), independent_shards=True,
                       world=1).units == 0  # one shard


def test_a_stream_cut_with_limit_or_handed_over_is_read_as_one(parquet_folder, tiny_clip_dir, tmp_path):
    """`--limit` takes the first rows of the whole stream (sharded, it would take them per shard); a caller's
    IterableDataset is read as one stream: every row once, in stream order."""
    kwargs = dict(chunk_size=4, progress=False, model=f"local-dir:{tiny_clip_dir}", use_cache=False)
    limited, _ = annotate_to_disk(None, tmp_path / "limited", input_spec=InputSpec(dataset=str(parquet_folder),
                                                                                  streaming=True, limit=10), **kwargs)
    assert limited.rows == 10 and limited.ranks[0]["shards_read"] == []
    assert load(tmp_path / "limited")["index"] == list(range(10))
    handed, _ = annotate_to_disk(streamed(parquet_folder), tmp_path / "handed", input_id="four-files", **kwargs)
    assert handed.rows == sum(SIZES) and handed.ranks[0]["shards_read"] == []


def load(out: Path) -> Dataset:
    return datasets.load_dataset(str(out), split="train")


def same_rows(a: Dataset, b: Dataset):
    assert len(a) == len(b) == sum(SIZES)
    for column in ("index", "id", "path", "sha256", "error", "hair_color", "accessories"):
        assert a[column] == b[column], column
    np.testing.assert_allclose(
        [r["hair_color"] for r in a["probs_clip"] if r], [r["hair_color"] for r in b["probs_clip"] if r], atol=1e-5
    )


@pytest.fixture(scope="module")
def plain_output(parquet_folder, tiny_clip_dir, tmp_path_factory):
    """The same files, not streamed: rows numbered in file order."""
    out = tmp_path_factory.mktemp("plain")
    annotate_to_disk(None, out, input_spec=InputSpec(dataset=str(parquet_folder)), chunk_size=4, progress=False,
                     model=f"local-dir:{tiny_clip_dir}", use_cache=False)
    return load(out)


def test_one_process_stream_gives_the_plain_output_and_resumes_by_shard(parquet_folder, plain_output, tiny_clip_dir,
                                                                         tmp_path, monkeypatch):
    out = tmp_path / "one"
    spec = InputSpec(dataset=str(parquet_folder), streaming=True)
    kwargs = dict(input_spec=spec, chunk_size=4, progress=False, model=f"local-dir:{tiny_clip_dir}", use_cache=False)
    with monkeypatch.context() as m:
        # the second chunk of shard 2 (provisional indices: shard * 2**40 + row) fails, as if the run died there
        _failing_chunk(m, 2 * (1 << 40) + 4)
        result, _ = annotate_to_disk(None, out, **kwargs)
    assert result.failed_chunks == ["2/1"] and not result.data_files
    # the rerun reads shard 2 again, and only shard 2, and redoes only that chunk
    result, _ = annotate_to_disk(None, out, **kwargs)
    (rank,) = result.ranks
    assert rank["chunks_processed"] == ["2/1"] and rank["shards_read"] == [2] and rank["rows_read"] == SIZES[2]
    assert result.rows == sum(SIZES) and result.chunks == sum(-(-n // 4) for n in SIZES)
    first = load(out)
    same_rows(first, plain_output)
    third = first.select(range(SIZES[0] + SIZES[1], SIZES[0] + SIZES[1] + SIZES[2]))
    assert third["path"] == [None] * SIZES[2] and third["id"] == [str(i) for i in third["index"]]


@pytest.mark.slow  # the fuller subprocess matrix: `pytest -m slow`, run by CI too
def test_two_processes_each_read_only_their_shards(parquet_folder, plain_output, tiny_clip_dir, tmp_path):
    out = tmp_path / "two"
    args = ["--dataset", str(parquet_folder), "--streaming", "--model", f"local-dir:{tiny_clip_dir}", "--output_dir",
            str(out), "--chunk_size", "4", "--no_cache", "--quiet"]
    proc = subprocess.run(accelerate(*args, processes=2), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = rank_records(out)
    # the shards split_dataset_by_node gives each rank, and nothing else: no row is read twice
    ds = streamed(parquet_folder).cast_column("image", datasets.Image(decode=False))
    for r, record in enumerate(ranks):
        assert record["world"] == 2 and record["shards_read"] == list(range(r, 4, 2))
        assert record["rows_read"] == sum(1 for _ in split_dataset_by_node(ds, r, 2)) == record["rows_processed"]
    assert ranks[0]["rows_read"] + ranks[1]["rows_read"] == sum(SIZES)
    done = [set(r["chunks_processed"]) for r in ranks]
    assert done[0] and done[1] and not done[0] & done[1]
    same_rows(load(out), plain_output)


@pytest.mark.slow  # the fuller subprocess matrix: `pytest -m slow`, run by CI too
def test_one_shard_two_processes_share_chunks_of_one_stream(parquet_folder, plain_output, tiny_clip_dir, tmp_path):
    """The fallback: a stream that cannot be split by shard is read by both processes, each taking its chunks."""
    single = tmp_path / "single.parquet"
    Dataset.from_parquet(sorted(str(p) for p in parquet_folder.glob("*.parquet"))).to_parquet(str(single))
    out = tmp_path / "rows"
    args = ["--dataset", str(single), "--streaming", "--model", f"local-dir:{tiny_clip_dir}", "--output_dir", str(out),
            "--chunk_size", "4", "--no_cache", "--quiet"]
    proc = subprocess.run(accelerate(*args, processes=2), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "every process reads all of it" in proc.stderr
    ranks = rank_records(out)
    assert [r["rows_read"] for r in ranks] == [sum(SIZES)] * 2 and [r["shards_read"] for r in ranks] == [[], []]
    assert sum(r["rows_processed"] for r in ranks) == sum(SIZES)
    assert not set(ranks[0]["chunks_processed"]) & set(ranks[1]["chunks_processed"])
    same_rows(load(out), plain_output)


def test_a_second_run_into_the_same_folder_is_refused(parquet_folder, tiny_clip_dir, tmp_path):
    """While one launch writes into an output folder, another one is told so, before any work, and changes nothing."""
    import fcntl

    from charattr_hf.errors import UserError

    out = tmp_path / "busy"
    (out / ".charattr").mkdir(parents=True)
    kwargs = dict(input_spec=InputSpec(dataset=str(parquet_folder)), chunk_size=4, progress=False,
                  model=f"local-dir:{tiny_clip_dir}", use_cache=False)
    with open(out / ".charattr" / "lock", "w") as held:  # as the running launch's main process holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="another run is writing into"):
            annotate_to_disk(None, out, **kwargs)
    assert sorted(p.name for p in (out / ".charattr").iterdir()) == ["lock"] and not (out / "data").exists()
    result, _ = annotate_to_disk(None, out, **kwargs)  # released: the run goes ahead
    assert result.rows == sum(SIZES) and result.data_files


def test_the_recipe_refuses_a_held_folder_before_reading_its_input(tmp_path):
    """The recipe holds its output folder from before it reads the input until it has published: a second launch
    is told so (exit 2, one line) and starts nothing."""
    import fcntl

    out = tmp_path / "busy"
    (out / ".charattr").mkdir(parents=True)
    with open(out / ".charattr" / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "annotate.py"), "--output_dir", str(out),
                               "--limit", "4", "--quiet"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "another run is writing into" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in (out / ".charattr").iterdir()) == ["lock"]
