"""Continued training from reviewer feedback on a new kind of image: it learns the new style without
forgetting the others (the anchor term keeps the earlier answers on images without feedback)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charattr_hf import fusion_training as ft

NEW = "pixel_art"


@pytest.fixture(scope="module")
def adapted():
    torch.set_num_threads(1)
    data = ft.simulate_annotated("default", 1600, seed=2)
    config = ft.build_config("default", data)
    train_idx, test_idx = ft.split_by_id(data["id"], 0.4, 0, salt="test")
    train_ds, test_ds = data.select(train_idx), data.select(test_idx)
    styles = np.asarray(train_ds["style"])
    old = ft.build_features(train_ds.select(np.flatnonzero(styles != NEW)), config)
    pool = ft.build_features(train_ds, config, label_column=None, group_column="style")  # every image, no labels
    test = ft.build_features(test_ds, config, group_column="style")
    # fresh images: another seed of the same simulated world, never seen by any policy
    fresh = ft.build_features(ft.simulate_annotated("default", 800, seed=9), config, group_column="style")
    before = ft.build_model(config, seed=0)
    ft.train_supervised(before, old, args=ft.FusionTrainingConfig(seed=0, max_epochs=60))
    # the deployed policy shows labels on new-style images only; a simulated reviewer accepts or rejects
    log = ft.simulate_feedback(train_ds.select(np.flatnonzero(styles == NEW)), config, before, epsilon=0.2, seed=0)
    log = log.select(range(min(1000, len(log))))

    def accuracy(model, data=test):
        probs, avail = ft.predict(model, data)
        records = ft.score(probs, avail, data.labels, config, "m", data.groups)
        return {s: ft.summarize(records, "m", s) for s in sorted(set(data.groups))}

    results = {"before": accuracy(before), "fresh": {"before": accuracy(before, fresh)}}
    default_weight = ft.FusionTrainingConfig().anchor_weight  # the library's continued-training defaults
    for name, weight, rows in (("anchored", default_weight, "unlike_feedback"), ("anchored-all", default_weight, "all"),
                               ("plain", 0.0, "all")):
        model = ft.build_model(config, seed=0)
        model.load_state_dict(before.state_dict())
        model.config.training_info = list(before.config.training_info)  # a policy trained before: continued
        ft.train_from_feedback(model, pool, log, args=ft.FusionTrainingConfig(seed=0, max_epochs=60,
                                                                              anchor_weight=weight, anchor_rows=rows))
        results[name] = accuracy(model)
        results["fresh"][name] = accuracy(model, fresh)
        results.setdefault("rounds", {})[name] = model.config.training_info[-1]
    return results


def test_feedback_on_a_new_style_improves_it(adapted):
    assert adapted["anchored"][NEW] >= adapted["before"][NEW] + 0.05, adapted


def test_the_old_styles_are_kept(adapted):
    others = [s for s in adapted["before"] if s != NEW]
    loss = {s: adapted["before"][s] - adapted["anchored"][s] for s in others}
    assert max(loss.values()) <= 0.03, loss
    # without the anchor, the same events pull the policy away from what it knew
    plain_loss = {s: adapted["before"][s] - adapted["plain"][s] for s in others}
    assert max(plain_loss.values()) > max(loss.values()) + 0.05, (loss, plain_loss)


def test_the_old_styles_are_kept_on_fresh_images(adapted):
    """The same policies on images of another seed: the new style is learnt there too, the others are kept, and
    without the anchor they are not."""
    fresh = adapted["fresh"]
    others = [s for s in fresh["before"] if s != NEW]
    assert fresh["anchored"][NEW] >= fresh["before"][NEW] + 0.05, fresh
    loss = max(fresh["before"][s] - fresh["anchored"][s] for s in others)
    plain = max(fresh["before"][s] - fresh["plain"][s] for s in others)
    assert loss <= 0.03 and plain > loss + 0.05, (loss, plain)


def test_the_round_states_before_and_after_per_style(adapted):
    """The round recorded in the policy's config (and rendered on its card) says, per style of the images it was
    given, how many events there were, how many answers changed and the accuracy estimated from held-out events:
    the reviewed style moved, the others hardly did."""
    from charattr_hf.models.fusion.card import render_round_changes

    info = adapted["rounds"]["anchored"]
    rows = {r["group"]: r for r in info["before_after"]}
    assert set(rows) == {"anime", "realistic", "sketch", NEW, "all"} and info["anchored_images"] > 0
    assert rows["all"]["images"] == info["given_images"] == sum(rows[s]["images"] for s in rows if s != "all")
    assert rows[NEW]["events"] == info["events"] and rows["anime"]["events"] == 0
    assert rows[NEW]["estimated_after"] > rows[NEW]["estimated_before"] + 0.05, rows[NEW]
    assert rows[NEW]["held_out_events"] > 0 and rows["anime"]["estimated_before"] is None
    assert rows[NEW]["accuracy_before"] is None  # the pool has no labels
    moved = max(rows[s]["changed"] for s in ("anime", "realistic", "sketch"))
    assert rows[NEW]["changed"] > 0.1 and moved < rows[NEW]["changed"] / 2, rows
    plain = {r["group"]: r for r in adapted["rounds"]["plain"]["before_after"]}
    assert max(plain[s]["changed"] for s in ("anime", "realistic", "sketch")) > moved  # it moves what it forgets
    card = render_round_changes(info, 2)
    assert f"| {NEW} | {rows[NEW]['images']} | {info['events']} |" in card
    assert "est. accuracy before" in card and "| accuracy before" not in card  # no labels: no label columns
    assert "kept on the" in card


def test_anchor_unlike_feedback_learns_the_new_style_faster(adapted):
    """Anchoring only the images unlike those with feedback (the default) leaves the unreviewed images of the
    new style free to follow the events: more is learnt there than when every image is anchored alike, and the
    old styles are kept as well."""
    assert adapted["anchored"][NEW] >= adapted["anchored-all"][NEW] + 0.01, adapted
    others = [s for s in adapted["before"] if s != NEW]
    assert max(adapted["before"][s] - adapted["anchored-all"][s] for s in others) <= 0.03, adapted


def test_anchor_lets_go_of_images_like_those_with_feedback():
    """The anchor's per-image weights: low for unseen images of the style the reviewers worked on, high for the
    rest (told apart from the context alone, no labels)."""
    data = ft.simulate_annotated("default", 900, seed=5)
    config = ft.build_config("default", data)
    feats = ft.build_features(data, config, label_column=None, group_column="style")
    styles = np.asarray(feats.groups)
    new = np.flatnonzero(styles == NEW)
    with_feedback, new_without = new[: len(new) // 3], new[len(new) // 3:]
    anchor_rows = np.setdiff1d(np.arange(len(feats)), with_feedback)
    weights = ft.unlike_feedback_weights(feats.subset(with_feedback), feats.subset(anchor_rows))
    assert weights.shape == (len(anchor_rows),) and np.all((weights >= 0) & (weights <= 1))
    is_new = np.isin(anchor_rows, new_without)
    # (the simulated styles overlap in context: the new style is only partly told apart)
    assert weights[~is_new].mean() > 0.9, weights[~is_new].mean()
    assert weights[is_new].mean() < weights[~is_new].mean() - 0.3, (weights[is_new].mean(), weights[~is_new].mean())
