"""BLIP-2 question-answering source, on a tiny random BLIP-2 built locally (offline)."""

from __future__ import annotations

import io
import os
import pickle

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Value
from PIL import Image

from charattr_hf.schema import Schema, load_schema
from charattr_hf.sources.blip2.stage import Blip2Source, default_question

from charattr_hf.testing import BLIP2_IMAGE_SIZE as IMAGE_SIZE
from charattr_hf.testing import build_tiny_blip2

COL = "probs_blip2"

# Labels sharing a first word ("dark ...") and one label text that is a prefix of others ("dark").
SMALL = Schema.from_dict(
    {
        "name": "small",
        "attributes": {
            "shade": {
                "labels": {
                    "red": {"text": "red"},
                    "dark": {"text": "dark"},
                    "dark_red": {"text": "dark red"},
                    "dark_blue": {"text": "dark blue"},
                },
            },
            "wear": {"multi_label": True, "labels": {"glasses": {"text": "glasses"}, "hat": {"text": "a hat"}}},
        },
    }
)
SMALL_QUESTIONS = {"shade": "what shade is the hair?", "wear": "is the character wearing {}?"}


def _texts(stage: Blip2Source) -> list[str]:
    return [q.prompt for q in stage.queries()] + [a for q in stage.queries() for a in q.answers]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    texts = _texts(Blip2Source(model_id="unused")) + _texts(
        Blip2Source(SMALL, model_id="unused", questions=SMALL_QUESTIONS)
    )
    return str(build_tiny_blip2(tmp_path_factory.mktemp("tiny_blip2"), texts))


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(n)]


def _pixels_batch(images: list[np.ndarray], errors: list | None = None) -> dict[str, list]:
    return {"_pixels": [im.tobytes() for im in images], "error": errors or [None] * len(images)}


def _check_row(schema: Schema, row: dict) -> None:
    assert set(row) == set(schema.attribute_names)
    for attr in schema:
        vec = np.asarray(row[attr.name], dtype=np.float64)
        assert vec.shape == (attr.num_labels,)
        assert np.all(vec >= 0) and np.all(vec <= 1)
        if not attr.multi_label:
            assert vec.sum() == pytest.approx(1.0, abs=1e-5)


def _as_array(rows: list[dict], schema: Schema) -> np.ndarray:
    return np.concatenate([np.concatenate([np.asarray(r[a.name], dtype=np.float64) for a in schema]) for r in rows])


def test_map_types_sums_and_error_rows(tiny):
    schema = load_schema("default")
    stage = Blip2Source(schema, model_id=tiny, pixel_shape=(IMAGE_SIZE, IMAGE_SIZE), pixels_column="_pixels")
    images = _images(7)
    errors = [None, "decode: broken file", None, None, None, "decode: too small", None]
    ds = Dataset.from_dict(
        {"id": [str(i) for i in range(7)], **_pixels_batch(images, errors)},
        features=Features({"id": Value("string"), "_pixels": Value("binary"), "error": Value("string")}),
    )
    features = Features({**ds.features, **stage.features()})
    out = ds.map(stage, batched=True, batch_size=3, features=features)
    assert out.features[COL] == Features(stage.features())[COL]
    assert out.features[COL]["hair_color"].length == schema["hair_color"].num_labels
    assert out["error"] == errors
    for row, err in zip(out[COL], errors):
        if err:
            assert row is None
        else:
            _check_row(schema, row)
    # Multi-label vectors are independent presence probabilities, not a distribution.
    sums = [sum(row["accessories"]) for row, err in zip(out[COL], errors) if not err]
    assert any(abs(s - 1.0) > 0.05 for s in sums)


