"""The WD tagger source: a tiny timm tagger in the WD layout, the reference preprocessing, thresholds, captions."""

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, Image as HFImage
from PIL import Image

from charattr_hf.api import annotate
from charattr_hf.captions import caption_name, write_captions
from charattr_hf.errors import ModelLoadError, UserError
from charattr_hf.schema import load_schema
from charattr_hf.sources.tagger.stage import TaggerSpec, TaggerStage, mcut_threshold, select_tags
from charattr_hf.stages.decode import DecodeStage
from charattr_hf.stages.pixels import PixelSpec
from charattr_hf.testing import build_tiny_tagger

RATINGS = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9)]
GENERAL = ["1girl", "solo", "blonde_hair", "black_hair", "long_hair", "short_hair", "glasses", "hat", "smile",
           "looking_at_viewer"]
CHARACTERS = [("hatsune_miku", 4), ("kaname_madoka", 4)]
#: every output fixed by the head's biases (weights zeroed): the tagger says this whatever the image
LOGITS = {
    "general": 4.0, "sensitive": -4.0, "questionable": -5.0, "explicit": -6.0,
    "1girl": 3.0, "solo": 2.0, "blonde_hair": 2.5, "black_hair": -3.0, "long_hair": 1.0, "short_hair": -3.0,
    "glasses": 1.5, "hat": -5.0, "smile": 0.0, "looking_at_viewer": -0.8,
    "hatsune_miku": 3.0, "kaname_madoka": 1.0,
}


#: real rows of the WD v3 tag list (tests/data/kohya/README.md)
WD_TAGS = Path(__file__).parent / "data" / "kohya" / "selected_tags_wd_v3_subset.csv"


@pytest.fixture(scope="module")
def fixed_tagger(tmp_path_factory):
    """A tiny timm tagger in the WD v3 layout whose selected_tags.csv holds the real WD v3 rows of its tags."""
    names = {t for t, _ in RATINGS + CHARACTERS} | set(GENERAL)
    lines = WD_TAGS.read_text(encoding="utf-8").splitlines()
    rows = [lines[0]] + [line for line in lines[1:] if line.split(",")[1] in names]
    tags = [(line.split(",")[1], int(line.split(",")[2])) for line in rows[1:]]
    assert len(tags) == len(names)
    folder = build_tiny_tagger(tmp_path_factory.mktemp("tagger"), tags, LOGITS, image_size=32)
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def prepare_image(image, size: int, spec: PixelSpec | None = None) -> np.ndarray:
    """The tagger's pixels of one image (a PIL image or file bytes), as the pipeline makes them: by the decode
    stage, from its one decode of the image."""
    spec = spec or PixelSpec(size, "pad_square", fill="white")
    row = DecodeStage({"_px": spec})({"image": [image if isinstance(image, Image.Image) else {"bytes": image,
                                                                                             "path": None}]})
    assert row["error"] == [None], row["error"]
    return np.frombuffer(row["_px"][0], dtype=np.uint8).reshape(*spec.size, 3)


