"""The synthetic character generator: ground truth that agrees with the pixels, the tags and the captions,
determinism, dataset typing and benchmark splits."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datasets import disable_progress_bars  # noqa: E402

from charattr_hf import load_schema  # noqa: E402
from charattr_hf import synthetic as S  # noqa: E402
from charattr_hf.schema import normalize_tag  # noqa: E402

disable_progress_bars()

SCHEMA = S.synthetic_schema()
TAG_MAP = S.tags_of(SCHEMA)


def _nearest(pixel, palette: dict) -> str:
    names = list(palette)
    arr = np.array([palette[n] for n in names], dtype=float)
    return names[int(np.argmin(((arr - np.asarray(pixel, dtype=float)) ** 2).sum(axis=1)))]


def _patch(a: np.ndarray, xy: tuple[int, int]) -> np.ndarray:
    x, y = xy
    return np.median(a[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3), axis=0)


def _characters(n: int, seed: int = 11):
    return [(S.sample_attributes(S.item_rng(seed, i, 0)), S.item_rng(seed, i, 1)) for i in range(n)]


def _parse(tags: str) -> list[tuple[str, str]]:
    """(attribute, label) of every tag that means a label of the synthetic schema."""
    return [TAG_MAP[normalize_tag(t)] for t in tags.split(",") if normalize_tag(t) in TAG_MAP]


@pytest.fixture(scope="module")
def small():
    return S.generate(40, seed=5, size=64, noise="clean")


# ------------------------------------------------------------------------------------------ schema
def test_synthetic_schema_is_a_subset_of_default():
    # names, tags and phrases must match default.yaml: both schemas then parse synthetic tags alike
    default = load_schema("default")
    for attr in SCHEMA:
        assert attr.name in default, attr.name
        full = default[attr.name]
        assert attr.multi_label == full.multi_label
        for label in attr.labels:
            assert label.name in full.label_names, (attr.name, label.name)
            same = full.labels[full.index(label.name)]
            assert (label.tags, label.phrases) == (same.tags, same.phrases), f"copy them to synthetic.yaml: {same}"


def test_emitted_tags_belong_to_their_label():
    from charattr_hf.synthetic.text import _TAG_CHOICES

    for attr, choices in _TAG_CHOICES.items():
        for label, tags in choices.items():
            schema_tags = SCHEMA[attr].labels[SCHEMA[attr].index(label)].tags
            assert set(tags) <= set(schema_tags), (attr, label)


def test_schema_lists_exactly_what_is_drawn():
    drawn = {
        "hair_color": set(S.HAIR_COLORS),
        "hair_length": set(S.HAIR_LENGTHS),
        "eye_color": set(S.EYE_COLORS),
        "top_color": set(S.TOP_COLORS),
        "accessories": set(S.ACCESSORIES),
        "expression": set(S.EXPRESSIONS),
        "art_style": set(S.STYLE_LABELS.values()),
    }
    assert {a.name: set(a.label_names) for a in SCHEMA} == drawn
    assert {"glasses", "hat", "hair_bow"} <= drawn["accessories"]
    assert len(drawn["hair_color"]) >= 8 and len(drawn["eye_color"]) >= 6 and len(drawn["top_color"]) >= 6


def test_palettes_are_far_apart():
    for palette in (S.HAIR_COLORS, S.EYE_COLORS, S.TOP_COLORS):
        arr = np.array(list(palette.values()), dtype=float)
        dist = np.sqrt(((arr[:, None] - arr[None]) ** 2).sum(-1)) + np.eye(len(arr)) * 1e9
        assert dist.min() > 60, palette


# ------------------------------------------------------------------------------------------ dataset
def test_columns_and_truth_typed_by_schema(small):
    assert small.features == S.features()
    assert small.features["truth"] == SCHEMA.truth_feature()
    assert small.column_names == ["id", "image", "tags", "caption", "style", "truth"]
    row = small[0]
    assert row["id"] == "synth-5-0"
    labels = S.labels_from_truth(row["truth"])
    assert labels["art_style"] == S.STYLE_LABELS[row["style"]]
    assert set(small["style"]) == set(S.STYLES)


def test_images_decode_with_requested_size():
    for size in (64, 100, 224):
        ds = S.generate(10, seed=1, size=size)
        for row in ds:
            assert row["image"].size == (size, size) and row["image"].mode == "RGB"
        raw = ds.cast_column("image", ds.features["image"].__class__(decode=False))[0]["image"]
        assert raw["bytes"].startswith(b"\x89PNG") and raw["path"] is None


def test_encode_png_round_trip():
    rng = np.random.default_rng(0)
    for h, w in ((64, 64), (7, 13)):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        back = np.asarray(Image.open(io.BytesIO(S.encode_png(Image.fromarray(arr)))).convert("RGB"))
        assert np.array_equal(back, arr)


def test_same_seed_same_bytes_any_num_proc(small):
    again = S.generate(40, seed=5, size=64, noise="clean", num_proc=2)
    def raw(ds):
        return ds.cast_column("image", ds.features["image"].__class__(decode=False))["image"]
    assert [r["bytes"] for r in raw(again)] == [r["bytes"] for r in raw(small)]
    assert again["tags"] == small["tags"] and again["caption"] == small["caption"]
    assert again["truth"] == small["truth"]
    other = S.generate(40, seed=6, size=64, noise="clean")
    assert sum(a["bytes"] != b["bytes"] for a, b in zip(raw(other), raw(small))) == 40
    prefix = S.generate(7, seed=5, size=64, noise="clean")
    assert [r["bytes"] for r in raw(prefix)] == [r["bytes"] for r in raw(small)][:7]


def test_tag_noise_changes_neither_images_nor_captions():
    clean = [S.make_item(3, i, 64, noise="clean") for i in range(30)]
    noisy = [S.make_item(3, i, 64, noise="noisy") for i in range(30)]
    assert [r["image"]["bytes"] for r in clean] == [r["image"]["bytes"] for r in noisy]
    assert [r["caption"] for r in clean] == [r["caption"] for r in noisy]
    assert [r["tags"] for r in clean] != [r["tags"] for r in noisy]


# ------------------------------------------------------------------------------------------ pixels
@pytest.mark.parametrize("style", ["flat", "chibi", "pixel"])
def test_rendered_colours_are_the_truth(style):
    for ch, rng in _characters(60):
        img, geo = S.render_with_geometry(ch, style, rng, 64)
        a = np.asarray(img)
        assert _nearest(_patch(a, geo.hair_probe()), S.HAIR_COLORS) == ch.hair_color, ch
        assert _nearest(_patch(a, geo.top_probe()), S.TOP_COLORS) == ch.top_color, ch
        for x, y in geo.eye_probes():
            assert _nearest(a[y, x], S.EYE_COLORS) == ch.eye_color, ch


def test_watercolor_colours_mostly_recognisable():
    hits = []
    for ch, rng in _characters(60):
        img, geo = S.render_with_geometry(ch, "watercolor", rng, 64)
        a = np.asarray(img)
        hits.append(_nearest(_patch(a, geo.hair_probe()), S.HAIR_COLORS) == ch.hair_color)
        hits.append(_nearest(_patch(a, geo.top_probe()), S.TOP_COLORS) == ch.top_color)
    assert np.mean(hits) >= 0.9


def test_sketch_colours_are_invisible():
    for ch, _ in _characters(20):
        recoloured = [
            replace(ch, hair_color=h, eye_color=e, top_color=t)
            for h, e, t in [("black", "brown", "white"), ("white", "yellow", "black"), ("blonde", "blue", "red")]
        ]
        images = [np.asarray(S.render(c, "sketch", S.item_rng(1, 2, 3), 64)) for c in [ch, *recoloured]]
        assert (images[0][..., 0] == images[0][..., 1]).all() and (images[0][..., 1] == images[0][..., 2]).all()
        for other in images[1:]:  # same drawing whatever the colours, brightness included
            assert np.array_equal(other, images[0])
    # and the sketch is a real drawing of the same character: lengths still differ
    base = S.Character("red", "short", "blue", "red")
    short = np.asarray(S.render(base, "sketch", 0))
    long = np.asarray(S.render(replace(base, hair_length="long"), "sketch", 0))
    assert not np.array_equal(short, long)


def test_lit_style_is_a_flat_drawing_under_coloured_light():
    misread = []
    for ch, rng in _characters(60):
        seed = int(rng.integers(1 << 30))
        flat, geo = S.render_with_geometry(ch, "flat", seed, 64)
        lit, lit_geo = S.render_with_geometry(ch, "lit", seed, 64)
        assert lit_geo == geo  # same drawing, same place
        a, b = np.asarray(flat).astype(int), np.asarray(lit).astype(int)
        assert np.abs(a - b).mean() > 20  # the light changes the whole picture
        misread.append(_nearest(_patch(np.asarray(lit), geo.hair_probe()), S.HAIR_COLORS) != ch.hair_color)
    assert np.mean(misread) >= 0.5  # pixel colours no longer give the character's colours
    ds = S.generate(40, seed=2, styles=["lit"], noise="clean")
    assert set(ds["style"]) == {"lit"}
    assert {S.labels_from_truth(t)["art_style"] for t in ds["truth"]} == {"anime"}
    meaning = S.tags_of(load_schema("default"))
    for row in ds:  # tags still name the character's own colours
        labels = S.labels_from_truth(row["truth"])
        said = {meaning[t] for t in row["tags"].split(", ") if t in meaning}
        assert ("hair_color", labels["hair_color"]) in said and ("top_color", labels["top_color"]) in said
    # an extra style: never drawn unless asked for, and its benchmark split has its own index range
    assert "lit" not in S.STYLES and "lit" in S.ALL_STYLES
    assert "lit" not in set(S.generate(60, seed=2)["style"])
    bench = S.build_benchmark(n_train=0, n_validation=0, n_test=0, n_test_per_style=2, styles=["flat", "lit"])
    assert set(bench) == {"test_flat", "test_lit"} and not set(bench["test_flat"]["id"]) & set(bench["test_lit"]["id"])


def _changed_fraction(a: S.Character, b: S.Character, style: str = "flat", seed: int = 4) -> float:
    x = np.asarray(S.render(a, style, S.item_rng(seed, 0, 1), 64)).astype(int)
    y = np.asarray(S.render(b, style, S.item_rng(seed, 0, 1), 64)).astype(int)
    return float((np.abs(x - y).sum(-1) > 30).mean())


@pytest.mark.parametrize("style", ["flat", "sketch", "pixel", "chibi"])
def test_hair_length_is_a_large_cue(style):
    base = S.Character("blue", "short", "green", "yellow", background="white")
    medium = _changed_fraction(base, replace(base, hair_length="medium"), style)
    long = _changed_fraction(base, replace(base, hair_length="long"), style)
    assert medium > 0.04 and long > 0.12 and long > medium + 0.05, (medium, long)


def test_accessories_and_expressions_are_visible():
    base = S.Character("brown", "medium", "blue", "green", background="white")
    for acc in S.ACCESSORIES:
        assert _changed_fraction(base, replace(base, accessories=(acc,))) > 0.015, acc
    for expr in S.EXPRESSIONS[1:]:
        assert _changed_fraction(base, replace(base, expression=expr)) > 0.002, expr


def test_jitter_and_scale_vary_the_placement():
    geos = [S.render_with_geometry(ch, "flat", rng, 64)[1] for ch, rng in _characters(200)]
    cx = np.array([g.cx for g in geos])
    r = np.array([g.r for g in geos])
    assert cx.min() < 0.45 and cx.max() > 0.55 and abs(cx - 0.5).max() <= 0.08
    assert r.min() / 0.2 < 0.88 and r.max() / 0.2 > 1.07


# ------------------------------------------------------------------------------------------ tags
def test_clean_tags_hold_every_truth_tag_and_nothing_false():
    default_tags = S.tags_of(load_schema("default"))
    for i, (ch, rng) in enumerate(_characters(80)):
        style = S.STYLES[i % len(S.STYLES)]
        tags = S.make_tags(ch, style, rng, "clean")
        found = _parse(tags)
        truth = ch.labels(style)
        expected = {(a, v) for a, v in truth.items() if not isinstance(v, list)}
        expected |= {("accessories", v) for v in truth["accessories"]}
        assert set(found) == expected, (tags, truth)
        for tag in tags.split(", "):
            if tag not in TAG_MAP and tag in default_tags:  # fillers may only say true things
                assert default_tags[tag] == ("character_count", "one"), tag
        assert tags.split(", ")[0] == "solo"


def test_dropout_one_drops_all_attribute_tags():
    for ch, rng in _characters(30):
        tags = S.make_tags(ch, "flat", rng, S.TagNoise(dropout=1.0))
        assert tags is not None and _parse(tags) == []
        assert S.make_tags(ch, "flat", rng, S.TagNoise(dropout=1.0, filler=False)) is None


def test_wrong_one_replaces_every_single_label_tag():
    for ch, rng in _characters(30):
        truth = ch.labels("flat")
        found = _parse(S.make_tags(ch, "flat", rng, S.TagNoise(wrong=1.0)))
        single = [(a, v) for a, v in found if not SCHEMA[a].multi_label]
        assert len(single) == len(truth) - 1  # every single-label attribute tagged once...
        assert all(truth[a] != v for a, v in single)  # ...and wrongly


def test_spaces_and_missing():
    ch, rng = _characters(1)[0]
    spaced = S.make_tags(ch, "flat", rng, S.TagNoise(spaces=1.0))
    assert "_" not in spaced
    assert any(f"{length} hair" in spaced for length in S.HAIR_LENGTHS)
    assert set(_parse(spaced)) >= {("hair_length", ch.hair_length), ("hair_color", ch.hair_color)}
    assert S.make_tags(ch, "flat", rng, S.TagNoise(missing=1.0)) is None


def test_mixed_preset_reliability_depends_on_style():
    error = {}
    for style in ("sketch", "flat", "watercolor", "pixel"):
        wrong = total = none = 0
        for ch, rng in _characters(150, seed=21):
            tags = S.make_tags(ch, style, rng, "mixed")
            if tags is None:
                none += 1
                continue
            truth = ch.labels(style)
            for a, v in _parse(tags):
                if not SCHEMA[a].multi_label:
                    total += 1
                    wrong += truth[a] != v
        error[style] = (wrong / total if total else None, none)
    assert error["pixel"] == (None, 150)
    assert error["sketch"][0] < 0.06 and error["flat"][0] < 0.2 and error["watercolor"][0] > 0.3


def test_tag_noise_validation():
    with pytest.raises(ValueError, match="probability"):
        S.TagNoise(dropout=1.5)
    with pytest.raises(ValueError, match="style"):
        S.TagNoise(styles={"oil": S.TagNoise()})
    ch = S.Character("red", "long", "blue", "red")
    with pytest.raises(ValueError, match="presets"):
        S.make_tags(ch, "flat", np.random.default_rng(0), "very-noisy")


# ------------------------------------------------------------------------------------------ captions
_COLOUR_WORDS = set(S.HAIR_COLORS) | set(S.EYE_COLORS) | set(S.TOP_COLORS) | {"blond", "golden", "silver"}


def test_captions_vary_and_state_true_facts():
    for i, (ch, _) in enumerate(_characters(40)):
        style = S.STYLES[i % len(S.STYLES)]
        texts = set()
        for k in range(12):
            cap = S.describe(ch, style, np.random.default_rng([i, k]))
            texts.add(cap.text)
            assert cap.text
            truth = ch.labels(style)
            for attr, label, positive in cap.facts:
                if SCHEMA[attr].multi_label:
                    assert (label in truth[attr]) == positive, (cap, truth)
                else:
                    assert positive and truth[attr] == label, (cap, truth)
        assert len(texts) >= 6
    assert S.caption is S.make_caption


def test_sketch_captions_never_mention_colours():
    for i, (ch, rng) in enumerate(_characters(300)):
        text = S.make_caption(ch, "sketch", rng)
        words = set(re.findall(r"[a-z]+", text.lower()))
        assert not words & _COLOUR_WORDS, text


def test_captions_use_schema_wording():
    # the phrases a caption uses for a fact appear in that label's prompts (zero-shot prompts match training)
    ch = S.Character("blonde", "long", "blue", "red", ("glasses",), "smile")
    prompts = {a.name: {lab.name: " ".join(lab.prompts) for lab in a.labels} for a in SCHEMA}
    assert "blonde hair" in prompts["hair_color"]["blonde"] and "long hair" in prompts["hair_length"]["long"]
    assert "blue eyes" in prompts["eye_color"]["blue"] and "red shirt" in prompts["top_color"]["red"]
    assert "wearing glasses" in prompts["accessories"]["glasses"]
    hat = SCHEMA["accessories"].labels[SCHEMA["accessories"].index("hat")]
    assert "without a hat" in " ".join(hat.negative_prompts)
    seen = " | ".join(S.make_caption(ch, "flat", np.random.default_rng(k)) for k in range(200))
    for phrase in ("blonde hair", "long hair", "blue eyes", "red shirt", "glasses", "smiling"):
        assert phrase in seen, phrase


# ------------------------------------------------------------------------------------------ benchmark
def test_benchmark_splits_disjoint_sized_and_stable():
    bench = S.build_benchmark(seed=2, n_train=12, n_validation=5, n_test=6, n_test_per_style=3, noise="mixed")
    assert set(bench) == {"train", "validation", "test", *(f"test_{s}" for s in S.STYLES)}
    assert (bench["train"].num_rows, bench["validation"].num_rows, bench["test"].num_rows) == (12, 5, 6)
    ids = [i for split in bench.values() for i in split["id"]]
    assert len(ids) == len(set(ids)) == 12 + 5 + 6 + 3 * len(S.STYLES)
    for style in S.STYLES:
        assert set(bench[f"test_{style}"]["style"]) == {style}
    assert all(split.features == S.features() for split in bench.values())
    # a split does not move when another split's size changes
    other = S.build_benchmark(seed=2, n_train=3, n_validation=5, n_test=0, n_test_per_style=0)
    assert set(other) == {"train", "validation"}
    assert other["validation"]["id"] == bench["validation"]["id"]
    assert other["validation"]["caption"] == bench["validation"]["caption"]
    assert other["train"]["id"] == bench["train"]["id"][:3]


def test_empty_dataset_keeps_its_features():
    empty = S.generate(0)
    assert empty.num_rows == 0 and empty.features == S.features()


def test_sample_dataset():
    ds = S.sample_dataset(n=12)
    assert ds.num_rows == 12 and ds.features == S.features()
    assert ds[0]["image"].size == (64, 64)
    test = S.build_benchmark(n_train=0, n_validation=0, n_test=12, n_test_per_style=0)["test"]
    assert ds["id"] == test["id"] and ds["tags"] == test["tags"]  # held out from the training indices


def test_invalid_arguments():
    with pytest.raises(ValueError, match="style"):
        S.generate(2, styles=["oil"])
    with pytest.raises(ValueError, match="seed"):
        S.generate(2, seed=-1)
    with pytest.raises(ValueError, match="size"):
        S.render(S.Character("red", "long", "blue", "red"), "flat", 0, size=8)
    with pytest.raises(ValueError, match="hair_color"):
        S.Character("teal", "long", "blue", "red")
    with pytest.raises(ValueError, match="accessories"):
        S.Character("red", "long", "blue", "red", ("cape",))


def test_module_does_not_import_torch():
    code = (
        "import sys; from charattr_hf import synthetic as S; S.generate(4, num_proc=1); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
