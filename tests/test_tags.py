"""Tests of the tag/caption parser source (charattr_hf/sources/tags/stage.py) and of the default schema's tags."""

from __future__ import annotations

import csv
import math
import pickle
import random
from pathlib import Path

import pytest
from datasets import Dataset, Features, Value

from charattr_hf.schema import Schema, load_schema
from charattr_hf.sources.tags.stage import (
    ABSENCE_SYNONYMS,
    COUNT_TAGS,
    DEFAULT_MIXED_TAGS,
    TagStage,
    caption_segments,
    is_meta_tag,
    parse_count_tag,
    split_tags,
)

SAMPLE_CSV = Path(__file__).parent / "data" / "danbooru_tags_sample.csv"


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def schema() -> Schema:
    return load_schema("default")


@pytest.fixture(scope="module")
def stage(schema) -> TagStage:
    return TagStage(schema)


def probs(stage: TagStage, attr: str, tags=None, caption=None):
    return stage.row(tags, caption)[attr]


def top(stage: TagStage, attr: str, tags=None, caption=None) -> str:
    p = probs(stage, attr, tags, caption)
    assert p is not None, f"no evidence for {attr}"
    return stage.schema[attr].label_names[max(range(len(p)), key=p.__getitem__)]


def label_p(stage: TagStage, attr: str, label: str, tags=None, caption=None) -> float:
    p = probs(stage, attr, tags, caption)
    assert p is not None, f"no evidence for {attr}"
    return p[stage.schema[attr].index(label)]


def sample_rows() -> dict[str, list[str]]:
    """tag -> its row in the Danbooru extract."""
    lines = [line for line in SAMPLE_CSV.read_text().splitlines() if line and not line.startswith("#")]
    return {row[0]: row for row in csv.reader(lines)}


def known_danbooru_names() -> set[str]:
    names: set[str] = set()
    for tag, row in sample_rows().items():
        names.add(tag)
        names.update(a for a in row[3].split(",") if a)
    return names


# ------------------------------------------------------------------------------------------ splitting
def test_split_danbooru_native_string():
    # a Danbooru post's tag_string: space separated, underscores, qualifier parentheses, emoticons
    text = (
        "1girl :d ascot bangs blue_eyes blush brown_hair detached_sleeves hair_tubes hakurei_reimu "
        "long_hair looking_at_viewer open_mouth red_bow smile solo touhou watercolor_(medium) wide_sleeves"
    )
    tags = split_tags(text)
    assert tags == text.split()
    assert "watercolor_(medium)" in tags and ":d" in tags


def test_split_comma_list_with_case_and_whitespace():
    assert split_tags("1girl,  Long Hair ,blue   eyes,, SOLO\n smile.") == [
        "1girl", "long_hair", "blue_eyes", "solo", "smile",
    ]


def test_split_stable_diffusion_prompt():
    prompt = (
        "masterpiece, best quality, score_9, score_8_up, rating:general, (1girl:1.3), ((solo)), "
        "(blonde hair:1.2), [hat], {smile}, hatsune miku \\(cosplay\\), <lora:animeStyle:0.7>, "
        "(long hair, blue eyes:1.1) BREAK watercolor (medium), :3"
    )
    assert split_tags(prompt) == [
        "1girl", "solo", "blonde_hair", "hat", "smile", "hatsune_miku_(cosplay)", "long_hair", "blue_eyes",
        "watercolor_(medium)", ":3",
    ]


def test_split_keeps_meta_on_request_and_accepts_lists():
    assert split_tags("masterpiece, 1girl", keep_meta=True) == ["masterpiece", "1girl"]
    assert split_tags(["1girl", "Long Hair", "(blonde hair:1.3)", "1girl", None]) == [
        "1girl", "long_hair", "blonde_hair",
    ]
    assert split_tags(None) == [] and split_tags("") == []


@pytest.mark.parametrize(
    "tag", ["rating:general", "rating:g", "rating_safe", "rating_explicit", "general", "sensitive",
            "questionable", "explicit", "nsfw", "score_9", "score_7_up", "masterpiece", "best_quality",
            "worst_quality", "absurdres", "year_2023"],
)
def test_meta_tags_are_recognised(tag):
    assert is_meta_tag(tag)
    assert split_tags(f"1girl, {tag}") == ["1girl"]


