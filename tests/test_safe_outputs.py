"""Input is data, never an order; an output never holds bytes that break its readers (#17).

- A row that names a file outside the input's own storage (``{"bytes": None, "path": "/home/me/.ssh/id"}``) gets an
  error, and the file is never read: not hashed, not decoded, not embedded with ``--keep_images``.
- With ``--keep_images`` the output holds only bytes the decode stage read and decoded; a row it could not decode
  keeps no image (its ``sha256`` and ``error`` stay), so every reader iterates the output cleanly.
- Readers of an annotated output open a row's ``path`` only when the file is the one that was annotated.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, PngImagePlugin

from charattr_hf.image_access import ANY, NOTHING, ImageAccess, read_verified
from charattr_hf.stages.decode import DecodeStage

REAL = Path(__file__).parent / "data" / "real"
SECRET = "charattr-test-secret-7f3a9c1e"


def _png(seed: int, text: str | None = None, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", text)
    buf = io.BytesIO()
    im.save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def _truncated_real_jpeg() -> bytes:
    data = (REAL / "ukbench08996.jpg").read_bytes()
    return data[: len(data) * 6 // 10]


@pytest.fixture()
def crafted(tmp_path):
    """An input folder holding one Parquet file whose rows name files outside it, and those files."""
    outside = tmp_path / "home"
    outside.mkdir()
    (outside / "id_ed25519").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n")
    (outside / "private.png").write_bytes(_png(7, text=SECRET))  # a real image: it would decode
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "inside.png").write_bytes(_png(3))
    os.symlink(outside / "private.png", inp / "link.png")  # inside by name, outside in fact
    rows = [
        {"bytes": _png(1), "path": "good.png"},
        {"bytes": None, "path": str(outside / "id_ed25519")},
        {"bytes": None, "path": str(outside / "private.png")},
        {"bytes": None, "path": str(inp / ".." / "home" / "private.png")},
        {"bytes": None, "path": str(inp / "link.png")},
        {"bytes": None, "path": "private.png"},  # relative: to what? not read
        {"bytes": None, "path": str(inp / "inside.png")},  # the input's own folder: read
        {"bytes": _truncated_real_jpeg(), "path": "truncated.jpg"},
        {"bytes": (REAL / "ukbench09268_corrupt.jpg").read_bytes(), "path": "corrupt.jpg"},
    ]
    table = pa.table({"image": pa.array(rows, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "name": [f"r{i}" for i in range(len(rows))]})
    pq.write_table(table, inp / "data.parquet")
    return inp, outside


def _all_output_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_rows_naming_files_outside_the_input_are_never_read_or_embedded(crafted, tmp_path):
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.inputs import InputSpec
    from charattr_hf.pipeline import PipelineOptions

    inp, outside = crafted
    out = tmp_path / "out"
    result, _ = annotate_to_disk(str(inp / "data.parquet"), out, input_spec=InputSpec(id_column="name"),
                                 options=PipelineOptions(model=None, keep_images=True), progress=False, num_proc=1)
    assert result.complete
    blob = _all_output_bytes(out)
    assert SECRET.encode() not in blob  # neither the key nor the private image, anywhere in the output folder
    assert hashlib.sha256((outside / "private.png").read_bytes()).hexdigest().encode() not in blob

    ds = datasets.load_dataset(str(out), split="train")
    rows = {r["id"]: r for r in ds}  # iterating decodes every kept image: none may fail
    assert len(rows) == 9  # rows in = rows out
    for name in ("r1", "r2", "r3", "r4"):
        assert "outside the input's own folder" in rows[name]["error"], rows[name]
        assert rows[name]["sha256"] is None and rows[name]["image"] is None  # never read, not even hashed
    assert "relative image path" in rows["r5"]["error"] and rows["r5"]["sha256"] is None
    for name in ("r0", "r6"):
        assert rows[name]["error"] is None and rows[name]["image"].size == (48, 48)
    assert rows["r6"]["sha256"] == hashlib.sha256((inp / "inside.png").read_bytes()).hexdigest()
    # a kept image is named by its base name, never by a local path
    table = pq.read_table(sorted((out / "data").glob("*.parquet"))[0])
    names = [c["path"] for c in table.column("image").to_pylist() if c]
    assert sorted(names) == ["good.png", "inside.png"]


def test_an_undecodable_image_keeps_its_hash_and_error_but_no_bytes(crafted, tmp_path):
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.inputs import InputSpec
    from charattr_hf.pipeline import PipelineOptions

    inp, _ = crafted
    out = tmp_path / "out"
    annotate_to_disk(str(inp / "data.parquet"), out, input_spec=InputSpec(id_column="name"),
                     options=PipelineOptions(model=None, keep_images=True), progress=False, num_proc=1)
    ds = datasets.load_dataset(str(out), split="train")
    truncated, corrupt = ds[7], ds[8]  # reading the rows decodes their images: this must not raise
    assert truncated["error"].startswith("truncated image") and truncated["image"] is None
    assert truncated["sha256"] == hashlib.sha256(_truncated_real_jpeg()).hexdigest()
    assert corrupt["error"].startswith("unreadable image") and corrupt["image"] is None
    assert corrupt["sha256"] == hashlib.sha256((REAL / "ukbench09268_corrupt.jpg").read_bytes()).hexdigest()
    # and the same through the generic Parquet reader, which knows nothing of the card
    for row in datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train"):
        assert row["image"] is None or row["image"].size[0] > 0


def test_image_root_allows_a_folder_by_name(crafted, tmp_path):
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.inputs import InputSpec
    from charattr_hf.pipeline import PipelineOptions

    inp, outside = crafted
    out = tmp_path / "out"
    annotate_to_disk(str(inp / "data.parquet"), out, input_spec=InputSpec(id_column="name", image_root=[str(outside)]),
                     options=PipelineOptions(model=None), progress=False, num_proc=1)
    rows = {r["id"]: r for r in datasets.load_dataset(str(out), split="train")}
    assert rows["r2"]["error"] is None and rows["r4"]["error"] is None  # the private image, now allowed by name
    assert "cannot identify" in rows["r1"]["error"]  # read (allowed), but not an image: not decoded, not kept


def test_a_datasets_object_in_memory_is_the_callers_own(tmp_path):
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.inputs import InputSpec
    from charattr_hf.pipeline import PipelineOptions

    (tmp_path / "a.png").write_bytes(_png(1))
    ds = datasets.Dataset.from_dict({"image": [str(tmp_path / "a.png")]}).cast_column("image", datasets.Image())
    annotate_to_disk(ds, tmp_path / "out", options=PipelineOptions(model=None), progress=False)
    assert datasets.load_dataset(str(tmp_path / "out"), split="train")[0]["error"] is None
    annotate_to_disk(ds, tmp_path / "out2", input_spec=InputSpec(image_root=[str(tmp_path / "elsewhere")]),
                     options=PipelineOptions(model=None), progress=False)
    assert "outside" in datasets.load_dataset(str(tmp_path / "out2"), split="train")[0]["error"]


def test_image_access_rules(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"x")
    os.symlink(tmp_path, root / "up")
    access = ImageAccess.within([str(root)], ["hf://datasets/org/name"])
    assert access.refusal(str(root / "sub" / "a.png")) is None
    assert access.refusal(str(root / "sub" / ".." / ".." / "x.png"))  # climbs out
    assert access.refusal(str(root / "up" / "x.png"))  # a link out of the folder
    assert access.refusal(str(root) + "-other/a.png")  # a sibling sharing the prefix
    assert access.refusal("a.png")  # relative
    assert access.refusal("hf://datasets/org/name@abc/train/a.png") is None
    assert access.refusal("hf://datasets/org/name/train/a.png") is None
    assert access.refusal("zip://a.png::hf://datasets/org/name@abc/train.zip") is None
    assert access.refusal("hf://datasets/org/name-evil/a.png")
    assert access.refusal("https://example.org/a.png")
    assert access.refusal(f"zip://a.png::{tmp_path}/elsewhere.zip")  # a local archive outside the folder
    assert access.refusal(f"zip://a.png::{root}/sub/x.zip") is None
    assert access.plus(["https://example.org/img"]).refusal("https://example.org/img/a.png") is None
    assert NOTHING.refusal(str(root / "sub" / "a.png")) and ANY.refusal("/etc/passwd") is None
    # a chained URL: only archive members may come before the input's own file, and a local file never does
    assert access.refusal(f"file://{tmp_path}/secret::hf://datasets/org/name/x.png")
    assert access.refusal(f"simplecache::file://{tmp_path}/secret")
    assert access.refusal(f"file://{tmp_path}/secret") and access.refusal(f"file://{root}/sub/a.png") is None
    # dot segments would let a server or fsspec resolve the URL into another repository
    assert access.refusal("hf://datasets/org/name/../../me/private/a.png")
    assert access.refusal("hf://datasets/org/name/%2E%2E/other/a.png")
    # a relative path is the input folder's, never the working directory's
    assert access.resolve("sub/a.png") == str(root.resolve() / "sub" / "a.png")
    assert "not found in the input's folder" in access.refusal("sub/missing.png")
    assert access.refusal("up/x.png")  # relative, through the link out of the folder


def test_a_row_cannot_hold_a_run_with_a_device_or_a_pipe(tmp_path):
    """Only regular files are read, without blocking and up to a size: /dev/zero or a named pipe that a row (or a
    link in the input folder) names gives an error row at once; the readers of an output get nothing."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    cells = [{"bytes": None, "path": "/dev/zero"}, {"bytes": None, "path": str(fifo)}, str(tmp_path)]
    out = DecodeStage(access=ANY)({"image": cells})
    assert [e.split(",")[0].split(":")[0] for e in out["error"]] == ["not a regular file"] * 2 + ["not a file"]
    assert read_verified("/dev/zero", "0" * 64) is None and read_verified(str(fifo), "0" * 64) is None
    out = DecodeStage(access=ImageAccess.within([str(tmp_path)]))({"image": [str(tmp_path / "zero.png")]})
    assert "outside the input's own folder" in out["error"][0]  # a link to the device resolves outside


