"""Training the fusion policy on the simulated test bed: supervised, from feedback, continued from a saved
policy, and the recipe end to end. Assertions are on held-out data the policy never saw."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset

from charattr_hf import fusion_training as ft
from charattr_hf.models.fusion import CharattrFusionModel
from charattr_hf.schema import load_schema

torch.set_num_threads(1)

FAST = ft.FusionTrainingConfig(max_epochs=60, patience=8, seed=0)


def small_schema():
    return load_schema().restrict(
        {
            "hair_color": ["black", "blonde", "red", "blue", "green", "white"],
            "art_style": ["anime", "realistic", "sketch", "pixel_art"],
            "accessories": ["glasses", "hat", "scarf"],
        },
        name="small",
    )


@pytest.fixture(scope="module")
def bed():
    """Train and test sets drawn independently from the same simulated world."""
    schema = small_schema()
    train_ds = ft.simulate_annotated(schema, 1200, seed=11)
    test_ds = ft.simulate_annotated(schema, 800, seed=12)
    config = ft.build_config(schema, train_ds, hidden_size=32)
    train = ft.build_features(train_ds, config, group_column="style")
    test = ft.build_features(test_ds, config, group_column="style")
    baselines = ft.compare_methods(test_ds.to_dict(), test, config, baselines=("mean", "confidence"))
    return {"schema": schema, "train_ds": train_ds, "test_ds": test_ds, "config": config, "train": train,
            "test": test, "baselines": baselines}


@pytest.fixture(scope="module")
def supervised(bed):
    model = ft.build_model(bed["config"], seed=0)
    result = ft.train_supervised(model, bed["train"], args=FAST, data_name="sim")
    return model, result


def accuracy(model, bed) -> float:
    records = ft.compare_methods(
        bed["test_ds"].to_dict(), bed["test"], model.config, policies={"p": model},
        baselines=(), include_sources=False,
    )
    return ft.summarize(records, "p")


# ------------------------------------------------------------------------------------------ test bed
def test_simulator_is_deterministic_typed_and_style_dependent(bed):
    schema = bed["schema"]
    again = ft.simulate_annotated(schema, 50, seed=11)
    assert again[:] == bed["train_ds"][:50]  # row i depends on (seed, i) only
    assert again[:]["probs_clip"] != ft.simulate_annotated(schema, 50, seed=13)[:]["probs_clip"]
    assert again.features["truth"]["hair_color"].names == schema["hair_color"].label_names
    assert again.features["probs_tags"]["art_style"].length == 4
    # the point of the bed: who is reliable depends on the kind of image
    acc = {r["style"]: r["accuracy"] for r in bed["baselines"]
           if r["method"] == "clip" and r["attribute"] == "hair_color" and r["style"]}
    assert acc["realistic"] > 0.6 and acc["sketch"] < 0.35  # clip cannot see colours in sketches
    blip = ft.summarize(bed["baselines"], "blip2")
    assert blip < ft.summarize(bed["baselines"], "clip") - 0.2  # pure noise
    tags_missing = [cell["hair_color"] is None for cell, s in
                    zip(bed["train_ds"]["probs_tags"], bed["train_ds"]["style"]) if s == "realistic"]
    assert np.mean(tags_missing) > 0.8  # no tags on photos


# ------------------------------------------------------------------------------------------ supervised
def test_supervised_policy_beats_fixed_rules_on_held_out(bed, supervised):
    model, result = supervised
    assert result.best_epoch >= 1 and result.calibrated_val_loss is not None
    records = ft.compare_methods(bed["test_ds"].to_dict(), bed["test"], bed["config"],
                                 policies={"policy": model}, baselines=(), include_sources=False)
    policy = ft.summarize(records, "policy")
    mean = ft.summarize(bed["baselines"], "mean")
    best_fixed = max(ft.summarize(bed["baselines"], m) for m in ("mean", "confidence", "clip", "tags", "blip2"))
    assert policy >= mean + 0.15, (policy, mean)
    assert policy >= best_fixed + 0.10, (policy, best_fixed)  # the benchmark's target, on a small run
    ece = np.mean([r["ece"] for r in records if r["style"] is None])
    assert ece <= 0.06, ece
    assert model.config.training_info[-1]["kind"] == "supervised" and model.config.policy_version == "v1"


def test_policy_learns_which_source_to_trust_per_style(bed, supervised):
    model, _ = supervised
    test = bed["test"]
    with torch.no_grad():
        out = model(**test.tensors())
    gates = out.gate_weights.numpy()  # (N, A, S)
    a = model.config.attribute_index("hair_color")
    clip, tags, blip = (model.config.sources.index(s) for s in ("clip", "tags", "blip2"))
    mask = test.inputs["source_mask"]
    styles = np.asarray(test.groups)
    both = mask[:, clip, a] & mask[:, tags, a]

    def mean_gate(style, source):
        return gates[(styles == style) & both, a, source].mean()

    assert mean_gate("sketch", tags) > mean_gate("sketch", clip) + 0.3  # clip is blind to colour there
    assert mean_gate("pixel_art", clip) > mean_gate("pixel_art", tags)  # tags are wrong on pixel art
    assert gates[mask[:, blip, a], a, blip].mean() < 0.2  # the pure-noise source is (nearly) ignored


def test_supervised_training_is_deterministic(bed):
    args = ft.FusionTrainingConfig(max_epochs=3, seed=5)
    states = []
    for _ in range(2):
        model = ft.build_model(bed["config"], seed=5)
        ft.train_supervised(model, bed["train"].subset(np.arange(300)), args=args)
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_join_labels_matches_truth_column(bed):
    ds = bed["train_ds"].select(range(40))
    labels = Dataset.from_dict({"id": ds["id"][::-1], "truth": ds["truth"][::-1]},
                               features=ds.select_columns(["id", "truth"]).features)
    joined = ft.join_labels(ds.remove_columns("truth").select(range(40)), labels.select(range(30)))
    feats = ft.build_features(joined, bed["config"])
    ref = ft.build_features(ds, bed["config"])
    have = np.isin(np.asarray(ds["id"]), np.asarray(labels["id"][:30]))
    np.testing.assert_array_equal(feats.labels[have], ref.labels[have])
    assert (feats.labels[~have] == -1).all()
    per_column = Dataset.from_dict({"id": ds["id"], "hair_color": [t["hair_color"] for t in ds["truth"]]})
    joined2 = ft.join_labels(ds.remove_columns("truth"), per_column)
    np.testing.assert_array_equal(ft.build_features(joined2, bed["config"]).labels[:, 0], ref.labels[:, 0])



def test_open_annotated_reads_files_joins_labels_or_simulates(bed, tmp_path):
    ds = bed["train_ds"].select(range(30))
    ds.remove_columns("truth").to_parquet(str(tmp_path / "annotated.parquet"))
    ds.select_columns(["id", "truth"]).select(range(20)).to_parquet(str(tmp_path / "labels.parquet"))
    rows, name = ft.open_annotated(str(tmp_path / "annotated.parquet"), labels=str(tmp_path / "labels.parquet"))
    assert name == str(tmp_path / "annotated.parquet") and rows["id"] == ds["id"]
    assert rows["truth"][:20] == ds["truth"][:20] and rows["truth"][20:] == [None] * 10
    sim, name = ft.open_annotated(None, schema=bed["schema"], simulate_rows=25, seed=11)
    assert sim["id"] == bed["train_ds"]["id"][:25] and name == "simulated test bed (25 rows, seed 11)"


# ------------------------------------------------------------------------------------------ feedback
def test_simulated_feedback_log(bed):
    ds = bed["train_ds"].select(range(200))
    log = ft.simulate_feedback(ds, bed["config"], "confidence", epsilon=0.2, seed=3)
    assert log.features == ft.FEEDBACK_FEATURES
    again = ft.simulate_feedback(ds, bed["config"], "confidence", epsilon=0.2, seed=3)
    assert log["action"] == again["action"] and log["reward"] == again["reward"]
    ft.validate_feedback(log, bed["config"])
    truth = dict(zip(ds["id"], ds["truth"]))
    k = {a["name"]: len(a["labels"]) for a in bed["config"].attributes}
    for row in log.select(range(100)):
        t = truth[row["id"]][row["attribute"]]
        accepted = row["action"] in t if isinstance(t, list) else row["action"] == t
        assert row["reward"] == float(accepted)  # no reviewer noise
        assert 0.2 / k[row["attribute"]] - 1e-6 <= row["propensity"] <= 1.0  # epsilon-uniform floor
        assert row["policy_version"] == "simple-confidence"
    noisy = ft.simulate_feedback(ds, bed["config"], "confidence", epsilon=0.2, seed=3, noise_rate=0.3)
    flipped = np.mean(np.asarray(noisy["reward"]) != np.asarray(log["reward"]))
    assert 0.2 < flipped < 0.4


def test_a_log_written_by_another_program_in_the_documented_format_trains(bed, tmp_path):
    """A review app writes the five required columns of the feedback module's schema with plain pyarrow (its own
    integer and float widths, no datasets metadata); the recipe's loader reads it and training uses it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    simulated = ft.simulate_feedback(bed["train_ds"].select(range(300)), bed["config"], "confidence", seed=5)
    columns = simulated.select_columns(["id", "attribute", "action", "propensity", "reward"]).to_dict()
    table = pa.table({"id": columns["id"], "attribute": columns["attribute"],
                      "action": pa.array(columns["action"], pa.int64()),
                      "propensity": pa.array(columns["propensity"], pa.float64()),
                      "reward": pa.array(columns["reward"], pa.float64())})
    pq.write_table(table, tmp_path / "reviews.parquet")
    log = ft.load_table(str(tmp_path / "reviews.parquet"))
    ft.validate_feedback(log, bed["config"])
    model = ft.build_model(bed["config"], seed=0)
    args = ft.FusionTrainingConfig(max_epochs=2, patience=2, seed=0, calibrate=False)
    result = ft.train_from_feedback(model, bed["train"], log, args=args)
    assert result.epochs_run == 2 and model.config.training_info[-1]["events"] == len(table)