@pytest.mark.parametrize("tag", ["solo", "smile", "long_hair", "old", "score", "general_(x)"])
def test_character_tags_are_not_meta(tag):
    assert not is_meta_tag(tag)


@pytest.mark.parametrize(
    "tag, expected",
    [("1girl", ("girl", 1, True)), ("2girls", ("girl", 2, True)), ("6+girls", ("girl", 6, False)),
     ("3boys", ("boy", 3, True)), ("1other", ("other", 1, True)), ("2_girls", ("girl", 2, True)),
     ("multiple_boys", ("boy", 2, False)), ("long_hair", None), ("2020", None)],
)
def test_parse_count_tag(tag, expected):
    assert parse_count_tag(tag) == expected


# ------------------------------------------------------------------------------------------ counting
def test_one_girl_one_boy_is_two_and_splits_gender(stage):
    p = probs(stage, "gender_presentation", "1girl, 1boy, hetero")
    fem, masc, andro = (p[stage.schema["gender_presentation"].index(n)]
                        for n in ("feminine", "masculine", "androgynous"))
    assert math.isclose(fem, masc) and fem > andro
    assert top(stage, "character_count", "1girl 1boy") == "two"


@pytest.mark.parametrize(
    "tags, expected",
    [("1girl solo", {"one"}), ("1boy", {"one"}), ("solo", {"one"}), ("2girls", {"two"}),
     ("1girl 1other", {"two"}), ("2others", {"two"}), ("3girls", {"group"}), ("2girls 1boy", {"group"}),
     ("6+girls", {"group"}), ("1girl multiple_boys", {"group"}), ("multiple_girls", {"two", "group"}),
     ("1girl solo_focus", {"two", "group"}), ("no_humans 1other", {"one"})],
)
def test_counting_logic(stage, tags, expected):
    p = probs(stage, "character_count", tags)
    names = stage.schema["character_count"].label_names
    best = max(p)
    assert {n for n, v in zip(names, p) if math.isclose(v, best)} == expected


def test_counting_gender_from_kinds(stage):
    assert top(stage, "gender_presentation", "2girls") == "feminine"
    assert top(stage, "gender_presentation", "multiple_boys") == "masculine"
    assert probs(stage, "gender_presentation", "1other") is None
    # no_humans alone: no count and no gender evidence
    row = stage.row("no_humans, scenery, sky")
    assert row["character_count"] is None and row["gender_presentation"] is None


# ------------------------------------------------------------------------------------------ aliases
@pytest.mark.parametrize(
    "tag, attr, label",
    [("blond_hair", "hair_color", "blonde"), ("gray_hair", "hair_color", "grey"),
     ("silver_hair", "hair_color", "grey"),  # an English phrase of the schema, accepted as a tag
     ("teal_eyes", "eye_color", "aqua"), ("amber_eyes", "eye_color", "yellow"),
     ("very_long_hair", "hair_length", "long"), ("bob_cut", "hair_length", "short"),
     ("grinning", "expression", "smile"), (":d", "expression", "smile"),
     ("watercolor_(medium)", "art_style", "watercolor"), ("greyscale", "art_style", "monochrome"),
     ("white_blouse", "top_color", "white"), ("super_deformed", "art_style", "chibi")],
)
def test_single_label_aliases(stage, tag, attr, label):
    assert top(stage, attr, tag) == label
    assert label_p(stage, attr, label, tag) == pytest.approx(stage.tag_confidence)


@pytest.mark.parametrize(
    "tag, attr, label",
    [("sunglasses", "accessories", "glasses"), ("round_eyewear", "accessories", "glasses"),
     ("witch_hat", "accessories", "hat"), ("hoop_earrings", "accessories", "earrings"),
     ("serafuku", "clothing", "school_uniform"), ("white_shirt", "clothing", "shirt"),
     ("yukata", "clothing", "kimono")],
)
def test_multi_label_aliases(stage, tag, attr, label):
    assert label_p(stage, attr, label, tag) == pytest.approx(stage.tag_present)


def test_unknown_tags_are_ignored(stage):
    unknown = "hatsune_miku, touhou, artist_name, tsunako, highres, commentary_request, looking_at_viewer"
    assert all(v is None for v in stage.row(unknown).values())
    known = "1girl, solo, blue_eyes, smile"
    assert stage.row(f"{unknown}, {known}") == stage.row(known)


