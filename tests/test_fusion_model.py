"""The fusion policy as a transformers model: config, shapes, masking, save/load, Auto classes, model card,
publishing (with a test double for the Hub only) and the PolicyFusion stage inside ``datasets.map``."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from huggingface_hub import ModelCard
from transformers import AutoConfig, AutoModel

from charattr_hf.models.fusion import (
    CharattrFusionConfig,
    CharattrFusionModel,
    encode_columns,
    modeling_fusion,
    render_metrics_table,
    render_model_card,
)
from charattr_hf.schema import Schema, load_schema
from charattr_hf.stages.fusion import decide
from charattr_hf.stages.policy import PolicyFusion

torch.set_num_threads(1)

SOURCES = ("clip", "tags", "blip2")


def tiny_schema() -> Schema:
    return load_schema().restrict(
        {
            "hair_length": None,
            "art_style": ["anime", "realistic", "sketch", "pixel_art"],
            "accessories": ["glasses", "hat", "scarf"],
        },
        name="tiny",
    )


class FusionModelTester:
    """Tiny configs and random inputs (hidden size 32, 2 layers)."""

    def __init__(self, embedding_dim: int = 0, batch_size: int = 5, seed: int = 0):
        self.schema = tiny_schema()
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.config = CharattrFusionConfig.from_schema(
            self.schema, sources=SOURCES, flag_vocab=["grayscale", "low_resolution"], hidden_size=32,
            num_hidden_layers=2, embedding_dim=embedding_dim, embedding_proj_dim=4, hidden_dropout_prob=0.0,
        )

    def model(self, seed: int = 0, perturb: bool = True) -> CharattrFusionModel:
        torch.manual_seed(seed)
        model = CharattrFusionModel(self.config).eval()
        if perturb:  # zero-initialised heads would hide bugs in loading and masking
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.3 * torch.randn_like(p))
        return model

    def vector(self, attr) -> list[float]:
        if attr.multi_label:
            return self.rng.uniform(0, 1, attr.num_labels).astype(np.float32).tolist()
        return self.rng.dirichlet(np.ones(attr.num_labels)).astype(np.float32).tolist()

    def columns(self, n: int | None = None, missing: float = 0.3) -> dict[str, list]:
        n = n or self.batch_size
        cols: dict[str, list] = {"id": [f"row-{i}" for i in range(n)]}
        for s in SOURCES:
            cells = []
            for _ in range(n):
                cells.append({a.name: None if self.rng.random() < missing else self.vector(a) for a in self.schema})
            cols[f"probs_{s}"] = cells
        cols["quality"] = [
            {"brightness": 0.5, "contrast": 0.4, "saturation": float(self.rng.random()), "colorfulness": 0.3,
             "sharpness": float(self.rng.uniform(50, 900))}
            for _ in range(n)
        ]
        cols["flags"] = [["grayscale"] if i % 2 else ["something_else"] for i in range(n)]
        if self.config.embedding_dim:
            cols["embedding"] = [self.rng.normal(size=self.config.embedding_dim).tolist() for _ in range(n)]
        return cols

    def inputs(self, **kw) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in encode_columns(self.columns(**kw), self.config).items()}


@pytest.fixture
def tester() -> FusionModelTester:
    return FusionModelTester()


# ------------------------------------------------------------------------------------------ config
def test_config_from_schema_round_trip(tmp_path):
    schema = tiny_schema()
    config = CharattrFusionConfig.from_schema(schema, sources=SOURCES, flag_vocab=["grayscale"], hidden_size=32)
    assert config.model_type == "charattr_fusion"
    assert config.attribute_names == schema.attribute_names
    assert config.max_labels == max(a.num_labels for a in schema)
    assert config.num_flags == 2  # vocabulary + "other"
    rebuilt = config.to_schema()
    assert [a.label_names for a in rebuilt] == [a.label_names for a in schema]
    assert [a.multi_label for a in rebuilt] == [a.multi_label for a in schema]
    config.check_schema(schema)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, CharattrFusionConfig)
    assert loaded.attributes == config.attributes and loaded.sources == list(SOURCES)
    assert loaded.hidden_size == 32 and loaded.flag_vocab == ["grayscale"]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="duplicate"):
        CharattrFusionConfig(attributes=[{"name": "a", "labels": ["x", "y"]}] * 2)
    with pytest.raises(ValueError, match="at least 2"):
        CharattrFusionConfig(attributes=[{"name": "a", "labels": ["x"]}])
    with pytest.raises(ValueError, match="distinct"):
        CharattrFusionConfig(attributes=[{"name": "a", "labels": ["x", "y"]}], sources=["clip", "clip"])
    other = load_schema().restrict({"hair_length": ["short", "long"]})
    config = CharattrFusionConfig.from_schema(tiny_schema())
    with pytest.raises(ValueError, match="hair_length"):
        config.check_schema(other)


# ------------------------------------------------------------------------------------------ forward
def test_output_shapes_and_normalisation(tester):
    model = tester.model()
    out = model(**tester.inputs())
    B, A, L, S = tester.batch_size, tester.config.num_attributes, tester.config.max_labels, len(SOURCES)
    assert out.logits.shape == (B, A, L) and out.probs.shape == (B, A, L)
    assert out.gate_weights.shape == (B, A, S) and out.available.shape == (B, A)
    split = model.split(out.probs)
    for i, attr in enumerate(tester.schema):
        p = split[attr.name]
        assert p.shape == (B, attr.num_labels)
        assert torch.all(out.probs[:, i, attr.num_labels :] == 0)  # padding
        if attr.multi_label:
            assert torch.all((p >= 0) & (p <= 1))
        else:
            avail = out.available[:, i]
            assert torch.allclose(p[avail].sum(-1), torch.ones(int(avail.sum())), atol=1e-5)
    gates = out.gate_weights.sum(-1)
    assert torch.allclose(gates[out.available], torch.ones(int(out.available.sum())), atol=1e-5)
    assert torch.all(gates[~out.available] == 0)


def test_embedding_variant_runs_and_uses_embedding():
    tester = FusionModelTester(embedding_dim=8)
    model = tester.model()
    inputs = tester.inputs(missing=0.0)
    out1 = model(**inputs).probs
    inputs["embedding"] = inputs["embedding"] + 1.0
    out2 = model(**inputs).probs
    assert out1.shape == out2.shape and not torch.allclose(out1, out2)


def test_untrained_policy_is_geometric_mean(tester):
    """Zero-initialised heads: the documented starting point is the normalised geometric mean of the sources."""
    model = tester.model(perturb=False)
    cols = tester.columns(missing=0.0)
    out = model(**{k: torch.from_numpy(v) for k, v in encode_columns(cols, tester.config).items()})
    attr = tester.schema["hair_length"]
    vecs = np.stack([np.asarray([c["hair_length"] for c in cols[f"probs_{s}"]]) for s in SOURCES])
    share = 1.0 / (1.0 + np.exp(-modeling_fusion._SMOOTHING_INIT))  # initial share of "no idea" per source
    vecs = (1.0 - share) * vecs + share / attr.num_labels
    geo = np.exp(np.log(np.clip(vecs, 1e-4, 1)).mean(0))
    geo /= geo.sum(-1, keepdims=True)
    got = model.split(out.probs)["hair_length"].detach().numpy()
    np.testing.assert_allclose(got, geo, atol=1e-5)
    assert attr.num_labels == got.shape[1]


def test_masked_source_values_do_not_matter(tester):
    model = tester.model()
    inputs = tester.inputs(missing=0.0)
    inputs["source_mask"][:, 1, :] = False  # "tags" missing everywhere
    reference = model(**inputs)
    inputs["source_probs"][:, 1] = torch.rand_like(inputs["source_probs"][:, 1]) * 50  # garbage behind the mask
    changed = model(**inputs)
    assert torch.equal(reference.probs, changed.probs)
    assert torch.all(changed.gate_weights[:, :, 1] == 0)
    # ... whereas an unmasked source does matter
    inputs["source_mask"][:, 1, :] = True
    assert not torch.allclose(model(**inputs).probs, reference.probs)


def test_no_evidence_means_unavailable(tester):
    model = tester.model()
    cols = tester.columns(n=3, missing=0.0)
    for s in SOURCES:
        cols[f"probs_{s}"][0] = None  # e.g. a row whose image failed to decode
    fused = model.fuse_columns(cols)
    for attr in tester.schema:
        assert fused[attr.name][0] is None
        assert fused[attr.name][1] is not None and len(fused[attr.name][1]) == attr.num_labels


def test_encode_columns_checks_and_defaults(tester):
    cols = tester.columns(n=2, missing=0.0)
    cols["quality"][1] = None
    cols["flags"] = [["grayscale", "unknown_flag"], None]
    enc = encode_columns(cols, tester.config)
    assert enc["quality_mask"].tolist() == [True, False]
    assert enc["flags"][0].tolist() == [1.0, 0.0, 1.0] and enc["flags"][1].sum() == 0
    del cols["probs_blip2"]
    assert not encode_columns(cols, tester.config)["source_mask"][:, 2].any()
    cols["probs_clip"][0]["hair_length"] = [0.5, 0.5]
    with pytest.raises(ValueError, match="hair_length"):
        encode_columns(cols, tester.config)


def test_loss_and_gradients(tester):
    model = tester.model().train()
    inputs = tester.inputs(missing=0.0)
    labels = torch.full((tester.batch_size, tester.config.num_attributes, tester.config.max_labels), -1.0)
    for i, attr in enumerate(tester.schema):
        labels[:, i, : attr.num_labels] = 0.0
        labels[:, i, 0] = 1.0
    out = model(**inputs, labels=labels)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.gate_head.weight.grad is not None and model.gate_head.weight.grad.abs().sum() > 0
    # unknown targets everywhere -> zero loss, not NaN
    assert model(**inputs, labels=torch.full_like(labels, -1.0)).loss.item() == 0.0


# ------------------------------------------------------------------------------------------ save / load
def test_save_load_round_trip_and_auto_classes(tester, tmp_path):
    model = tester.model()
    model.set_context_normalization([0.1, 0.2, 0.3, 0.4, 5.0], [1.0, 2.0, 1.0, 1.0, 0.5])
    model.config.policy_version = "v7"
    inputs = tester.inputs()
    expected = model(**inputs)
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in tmp_path.iterdir()}
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.py"))  # no pickles, no remote code
    for loader in (CharattrFusionModel.from_pretrained, AutoModel.from_pretrained):
        loaded = loader(tmp_path).eval()
        assert type(loaded) is CharattrFusionModel
        got = loaded(**inputs)
        assert torch.allclose(got.probs, expected.probs, atol=1e-6)
        assert torch.allclose(got.gate_weights, expected.gate_weights, atol=1e-6)
        assert torch.allclose(loaded.quality_std, model.quality_std)
        assert loaded.config.policy_version == "v7"
    assert CharattrFusionModel.from_pretrained(tmp_path).weights_fingerprint() == model.weights_fingerprint()


# ------------------------------------------------------------------------------------------ model card
RECORDS = [
    {"attribute": "hair_length", "method": "mean", "style": None, "accuracy": 0.61, "ece": 0.08, "n": 200},
    {"attribute": "hair_length", "method": "policy", "style": None, "accuracy": 0.74, "ece": 0.03, "n": 200},
    {"attribute": "art_style", "method": "mean", "style": None, "accuracy": 0.5, "ece": 0.1, "n": 200},
    {"attribute": "art_style", "method": "policy", "style": None, "accuracy": 0.9, "ece": 0.02, "n": 200},
    {"attribute": "art_style", "method": "policy", "style": "sketch", "accuracy": 0.123, "ece": 0.5, "n": 50},
]


def test_metrics_table_renders_measured_results():
    text = render_metrics_table(RECORDS)
    lines = text.splitlines()
    assert lines[0].startswith("| attribute | n | mean acc % | mean ECE | policy acc % | policy ECE |")
    assert "| hair_length | 200 | 61.0 | 0.080 | 74.0 | 0.030 |" in lines
    assert "| **mean** |  | 55.5 | 0.090 | 82.0 | 0.025 |" in lines
    assert "12.3" not in text  # per-style records stay out of the card's overall table
    assert "No evaluation results" in render_metrics_table([])


def test_model_card_is_rendered_on_save(tester, tmp_path):
    model = tester.model()
    model.config.eval_results = RECORDS
    model.config.training_info = [{"kind": "supervised", "images": 123, "seed": 0, "policy_version": "v1",
                                   "command": "accelerate launch recipes/train_fusion.py --simulate"}]
    model.save_pretrained(tmp_path, model_card_id="org/policy")
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert "# org/policy" in card
    assert "{{" not in card and "}}" not in card
    assert "| hair_length | 200 | 61.0 | 0.080 | 74.0 | 0.030 |" in card
    assert "| 1 | supervised | 123 |" in card
    assert "accelerate launch recipes/train_fusion.py --simulate" in card
    assert card == render_model_card(model.config, model_id="org/policy")
    with pytest.raises(KeyError, match="nope"):
        render_model_card(model.config, template="{{ nope }}")

    # the Hub reads the card's metadata: the policy's own measured numbers are its model-index
    parsed = ModelCard(card)
    assert parsed.data.library_name == "transformers" and "fusion-policy" in parsed.data.tags
    results = {(r.metric_config, r.metric_type): r.metric_value for r in parsed.data.eval_results}
    assert results == {("hair_length", "accuracy"): 0.74, ("hair_length", "ece"): 0.03,
                       ("art_style", "accuracy"): 0.9, ("art_style", "ece"): 0.02}  # not "mean", not one style
    assert {r.task_type for r in parsed.data.eval_results} == {"image-classification"}
    assert parsed.data.to_dict()["model-index"][0]["name"] == "org/policy"


def test_untrained_policy_card_has_no_model_index(tester):
    card = ModelCard(render_model_card(tester.model().config, model_id="org/fresh"))
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()
    assert "No evaluation results recorded yet" in card.text and "Untrained" in card.text


def test_top_level_model_card_is_the_packaged_template():
    # one file: the top-level model_card.md links to the template that wheels install with the package
    root = Path(__file__).resolve().parents[1]
    packaged = root / "charattr_hf" / "assets" / "model_card.md"
    assert (root / "model_card.md").resolve() == packaged.resolve()
    assert packaged.read_text().startswith("---\n{{ card_data }}\n---\n")


def test_shipped_demo_policy_card_is_its_rendered_card():
    folder = Path(__file__).resolve().parents[1] / "charattr_hf" / "assets" / "demo-fusion"
    model = CharattrFusionModel.from_pretrained(folder)
    shipped = (folder / "README.md").read_text()
    rendered = render_model_card(model.config, model_id="charattr_hf/assets/demo-fusion")
    assert shipped.startswith(rendered)  # plus a closing section on the demo policy itself
    assert len(ModelCard(shipped).data.eval_results) == 2 * len(model.config.attributes)


def test_push_to_hub_publishes_rendered_card(tester):
    """Test double for the Hub only: HfApi is replaced, everything else (saving, rendering) is real."""
    model = tester.model()
    model.config.eval_results = RECORDS
    uploaded: dict[str, object] = {}

    def upload_folder(repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        uploaded["files"] = sorted(p.name for p in folder.iterdir())
        uploaded["card"] = (folder / "README.md").read_text()
        uploaded["kwargs"] = kwargs
        return "commit-info"

    with mock.patch.object(modeling_fusion, "HfApi") as api_cls:
        api = api_cls.return_value
        api.create_repo.return_value = mock.Mock(repo_id="org/charattr-fusion")
        api.upload_folder.side_effect = upload_folder
        result = model.push_to_hub("charattr-fusion", revision="exp", tags=["anime"], token="t0k")
    assert result == "commit-info"
    api_cls.assert_called_once_with(token="t0k")
    api.create_repo.assert_called_once()
    api.create_branch.assert_called_once_with("org/charattr-fusion", branch="exp", exist_ok=True)
    assert uploaded["files"] == ["README.md", "config.json", "model.safetensors"]
    assert "# org/charattr-fusion" in uploaded["card"]
    assert "| hair_length | 200 | 61.0 | 0.080 | 74.0 | 0.030 |" in uploaded["card"]
    assert ModelCard(uploaded["card"]).data.tags[-1] == "anime"  # tag added to the YAML header
    assert uploaded["kwargs"]["revision"] == "exp"


# ------------------------------------------------------------------------------------------ pipeline stage
def test_policy_fusion_in_batched_map(tester, tmp_path):
    model = tester.model()
    model.save_pretrained(tmp_path / "policy")
    cols = tester.columns(n=12, missing=0.3)
    for s in SOURCES:
        cols[f"probs_{s}"][3] = None  # a row without any evidence
    cols["error"] = [None] * 12
    schema = tester.schema
    in_features = Features(
        {
            "id": Value("string"),
            **{f"probs_{s}": schema.probs_feature() for s in SOURCES},
            "quality": {k: Value("float32") for k in cols["quality"][0]},
            "flags": List(Value("string")),
            "error": Value("string"),
        }
    )
    ds = Dataset.from_dict(cols, features=in_features)
    stage = PolicyFusion(model=str(tmp_path / "policy"))
    assert stage._model is None  # weights are loaded lazily
    assert set(stage.input_columns()) >= {"probs_clip", "probs_tags", "probs_blip2", "quality", "flags"}
    features = Features({**ds.features, **stage.features()})
    out = ds.map(stage, batched=True, batch_size=5, features=features, new_fingerprint=stage.fingerprint())
    assert isinstance(out.features["hair_length"], ClassLabel)
    assert isinstance(out.features["accessories"], List) and isinstance(out.features["accessories"].feature, ClassLabel)
    assert out.features["hair_length_confidence"] == Value("float32")
    expected = model.fuse_columns(cols)
    for attr in schema:
        for r in range(12):
            label, conf = decide(attr, expected[attr.name][r])
            assert out[r][attr.name] == label
            got = out[r][f"{attr.name}_confidence"]
            assert (got is None) == (conf is None)
            if conf is not None:
                assert got == pytest.approx(conf, abs=1e-5)
        assert out[3][attr.name] is None


def test_policy_fusion_pickles_without_weights_and_fingerprints_weights(tester, tmp_path):
    tester.model(seed=0).save_pretrained(tmp_path / "a")
    tester.model(seed=1).save_pretrained(tmp_path / "b")
    stage = PolicyFusion(model=str(tmp_path / "a"))
    cols = tester.columns(n=4)
    first = stage.fuse(cols)
    assert stage._model is not None
    clone = pickle.loads(pickle.dumps(stage))
    assert clone._model is None
    again = clone.fuse(cols)
    for name in first:
        for x, y in zip(first[name], again[name]):
            assert (x is None and y is None) or np.allclose(x, y)
    assert PolicyFusion(model=str(tmp_path / "a")).fingerprint() == stage.fingerprint()
    assert PolicyFusion(model=str(tmp_path / "b")).fingerprint() != stage.fingerprint()
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "moved")  # the same weights elsewhere: the same stage
    assert PolicyFusion(model=str(tmp_path / "moved")).fingerprint() == stage.fingerprint()


def test_policy_fusion_falls_back_for_unknown_attributes(tester):
    bigger = load_schema().restrict(
        {"hair_length": None, "art_style": ["anime", "realistic", "sketch", "pixel_art"],
         "accessories": ["glasses", "hat", "scarf"], "expression": None}
    )
    stage = PolicyFusion(bigger, model=tester.model())
    assert stage.fallback_attributes == ["expression"]
    cols = tester.columns(n=3, missing=0.0)
    for s in SOURCES:
        for cell in cols[f"probs_{s}"]:
            cell["expression"] = np.eye(6)[1].tolist()
    out = stage(cols)
    assert out["expression"] == [1, 1, 1]
    assert len(out["hair_length"]) == 3
    wrong = load_schema().restrict({"hair_length": ["short", "long"]})
    with pytest.raises(ValueError, match="hair_length"):
        PolicyFusion(wrong, model=tester.model())


def test_policy_fusion_as_the_pipeline_builds_it(tester, tmp_path):
    """``PolicyFusion(schema, run_sources, path, revision=...)``: a policy source the run lacks is absent."""
    from charattr_hf.stages.policy import policy_uses_embedding

    model = tester.model()
    model.save_pretrained(tmp_path / "p")
    assert policy_uses_embedding(tmp_path / "p") is False
    stage = PolicyFusion(tester.schema, ["clip", "tags"], str(tmp_path / "p"), revision=None)
    assert "probs_blip2" not in stage.input_columns() and "quality" in stage.input_columns()
    cols = tester.columns(n=4, missing=0.0)
    got = stage.fuse(cols)  # the stale probs_blip2 column must not be read
    without = dict(cols)
    del without["probs_blip2"]
    expected = model.fuse_columns(without)
    for name in expected:
        for x, y in zip(got[name], expected[name]):
            np.testing.assert_allclose(x, y, atol=1e-6)
    emb = FusionModelTester(embedding_dim=8).model()
    emb.save_pretrained(tmp_path / "e")
    assert policy_uses_embedding(str(tmp_path / "e")) is True
    emb_stage = PolicyFusion(model=str(tmp_path / "e"))
    assert "embedding" in emb_stage.input_columns()
    emb_tester = FusionModelTester(embedding_dim=8)
    emb_cols = emb_tester.columns(n=3, missing=0.0)
    fused = emb_stage.fuse(emb_cols)
    assert all(len(v) == 3 for v in fused.values()) and fused
    emb_cols["embedding"] = [[0.0] * 16] * 3  # another CLIP's embeddings: a clear error, not a shape error
    with pytest.raises(ValueError, match="8-dim image embeddings.*gives 16"):
        emb_stage.fuse(emb_cols)
    with pytest.raises(ValueError, match="needs model"):
        PolicyFusion(tester.schema, ["clip"])


def test_policy_fusion_from_a_hub_id_pins_the_commit(tester, tmp_path, monkeypatch):
    """The Hub code path, offline: a policy in the local Hub cache is loaded by id, pinned to its commit."""
    import huggingface_hub.constants as hub_constants

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--fusion-policy"
    tester.model().save_pretrained(repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    from charattr_hf import loading

    loading._resolve.cache_clear()  # nothing resolved yet in this process
    stage = PolicyFusion(tester.schema, list(SOURCES), "org/fusion-policy")
    assert stage.revision == sha and stage.weights_id() == f"hub-org/fusion-policy@{sha}"
    cols = tester.columns(n=3, missing=0.0)
    before = stage.fuse(cols)["hair_length"]
    # the branch moves to new weights: a new stage pins and names them; the built stage keeps its commit
    new_sha = "f" * 40
    tester.model(seed=3).save_pretrained(repo / "snapshots" / new_sha)
    (repo / "refs" / "main").write_text(new_sha)
    same = PolicyFusion(tester.schema, list(SOURCES), "org/fusion-policy")
    assert same.revision == sha  # within a process (a run), a revision resolves once: every stage loads one commit
    loading._resolve.cache_clear()  # a new process
    moved = PolicyFusion(tester.schema, list(SOURCES), "org/fusion-policy")
    assert moved.revision == new_sha and moved.fingerprint() != stage.fingerprint()
    clone = pickle.loads(pickle.dumps(stage))  # e.g. another process: reloads the pinned commit
    for x, y in zip(before, clone.fuse(cols)["hair_length"]):
        np.testing.assert_allclose(x, y, atol=1e-6)
    assert not np.allclose(before[0], moved.fuse(cols)["hair_length"][0])
