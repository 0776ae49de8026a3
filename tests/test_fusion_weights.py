"""The confidence rule with per-source, per-attribute weights fitted on labelled rows."""

from __future__ import annotations

import numpy as np
import pytest

from charattr_hf import fusion_training as ft
from charattr_hf.stages.fusion import SimpleFusion, _confidence_rule, fit_source_weights


@pytest.fixture(scope="module")
def bed():
    data = ft.simulate_annotated("default", 1500, seed=3)
    config = ft.build_config("default", data)
    train_idx, test_idx = ft.split_by_id(data["id"], 0.4, seed=0, salt="test")
    train_ds, test_ds = data.select(train_idx), data.select(test_idx)
    return config, train_ds, test_ds, ft.build_features(train_ds, config), ft.build_features(test_ds, config)


def test_vectorised_rule_matches_stage(bed):
    config, _, test_ds, _, test = bed
    weights = {s: {a: 0.3 + i + 0.5 * j for j, a in enumerate(config.attribute_names)}
               for i, s in enumerate(config.sources)}
    stage = SimpleFusion(config.to_schema(), config.sources, "confidence", source_weights=weights)
    fused_stage = stage.fuse(test_ds.to_dict())
    for a, attr in enumerate(config.attributes):
        k = len(attr["labels"])
        prior = stage.weights_for(attr["name"])
        fused, ok = _confidence_rule(test.inputs["source_probs"][:, :, a, :k].astype(np.float64),
                                     test.inputs["source_mask"][:, :, a], prior, attr["multi_label"])
        for r, vec in enumerate(fused_stage[attr["name"]]):
            assert (vec is not None) == bool(ok[r])
            if vec is not None:
                np.testing.assert_allclose(vec, fused[r], rtol=1e-5, atol=1e-7)


def test_fitted_weights_beat_the_unweighted_rule_on_held_out_rows(bed):
    config, _, test_ds, train, test = bed
    fitted = fit_source_weights(train.inputs["source_probs"], train.inputs["source_mask"], train.labels,
                                config.attributes, config.sources)
    assert set(fitted) == set(config.sources)
    assert any(w != 1.0 for per_attr in fitted.values() for w in per_attr.values())
    columns = test_ds.to_dict()
    plain = SimpleFusion(config.to_schema(), config.sources, "confidence")
    weighted = SimpleFusion(config.to_schema(), config.sources, "confidence", source_weights=fitted)
    acc = {}
    for name, stage in (("plain", plain), ("fitted", weighted)):
        records = ft.score(*ft.method_probs(stage, columns, config), test.labels, config, name)
        acc[name] = np.mean([r["accuracy"] for r in records])
    assert acc["fitted"] > acc["plain"] + 0.01, acc


def test_fit_is_deterministic_and_keeps_one_source(bed):
    config, _, _, train, _ = bed
    args = (train.inputs["source_probs"], train.inputs["source_mask"], train.labels, config.attributes, config.sources)
    first, second = fit_source_weights(*args), fit_source_weights(*args)
    assert first == second
    for attr in config.attribute_names:
        assert any(first[s][attr] > 0 for s in config.sources)



def test_fusion_training_takes_every_probs_column_a_users_own_included():
    data = ft.simulate_annotated("default", 40, seed=1, sources=("clip", "tags"))
    own = data["probs_tags"]
    data = data.add_column("probs_mine", own, feature=data.features["probs_tags"])
    config = ft.build_config("default", data)
    assert list(config.sources) == ["clip", "tags", "mine"]
    features = ft.build_features(data, config)
    assert features.inputs["source_mask"][:, 2].any()