def png(seed: int, size=(40, 56), mode="RGB") -> bytes:
    arr = (np.random.default_rng(seed).random((size[1], size[0], len(mode))) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


def test_tiny_tagger_decides_tags_characters_and_attributes(fixed_tagger):
    images = [{"bytes": png(i), "path": f"img_{i}.png"} for i in range(3)]
    images[1] = {"bytes": b"not an image", "path": "img_1.png"}
    ds = Dataset.from_dict({"image": images}).cast_column("image", HFImage())
    out = annotate(ds, model="", tagger=f"local-dir:{fixed_tagger}", schema="default", use_cache=False,
                   progress=False)
    schema = load_schema("default")
    row = out[0]
    # general tags above 0.35, highest score first; 0.5 (smile) is in, sigmoid(-0.8) = 0.31 is out
    assert row["tagger_tags"] == ["1girl", "blonde_hair", "solo", "glasses", "long_hair", "smile"]
    assert row["tagger_characters"] == ["hatsune_miku"]  # 0.95 > 0.85 > 0.73
    assert row["tagger_rating"] == "general"
    # the attribute columns come from the tagger alone, through the schema's aliases
    names = lambda attr, v: schema[attr].labels[v].name  # noqa: E731
    assert names("hair_color", row["hair_color"]) == "blonde"
    assert names("hair_length", row["hair_length"]) == "long"
    assert names("gender_presentation", row["gender_presentation"]) == "feminine"
    assert names("character_count", row["character_count"]) == "one"
    worn = [schema["accessories"].labels[i].name for i in row["accessories"]]
    assert "glasses" in worn and "hat" not in worn
    probs = row["probs_tagger"]
    # labels the tagger has no tag for are "unknown" (0.5), neither present nor absent
    unknown = [lab.name for lab, p in zip(schema["accessories"].labels, probs["accessories"]) if p == 0.5]
    assert "glasses" not in unknown and "hat" not in unknown and len(unknown) == schema["accessories"].num_labels - 2
    assert probs["eye_color"] is None  # no eye-colour tag in this tagger's vocabulary
    assert sum(probs["hair_color"]) == pytest.approx(1.0, abs=1e-5)
    hat = schema["accessories"].index("hat")
    assert probs["accessories"][hat] == pytest.approx(1 / (1 + np.exp(5.0)), rel=1e-3)
    # a broken image: quarantined by decode, no tagger output
    assert out[1]["error"] and out[1]["tagger_tags"] is None and out[1]["probs_tagger"] is None
    assert out[2]["tagger_tags"] == row["tagger_tags"]


def _reference(im: Image.Image, size: int) -> np.ndarray:
    """The reference steps written out independently with numpy (PIL only for the bicubic resize)."""
    a = np.asarray(im.convert("RGBA"), dtype=np.float64)
    alpha = a[..., 3:] / 255.0
    rgb = np.rint(a[..., :3] * alpha + 255.0 * (1.0 - alpha))  # over white
    h, w = rgb.shape[:2]
    side = max(h, w)
    square = np.full((side, side, 3), 255.0)  # white padding, image centred (floor of half the margin)
    top, left = (side - h) // 2, (side - w) // 2
    square[top: top + h, left: left + w] = rgb
    sq = Image.fromarray(square.astype(np.uint8), "RGB")
    return np.asarray(sq.resize((size, size), Image.Resampling.BICUBIC) if side != size else sq)


@pytest.mark.parametrize("mode,size", [("RGBA", (50, 30)), ("RGB", (23, 61))])
def test_preprocessing_matches_the_reference_steps(mode, size):
    rng = np.random.default_rng(1)
    arr = (rng.random((size[1], size[0], len(mode))) * 255).astype(np.uint8)
    if mode == "RGBA":
        arr[:5, :, 3] = 0  # fully transparent rows: white after compositing
        arr[5:10, :, 3] = 128
    im = Image.fromarray(arr, mode)
    ours = prepare_image(im, 32)
    ref = _reference(im, 32)
    assert ours.shape == (32, 32, 3) and ours.dtype == np.uint8
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1  # PIL's integer alpha compositing may round the other way
    if mode == "RGB":
        assert diff.max() == 0
    # the padding is white: the left and right margins of a tall image, the top of a wide one
    pad = prepare_image(im, max(size))
    if size[0] < size[1]:
        assert (pad[:, : (size[1] - size[0]) // 2 - 1] == 255).all()
    else:
        assert (pad[: (size[0] - size[1]) // 2 - 1] == 255).all()


def test_device_part_normalises_then_feeds_bgr(tmp_path):
    import timm
    import torch
    from safetensors.torch import load_file

    mean, std = (0.2, 0.5, 0.8), (0.3, 0.4, 0.5)
    folder = build_tiny_tagger(tmp_path / "t", RATINGS + [(f"tag{i}", 0) for i in range(8)], mean=mean, std=std)
    stage = TaggerStage("default", f"local-dir:{folder}", precision="fp32", device="cpu")
    px = prepare_image(png(3), 32, stage.pixel_spec)
    got = stage.scores([px.tobytes()])[0]

    model = timm.create_model(f"local-dir:{folder}", pretrained=False)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.eval()
    x = torch.from_numpy(px.copy()).permute(2, 0, 1).float()[None] / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        bgr = torch.sigmoid(model(x[:, [2, 1, 0]]))[0].numpy()
        rgb = torch.sigmoid(model(x))[0].numpy()
    np.testing.assert_allclose(got, bgr, atol=1e-5)
    assert np.abs(got - rgb).max() > 1e-3  # the channel order matters to this model


def test_thresholds_and_mcut(fixed_tagger):
    names = ["a", "b", "c", "d", "e"]
    scores = np.array([0.3, 0.9, 0.2, 0.85, 0.1])
    assert mcut_threshold(scores) == pytest.approx((0.85 + 0.3) / 2)
    assert select_tags(names, scores, 0.25) == ["b", "d", "a"]
    assert select_tags(names, scores, 0.3) == ["b", "d"]  # strictly above, as the reference
    assert select_tags(names, scores, 0.99, mcut=True) == ["b", "d"]  # MCut replaces the threshold
    assert select_tags(names, np.array([0.1, 0.05, 0.01, 0.0, 0.0]), 0.5, mcut=True, floor=0.15) == []

    stage = TaggerStage("default", f"local-dir:{fixed_tagger}", mcut=True)
    scores = 1 / (1 + np.exp(-np.array([LOGITS[n] for n in stage.tag_names])))
    row = stage.row(scores)
    # general scores .95 .92 .88 .82 .73 .50 .31 .05 .05 .007: the largest gap is .31 -> .05, so MCut keeps
    # looking_at_viewer, below the fixed 0.35
    assert row["tagger_tags"] == ["1girl", "blonde_hair", "solo", "glasses", "long_hair", "smile", "looking_at_viewer"]
    assert row["tagger_characters"] == ["hatsune_miku"]  # .95 and .73: the cut is between them
    strict = TaggerStage("default", f"local-dir:{fixed_tagger}", threshold=0.9, character_threshold=0.99)
    assert strict.row(scores)["tagger_tags"] == ["1girl", "blonde_hair"]
    assert strict.row(scores)["tagger_characters"] == []


def test_captions_for_kohya(tmp_path):
    rows = [
        {"id": "sub/foo.png", "error": None, "tagger_tags": ["1girl", "long_hair"], "tagger_characters": ["miku"]},
        {"id": "bar.jpg", "error": None, "tagger_tags": ["solo"], "tagger_characters": []},
        {"id": "broken.png", "error": "unreadable image", "tagger_tags": None, "tagger_characters": None},
        {"id": "synth-0-12", "error": None, "tagger_tags": [], "tagger_characters": []},
    ]
    (tmp_path / "bar.txt").write_text("hand written")
    report = write_captions(rows, tmp_path)
    assert (tmp_path / "sub" / "foo.txt").read_text() == "miku, 1girl, long hair"  # characters first, spaces
    assert (tmp_path / "bar.txt").read_text() == "hand written"  # kept without overwrite
    assert (tmp_path / "synth-0-12.txt").read_text() == ""
    assert not (tmp_path / "broken.txt").exists()
    assert (report.written, report.skipped_existing, report.skipped_rows) == (2, 1, 1)
    again = write_captions(rows, tmp_path, overwrite=True)
    assert (tmp_path / "bar.txt").read_text() == "solo"
    assert (again.written, again.unchanged) == (1, 2)
    assert str(caption_name("../../etc/passwd", 0)) == "etc/passwd.txt"  # never outside the folder


def test_recipe_writes_captions_beside_an_image_folder(fixed_tagger, tmp_path, monkeypatch):
    import importlib.util

    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(png(1))
    (folder / "sub" / "b.png").write_bytes(png(2, mode="RGBA"))
    spec = importlib.util.spec_from_file_location("annotate_recipe", Path(__file__).parents[1] / "recipes" / "annotate.py")
    recipe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "annotate_recipe", recipe)  # dataclasses look their module up there
    spec.loader.exec_module(recipe)
    rc = recipe.main(["--dataset", str(folder), "--model", "", "--tagger", f"local-dir:{fixed_tagger}",
                      "--schema", "default", "--output_dir", str(tmp_path / "out"), "--write_captions", str(folder),
                      "--no_cache", "--quiet", "--num_proc", "1"])
    assert rc == 0
    # the character, then the tags that carry the schema's attributes, by the tagger's score
    want = "hatsune miku, 1girl, blonde hair, solo, glasses, long hair, smile"
    assert (folder / "a.txt").read_text() == want
    assert (folder / "sub" / "b.txt").read_text() == want


def test_tagger_specs_and_errors(fixed_tagger, tmp_path):
    spec = TaggerSpec.parse(str(fixed_tagger))  # a plain folder path is a local-dir:
    assert spec.is_local and spec.fingerprint() == TaggerSpec.parse(f"local-dir:{fixed_tagger}").fingerprint()
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="only pickled weights, which are never loaded"):
        TaggerSpec.parse(f"local-dir:{tmp_path / 'pickled'}")
    with pytest.raises(UserError, match="not a folder and not a Hub id"):
        TaggerSpec.parse("no such thing")

    hub = TaggerSpec.parse("hf-hub:SmilingWolf/wd-vit-tagger-v3", revision="v1.0")  # nothing fetched until used
    assert not hub.is_local and hub.describe() == "hf-hub:SmilingWolf/wd-vit-tagger-v3@v1.0"


def test_demo_tagger_ships_small_and_reads_synthetic_colours():
    from charattr_hf import synthetic
    from charattr_hf.sources.tagger.stage import demo_tagger_dir

    folder = demo_tagger_dir()
    if folder is None:
        pytest.skip("this checkout ships no demo tagger")
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 5 * 1024 * 1024
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt*"))
    stage = TaggerStage("synthetic", "demo", device="cpu")
    ds = synthetic.generate(24, seed=5, styles=["flat"], start=synthetic.SPLIT_OFFSETS["test"])
    blobs = [prepare_image(c["bytes"], 0, stage.pixel_spec).tobytes() for c in
             ds.cast_column("image", HFImage(decode=False))["image"]]
    schema = load_schema("synthetic")
    right = 0
    for s, truth in zip(stage.scores(blobs), ds["truth"]):
        probs = stage.row(s)["probs_tagger"]
        right += int(np.argmax(probs["hair_color"]) == truth["hair_color"])
    assert right >= 22, f"demo tagger: hair colour right on {right}/24 flat images"
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]
    assert schema["hair_color"].num_labels == len(probs["hair_color"])


def test_demo_fusion_policy_runs_with_the_tagger_as_an_extra_source(fixed_tagger):
    from charattr_hf import synthetic
    from charattr_hf.pipeline import PipelineOptions, build_pipeline

    options = PipelineOptions(model="demo", tagger=f"local-dir:{fixed_tagger}", fusion="demo", use_cache=False)
    pipeline = build_pipeline(options, ["image", "tags", "caption"])
    assert pipeline.description["sources"] == ["clip", "tagger", "tags"]
    assert "tagger" not in pipeline.fusion.sources  # the policy was trained on clip and tags: it masks the tagger
    out = annotate(synthetic.generate(6, seed=3), model="demo", tagger=f"local-dir:{fixed_tagger}", fusion="demo",
                   use_cache=False, progress=False)
    assert out.num_rows == 6 and all(h is not None for h in out["hair_color"])
    assert all(p is not None for p in out["probs_tagger"]) and out[0]["tagger_rating"] == "general"


def test_recipe_checks_tagger_options_before_work(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("annotate_recipe2", Path(__file__).parents[1] / "recipes" / "annotate.py")
    recipe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "annotate_recipe2", recipe)
    spec.loader.exec_module(recipe)
    out = str(tmp_path / "out")
    # captions without a tagger hold the data's own tags and the fused attributes; naming the tagger needs one
    with pytest.raises(UserError, match="no tagger runs"):
        recipe.main(["--write_captions", str(tmp_path / "caps"), "--caption_sources", "tagger", "--output_dir", out])
    with pytest.raises(UserError, match="no tagger runs"):
        recipe.main(["--write_captions", str(tmp_path / "caps"), "--caption_sources", "tagger,person", "--tagger",
                     "demo", "--sources", "clip", "--output_dir", out])
    with pytest.raises(UserError, match="a comma splits it"):
        recipe.main(["--write_captions", str(tmp_path / "caps"), "--trigger", "a,b", "--output_dir", out])
    with pytest.raises(UserError, match="no such folder"):
        recipe.main(["--tagger", f"local-dir:{tmp_path / 'missing'}", "--output_dir", out])
    with pytest.raises(UserError, match=r"must be in \[0, 1\]"):
        recipe.main(["--tagger", "demo", "--tagger_threshold", "1.5", "--output_dir", out])
    assert not (tmp_path / "out").exists()  # nothing started


def test_every_image_is_read_and_decoded_once_with_the_tagger_and_clip(fixed_tagger, tiny_clip_dir, tmp_path,
                                                                      monkeypatch):
    """One decode per image for every source (#18): with CLIP and the tagger, each image file is opened once by PIL
    (the tagger had its own second decode of the raw cell), and the tagger's pixels are its reference ones."""
    from PIL import Image as PILImage

    n = 16
    images = [{"bytes": png(i, size=(40 + i, 56)), "path": f"img_{i}.png"} for i in range(n)]
    ds = Dataset.from_dict({"image": images}).cast_column("image", HFImage())
    opened = []
    real_open = PILImage.open
    monkeypatch.setattr(PILImage, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    out = annotate(ds, tmp_path / "out", model=f"local-dir:{tiny_clip_dir}", tagger=f"local-dir:{fixed_tagger}",
                   schema="default", use_cache=False, progress=False, num_proc=1)
    assert len(opened) == n and all(r is not None for r in out["probs_tagger"]) and out["probs_clip"][0] is not None
    # the pixels the tagger read are the reference preparation of each image (tested against it above)
    from charattr_hf.pipeline import PipelineOptions, build_pipeline

    pipeline = build_pipeline(PipelineOptions(model=f"local-dir:{tiny_clip_dir}", tagger=f"local-dir:{fixed_tagger}",
                                              schema="default", use_cache=False), ["image"])
    clip, tagger = pipeline.device
    assert set(pipeline.cpu[1].pixels) == {clip.pixels_column, tagger.pixels_column}  # one decode, two columns
