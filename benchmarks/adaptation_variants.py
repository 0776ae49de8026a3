"""Variants of the continued training of ``benchmarks/adaptation.py`` at 1000 events, on its split and its
``before`` policy (same seed), and what full labels on the same images would give (a bound, not feedback).

    python benchmarks/adaptation_variants.py --annotated runs/fusion-bench3/annotated \\
        --variants default,all,bound,lr1e-2,lr3e-2 --json benchmarks/results/adaptation/variants.json

Each variant continues ``before`` from the first 1000 simulated reviewer events on the ``lit`` train images
(epsilon ``--epsilon``), except:

- ``bound*``: every label of the same images given as accepted events (propensity 1; for a multi-label
  attribute one event per label): the most the reviewed images could teach, *labels*, so not a feedback result;
- ``spread*``: 1000 events drawn at random, independently of their verdicts, from events on every ``lit``
  train image (a review app that shows each image's attributes a few at a time): more images, fewer events each.

Prints one JSON line per variant: accuracy (mean over attributes, % of test images) per style, the largest
loss on another style, and the continued training's best validation objective (held-out events + anchor,
label-free: what a user can select a learning rate on).
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

VARIANTS = {  # name: (FusionTrainingConfig changes, events)
    "default": ({}, "first"),
    "all": ({"anchor_rows": "all"}, "first"),
    "bound": ({}, "bound"),
    "weighting-none": ({"weighting": "none"}, "first"),
    "lr1e-2": ({"learning_rate": 1e-2}, "first"),
    "lr3e-2": ({"learning_rate": 3e-2}, "first"),
    "lr1e-2-all": ({"learning_rate": 1e-2, "anchor_rows": "all"}, "first"),
    "lr1e-2-patience30": ({"learning_rate": 1e-2, "patience": 30}, "first"),
    "lr1e-2-bound": ({"learning_rate": 1e-2}, "bound"),
    "lr3e-2-bound": ({"learning_rate": 3e-2}, "bound"),
    "spread": ({}, "spread"),
    "spread-lr1e-2": ({"learning_rate": 1e-2}, "spread"),
    "spread-lr3e-2": ({"learning_rate": 3e-2}, "spread"),
    "lr3e-2-weighting-none": ({"learning_rate": 3e-2, "weighting": "none"}, "first"),
    "spread-lr3e-2-weighting-none": ({"learning_rate": 3e-2, "weighting": "none"}, "spread"),
    "spread-lr3e-2-anchor2": ({"learning_rate": 3e-2, "anchor_weight": 2.0}, "spread"),
    "lr3e-2-anchor0.5": ({"learning_rate": 3e-2, "anchor_weight": 0.5}, "first"),
}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--annotated", required=True, help="annotated output with truth and style columns")
    p.add_argument("--schema", default="charattr_hf/assets/demo-clip/charattr_schema.yaml")
    p.add_argument("--sources", default="clip,tagger,tags")
    p.add_argument("--variants", default="default,all,bound,lr1e-2,lr3e-2")
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--epsilon", type=float, default=0.2)
    p.add_argument("--no_embedding", action="store_true", help="no image embedding in the policy's context")
    p.add_argument("--json", help="write the results here (JSON lines)")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse(argv)
    import numpy as np
    import torch
    from datasets import Dataset

    from charattr_hf import fusion_training as ft
    from charattr_hf.models.fusion import CharattrFusionModel

    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    data = ft.load_table(args.annotated)
    tr_i, te_i = ft.split_by_id(data["id"], 0.4, 0, salt="test")  # adaptation.py's split
    train_ds, test_ds = data.select(tr_i), data.select(te_i)
    styles = np.asarray(train_ds["style"])
    old_ds = train_ds.select(np.flatnonzero(styles != "lit"))
    new_ds = train_ds.select(np.flatnonzero(styles == "lit"))
    config = ft.build_config(args.schema, train_ds, sources=args.sources.split(","),
                             use_embedding=not args.no_embedding)
    old = ft.build_features(old_ds, config, group_column="style")
    pool = ft.build_features(train_ds, config, label_column=None, group_column="style")
    test = ft.build_features(test_ds, config, group_column="style")
    base = ft.FusionTrainingConfig(seed=0, max_epochs=200)
    before = ft.build_model(config, seed=0)
    ft.train_supervised(before, old, args=base)
    state, rounds = before.state_dict(), list(before.config.training_info)

    def accuracy(model) -> dict:
        probs, avail = ft.predict(model, test)
        records = ft.score(probs, avail, test.labels, config, "m", test.groups)
        return {s: round(100 * ft.summarize(records, "m", s), 2) for s in sorted(set(test.groups))}

    full_log = ft.simulate_feedback(new_ds, config, before, epsilon=args.epsilon, seed=0, policy_version="before")
    truth = dict(zip(new_ds["id"], new_ds["truth"]))

    def events(kind: str) -> Dataset:
        first = full_log.select(range(min(args.events, len(full_log))))
        if kind == "first":
            return first
        if kind == "spread":
            return full_log.shuffle(seed=0).select(range(min(args.events, len(full_log))))
        out = {k: [] for k in ("id", "attribute", "action", "propensity", "reward")}  # bound: labels
        for i in sorted(set(first["id"])):
            for a in config.attributes:
                value = truth[i].get(a["name"])
                if value is None:
                    continue
                shown = range(len(a["labels"])) if a["multi_label"] else [int(value)]
                for k in shown:
                    present = k in set(value) if a["multi_label"] else True
                    for col, v in zip(out, (i, a["name"], k, 1.0, float(present))):
                        out[col].append(v)
        return Dataset.from_dict(out)

    acc0 = accuracy(before)
    command = "python benchmarks/adaptation_variants.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = [{"variant": "before", "lit": acc0["lit"], "by_style": acc0, "command": command}]
    print(json.dumps(results[0]), flush=True)
    for name in args.variants.split(","):
        changes, kind = VARIANTS[name]
        ev = events(kind)
        model = ft.build_model(config, seed=0)
        model.load_state_dict(state)
        model.config.training_info = list(rounds)  # continued training of `before`
        t = time.perf_counter()
        res = ft.train_from_feedback(model, pool, ev, args=dataclasses.replace(base, **changes))
        acc = accuracy(model)
        row = {"variant": name, "events": len(ev), "images": len(set(ev["id"])), "lit": acc["lit"],
               "max_other_loss": round(max(acc0[s] - acc[s] for s in acc if s != "lit"), 2),
               "val_objective": round(res.best_val_loss, 4), "best_epoch": res.best_epoch,
               "seconds": round(time.perf_counter() - t), "by_style": acc}
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    return results


if __name__ == "__main__":
    main()
