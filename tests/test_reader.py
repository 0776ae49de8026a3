"""The one dataset loader: every kind of source, the same answer through the annotation input, the evaluation
and fusion training, and errors a user can act on."""

from __future__ import annotations

import datasets
import pytest

from charattr_hf import fusion_training as ft
from charattr_hf.errors import UserError
from charattr_hf.evaluation import load_annotations
from charattr_hf.reader import (
    DatasetNotFoundError,
    SplitNotFoundError,
    UnsupportedFileError,
    is_saved_dataset,
    read_dataset,
)


def _rows(n: int, start: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"id": [f"r{i}" for i in range(start, start + n)],
                                       "score": [float(i) / 4 for i in range(start, start + n)]})


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    _rows(4).save_to_disk(str(root / "saved"))
    datasets.DatasetDict({"train": _rows(2), "test": _rows(3, 10)}).save_to_disk(str(root / "saved_dict"))
    for split, ds in (("train", _rows(2)), ("test", _rows(3, 10))):
        ds.to_parquet(str(root / "repo" / "data" / f"{split}-00000-of-00001.parquet"))
    _rows(5).to_parquet(str(root / "UPPER.PARQUET"))
    _rows(3).to_json(str(root / "rows.jsonl"))
    _rows(3).to_csv(str(root / "rows.csv"), index=False)
    _rows(2).to_parquet(str(root / "parts" / "a.parquet"))
    _rows(2, 2).to_parquet(str(root / "parts" / "b.parquet"))
    return root


@pytest.mark.parametrize(
    "name, split, ids",
    [
        ("saved", "train", [f"r{i}" for i in range(4)]),
        ("saved_dict", "test", ["r10", "r11", "r12"]),
        ("repo", "test", ["r10", "r11", "r12"]),  # only that split, not every table under the folder
        ("UPPER.PARQUET", "train", [f"r{i}" for i in range(5)]),  # suffixes in any case
        ("rows.jsonl", "train", ["r0", "r1", "r2"]),
        ("rows.csv", "train", ["r0", "r1", "r2"]),
        ("parts/*.parquet", "train", ["r0", "r1", "r2", "r3"]),
        ("parts", "train", ["r0", "r1", "r2", "r3"]),
    ],
)
def test_every_loader_opens_every_source_alike(sources, name, split, ids):
    path = str(sources / name)
    direct = read_dataset(path, split)
    assert sorted(direct["id"]) == ids
    # evaluation and fusion training open their inputs through the same function
    assert load_annotations(path, split)["id"] == direct["id"]
    assert ft.load_table(path, split)["id"] == direct["id"]


def test_opened_objects_and_streaming(sources):
    dd = datasets.DatasetDict({"train": _rows(2), "test": _rows(3)})
    assert read_dataset(dd, "test").num_rows == 3
    plain = _rows(3)
    assert read_dataset(plain) is plain
    streamed = read_dataset(str(sources / "saved"), streaming=True)
    assert isinstance(streamed, datasets.IterableDataset) and [r["id"] for r in streamed] == [f"r{i}" for i in range(4)]
    assert is_saved_dataset(sources / "saved_dict") and not is_saved_dataset(sources / "repo")


def test_errors_say_what_to_do_and_keep_their_builtin_kind(sources, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no such dataset folder or file") as missing:
        read_dataset(str(tmp_path / "nowhere"))
    assert isinstance(missing.value, FileNotFoundError) and isinstance(missing.value, UserError)
    for name in ("saved_dict", "repo"):
        with pytest.raises(SplitNotFoundError, match="validation") as no_split:
            read_dataset(str(sources / name), "validation")
        assert isinstance(no_split.value, ValueError) and isinstance(no_split.value, UserError)
    with pytest.raises(SplitNotFoundError, match=r"splits: \['train', 'test'\]"):
        read_dataset(datasets.DatasetDict({"train": _rows(1), "test": _rows(1)}), "validation")
    odd = tmp_path / "notes.txt"
    odd.write_text("x")
    with pytest.raises(UnsupportedFileError, match="unsupported file type '.txt'"):
        read_dataset(str(odd))


def test_a_repository_layout_with_card_pictures_is_read_as_its_tables(tmp_path):
    """An annotated output: README + data/*.parquet + the card's pictures in images/ (not an image folder)."""
    from PIL import Image

    _rows(3).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "train-labels.png")
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                        "    path: data/train-*\n---\n")
    ds = read_dataset(tmp_path, "train")
    assert ds["id"] == ["r0", "r1", "r2"]


def test_files_an_image_folder_leaves_out_are_counted_in_one_log_line(tmp_path, caplog):
    """A real JPEG under an ``.svg`` name (imagededup's format test file) is not read by the image-folder reader;
    the log says so, by suffix. Captions beside an image, metadata and hidden files are no such files."""
    from pathlib import Path

    data = Path(__file__).parent / "data" / "real"
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / ".thumbs").mkdir()
    (folder / "photo.JPG").write_bytes((data / "ukbench08996.jpg").read_bytes())
    (folder / "photo.txt").write_text("a photo")  # its caption
    (folder / "sub" / "vector.svg").write_bytes((data / "ukbench09380.svg").read_bytes())
    (folder / "sub" / "scan.heic").write_bytes(b"\0" * 16)
    (folder / "notes.txt").write_text("not beside an image")
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / ".thumbs" / "photo.svg").write_bytes(b"<svg/>")
    with caplog.at_level("WARNING", logger="charattr_hf.reader"):
        ds = read_dataset(str(folder))
    assert len(ds) == 1  # the .svg holds a readable JPEG, but the reader does not look at it
    lines = [r.getMessage() for r in caplog.records if "not read as images" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith("3 file(s) not read as images (not a kind the image-folder reader "
                                                 "knows): .heic 1, .svg 1, .txt 1")
    caplog.clear()
    (folder / "sub" / "vector.svg").unlink()
    (folder / "sub" / "scan.heic").unlink()
    (folder / "notes.txt").unlink()
    with caplog.at_level("WARNING", logger="charattr_hf.reader"):
        read_dataset(str(folder))
    assert not [r for r in caplog.records if "not read as images" in r.getMessage()]