def test_another_file_of_the_input_folder_gets_no_hash(tmp_path):
    """A row naming a file of the input's folder that is no image (a key, a document) gets an error and no hash:
    the output cannot confirm a guess of what it holds. A damaged image keeps its hash; so do given bytes."""
    (tmp_path / "notes.txt").write_text(SECRET)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    cells = [str(tmp_path / "notes.txt"), {"bytes": None, "path": str(tmp_path / "broken.jpg")},
             {"bytes": SECRET.encode(), "path": "notes.txt"}]
    out = DecodeStage(access=ImageAccess.within([str(tmp_path)]))({"image": cells})
    assert all(e.startswith("unreadable image") for e in out["error"])
    assert out["sha256"] == [None, hashlib.sha256(b"not a jpeg").hexdigest(), hashlib.sha256(SECRET.encode()).hexdigest()]


def test_caption_and_metadata_files_linked_out_of_an_image_folder_are_not_read(tmp_path):
    """A `.txt` beside an image, or the folder's metadata.jsonl, that links to a file elsewhere is not read: its text
    would become the row's tags and, through the captions, an export."""
    from charattr_hf.errors import UserError
    from charattr_hf.inputs import InputSpec, open_dataset

    outside = tmp_path / "home"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png(1))
    (folder / "b.png").write_bytes(_png(2))
    (folder / "a.txt").symlink_to(outside / "secret.txt")
    (folder / "b.txt").write_text("1girl, smile")
    ds = open_dataset(InputSpec(dataset=str(folder)))
    tags = dict(zip([os.path.basename(c["path"]) for c in ds["image"]], ds["tags"]))
    assert tags == {"a.png": None, "b.png": "1girl, smile"}
    (outside / "meta.jsonl").write_text('{"file_name": "a.png", "caption": "%s"}\n' % SECRET)
    (folder / "metadata.jsonl").symlink_to(outside / "meta.jsonl")
    with pytest.raises(UserError, match="metadata.jsonl is a link to a file outside"):
        open_dataset(InputSpec(dataset=str(folder)))
    (folder / "metadata.jsonl").unlink()
    (outside / "tables").mkdir()
    (outside / "tables" / "metadata.jsonl").write_text('{"file_name": "a.png", "caption": "x"}\n')
    (folder / "more").symlink_to(outside / "tables")  # a linked folder of tables
    with pytest.raises(UserError, match="is a link to a file outside"):
        open_dataset(InputSpec(dataset=str(folder)))