def test_validate_feedback_rejects_bad_logs(bed):
    base = {"id": ["a"], "attribute": ["hair_color"], "action": [1], "propensity": [0.5], "reward": [1.0]}
    ft.validate_feedback(Dataset.from_dict(base), bed["config"])
    for key, value, message in [("propensity", [0.0], "propensities"), ("reward", [2.0], "rewards"),
                                ("action", [6], "out of range")]:
        with pytest.raises(ValueError, match=message):
            ft.validate_feedback(Dataset.from_dict({**base, key: value}), bed["config"])
    with pytest.raises(ValueError, match="lacks columns"):
        ft.validate_feedback(Dataset.from_dict({"id": ["a"]}), bed["config"])


def test_feedback_training_improves_over_its_start(bed):
    log = ft.simulate_feedback(bed["train_ds"], bed["config"], "confidence", epsilon=0.1, seed=4)
    model = ft.build_model(bed["config"], seed=0)
    start = accuracy(model, bed)  # untrained: the geometric mean of the sources
    result = ft.train_from_feedback(model, bed["train"], log, args=FAST, data_name="sim")
    learned = accuracy(model, bed)
    mean = ft.summarize(bed["baselines"], "mean")
    assert learned >= start + 0.10, (start, learned)
    assert learned >= mean + 0.08, (mean, learned)
    info = model.config.training_info[-1]
    assert info["kind"] == "feedback" and info["events"] == len(log) and info["logged_by"] == ["simple-confidence"]
    assert result.calibrated_val_loss is not None