def test_batch_equals_row_by_row(tiny):
    stage = Blip2Source(model_id=tiny, pixel_shape=(IMAGE_SIZE, IMAGE_SIZE), pixels_column="_pixels", batch_size=2)
    images = _images(5, seed=1)
    batched = stage(_pixels_batch(images))[COL]
    single = [stage(_pixels_batch([im]))[COL][0] for im in images]
    np.testing.assert_allclose(_as_array(batched, stage.schema), _as_array(single, stage.schema), atol=2e-5)
    # The image matters: two images do not get the same answers.
    assert np.abs(_as_array(batched[:1], stage.schema) - _as_array(batched[1:2], stage.schema)).max() > 1e-3


def _reference_logprob(model, processor, image: np.ndarray, prompt: str, answer: str) -> float:
    """log P(" answer\\n" | image, prompt) from one plain forward pass of the whole sequence."""
    full = processor(images=image, text=f"{prompt} {answer}\n", return_tensors="pt")
    n_prompt = processor(images=image, text=prompt, return_tensors="pt")["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(pixel_values=full["pixel_values"], input_ids=full["input_ids"]).logits[0].double()
    ids = full["input_ids"][0]
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[t - 1, ids[t]] for t in range(n_prompt, len(ids))))


def test_scores_match_direct_log_likelihood(tiny):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    stage = Blip2Source(SMALL, model_id=tiny, questions=SMALL_QUESTIONS, pixel_shape=(IMAGE_SIZE, IMAGE_SIZE),
                        pixels_column="_pixels")
    image = _images(1, seed=2)[0]
    got = stage(_pixels_batch([image]))[COL][0]

    model = Blip2ForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32).eval()
    processor = Blip2Processor.from_pretrained(tiny)
    shade = SMALL["shade"]
    prompt = "Question: what shade is the hair? Answer:"
    lp = np.array([_reference_logprob(model, processor, image, prompt, lab.text) for lab in shade.labels])
    want = np.exp(lp - lp.max()) / np.exp(lp - lp.max()).sum()
    assert want.max() - want.min() > 0.02  # the comparison below is not between two near-uniform vectors
    np.testing.assert_allclose(got["shade"], want, atol=1e-5)

    wear = []
    for lab in SMALL["wear"].labels:
        p = f"Question: is the character wearing {lab.text}? Answer:"
        yes, no = (_reference_logprob(model, processor, image, p, a) for a in ("yes", "no"))
        wear.append(1.0 / (1.0 + np.exp(no - yes)))
    np.testing.assert_allclose(got["wear"], wear, atol=1e-5)


def test_packing_split_gives_same_numbers(tiny):
    images = _images(3, seed=3)
    one = Blip2Source(model_id=tiny, pixel_shape=(IMAGE_SIZE, IMAGE_SIZE), pixels_column="_pixels")
    many = Blip2Source(model_id=tiny, pixel_shape=(IMAGE_SIZE, IMAGE_SIZE), pixels_column="_pixels", max_pack_tokens=40)
    assert one.num_lm_passes() == 1
    assert many.num_lm_passes() > 3
    np.testing.assert_allclose(
        _as_array(one(_pixels_batch(images))[COL], one.schema),
        _as_array(many(_pixels_batch(images))[COL], many.schema),
        atol=2e-5,
    )


def test_pixels_come_from_the_decode_stage_at_the_processors_size(tiny):
    """The source's pixel spec is the processor's size, squashed with its filter; the decode stage makes them from
    any image (a larger one resized, a broken one quarantined), and the scores equal those of ready pixels."""
    from charattr_hf.stages.decode import DecodeStage

    images = _images(2, seed=4)
    pngs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        pngs.append({"bytes": buf.getvalue(), "path": None})
    big = io.BytesIO()
    Image.fromarray(np.tile(images[0], (2, 3, 1))).save(big, format="PNG")  # 64x96: resized by the decode stage
    stage = Blip2Source(model_id=tiny)
    spec = stage.pixel_spec()
    assert spec.size == (IMAGE_SIZE, IMAGE_SIZE) and spec.resize == "squash" and stage.input_columns() == [spec.column]
    decode = DecodeStage({spec.column: spec})
    batch = {"image": pngs + [{"bytes": big.getvalue(), "path": None}, {"bytes": b"not an image", "path": None}]}
    batch.update(decode(batch))
    out = stage(batch)
    from_pixels = Blip2Source(model_id=tiny, pixel_shape=(IMAGE_SIZE, IMAGE_SIZE), pixels_column="_pixels")
    np.testing.assert_allclose(
        _as_array(out[COL][:2], stage.schema),
        _as_array(from_pixels(_pixels_batch(images))[COL], from_pixels.schema),
        atol=2e-5,
    )
    _check_row(stage.schema, out[COL][2])
    assert out[COL][3] is None and out["error"][3].startswith("unreadable image")


