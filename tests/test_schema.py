import datasets
import pytest
from datasets import ClassLabel, Dataset, List, Value

from charattr_hf.schema import Schema, SchemaError, list_schemas, load_schema, normalize_tag

REQUIRED = {
    "gender_presentation",
    "age_group",
    "hair_color",
    "hair_length",
    "eye_color",
    "clothing",
    "top_color",
    "accessories",
    "expression",
    "art_style",
}


def test_default_schema_covers_required_attributes():
    schema = load_schema()
    assert REQUIRED <= set(schema.attribute_names)
    assert schema["accessories"].multi_label and {"glasses", "hat"} <= set(schema["accessories"].label_names)
    assert not schema["hair_color"].multi_label
    assert "default" in list_schemas()


def test_features_are_typed():
    schema = load_schema()
    feats = schema.output_features(sources=["clip", "tags"])
    assert isinstance(feats["hair_color"], ClassLabel)
    assert feats["hair_color"].names == schema["hair_color"].label_names
    assert isinstance(feats["accessories"], List) and isinstance(feats["accessories"].feature, ClassLabel)
    assert feats["hair_color_confidence"] == Value("float32")
    assert feats["accessories_confidence"] == List(Value("float32"))
    probs = feats["probs_clip"]["eye_color"]
    assert probs.length == schema["eye_color"].num_labels
    assert "probs_blip2" not in feats


def test_features_round_trip_through_parquet(tmp_path):
    schema = Schema.from_dict(
        {
            "attributes": {
                "hair_color": {"labels": {"black": ["black_hair"], "blonde": ["blonde_hair", "blond hair"]}},
                "accessories": {"multi_label": True, "labels": {"glasses": ["glasses"], "hat": ["hat"]}},
            }
        }
    )
    feats = schema.output_features(sources=["clip"])
    row = {name: None for name in feats}
    row.update({"id": "a", "index": 0, "flags": [], "hair_color": 1, "hair_color_confidence": 0.9,
                "accessories": [0, 1], "accessories_confidence": [0.8, 0.7],
                "probs_clip": {"hair_color": [0.1, 0.9], "accessories": None}})
    ds = Dataset.from_list([row, {**row, "hair_color": None, "accessories": None, "id": "b"}], features=feats)
    ds.to_parquet(tmp_path / "x.parquet")
    back = datasets.load_dataset("parquet", data_files=str(tmp_path / "x.parquet"), split="train")
    assert back.features == feats
    assert back.features["hair_color"].int2str(back[0]["hair_color"]) == "blonde"
    assert back[1]["hair_color"] is None and back[0]["accessories"] == [0, 1]


def test_templates_and_tags_are_expanded():
    schema = Schema.from_dict(
        {
            "attributes": {
                "hair_color": {
                    "templates": ["{} hair", "a character with {} hair"],
                    "labels": {"black": ["Black Hair"], "light_blue": {"tags": ["light_blue_hair"]}},
                }
            }
        }
    )
    label = schema["hair_color"].labels[1]
    assert label.text == "light blue"
    assert label.prompts == ("light blue hair", "a character with light blue hair")
    assert schema["hair_color"].labels[0].tags == ("black_hair",)
    assert normalize_tag("  Very Long   Hair ") == "very_long_hair"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"attributes": {}}, "non-empty"),
        ({"attributes": {"Hair": {"labels": ["a", "b"]}}}, "lower_snake_case"),
        ({"attributes": {"hair": {"labels": ["a"]}}}, "at least 2"),
        ({"attributes": {"hair": {"labels": {"a": ["x"], "b": ["y"]}, "threshold": 2}}}, "threshold"),
    ],
)
def test_bad_schemas_are_rejected_with_a_reason(bad, message):
    with pytest.raises(SchemaError, match=message):
        Schema.from_dict(bad)


def test_a_tag_cannot_mean_two_labels():
    with pytest.raises(SchemaError, match="maps to both"):
        Schema.from_dict({"attributes": {"hair": {"labels": {"a": ["x_hair"], "b": ["x_hair"]}}}})


def test_fingerprint_tracks_prompts_and_restrict(tmp_path):
    schema = load_schema()
    other = Schema.from_dict({**schema.to_dict(), "name": schema.name})
    assert other.fingerprint() == schema.fingerprint()
    data = schema.to_dict()
    data["attributes"]["hair_color"]["labels"]["black"]["prompts"] = ["jet black hair"]
    assert Schema.from_dict(data).fingerprint() != schema.fingerprint()
    small = schema.restrict({"hair_color": ["red", "black"], "accessories": None})
    assert small.attribute_names == ["hair_color", "accessories"]
    assert small["hair_color"].label_names == ["red", "black"]
    path = tmp_path / "s.yaml"
    small.save(path)
    assert load_schema(path).fingerprint() == small.fingerprint()


def test_unknown_schema_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="shipped"):
        load_schema("no-such-schema")