def test_snips_objective_runs_and_learns(bed):
    log = ft.simulate_feedback(bed["train_ds"].select(range(600)), bed["config"], "confidence", epsilon=0.2, seed=5)
    model = ft.build_model(bed["config"], seed=0)
    start = accuracy(model, bed)
    args = ft.FusionTrainingConfig(max_epochs=30, patience=5, objective="snips", seed=0)
    ft.train_from_feedback(model, bed["train"], log, args=args)
    assert accuracy(model, bed) > start + 0.03


def test_continue_from_saved_policy_gets_smarter(bed, tmp_path):
    config, train_ds, train = bed["config"], bed["train_ds"], bed["train"]
    first, later = np.arange(0, 150), np.arange(150, 1200)
    round1 = ft.simulate_feedback(train_ds.select(first), config, "confidence", epsilon=0.1, seed=6)
    v1 = ft.build_model(config, seed=0)
    ft.train_from_feedback(v1, train, round1, args=FAST)
    v1.save_pretrained(tmp_path / "v1")
    acc_v1 = accuracy(v1, bed)

    loaded = CharattrFusionModel.from_pretrained(tmp_path / "v1")
    assert accuracy(loaded, bed) == pytest.approx(acc_v1)  # exactly the saved policy
    assert loaded.config.policy_version == "v1"
    # round 2: the current policy shows the labels, reviewers answer, training continues from it
    round2 = ft.simulate_feedback(train_ds.select(later), loaded.config, loaded, epsilon=0.1, seed=7)
    assert set(round2["policy_version"]) == {"v1"}
    ft.train_from_feedback(loaded, train, round2, args=FAST)
    acc_v2 = accuracy(loaded, bed)
    assert acc_v2 >= acc_v1 + 0.03, (acc_v1, acc_v2)
    assert [r["policy_version"] for r in loaded.config.training_info] == ["v1", "v2"]
    assert loaded.config.training_info[1]["logged_by"] == ["v1"]
    # a fresh policy steps through its events in large batches; a continued round, usually small, in the smaller,
    # faster steps of the continued defaults, and keeps its earlier answers on the images without events
    first_round, second_round = loaded.config.training_info
    assert (first_round["events_per_step"], first_round["learning_rate"]) == (FAST.feedback_batch_size,
                                                                              FAST.learning_rate)
    assert first_round["anchored_images"] == 0 and first_round["anchor_weight"] == 0.0
    assert (second_round["events_per_step"], second_round["learning_rate"]) == (FAST.continued_batch_size,
                                                                                FAST.continued_learning_rate)
    assert second_round["anchored_images"] > 0 and second_round["anchor_weight"] == FAST.anchor_weight
    # context scaling comes from the first round and is kept when continuing
    assert torch.equal(loaded.quality_mean, CharattrFusionModel.from_pretrained(tmp_path / "v1").quality_mean)
    # the card says what held the earlier answers, from what each round recorded: nothing to keep on a fresh round
    # (though it was given images without events), the unlike-feedback anchor on the continued one, every
    # row alike with anchor_rows="all", nothing with the anchor off
    from charattr_hf.models.fusion.card import render_round_changes

    assert (first_round["continued"], second_round["continued"]) == (False, True)
    fresh, unlike = render_round_changes(first_round, 1), render_round_changes(second_round, 2)
    assert "a fresh policy, so there were no earlier answers to keep" in fresh and "no image without" not in fresh
    assert first_round["given_images"] > first_round["images"]  # it was given images without events
    assert f"kept on the {second_round['anchored_images']} images without events, each weighted by how unlike" in unlike
    for change, wording in (({"anchor_rows": "all"}, f"kept on the {second_round['anchored_images']} images without "
                             "events, all alike."),
                            ({"anchor_weight": 0.0}, "the anchor was off (`anchor_weight` 0)")):
        other = CharattrFusionModel.from_pretrained(tmp_path / "v1")
        ft.train_from_feedback(other, train, round2, args=dataclasses.replace(FAST, max_epochs=1, **change))
        info = other.config.training_info[-1]
        assert info["continued"] and info["anchor_rows"] == change.get("anchor_rows", "unlike_feedback")
        card = render_round_changes(info, 2)
        assert wording in card and "weighted by how unlike" not in card, card