def test_one_tag_feeds_several_attributes(stage):
    row = stage.row("red_dress")
    assert top(stage, "top_color", "red_dress") == "red"
    assert row["clothing"][stage.schema["clothing"].index("dress")] == pytest.approx(stage.tag_present)


def test_ambiguous_hair_and_eyes_lower_confidence(stage):
    plain = label_p(stage, "hair_color", "blue", "1girl, blue_hair")
    mixed = label_p(stage, "hair_color", "blue", "1girl, blue_hair, multicolored_hair")
    assert mixed < plain
    p = probs(stage, "eye_color", "heterochromia, blue_eyes, red_eyes")
    eyes = stage.schema["eye_color"]
    assert math.isclose(p[eyes.index("blue")], p[eyes.index("red")])
    assert p[eyes.index("blue")] > max(v for i, v in enumerate(p) if i not in (eyes.index("blue"), eyes.index("red")))


def test_closed_eyes_gives_no_eye_colour_evidence(stage):
    assert probs(stage, "eye_color", "1girl, closed_eyes") is None
    assert top(stage, "eye_color", "1girl, closed_eyes, green_eyes") == "green"


# ------------------------------------------------------------------------------------------ captions
def test_caption_evidence(stage):
    caption = "A girl with long blonde hair and blue eyes, wearing glasses."
    row = stage.row(None, caption)
    assert top(stage, "hair_color", caption=caption) == "blonde"
    assert top(stage, "hair_length", caption=caption) == "long"  # skip-gram long ... hair
    assert top(stage, "eye_color", caption=caption) == "blue"
    assert top(stage, "gender_presentation", caption=caption) == "feminine"
    assert top(stage, "character_count", caption=caption) == "one"
    acc = stage.schema["accessories"]
    assert row["accessories"][acc.index("glasses")] == pytest.approx(stage.caption_present)
    assert row["accessories"][acc.index("hat")] == pytest.approx(stage.unknown)  # captions are not exhaustive
    assert row["clothing"] is None
    # captions are weaker evidence than tags
    assert max(row["hair_color"]) < max(probs(stage, "hair_color", "blonde_hair"))


@pytest.mark.parametrize(
    "caption, attr, label",
    [("a blonde-haired woman in a red dress", "hair_color", "blonde"),
     ("a blonde-haired woman in a red dress", "top_color", "red"),
     ("a blonde-haired woman in a red dress", "age_group", "adult"),
     ("an old man in a black suit", "age_group", "elderly"),
     ("a 20 year old woman with silver hair", "age_group", "adult"),
     ("a 20 year old woman with silver hair", "hair_color", "grey"),
     ("a chibi drawing of a boy", "art_style", "chibi"),
     ("two girls and a boy on the beach", "character_count", "group"),
     ("a woman and a man holding hands", "character_count", "two"),
     ("a group of people in a park", "character_count", "group")],
)
def test_caption_phrases(stage, caption, attr, label):
    assert top(stage, attr, caption=caption) == label


def test_caption_negation_is_absence_evidence(stage):
    acc = stage.schema["accessories"]
    row = stage.row(None, "a boy with glasses and no hat, without a scarf")
    assert row["accessories"][acc.index("glasses")] == pytest.approx(stage.caption_present)
    assert row["accessories"][acc.index("hat")] == pytest.approx(stage.caption_negated)
    assert row["accessories"][acc.index("scarf")] == pytest.approx(stage.caption_negated)
    row = stage.row(None, "a woman who is not wearing any glasses")
    assert row["accessories"][acc.index("glasses")] == pytest.approx(stage.caption_negated)
    row = stage.row(None, "she doesn't wear a hat")
    assert row["accessories"][acc.index("hat")] == pytest.approx(stage.caption_negated)
    # negation does not reach across "and ... wearing"
    row = stage.row(None, "no hat and wearing glasses")
    assert row["accessories"][acc.index("glasses")] == pytest.approx(stage.caption_present)
    # a negated single-label mention is no evidence (the text says what it is not, not what it is)
    assert stage.row(None, "a girl without blonde hair")["hair_color"] is None


def test_caption_tokens():
    assert caption_segments("A blue-eyed, silver-haired girl isn't smiling.") == [
        ["a", "blue", "eyes"], ["silver", "hair", "girl", "is", "not", "smiling"],
    ]


