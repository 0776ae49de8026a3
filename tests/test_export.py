"""Training-ready output (#20): captions in trainers' conventions, kohya and image-folder exports, kohya folders read
as such, and caption files the toolkit wrote never read back as a person's tags (#17).

Real files: kohya_ss's own test folder (``tests/data/kohya/img/10_darius kawasaki person``, paintings with their BLIP
captions) and real WD v3 tag names (``tests/data/kohya/selected_tags_wd_v3_subset.csv``); see the README there."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from charattr_hf.api import annotate
from charattr_hf.captions import CaptionBuilder, CaptionOptions, load_caption_rules, write_captions
from charattr_hf.errors import UserError
from charattr_hf.export import MARKER, export
from charattr_hf.inputs import InputSpec, open_dataset
from charattr_hf.kohya import folder_name, parse_folder
from charattr_hf.provenance import MANIFEST_NAME
from tests.test_tagger import fixed_tagger  # noqa: F401 - fixture: the tiny tagger over real WD v3 tags

ROOT = Path(__file__).resolve().parents[1]
KOHYA = ROOT / "tests" / "data" / "kohya"
SUBSET = "10_darius kawasaki person"
#: the fixed tagger's output for every image (tests/test_tagger.py LOGITS): general tags by score, the character
TAGGER_TAGS = ["1girl", "blonde_hair", "solo", "glasses", "long_hair", "smile"]


def wd_tags() -> dict[str, int]:
    """name -> category of the real WD v3 rows copied into tests/data."""
    lines = (KOHYA / "selected_tags_wd_v3_subset.csv").read_text(encoding="utf-8").splitlines()[1:]
    return {line.split(",")[1]: int(line.split(",")[2]) for line in lines}


def blip_captions() -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in (KOHYA / "img" / SUBSET).glob("*.txt")}


def kohya_copy(tmp: Path) -> Path:
    """A writable copy of the real kohya folder (img/10_darius kawasaki person/*.jpg + BLIP .txt)."""
    shutil.copytree(KOHYA / "img", tmp / "img")
    return tmp / "img"


@pytest.fixture(scope="module")
def annotated_kohya(tmp_path_factory, fixed_tagger):  # noqa: F811 - the imported fixture
    """The real kohya folder annotated with the tiny tagger: (annotated output folder, image folder)."""
    tmp = tmp_path_factory.mktemp("kohya")
    img = kohya_copy(tmp)
    out = tmp / "annotated"
    annotate(str(img), out, model="", tagger=f"local-dir:{fixed_tagger}", schema="default", use_cache=False,
             progress=False, num_proc=1)
    return out, img


# --------------------------------------------------------------------------------------------- captions
def test_caption_order_sources_and_rules_on_real_wd_tags(tmp_path):
    vocab = wd_tags()
    general = [t for t in ("1girl", "solo", "long_hair", "smile", "skull", "helmet", "simple_background",
                           "very_long_hair", "traditional_media", "star_(symbol)", "^_^") if vocab[t] == 0]
    chars = [t for t in vocab if vocab[t] == 4]
    assert len(general) == 11 and chars == ["hatsune_miku", "kaname_madoka"]
    blip = blip_captions()["Dariusz_Zawadzki"]
    row = {"tagger_tags": general, "tagger_characters": chars[:1], "tagger_rating": "sensitive",
           "tags": f"{blip}, Long Hair, long_hair, masterpiece, darius kawasaki"}
    tokens = CaptionBuilder(CaptionOptions(trigger="darius kawasaki"), "default").tokens(row)
    # trigger, character, the person's attribute tag, the tagger's attribute tags in its order (by score), the
    # person's caption, the rest in the tagger's order; a repeated "long hair" goes, very_long_hair stays; rating and
    # quality tags are left out; kaomoji keep their underscores
    assert tokens == ["darius kawasaki", "hatsune miku", "long hair", "1girl", "solo", "smile", "very long hair",
                      "a painting of a steam punk skull with a gas mask", "by darius kawasaki", "skull", "helmet",
                      "simple background", "traditional media", r"star \(symbol\)", "^_^"]

    rules = tmp_path / "rules.yaml"
    rules.write_text("blacklist: ['*_background', traditional media]\nreplace: {helmet: headwear, smile: ''}\n")
    kept = CaptionBuilder(CaptionOptions(caption_blacklist=str(rules), underscores=True, caption_meta=True,
                                         escape_parentheses=False), "default").tokens(row)
    assert kept[:3] == ["hatsune_miku", "sensitive", "long_hair"]  # the rating leads the tags when asked for
    assert "headwear" in kept and not {"helmet", "smile", "simple_background", "traditional_media"} & set(kept)
    assert "masterpiece" in kept and "star_(symbol)" in kept and "^_^" in kept
    assert "a painting of a steam punk skull with a gas mask" in kept  # a sentence keeps its spaces
    assert load_caption_rules("simple_background, Long Hair").blacklist == ("simple_background", "long_hair")


def test_fused_attributes_write_tags_unless_another_token_says_them():
    builder = CaptionBuilder(CaptionOptions(), "default")
    row = {"tagger_tags": None, "hair_color": "blonde", "hair_color_confidence": 0.9,
           "hair_length": "long", "hair_length_confidence": 0.3,  # below attribute_min_confidence
           "accessories": ["glasses", "hat"], "accessories_confidence": [0.8, 0.95]}
    assert builder.tokens(row) == ["hat", "blonde hair", "glasses"]  # no tagger ran: attributes by confidence
    # the person's "blond hair" says hair_color = blonde: the fused blonde_hair is implied, not repeated
    assert builder.tokens({**row, "tags": "blond hair"}) == ["blond hair", "hat", "glasses"]
    # a tagger ran: auto leaves the attributes out; naming them brings them back
    tagged = {**row, "tagger_tags": ["smile"], "tagger_characters": []}
    assert builder.tokens(tagged) == ["smile"]
    both = CaptionBuilder(CaptionOptions(caption_sources="tagger,attributes"), "default")
    assert both.tokens(tagged) == ["smile", "hat", "blonde hair", "glasses"]


def test_keep_tokens_head_and_one_safe_line():
    builder = CaptionBuilder(CaptionOptions(keep_tokens=2), "default")
    row = {"trigger": "my\x00char,\nname\u202e", "tagger_characters": ["hatsune_miku"],
           "tagger_tags": ["1girl", "skull"], "tags": "line one\nline two\r\x07, x\u2028y"}
    caption = builder.caption(row)
    assert caption.split(", ")[:2] == ["my char name", "hatsune miku"]  # the trigger, then the character lead
    assert caption.isprintable() and "\n" not in caption and "\x00" not in caption
    assert caption.encode("utf-8").decode("utf-8") == caption
    assert all(t == t.strip() and t for t in caption.split(", "))


@pytest.mark.parametrize("options, message", [
    ({"trigger": "a,b"}, "a comma splits it"),
    ({"trigger": "two\nlines"}, "printable characters on one line"),
    ({"class_token": "..."}, "usable in a folder name"),
    ({"caption_extension": "txt"}, "a suffix such as .txt"),
    ({"caption_extension": ".png"}, "a suffix such as .txt"),
    ({"caption_sources": "tagger,blip"}, "unknown source(s) ['blip']"),
    ({"caption_blacklist": "missing.yaml"}, "no such file"),
])
def test_caption_options_are_checked(options, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        CaptionBuilder(CaptionOptions(**options))


# --------------------------------------------------------------------------------------------- kohya layout
def test_kohya_folder_names_and_the_real_folder_read_as_such():
    assert parse_folder(SUBSET) == (10, "darius kawasaki", "person")
    assert parse_folder("5_sks") == (5, "sks", None) and parse_folder("0_x") is None and parse_folder("img") is None
    assert folder_name(10, "darius kawasaki", "person") == SUBSET
    assert folder_name(3, "../../etc", None) == "3__.._etc" and folder_name(1, None, None) == "1_images"  # one part
    ds = open_dataset(InputSpec(dataset=str(KOHYA / "img")))
    rows = {Path(r["image"]["path"]).stem: r for r in ds}
    assert set(rows) == set(blip_captions())
    for stem, row in rows.items():
        assert (row["repeats"], row["trigger"], row["class_token"]) == (10, "darius kawasaki", "person")
        assert row["tags"] == blip_captions()[stem]  # a person's own captions count as the tag source


# --------------------------------------------------------------------------------------------- provenance
def test_captions_written_by_the_toolkit_are_not_read_back_as_a_persons_tags(tmp_path, caplog):
    img = kohya_copy(tmp_path)
    folder = img / SUBSET
    blip = blip_captions()
    (folder / "Dariusz_Zawadzki_5.txt").unlink()  # an image without a caption of its own
    (folder / "extra.jpg").write_bytes((folder / "Dariusz_Zawadzki.jpg").read_bytes())
    (folder / "extra.txt").write_text("a person's own tags")
    rows = [{"id": f"{SUBSET}/{stem}.jpg", "tagger_tags": TAGGER_TAGS, "tagger_characters": ["hatsune_miku"],
             "tags": None if stem.endswith("_5") else blip[stem]}
            for stem in ("Dariusz_Zawadzki", "Dariusz_Zawadzki_2", "Dariusz_Zawadzki_5")]
    report = write_captions(rows, img, overwrite=True, schema="default")
    assert report.written == 3
    written = (folder / "Dariusz_Zawadzki_5.txt").read_text()
    assert written.startswith("hatsune miku, 1girl")
    (folder / "Dariusz_Zawadzki_2.txt").write_text("edited by hand, " + (folder / "Dariusz_Zawadzki_2.txt").read_text())

    with caplog.at_level("INFO", logger="charattr_hf.inputs"):
        tags = {Path(r["image"]["path"]).stem: r["tags"] for r in open_dataset(InputSpec(dataset=str(img)))}
    assert tags["Dariusz_Zawadzki_5"] is None  # the toolkit's caption, untouched: no person's tags
    assert tags["Dariusz_Zawadzki"] == blip["Dariusz_Zawadzki"]  # merged: exactly what the person had written
    assert tags["Dariusz_Zawadzki_2"].startswith("edited by hand, hatsune miku")  # edited: the person's now
    assert tags["Dariusz_Zawadzki_3"] == blip["Dariusz_Zawadzki_3"] and tags["extra"] == "a person's own tags"
    assert any("2 of the 5 .txt file(s)" in r.message and "written by charattr-hf" in r.message
               for r in caplog.records), [r.message for r in caplog.records]
    assert any("using the tags in 4 .txt file(s)" in r.message for r in caplog.records)
    again = {Path(r["image"]["path"]).stem: r["tags"]
             for r in open_dataset(InputSpec(dataset=str(img), read_written_captions=True))}
    assert again["Dariusz_Zawadzki_5"] == written  # asked for: read as they are

    # a second write replaces the toolkit's own caption without --overwrite_captions, keeps the person's
    second = write_captions([{**rows[2], "tagger_tags": ["smile"]}, {**rows[1], "tagger_tags": ["smile"]}], img,
                            schema="default")
    assert (second.written, second.skipped_existing) == (1, 1)
    assert (folder / "Dariusz_Zawadzki_5.txt").read_text() == "hatsune miku, smile"
    assert json.loads((folder / MANIFEST_NAME).read_text())["written_by"] == "charattr-hf"


# --------------------------------------------------------------------------------------------- export
def test_kohya_export_of_the_real_folder_reads_back_as_written(annotated_kohya, tmp_path):
    annotated, img = annotated_kohya
    out = tmp_path / "lora"
    report = export(annotated, out, "kohya", caption_options=CaptionOptions(keep_tokens=2, caption_blacklist="smile"))
    blip = blip_captions()
    assert (report.rows, report.exported, dict(report.left_out)) == (len(blip), len(blip), {})
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, SUBSET, "dataset.toml"])
    for stem, text in blip.items():
        assert (out / SUBSET / f"{stem}.jpg").read_bytes() == (img / SUBSET / f"{stem}.jpg").read_bytes()
        tokens = (out / SUBSET / f"{stem}.txt").read_text(encoding="utf-8").split(", ")
        assert tokens[:2] == ["darius kawasaki", "hatsune miku"]  # the folder's trigger, then the character
        # the tagger's tags in its order (smile blacklisted), then the BLIP caption, merged
        assert tokens[2:] == ["1girl", "blonde hair", "solo", "glasses", "long hair",
                              *[t.strip() for t in text.split(",")]]
    config = tomllib.loads((out / "dataset.toml").read_text(encoding="utf-8"))
    assert config["general"] == {"caption_extension": ".txt", "shuffle_caption": True, "keep_tokens": 2}
    [subset] = config["datasets"][0]["subsets"]
    assert subset == {"image_dir": str((out / SUBSET).resolve()), "num_repeats": 10,
                      "class_tokens": "darius kawasaki person"}

    # read back: the folder's name gives repeats, trigger and class; the captions are the toolkit's, so the tags
    # are the person's own BLIP captions again
    back = {Path(r["image"]["path"]).stem: r for r in open_dataset(InputSpec(dataset=str(out)))}
    assert {(r["repeats"], r["trigger"], r["class_token"]) for r in back.values()} == {(10, "darius kawasaki",
                                                                                        "person")}
    assert {k: r["tags"] for k, r in back.items()} == blip

    with pytest.raises(UserError, match="add --overwrite"):
        export(annotated, out, "kohya")
    export(annotated, out, "kohya", caption_options=CaptionOptions(trigger="sks", class_token="woman"), repeats=3,
           overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "3_sks woman", "dataset.toml"])
    assert (out / "3_sks woman" / "Dariusz_Zawadzki.txt").read_text().startswith("sks, hatsune miku, ")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("not an export")
    with pytest.raises(UserError, match="not empty and is not an earlier export"):
        export(annotated, tmp_path / "mine", "kohya", overwrite=True)
    assert (tmp_path / "mine" / "notes.md").read_text() == "not an export"


def test_imagefolder_export_loads_with_load_dataset(annotated_kohya, tmp_path):
    from datasets import load_dataset

    annotated, img = annotated_kohya
    out = tmp_path / "hf"
    export(annotated, out, "imagefolder", caption_options=CaptionOptions(trigger="dkw"))
    ds = load_dataset("imagefolder", data_dir=str(out), split="train")
    blip = blip_captions()
    assert len(ds) == len(blip) and {"image", "text"} <= set(ds.column_names)
    for row in ds:
        stem = Path(row["id"]).stem
        assert row["text"].startswith("dkw, hatsune miku, 1girl, blonde hair, solo")
        assert row["text"].endswith(blip[stem].split(",")[-1].strip())
        assert row["image"].size == Image.open(img / SUBSET / f"{stem}.jpg").size
    # the toolkit's `text` is not a person's caption when the folder is annotated again
    assert open_dataset(InputSpec(dataset=str(out))).column_names.count("caption") == 0


def _crafted(tmp: Path, rows: list[dict]) -> Path:
    """An annotated-output folder from plain rows (what a crafted Parquet file can hold)."""
    (tmp / "data").mkdir(parents=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "path": pa.array([r.get("path") for r in rows], pa.string()),
        "sha256": pa.array([r.get("sha256") for r in rows], pa.string()),
        "error": pa.array([r.get("error") for r in rows], pa.string()),
        "image": pa.array([{"bytes": r.get("bytes"), "path": None} for r in rows], image),
        "trigger": pa.array([r.get("trigger") for r in rows], pa.string()),
        "tagger_tags": pa.array([["solo"] for _ in rows], pa.list_(pa.string())),
    })
    pq.write_table(table, tmp / "data" / "train-00000-of-00001.parquet")
    return tmp


def _png(color, mode="RGB", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (8, 8), color).save(buf, fmt)
    return buf.getvalue()


def test_export_copies_only_verified_files_with_safe_unique_names(tmp_path):
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(_png("red"))
    real = (KOHYA / "img" / SUBSET / "Dariusz_Zawadzki.jpg")
    sha = hashlib.sha256(real.read_bytes()).hexdigest()
    rows = [
        {"id": "../../../etc/secret.png", "path": str(secret), "sha256": "0" * 64},  # names a file it does not know
        {"id": "/abs/a.png", "path": str(real), "sha256": sha, "trigger": "../../evil\nname"},  # known: copied
        {"id": "dup/a.png", "bytes": _png("blue")},  # embedded bytes
        {"id": "A.png", "bytes": _png("green")},  # same name on a case-insensitive file system
        {"id": "junk.png", "bytes": b"not an image"},
        {"id": "broken.png", "error": "unreadable image"},
        {"id": "anim.gif", "bytes": _png("white", "P", "GIF")},  # not read by sd-scripts: PNG
    ]
    report = export(_crafted(tmp_path / "ann", rows), tmp_path / "out", "kohya")
    assert report.exported == 4 and dict(report.left_out) == {"no image": 1, "unreadable image": 1, "error": 1}
    assert report.converted == 1
    files = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    evil = "1__.._evil name"  # the row's trigger, made one safe folder name
    assert files == [MARKER, f"{evil}/.charattr-captions.json", f"{evil}/a.jpg", f"{evil}/a.txt",
                     "1_images/.charattr-captions.json", "1_images/A-2.png", "1_images/A-2.txt", "1_images/a.png",
                     "1_images/a.txt", "1_images/anim.png", "1_images/anim.txt", "dataset.toml"]
    assert (tmp_path / "out" / evil / "a.jpg").read_bytes() == real.read_bytes()
    assert (tmp_path / "out" / evil / "a.txt").read_text() == "../../evil name, solo"  # one line
    assert not any(p.read_bytes() == secret.read_bytes() for p in (tmp_path / "out").rglob("*.png"))
    assert Image.open(tmp_path / "out" / "1_images" / "anim.png").format == "PNG"
    assert not list(tmp_path.glob(".out.*"))  # the temporary folder is gone


# --------------------------------------------------------------------------------------------- recipe
def test_export_recipe_end_to_end_and_user_mistakes(annotated_kohya, tmp_path):
    annotated, _ = annotated_kohya
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # the shipped config, flags overriding it
    cmd = [sys.executable, str(ROOT / "recipes" / "export.py"), "--config", str(ROOT / "recipes" / "configs" /
           "export_kohya.yaml"), "--dataset", str(annotated), "--output_dir", str(tmp_path / "lora"), "--repeats", "4"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "exported: 4   left out: 0" in done.stdout and "4_mychar girl/: 4 images" in done.stdout
    assert "--dataset_config" in done.stdout and "left out: none" in done.stderr
    caption = (tmp_path / "lora" / "4_mychar girl" / "Dariusz_Zawadzki.txt").read_text()
    assert caption.startswith("mychar, hatsune miku, 1girl, blonde hair, glasses") and "solo" not in caption
    assert tomllib.loads((tmp_path / "lora" / "dataset.toml").read_text())["general"]["keep_tokens"] == 1

    import importlib.util

    spec = importlib.util.spec_from_file_location("export_recipe", ROOT / "recipes" / "export.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules["export_recipe"] = recipe  # dataclasses look their module up there
    try:
        spec.loader.exec_module(recipe)
        for argv, message in [
            (["--output_dir", str(tmp_path / "x")], "--dataset is required"),
            (["--dataset", str(annotated), "--output_dir", str(tmp_path / "lora")], "add --overwrite"),
            (["--dataset", str(annotated), "--output_dir", str(tmp_path / "y"), "--trigger", "a,b"], "comma"),
            (["--dataset", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "z")], "not found"),
        ]:
            with pytest.raises(UserError, match=message):
                recipe.main(argv)
        with pytest.raises(SystemExit) as info:
            recipe.main(["--dataset", str(annotated), "--output_dir", str(tmp_path / "w"), "--format", "diffusers"])
        assert info.value.code == 2
    finally:
        sys.modules.pop("export_recipe", None)
    assert not any((tmp_path / n).exists() for n in "xyzw")
