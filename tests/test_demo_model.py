"""The shipped demo CLIP (charattr_hf/assets/demo-clip) and the library/recipe that trains it."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from charattr_hf import demo_clip as D
from charattr_hf import synthetic as S
from charattr_hf.sources.clip.model import ClipSpec, demo_model_dir
from charattr_hf.schema import load_schema

ASSET = Path(__file__).resolve().parents[1] / "charattr_hf" / "assets" / "demo-clip"
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "train_demo_clip.py"
#: Not the training seed (0) of the shipped model, nor the evaluation seed of its model card.
TEST_SEED = 777
SCHEMA = load_schema("synthetic")


# ------------------------------------------------------------------------------------------ shipped model
def test_shipped_folder_is_small_complete_and_pickle_free():
    files = {p.name: p for p in ASSET.iterdir() if p.is_file()}
    assert {"open_clip_config.json", "open_clip_model.safetensors", "charattr_schema.yaml", "README.md"} <= set(files)
    assert sum(p.stat().st_size for p in ASSET.rglob("*") if p.is_file()) <= 20 * 1024 * 1024
    pickles = [p.name for p in ASSET.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")]
    assert not pickles
    cfg = json.loads(files["open_clip_config.json"].read_text())
    assert {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg["model_cfg"])
    assert {"mean", "std"} <= set(cfg["preprocess_cfg"])
    # the schema it ships with labels things as the synthetic schema does (truth columns decode the same)
    own = load_schema(str(files["charattr_schema.yaml"]))
    assert [(a.name, a.label_names, a.multi_label) for a in own] == [
        (a.name, a.label_names, a.multi_label) for a in SCHEMA
    ]


def test_shipped_config_recipe_config_and_library_agree():
    import yaml

    shipped = json.loads((ASSET / "open_clip_config.json").read_text())["model_cfg"]
    recipe_cfg = yaml.safe_load((RECIPE.parent / "configs" / "train_demo_clip.yaml").read_text())
    assert shipped == D.DEMO_MODEL_CFG == json.loads(recipe_cfg["model_config"])


def test_loads_through_local_dir_with_the_stored_weights():
    import open_clip
    from safetensors.torch import load_file

    model = open_clip.create_model(f"local-dir:{ASSET}")
    stored = load_file(str(ASSET / "open_clip_model.safetensors"))
    state = model.state_dict()
    assert set(stored) == set(state)
    for name in ("visual.conv1.weight", "token_embedding.weight", "logit_scale"):
        assert state[name].dtype == torch.float32
        torch.testing.assert_close(state[name], stored[name].float())
    tokenizer = open_clip.get_tokenizer(f"local-dir:{ASSET}")
    assert tokenizer(["red hair"]).shape == (1, model.context_length)


def test_clipspec_demo_resolves_to_the_shipped_folder():
    assert demo_model_dir() == ASSET
    spec = ClipSpec.parse("demo")
    assert spec.local_dir() == ASSET
    assert spec.describe() == "demo"
    from charattr_hf.sources.clip import spec_schema as _model_schema

    assert _model_schema(spec) == str(ASSET / "charattr_schema.yaml")


def test_demo_model_reads_hair_colour_and_abstains_on_sketch_colours():
    results = D.evaluate_zero_shot("demo", styles=["flat", "sketch"], n=200, seed=TEST_SEED, batch_size=100)
    # a loose floor (the model card reports ~1.0): catches permuted labels, prompts or preprocessing
    assert results["flat"]["hair_color"]["accuracy"] >= 0.8
    # sketches hide colours: the model must not claim to know them
    chance = results["sketch"]["hair_color"]["chance"]
    assert results["sketch"]["hair_color"]["confidence"] <= 2.0 * chance


# ------------------------------------------------------------------------------------------ shipped policy
POLICY = ASSET.parent / "demo-fusion"


def test_shipped_policy_is_small_pickle_free_and_resolves_from_demo():
    from charattr_hf.models.fusion import CharattrFusionModel
    from charattr_hf.stages.policy import PolicyFusion, resolve_policy

    names = {p.name for p in POLICY.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    assert sum(p.stat().st_size for p in POLICY.iterdir()) <= 1024 * 1024
    assert resolve_policy("demo") == str(POLICY) and resolve_policy("org/other") == "org/other"
    model = CharattrFusionModel.from_pretrained(str(POLICY))
    assert model.config.sources == ["clip", "tags"] and model.config.schema_name == "synthetic"
    stage = PolicyFusion("synthetic", ["clip", "tags"], "demo")
    assert stage.model_ref == str(POLICY)
    with pytest.raises(ValueError):  # the default schema's hair colours are not the policy's
        PolicyFusion("default", ["clip", "tags"], "demo")


def test_shipped_policy_beats_the_confidence_rule_where_sources_disagree(tmp_path):
    from charattr_hf.api import annotate

    # watercolor (noisy tags) and lit (colours confidently misread by CLIP): the cases the policy learned
    images = S.generate(160, seed=TEST_SEED, styles=["watercolor", "lit"], noise="mixed")
    rule = annotate(images, model="demo", use_cache=False)
    policy = annotate(images, model="demo", fusion="demo", use_cache=False)
    truth = images["truth"]

    def accuracy(ds, attr):
        return float(np.mean([p == t[attr] for p, t in zip(ds[attr], truth)]))

    colours = ("hair_color", "eye_color", "top_color")
    rule_acc = np.mean([accuracy(rule, a) for a in colours])
    policy_acc = np.mean([accuracy(policy, a) for a in colours])
    assert policy_acc >= rule_acc + 0.05, (policy_acc, rule_acc)


# ------------------------------------------------------------------------------------------ library
def _tiny_pool(n: int = 40, styles=("flat", "sketch")) -> D.ImagePool:
    return D.build_pool(n, seed=5, size=32, styles=styles, num_proc=1, schema=SCHEMA)


def test_pool_matches_the_generator():
    pool = _tiny_pool(6, styles=S.STYLES)
    ds = S.generate(6, seed=5, size=32)
    for i, row in enumerate(ds):
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), pool.pixels[i])
        assert S.STYLES[pool.styles[i]] == row["style"]
        for k, attr in enumerate(pool.single_attrs):
            assert pool.labels[i, k] == row["truth"][attr]
        assert sorted(np.flatnonzero(pool.accessories[i]).tolist()) == sorted(row["truth"]["accessories"])


def test_caption_targets_positive_negative_and_unknown():
    pool = _tiny_pool()
    index = np.arange(len(pool))
    caps = D.sample_captions(pool, index, np.random.default_rng(0))
    pos, unknown = D.caption_targets(pool, index, caps, SCHEMA)
    assert pos.shape == unknown.shape == (len(pool), len(pool))
    assert pos.diagonal().all()  # a caption is true of its own image
    assert not (pos & unknown).any()

    # hand-made captions: a colour fact on a sketch is unknown unless another fact is false
    sketch = int(np.flatnonzero(pool.is_sketch)[0])
    ch = pool.characters[sketch]
    other_len = next(x for x in S.HAIR_LENGTHS if x != ch.hair_length)
    other_hair = next(c for c in S.HAIR_COLORS if c != ch.hair_color)
    facts = [
        (("hair_color", ch.hair_color, True),),
        (("hair_color", other_hair, True),),
        (("hair_color", ch.hair_color, True), ("hair_length", other_len, True)),
        (("hair_length", ch.hair_length, True),),
    ]
    caps = D.CaptionBatch(["x"] * len(facts), facts)
    pos, unknown = D.caption_targets(pool, np.array([sketch]), caps, SCHEMA)
    assert unknown[0].tolist() == [True, True, False, False]
    assert pos[0].tolist() == [False, False, False, True]

    flat = int(np.flatnonzero(~pool.is_sketch)[0])
    ch = pool.characters[flat]
    other_hair = next(c for c in S.HAIR_COLORS if c != ch.hair_color)
    worn = set(ch.accessories)
    missing = next(a for a in S.ACCESSORIES if a not in worn)
    facts = [
        (("hair_color", ch.hair_color, True),),
        (("hair_color", other_hair, True),),
        (("accessories", missing, False),),
        (("accessories", missing, True),),
    ]
    caps = D.CaptionBatch(["x"] * len(facts), facts)
    pos, unknown = D.caption_targets(pool, np.array([flat]), caps, SCHEMA)
    assert not unknown.any()
    assert pos[0].tolist() == [True, False, True, False]


def test_sketch_captions_drawn_for_training_never_state_colours():
    pool = _tiny_pool()
    index = np.flatnonzero(pool.is_sketch)
    caps = D.sample_captions(pool, np.repeat(index, 20), np.random.default_rng(1))
    assert not any(attr in D.COLOUR_ATTRIBUTES for facts in caps.facts for attr, _, _ in facts)


def test_multi_positive_loss_prefers_the_right_pairs_and_ignores_masked_ones():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    pos = torch.eye(4, dtype=torch.bool)
    good = D.multi_positive_clip_loss(emb, emb, 20.0, pos)
    bad = D.multi_positive_clip_loss(emb, emb.roll(1, 0), 20.0, pos)
    assert good < bad

    def grad_01(positive, unknown=None):
        logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(1)).requires_grad_()
        loss = D.multi_positive_loss(logits, positive, unknown)
        assert torch.isfinite(loss)
        loss.backward()
        return float(logits.grad[0, 1])

    unknown = torch.zeros(4, 4, dtype=torch.bool)
    unknown[0, 1] = True
    pos2 = pos.clone()
    pos2[0, 1] = True
    assert grad_01(pos) > 0  # a negative pair is pushed apart
    assert grad_01(pos2) < 0  # a second positive is pulled together
    assert grad_01(pos, unknown) == 0.0  # an unknown pair is left alone


def test_uniform_colour_loss_is_zero_only_for_flat_scores():
    labels = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    orthogonal = torch.zeros(3, 8)
    orthogonal[:, 0] = 1.0
    labels_orth = labels.clone()
    labels_orth[:, 0] = 0.0
    labels_orth = torch.nn.functional.normalize(labels_orth, dim=-1)
    assert float(D.uniform_colour_loss(orthogonal, [labels_orth], 50.0)) == pytest.approx(0.0, abs=1e-5)
    peaked = labels[:3]
    assert float(D.uniform_colour_loss(peaked, [labels], 50.0)) > 1.0


def test_prompt_bank_reproduces_the_pipeline_label_embeddings():
    from charattr_hf.sources.clip.model import label_embeddings

    model = D.build_model(json.loads(json.dumps(_tiny_cfg())), seed=0).eval()
    tokenizer = D.CaptionTokenizer(32)
    bank = D.PromptBank(SCHEMA, D.COLOUR_ATTRIBUTES, tokenizer)
    with torch.no_grad():
        mine = bank.label_embeddings(D.encode_text_bucketed(model, torch.from_numpy(bank.tokens).long(), bucket=16))
        for attr in D.COLOUR_ATTRIBUTES:
            ref = label_embeddings(model, tokenizer.tokenizer, [lab.prompts for lab in SCHEMA[attr].labels], "cpu")
            torch.testing.assert_close(mine[attr], ref, atol=1e-5, rtol=1e-4)
    # multi-label attributes: labels, then their negatives, as ClipZeroShot stacks them
    full = D.PromptBank(SCHEMA, None, tokenizer)
    assert list(full.attributes) == SCHEMA.attribute_names
    with torch.no_grad():
        embs = full.label_embeddings(D.encode_text_bucketed(model, torch.from_numpy(full.tokens).long()))
        acc = SCHEMA["accessories"]
        prompts = [lab.prompts for lab in acc.labels] + [lab.negative_prompts for lab in acc.labels]
        torch.testing.assert_close(embs["accessories"], label_embeddings(model, tokenizer.tokenizer, prompts, "cpu"),
                                   atol=1e-5, rtol=1e-4)


def test_bucketed_text_encoding_equals_open_clip():
    model = D.build_model(_tiny_cfg(), seed=1).eval()
    tokenizer = D.CaptionTokenizer(32)
    texts = ["red hair", "an anime illustration of a girl with long blonde hair, wearing glasses", "sad", "a"]
    tokens = torch.from_numpy(tokenizer(texts * 3)).long()
    with torch.no_grad():
        torch.testing.assert_close(D.encode_text_bucketed(model, tokens, bucket=5),
                                   model.encode_text(tokens, normalize=True), atol=1e-5, rtol=1e-4)


def test_format_results_table():
    results = {"flat": {"hair_color": {"accuracy": 0.9, "confidence": 0.8, "chance": 0.1, "n": 10},
                        "accessories": {"labels": {"hat": {"f1": 0.5, "precision": 1, "recall": 0.33, "support": 3}},
                                        "macro_f1": 0.5, "exact": 0.4, "n": 10}}}
    table = D.format_results(results)
    assert "| flat | 0.900 (0.80) | 0.900 |" in table and "| flat | 0.500 | 0.500 | 0.400 |" in table
    assert D.single_label_mean(results["flat"]) == pytest.approx(0.9)


# ------------------------------------------------------------------------------------------ recipe
def _tiny_cfg() -> dict:
    return {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }


def _load_recipe():
    spec = importlib.util.spec_from_file_location("train_demo_clip_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # subprocess launches: in the fuller run (.ci/run), to keep the default run short
def test_recipe_trains_saves_and_evaluates_a_tiny_model(tmp_path):
    """End to end under ``accelerate launch`` (as documented), then again in-process: same seed, same bytes."""
    import open_clip
    from safetensors import safe_open

    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps(_tiny_cfg()))
    out = tmp_path / "model"
    args = ["--model_config", str(cfg_file), "--pool_size", "48", "--batch_size", "16", "--max_steps", "3",
            "--warmup_steps", "1", "--num_proc", "1", "--styles", "flat", "sketch", "--seed", "3", "--threads", "1"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", str(RECIPE)]
    proc = subprocess.run([*launch, *args, "--eval_samples", "8", "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=RECIPE.parents[1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| sketch |" in proc.stdout  # the accuracy table is printed

    assert (out / "charattr_schema.yaml").read_text() == (Path(S.__file__).parents[1] / "schemas" / "synthetic.yaml").read_text()
    with safe_open(str(out / "open_clip_model.safetensors"), "pt") as f:
        assert f.get_tensor("visual.conv1.weight").dtype == torch.float16
    model = open_clip.create_model(f"local-dir:{out}")
    assert model.visual.image_size == (32, 32)
    card = (out / "README.md").read_text()
    assert "not a model for real images" in card and "| sketch |" in card and "--max_steps 3" in card

    out2 = tmp_path / "model2"
    assert _load_recipe().main([*args, "--eval_samples", "0", "--output_dir", str(out2)]) == out2
    assert (out / "open_clip_model.safetensors").read_bytes() == (out2 / "open_clip_model.safetensors").read_bytes()


def test_lr_schedule_warms_up_then_decays_to_zero():
    recipe = _load_recipe()
    assert recipe.lr_factor(0.0, 0, 10) == pytest.approx(0.1)
    assert recipe.lr_factor(0.5, 50, 10) == pytest.approx(0.5)
    assert recipe.lr_factor(1.0, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert math.isclose(recipe.lr_factor(0.0, 10, 10), 1.0)
