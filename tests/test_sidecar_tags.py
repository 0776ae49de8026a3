"""Tags that sit beside the images: kohya's foo.png + foo.txt, and the image-folder metadata.jsonl convention."""

from __future__ import annotations

import json

import pytest

from charattr_hf.inputs import InputSpec, open_dataset
from charattr_hf.synthetic import make_item


def _folder(root, n=3):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"img{i}.png").write_bytes(make_item(0, i)["image"]["bytes"])
    return root


def _tags_by_name(ds):
    return {row["image"]["path"].rsplit("/", 1)[-1]: row.get("tags") for row in ds}


@pytest.mark.parametrize("streaming", [False, True])
def test_txt_files_beside_the_images_are_the_tags(tmp_path, caplog, streaming):
    root = _folder(tmp_path / "lora")
    (root / "img0.txt").write_text("blonde hair, blue eyes\n")
    (root / "img2.txt").write_text("1girl, short hair, red eyes")
    with caplog.at_level("INFO", logger="charattr_hf.inputs"):
        ds = open_dataset(InputSpec(dataset=str(root), streaming=streaming))
    assert _tags_by_name(ds) == {"img0.png": "blonde hair, blue eyes", "img1.png": None,
                                 "img2.png": "1girl, short hair, red eyes"}
    assert any(".txt file(s) beside the images" in r.message for r in caplog.records)


def test_a_changed_caption_file_changes_the_rows_identity(tmp_path):
    root = _folder(tmp_path / "lora", 2)
    (root / "img0.txt").write_text("blonde hair")
    first = open_dataset(InputSpec(dataset=str(root)))
    (root / "img0.txt").write_text("black hair, long hair")
    second = open_dataset(InputSpec(dataset=str(root)))
    assert second[0]["tags"] == "black hair, long hair"
    assert first._fingerprint != second._fingerprint  # a resumed run never reuses chunks tagged with the old text


def test_a_metadata_tags_column_wins_over_txt_files(tmp_path):
    root = _folder(tmp_path / "meta", 2)
    (root / "img0.txt").write_text("from the txt file")
    with open(root / "metadata.jsonl", "w") as fh:
        for i in range(2):
            fh.write(json.dumps({"file_name": f"img{i}.png", "tags": f"from metadata {i}"}) + "\n")
    ds = open_dataset(InputSpec(dataset=str(root)))
    assert sorted(ds["tags"]) == ["from metadata 0", "from metadata 1"]