# ------------------------------------------------------------------------------------------ probability model
def test_multi_label_absence_logic(stage):
    acc = stage.schema["accessories"]
    well_tagged = "1girl, solo, long_hair, blue_eyes, smile, shirt, hat"
    row = stage.row(well_tagged)
    assert row["accessories"][acc.index("hat")] == pytest.approx(stage.tag_present)
    assert row["accessories"][acc.index("glasses")] == pytest.approx(stage.tag_absent)
    cl = stage.schema["clothing"]
    assert row["clothing"][cl.index("dress")] == pytest.approx(stage.tag_absent)
    # few recognised tags: silence is not absence
    sparse = stage.row("masterpiece, 1girl, hat")
    assert sparse["accessories"][acc.index("glasses")] == pytest.approx(stage.unknown)
    assert sparse["clothing"] is None
    # explicit absence tags
    row = stage.row("1girl, no_headwear, no_eyewear, no_shirt")
    assert row["accessories"][acc.index("hat")] == pytest.approx(stage.tag_negated)
    assert row["accessories"][acc.index("glasses")] == pytest.approx(stage.tag_negated)
    assert row["clothing"][cl.index("shirt")] == pytest.approx(stage.tag_negated)
    # the threshold is a parameter
    strict = TagStage(stage.schema, min_tags_for_absence=20)
    assert strict.row(well_tagged)["clothing"][cl.index("dress")] == pytest.approx(strict.unknown)


def test_tags_win_over_caption(stage):
    row = stage.row("1girl, red_hair", "a girl with blue hair")
    assert top(stage, "hair_color", "1girl, red_hair", "a girl with blue hair") == "red"
    assert max(row["hair_color"]) == pytest.approx(stage.tag_confidence)
    acc = stage.schema["accessories"]
    row = stage.row("1girl, no_eyewear", "a girl wearing glasses")
    assert row["accessories"][acc.index("glasses")] == pytest.approx(stage.tag_negated)


def test_distributions_are_valid_on_random_rows(stage, schema):
    rng = random.Random(1)
    vocab = list(sample_rows()) + ["hatsune_miku", "masterpiece", "(smile:1.2)", "no_headwear"]
    words = ["a", "girl", "boy", "with", "long", "blonde", "hair", "no", "hat", "red", "dress", "two", "and"]
    for _ in range(300):
        tags = ", ".join(rng.sample(vocab, rng.randint(0, 25))) if rng.random() < 0.8 else None
        caption = " ".join(rng.choice(words) for _ in range(rng.randint(0, 15))) if rng.random() < 0.5 else None
        for attr, p in stage.row(tags, caption).items():
            if p is None:
                continue
            assert len(p) == schema[attr].num_labels
            assert all(0.0 <= v <= 1.0 for v in p)
            if not schema[attr].multi_label:
                assert math.isclose(sum(p), 1.0, abs_tol=1e-9)


def test_parameters_change_fingerprint_and_output(schema):
    a, b = TagStage(schema), TagStage(schema)
    assert a.fingerprint() == b.fingerprint()
    c = TagStage(schema, tag_confidence=0.8)
    assert c.fingerprint() != a.fingerprint()
    assert max(c.row("blonde_hair")["hair_color"]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="tag_confidence"):
        TagStage(schema, tag_confidence=1.5)
    copy = pickle.loads(pickle.dumps(a))
    assert copy.fingerprint() == a.fingerprint()
    assert copy.row("1girl, blue_eyes", "wearing a hat") == a.row("1girl, blue_eyes", "wearing a hat")


def test_custom_schema_from_dict():
    custom = Schema.from_dict(
        {
            "name": "tiny",
            "attributes": {
                "hair": {"labels": {"dark": ["black_hair", "brown_hair"], "light": {"tags": ["blonde_hair"],
                                                                                    "phrases": ["fair hair"]}}},
                "headwear": {"multi_label": True, "labels": {"hat": ["hat", "beret"], "hood": ["hood"]}},
            },
        }
    )
    st = TagStage(custom, min_tags_for_absence=2)
    row = st.row("1girl, brown_hair, beret, hatsune_miku")
    assert set(row) == {"hair", "headwear"}
    assert row["hair"] == pytest.approx([0.9, 0.1])
    assert row["headwear"] == pytest.approx([st.tag_present, st.tag_absent])
    assert st.row(None, "a girl with fair hair, no hood") == {"hair": pytest.approx([0.35, 0.65]),
                                                             "headwear": pytest.approx([0.5, 0.1])}
    assert Features(st.features()) == Features({"probs_tags": custom.probs_feature(), "tags_from": Value("string")})