def test_a_damaged_parquet_shard_is_one_line(tmp_path):
    from charattr_hf.curation.curate import annotated_files
    from charattr_hf.errors import UserError

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-00000-of-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match="not a readable Parquet file"):
        annotated_files(str(tmp_path))


def test_a_hub_input_may_name_its_own_cached_files_only(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from charattr_hf.inputs import InputSpec, image_access

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    access = image_access(InputSpec(dataset="org/chars"))
    own = tmp_path / "hub" / "datasets--org--chars" / "snapshots" / "abc" / "a.png"
    other = tmp_path / "hub" / "datasets--org--other" / "snapshots" / "abc" / "a.png"
    assert access.refusal(str(own)) is None and access.refusal(str(other))
    assert access.refusal(str(tmp_path / "hub" / ".." / "token"))
    assert access.refusal("hf://datasets/org/chars@main/a.png") is None
    assert access.refusal("hf://datasets/org/other/a.png")


def test_decode_refuses_before_reading(tmp_path, monkeypatch):
    """The refusal comes first: the file is not opened at all."""
    opened = []
    real_open = open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    (tmp_path / "x.png").write_bytes(_png(2))
    monkeypatch.setattr("builtins.open", spy)
    real_os_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(str(path)) or real_os_open(path, *a, **k))
    out = DecodeStage(access=NOTHING)({"image": [{"bytes": None, "path": str(tmp_path / "x.png")}]})
    assert "outside" in out["error"][0] and not any("x.png" in p for p in opened)


