"""The dataset card: pictures drawn from the annotations, linked from README.md, YAML the Hub reads."""

import io
import re

import numpy as np
import pytest
import yaml
from datasets import ClassLabel, Dataset, Features, Image as HFImage, List, Value
from PIL import Image

from charattr_hf.api import annotate_to_disk
from charattr_hf.card import draw_card_figures
from charattr_hf.hub import size_category
from charattr_hf.pipeline import PipelineOptions

from .test_pipeline import image_dataset


def card_parts(readme: str) -> tuple[dict, str]:
    m = re.match(r"^---\n(.*?)\n---\n(.*)$", readme, re.S)
    assert m, "README.md has no YAML header"
    return yaml.safe_load(m.group(1)), m.group(2)


def local_links(body: str) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)]+)\)", body) if not t.startswith("http")]


def test_card_with_pictures_and_thumbnails(tiny_clip_dir, tmp_path):
    out = tmp_path / "out"
    ds = image_dataset(20, bad=(3,))
    result, _ = annotate_to_disk(
        ds, out, options=PipelineOptions(model=f"local-dir:{tiny_clip_dir}", use_cache=False, keep_images=True),
        chunk_size=8, progress=False,
    )
    assert result.complete
    meta, body = card_parts((out / "README.md").read_text())
    # YAML the Hub and load_dataset read
    assert meta["task_categories"] == ["image-classification"] and meta["size_categories"] == ["n<1K"]
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    feats = {f["name"]: f for f in meta["dataset_info"]["features"]}
    assert list(feats["hair_color"]["dtype"]["class_label"]["names"].values())[:3] == ["black", "brown", "blonde"]
    # every local link resolves to a file in the folder, the pictures among them
    links = local_links(body)
    for rel in links:
        assert (out / rel).is_file(), rel
    for name in ("labels", "confidence", "agreement", "samples-hair_color", "samples-accessories"):
        rel = f"images/train-{name}.png"
        assert rel in links, rel
        with Image.open(out / rel) as im:
            assert im.format == "PNG" and im.width >= 300 and im.height >= 150
    # no made-up links; the models that made the labels, and the call that reproduces them
    assert "github.com" not in body
    assert f"local-dir:{tiny_clip_dir}" in body and "weights digest" in body
    assert "annotate_to_disk(" in body and "keep_images=True" in body
    assert "no sample thumbnails" not in body.lower()


def test_card_without_images_says_why_and_links_nothing_missing(tiny_clip_dir, tmp_path):
    out = tmp_path / "out"
    result, _ = annotate_to_disk(image_dataset(6), out, options=PipelineOptions(model=f"local-dir:{tiny_clip_dir}",
                                                                                 use_cache=False), progress=False)
    body = card_parts((out / "README.md").read_text())[1]
    assert "No sample thumbnails" in body and "--keep_images" in body
    assert not list((out / "images").glob("*samples*"))
    for rel in local_links(body):
        assert (out / rel).is_file(), rel
    assert "images/train-labels.png" in local_links(body)


def solid_png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, "PNG")
    return buf.getvalue()


def test_sample_grid_shows_the_most_confident_rows_of_each_label(tmp_path):
    """Images coloured by their label: each row of the grid holds the colour of its label, best first."""
    names = ["red", "green", "blue"]
    colours = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}
    rng = np.random.default_rng(0)
    labels = [i % 3 for i in range(30)]
    conf = rng.uniform(0.3, 0.99, 30).round(3).tolist()
    images = [{"bytes": solid_png(colours[names[k]]), "path": None} for k in labels]
    images[0] = {"bytes": solid_png((0, 0, 0)), "path": None}  # labelled red, but black: shown only if picked
    conf[0] = 0.01  # the least confident red row: never among the 2 shown
    features = Features({
        "error": Value("string"), "colour": ClassLabel(names=names), "colour_confidence": Value("float32"),
        "probs_a": {"colour": List(Value("float32"), length=3)}, "image": HFImage(),
    })
    probs = [{"colour": [1.0 if j == k else 0.0 for j in range(3)]} for k in labels]
    ds = Dataset.from_dict({"error": [None] * 30, "colour": labels, "colour_confidence": conf, "probs_a": probs,
                            "image": images}, features=features)
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "train-00000-of-00001.parquet"
    ds.to_parquet(str(path))
    figures = draw_card_figures(tmp_path, "train", [path], thumbnails=2, thumb_size=40)
    grid = np.asarray(Image.open(tmp_path / figures.samples["colour"]).convert("RGB")).astype(int)
    label_w, pad, thumb = 130, 6, 40
    for i, name in enumerate(names):
        y = 50 + i * (thumb + 18 + pad) + thumb // 2
        for j in range(2):
            x = label_w + j * (thumb + pad) + thumb // 2
            assert np.abs(grid[y, x] - np.array(colours[name])).max() < 30, (name, j, grid[y, x])
    # agreement of the one source with the fused label: 100 %
    assert figures.agreement and (tmp_path / figures.agreement).is_file()


@pytest.mark.parametrize("rows,expected", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (250_000, "100K<n<1M"),
                                           (3_000_000, "1M<n<10M")])
def test_size_category(rows, expected):
    assert size_category(rows) == expected


def test_label_bars_are_drawn_in_the_colours_their_labels_name(tmp_path):
    """A hair colour's bar has that colour (white outlined, on white); labels that name no colour share one."""
    from charattr_hf.card import label_colour

    hair = ["pink", "blue", "blonde", "white", "aqua"]
    counts = {"pink": 9, "blue": 7, "blonde": 5, "white": 4, "aqua": 3}  # bars drawn in this order (most first)
    length = ["short", "long"]
    rows = [(hair.index(h), i % 2) for h, n in counts.items() for i in range(n)]
    features = Features({"error": Value("string"), "hair_color": ClassLabel(names=hair),
                         "hair_color_confidence": Value("float32"), "hair_length": ClassLabel(names=length),
                         "hair_length_confidence": Value("float32")})
    ds = Dataset.from_dict({"error": [None] * len(rows), "hair_color": [h for h, _ in rows],
                            "hair_color_confidence": [0.9] * len(rows), "hair_length": [l for _, l in rows],
                            "hair_length_confidence": [0.8] * len(rows)}, features=features)
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "train-00000-of-00001.parquet"
    ds.to_parquet(str(path))
    figures = draw_card_figures(tmp_path, "train", [path])
    chart = np.asarray(Image.open(tmp_path / figures.labels).convert("RGB")).astype(int)
    pad, title_h, top, row_h, label_w, panel_w = 16, 48, 30, 20, 120, 460
    for i, name in enumerate(counts):  # the first panel: hair_color
        y = title_h + pad + top + i * row_h + row_h // 2
        inside = chart[y, pad + label_w + 4]
        assert np.abs(inside - np.array(label_colour(name))).max() < 3, (name, inside)
    assert chart[title_h + pad + top + 3 * row_h + row_h // 2, pad + label_w].max() < 200  # white's outline
    assert np.abs(np.array(label_colour("pink")) - np.array((255, 192, 203))).max() == 0  # CSS pink, not blue
    assert label_colour("brown")[0] < 150 and label_colour("blonde_hair") == label_colour("blonde")
    second = [chart[title_h + pad + top + i * row_h + row_h // 2, 2 * pad + panel_w + label_w + 4] for i in range(2)]
    assert label_colour("short") is None and (second[0] == second[1]).all()  # hair_length: one colour for all
