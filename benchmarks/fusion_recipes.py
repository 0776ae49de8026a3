"""Training recipes of the supervised policy on the fusion benchmark's split (``benchmarks/fusion.py``: same
images, same split, same sources), and its spread over training seeds.

    python benchmarks/fusion_recipes.py --dataset runs/fusion-bench3/annotated \\
        --json benchmarks/results/fusion_recipes.json

Recipes are compared on a validation split of the *train* images (salt ``recipe``, 25 %): a recipe is chosen
there, never on the test images. Every recipe's test accuracy (trained on all train images, as ``fusion.py``
does) is printed as well, so that nothing is hidden, together with the fitted-weight confidence rule's (the
strongest deployable baseline). Then ``--seed_recipe`` (default: the default recipe) is trained with ``--seeds`` seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RECIPES = {  # name: (config changes, training changes)
    "default": ({}, {}),
    "embedding": ({"use_embedding": True}, {}),
    "patience40": ({}, {"patience": 40}),
    "lr1e-3-patience40": ({}, {"learning_rate": 1e-3, "patience": 40}),
    "hidden128": ({"hidden_size": 128}, {}),
    "dropout0": ({"hidden_dropout_prob": 0.0}, {}),
    "batch64": ({}, {"batch_size": 64}),
}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--schema", default="charattr_hf/assets/demo-clip/charattr_schema.yaml")
    p.add_argument("--sources", default="clip,tagger,tags")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed_recipe", default="default", help="the recipe trained with each seed")
    p.add_argument("--json")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    import numpy as np
    import torch

    from charattr_hf import fusion_training as ft
    from charattr_hf.stages.fusion import SimpleFusion, fit_source_weights

    torch.set_num_threads(1)
    data = ft.load_table(args.dataset)
    tr, te = ft.split_by_id(data["id"], 0.4, 0, salt="test")  # fusion.py's split (seed 0)
    train_ds, test_ds = data.select(tr), data.select(te)
    fit_i, val_i = ft.split_by_id(train_ds["id"], 0.25, 0, salt="recipe")
    sources = args.sources.split(",")
    command = "python benchmarks/fusion_recipes.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    out: dict = {"command": command, "recipes": [], "seeds": []}

    def build(changes):
        changes = dict(changes)
        use_emb = changes.pop("use_embedding", False)
        config = ft.build_config(args.schema, train_ds, sources=sources, use_embedding=use_emb, **changes)
        return (config, ft.build_features(train_ds, config, group_column="style"),
                ft.build_features(test_ds, config, group_column="style"))

    def evaluate(model, config, rows) -> tuple[float, float]:
        probs, avail = ft.predict(model, rows)
        records = ft.score(probs, avail, rows.labels, config, "m", rows.groups)
        return 100 * ft.summarize(records, "m"), 100 * ft.summarize(records, "m", "lit")

    config, full, test = build({})
    fit_args = (full.inputs["source_probs"], full.inputs["source_mask"], full.labels, config.attributes,
                config.sources)
    rule = SimpleFusion(config.to_schema(), config.sources, "confidence",
                        source_weights=fit_source_weights(*fit_args, objective="accuracy"))
    records = ft.score(*ft.method_probs(rule, test_ds.to_dict(), config), test.labels, config, "fitted", test.groups)
    out["fitted"] = 100 * ft.summarize(records, "fitted")
    print(f"fitted-weight confidence rule on the test images: {out['fitted']:.3f} %", flush=True)
    for name in args.recipes.split(","):
        model_changes, train_changes = RECIPES[name]
        config, full, test = build(model_changes)
        targs = dataclasses.replace(ft.FusionTrainingConfig(seed=0, max_epochs=200), **train_changes)
        row = {"recipe": name}
        for part, train, rows in (("val", full.subset(fit_i), full.subset(val_i)), ("test", full, test)):
            t = time.perf_counter()
            model = ft.build_model(config, seed=0)
            ft.train_supervised(model, train, args=targs)
            row[part], row[f"{part}_lit"] = evaluate(model, config, rows)
            row[f"{part}_seconds"] = round(time.perf_counter() - t, 1)
        row["test_minus_fitted"] = row["test"] - out["fitted"]
        out["recipes"].append(row)
        print(json.dumps(row), flush=True)
    out["chosen_on_validation"] = max(out["recipes"], key=lambda r: r["val"])["recipe"]
    model_changes, train_changes = RECIPES[args.seed_recipe]
    config, full, test = build(model_changes)
    out["seed_recipe"] = args.seed_recipe
    for seed in range(args.seeds):
        model = ft.build_model(config, seed=seed)
        targs = dataclasses.replace(ft.FusionTrainingConfig(seed=seed, max_epochs=200), **train_changes)
        ft.train_supervised(model, full, args=targs)
        acc, lit = evaluate(model, config, test)
        out["seeds"].append({"seed": seed, "test": acc, "test_lit": lit, "test_minus_fitted": acc - out["fitted"]})
        print(json.dumps(out["seeds"][-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