def test_readers_of_an_output_open_a_path_only_when_it_is_the_annotated_file(tmp_path):
    from charattr_hf.app.data import _open_image
    from charattr_hf.card import open_thumbnail

    good = tmp_path / "a.png"
    good.write_bytes(_png(4))
    sha = hashlib.sha256(good.read_bytes()).hexdigest()
    assert read_verified(str(good), sha) == good.read_bytes()
    assert read_verified(str(good), "0" * 64) is None and read_verified(str(good), None) is None
    assert open_thumbnail(str(good), 16, sha) is not None
    assert open_thumbnail(str(good), 16) is None and open_thumbnail({"bytes": None, "path": str(good)}, 16) is None
    assert _open_image(None, str(good), sha) is not None and _open_image(None, str(good), None) is None


def test_a_hub_cache_snapshot_and_a_linked_folder_of_images_are_read(tmp_path):
    """What snapshot_download returns (every file a link into the repository's blobs/) is the input's own storage,
    and an image folder with a linked sub-folder of images and their per-image .json files (as gallery-dl writes)
    is no linked table: only metadata files would be read as rows."""
    from charattr_hf.inputs import InputSpec, image_access, open_dataset

    repo = tmp_path / "hub" / "datasets--org--chars"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc"
    (snap / "images").mkdir(parents=True)
    (repo / "blobs" / "b1").write_bytes(_png(5))
    (snap / "images" / "a.png").symlink_to(repo / "blobs" / "b1")
    rows = pa.table({"image": pa.array([{"bytes": None, "path": str(snap / "images" / "a.png")}],
                                       pa.struct([("bytes", pa.binary()), ("path", pa.string())]))})
    pq.write_table(rows, repo / "blobs" / "b2")
    (snap / "data").mkdir()
    (snap / "data" / "train-00000-of-00001.parquet").symlink_to(repo / "blobs" / "b2")
    from charattr_hf.reader import _tables_linked_outside

    spec = InputSpec(dataset=str(snap))
    assert _tables_linked_outside(snap) == [] and _tables_linked_outside(snap / "data") == []
    other = tmp_path / "hub" / "datasets--org--other" / "blobs"
    other.mkdir(parents=True)
    (other / "b9").write_bytes(b"x")
    (snap / "data" / "evil.parquet").symlink_to(other / "b9")  # another repository's file: outside
    assert [os.path.basename(p) for p in _tables_linked_outside(snap)] == ["evil.parquet"]
    (snap / "data" / "evil.parquet").unlink()
    cell = {"bytes": None, "path": str(snap / "images" / "a.png")}
    assert DecodeStage(access=image_access(spec))({"image": [cell]})["error"] == [None]

    elsewhere = tmp_path / "downloads"
    elsewhere.mkdir()
    (elsewhere / "b.png").write_bytes(_png(6))
    (elsewhere / "b.json").write_text('{"source": "gallery"}')
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png(7))
    (folder / "more").symlink_to(elsewhere)
    assert len(open_dataset(InputSpec(dataset=str(folder)))) >= 1  # not refused; the linked images are per row