def test_custom_count_attribute_needs_matching_labels():
    data = {"attributes": {"character_count": {"labels": ["single", "several"]}}}
    custom = Schema.from_dict(data)
    with pytest.raises(ValueError, match="count_labels"):
        TagStage(custom)
    st = TagStage(custom, count_labels=[("single", 1), ("several", 2)])
    assert st.row("2girls")["character_count"] == pytest.approx([0.1, 0.9])
    assert TagStage(custom, count_attribute=None).row("2girls")["character_count"] is None


# ------------------------------------------------------------------------------------------ datasets
def test_map_in_forked_workers_gives_typed_output(stage, schema):
    tags = ["1girl, solo, blonde_hair, blue_eyes, glasses", None, "1boy 2girls smile",
            "masterpiece, (red hair:1.2), hat", "", "hatsune_miku"] * 3
    captions = [None, "a woman in a red dress without a hat", None, "a girl", None, "two boys"] * 3
    ds = Dataset.from_dict({"id": [str(i) for i in range(len(tags))], "tags": tags, "caption": captions})
    features = Features({**ds.features, **stage.features(), "error": Value("string")})
    out = ds.map(stage, batched=True, batch_size=4, num_proc=2, features=features)
    assert out.features["probs_tags"] == Features(stage.features())["probs_tags"]
    assert out.features["probs_tags"]["hair_color"].feature.dtype == "float32"
    assert out.features["probs_tags"]["hair_color"].length == schema["hair_color"].num_labels
    for i, row in enumerate(out):
        expected = stage.row(tags[i], captions[i])
        for attr, p in row["probs_tags"].items():
            if expected[attr] is None:
                assert p is None
            else:
                assert p == pytest.approx(expected[attr], abs=1e-6)
    assert out[1]["probs_tags"]["top_color"] is not None  # from the caption alone
    assert out[5]["probs_tags"]["gender_presentation"] is not None  # unknown tag, caption "two boys"
    assert all(v is None for v in out[4]["probs_tags"].values())


def test_missing_columns(stage):
    out = stage({"tags": ["1girl, smile", None]})
    assert len(out["probs_tags"]) == 2 and out["probs_tags"][1]["expression"] is None
    assert top(stage, "expression", "1girl, smile") == "smile"
    out = stage({"caption": ["a smiling girl"]})
    assert out["probs_tags"][0]["character_count"] is not None
    out = stage({"id": ["a", "b"]})
    assert out["probs_tags"] == [{a: None for a in stage.schema.attribute_names}] * 2
    assert stage.input_columns() == ["tags", "caption", "_prompt", "_prompt_kind"] and stage.cpu_bound


# ------------------------------------------------------------------------------------------ the alias table
def test_every_schema_tag_is_a_real_danbooru_tag_or_alias(schema):
    known = known_danbooru_names()
    missing = sorted(
        f"{attr.name}.{label.name}: {tag}" for attr in schema for label in attr.labels for tag in label.tags
        if tag not in known
    )
    assert not missing, f"tags not in {SAMPLE_CSV.name} (typo, or add the source row): {missing}"


def test_parser_tables_use_real_danbooru_tags():
    known = known_danbooru_names()
    used = set(COUNT_TAGS) | set(DEFAULT_MIXED_TAGS) | set(ABSENCE_SYNONYMS) | {
        "1girl", "2girls", "3girls", "6+girls", "1boy", "2boys", "1other", "2others", "solo", "solo_focus",
        "no_humans", "no_shirt",
    }
    assert sorted(used - known) == []


def test_extract_rows_have_the_source_columns():
    rows = sample_rows()
    assert len(rows) > 300
    for tag, row in rows.items():
        assert len(row) == 4, row
        assert row[1].isdigit() and row[2].isdigit(), row
    assert SAMPLE_CSV.read_text().startswith("# Extract of tags/danbooru.csv")


def test_sexualised_tags_are_never_mapped(stage):
    for tag in ("loli", "shota", "milf", "dilf", "oppai_loli", "pearl_necklace", "micro_bikini", "naked_shirt",
                "otoko_no_ko", "randoseru"):
        assert all(v is None for v in stage.row(tag).values()), tag