def test_wrong_pixel_size_isolated_to_its_row(tiny):
    stage = Blip2Source(model_id=tiny, pixel_shape=(IMAGE_SIZE, IMAGE_SIZE), pixels_column="_pixels")
    images = _images(2, seed=5)
    batch = _pixels_batch(images)
    batch["_pixels"][0] = batch["_pixels"][0][:-3]
    out = stage(batch)
    assert out[COL][0] is None and "expected 32x32x3" in out["error"][0]
    _check_row(stage.schema, out[COL][1])
    assert out["error"][1] is None


def test_questions_override_and_validation(tiny):
    stage = Blip2Source(model_id=tiny, pixel_shape=(IMAGE_SIZE, IMAGE_SIZE), pixels_column="_pixels",
                        questions={"hair_color": None})
    row = stage(_pixels_batch(_images(1)))[COL][0]
    assert row["hair_color"] is None and row["eye_color"] is not None
    assert all(q.attribute != "hair_color" for q in stage.queries())
    with pytest.raises(ValueError, match="multi-label"):
        Blip2Source(model_id=tiny, questions={"accessories": "what is the character wearing?"})
    with pytest.raises(ValueError, match="single-label"):
        Blip2Source(model_id=tiny, questions={"hair_color": "is the hair {}?"})
    with pytest.raises(KeyError):
        Blip2Source(model_id=tiny, questions={"no_such_attribute": "why?"})
    with pytest.raises(ValueError, match="nothing"):
        Blip2Source(SMALL, model_id=tiny, questions={"shade": None, "wear": ""})
    # Defaults: one prompt per single-label attribute, one yes/no prompt per label of a multi-label one.
    default = Blip2Source(model_id=tiny)
    schema = default.schema
    assert len(default.queries()) == sum(a.num_labels if a.multi_label else 1 for a in schema)
    assert default.queries()[0].prompt == f"Question: {default_question(schema.attributes[0])} Answer:"


def test_pickles_without_model_and_fingerprint(tiny):
    stage = Blip2Source(model_id=tiny, pixel_shape=(IMAGE_SIZE, IMAGE_SIZE), pixels_column="_pixels")
    batch = _pixels_batch(_images(2, seed=6))
    before = stage(batch)[COL]  # loads the model
    blob = pickle.dumps(stage)
    assert len(blob) < 50_000
    assert not any(isinstance(v, (torch.nn.Module, torch.Tensor)) for v in vars(stage).values())
    clone = pickle.loads(blob)
    assert clone.fingerprint() == stage.fingerprint()
    np.testing.assert_allclose(_as_array(clone(batch)[COL], clone.schema), _as_array(before, stage.schema), atol=1e-6)
    params = stage.params()
    for key in ("model_id", "revision", "questions", "dtype", "schema"):
        assert key in params
    assert params["dtype"] == ("float16" if torch.cuda.is_available() else "float32")
    assert Blip2Source(model_id=tiny, revision="abc").fingerprint() != stage.fingerprint()
    assert Blip2Source(model_id=tiny, questions={"hair_color": "which hair color?"}).fingerprint() != (
        Blip2Source(model_id=tiny).fingerprint()
    )
    # Memory knobs do not change the numbers, so they do not change the fingerprint.
    knobs = Blip2Source(model_id=tiny, batch_size=1, max_pack_tokens=50)
    assert knobs.fingerprint() == Blip2Source(model_id=tiny).fingerprint()