# ------------------------------------------------------------------------------------------ recipe
def test_recipe_config_file_and_continuation(tmp_path):
    import importlib.util

    path = Path(__file__).parents[1] / "recipes" / "train_fusion.py"
    spec = importlib.util.spec_from_file_location("train_fusion", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    schema_path = tmp_path / "schema.yaml"
    small_schema().save(schema_path)
    cfg = tmp_path / "fusion.yaml"
    cfg.write_text(yaml.safe_dump({"simulate": True, "simulate_rows": 400, "schema": str(schema_path),
                                   "hidden_size": 16, "max_epochs": 50, "patience": 3, "output_dir": "unused"}))
    out = recipe.main(["--config", str(cfg), "--output_dir", str(tmp_path / "v1"), "--max_epochs", "4"])
    model = CharattrFusionModel.from_pretrained(out)
    assert model.config.hidden_size == 16  # from the YAML file
    assert model.config.training_info[0]["epochs"] <= 4  # the flag overrides the file
    card = (out / "README.md").read_text()
    assert "| hair_color |" in card and "policy acc %" in card  # measured table on the card
    out2 = recipe.main(["--config", str(cfg), "--mode", "feedback", "--init_from", str(out),
                        "--output_dir", str(tmp_path / "v2"), "--max_epochs", "3"])
    v2 = CharattrFusionModel.from_pretrained(out2)
    assert [r["kind"] for r in v2.config.training_info] == ["supervised", "feedback"]
    assert v2.config.training_info[1]["logged_by"] == ["v1"]
    # the new policy's card states before/after per style on the data it was given (the test bed has styles and
    # labels, so its label accuracy too)
    card2 = (out2 / "README.md").read_text()
    assert "Before -> after of round 2" in card2 and "| **all** |" in card2
    for style in ft.SIM_STYLES:
        assert f"| {style} |" in card2
    assert "| accuracy before % |" in card2
    with pytest.raises(SystemExit):
        recipe.main(["--config", str(cfg), "--mode", "bandit"])


def test_recipe_mistakes_are_one_line_each(tmp_path):
    """What does not fit together (a policy and a schema, a log and a dataset, an option out of range) is a
    UserError (one line, exit status 2 under the recipe's runner), named, not a traceback from deep inside."""
    import importlib.util

    from charattr_hf.errors import UserError

    spec = importlib.util.spec_from_file_location("train_fusion_mistakes", Path(__file__).parents[1] / "recipes"
                                                  / "train_fusion.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    schema_path = tmp_path / "schema.yaml"
    small_schema().save(schema_path)
    base = ["--simulate", "--simulate_rows", "200", "--schema", str(schema_path), "--hidden_size", "8",
            "--max_epochs", "2"]
    v1 = recipe.main([*base, "--output_dir", str(tmp_path / "v1")])
    with pytest.raises(UserError, match="--init_from .* and --schema default: attribute 'hair_color'"):
        recipe.main(["--simulate", "--schema", "default", "--mode", "feedback", "--init_from", str(v1),
                     "--output_dir", str(tmp_path / "x")])
    with pytest.raises(UserError, match="training options: continued_batch_size|batch sizes must be >= 1"):
        recipe.main([*base, "--continued_batch_size", "0", "--output_dir", str(tmp_path / "x")])
    with pytest.raises(UserError):
        recipe.main([*base, "--mode", "feedback", "--feedback", str(tmp_path / "missing.parquet"),
                     "--output_dir", str(tmp_path / "x")])
    events = {"id": ["nope-1", "nope-2"], "attribute": ["hair_color", "hair_color"], "action": [0, 1],
              "propensity": [0.5, 0.5], "reward": [1.0, 0.0]}
    Dataset.from_dict(events).to_parquet(str(tmp_path / "other.parquet"))
    with pytest.raises(UserError, match="no usable feedback event"):
        recipe.main([*base, "--mode", "feedback", "--feedback", str(tmp_path / "other.parquet"), "--init_from",
                     str(v1), "--output_dir", str(tmp_path / "x")])
    Dataset.from_dict({**events, "action": [0, 99]}).to_parquet(str(tmp_path / "range.parquet"))
    with pytest.raises(UserError, match=r"action 99 out of range for attribute 'hair_color'"):
        recipe.main([*base, "--mode", "feedback", "--feedback", str(tmp_path / "range.parquet"), "--init_from",
                     str(v1), "--output_dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
