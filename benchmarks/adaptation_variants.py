"""Variants of the continued training of ``benchmarks/adaptation.py`` at 1000 events, over several training seeds,
each chosen or rejected on a labelled development split of the train images, and measured on the test split and
on the fresh images.

    python benchmarks/adaptation.py --output_dir runs/adaptation          # annotates both image sets once
    python benchmarks/adaptation_variants.py --output_dir runs/adaptation \\
        --variants previous,default,anchor3 --json benchmarks/results/adaptation/variants_fresh.json

Per training seed, the images of ``adaptation.py`` (``DIR/annotated``) are split as there into train and test
(40 %, by id), and the train images again into a *development* split (25 %, by id, salt ``dev``) and the rest. The
rest is what the policies and the reviewers see (``before`` is trained with labels on its five default styles;
the events are on its ``lit`` images; continued training is given all of it); the development images are seen by
nobody and carry labels: the default is chosen on them, by a rule fixed before any variant ran: *among the
variants whose every other style loses at most 1.0 point on the development images (mean over seeds) and at most
1.5 points in the worst seed, the one with the highest mean lit accuracy there*. The test split and the fresh
images (``DIR/fresh``) are reported for every variant, never used to choose.

Each variant continues ``before`` from the first 1000 simulated reviewer events on the ``lit`` images (epsilon
``--epsilon``), with the library's defaults changed as its entry in :data:`VARIANTS` says, except ``bound``: every
label of the same images given as accepted events (propensity 1; for a multi-label attribute one event per label):
the most the reviewed images could teach, *labels*, so not a feedback result.

Prints one JSON line per seed and variant and a summary table; ``--json`` keeps the lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: name: (FusionTrainingConfig changes against the library's defaults, events)
VARIANTS: dict[str, tuple[dict, str]] = {
    "default": ({}, "first"),
    "previous": ({"continued_batch_size": 1024, "continued_learning_rate": 3e-3, "anchor_weight": 1.0}, "first"),
    "plain": ({"continued_batch_size": 1024, "continued_learning_rate": 3e-3, "anchor_weight": 0.0}, "first"),
    "anchor3": ({"continued_batch_size": 1024, "continued_learning_rate": 3e-3, "anchor_weight": 3.0}, "first"),
    "batch128": ({"continued_batch_size": 128, "continued_learning_rate": 3e-3, "anchor_weight": 1.0}, "first"),
    "batch64": ({"continued_batch_size": 64, "continued_learning_rate": 3e-3, "anchor_weight": 1.0}, "first"),
    "batch128-anchor3": ({"continued_batch_size": 128, "continued_learning_rate": 3e-3, "anchor_weight": 3.0},
                         "first"),
    "batch128-lr1e-2": ({"continued_batch_size": 128, "continued_learning_rate": 1e-2, "anchor_weight": 1.0},
                        "first"),
    "batch128-lr1e-2-anchor1.5": ({"continued_batch_size": 128, "continued_learning_rate": 1e-2,
                                   "anchor_weight": 1.5}, "first"),
    "batch128-lr1e-2-anchor2": ({"continued_batch_size": 128, "continued_learning_rate": 1e-2, "anchor_weight": 2.0},
                                "first"),
    "batch128-lr1e-2-anchor1.5-all": ({"continued_batch_size": 128, "continued_learning_rate": 1e-2,
                                       "anchor_weight": 1.5, "anchor_rows": "all"}, "first"),
    "bound": ({"continued_batch_size": 128, "continued_learning_rate": 3e-3, "anchor_weight": 1.0}, "bound"),
}
#: The selection rule on the development split (fixed before any variant ran; the targets on the fresh images).
MAX_MEAN_LOSS, MAX_WORST_LOSS = 0.010, 0.015


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="runs/adaptation", help="adaptation.py's output (annotated, fresh)")
    p.add_argument("--annotated", help="annotated images with truth and style (default: DIR/annotated)")
    p.add_argument("--fresh", help="annotated fresh images with truth and style (default: DIR/fresh)")
    p.add_argument("--schema", default="charattr_hf/assets/demo-clip/charattr_schema.yaml")
    p.add_argument("--sources", default="clip,tagger,tags")
    p.add_argument("--variants", default="default,bound")
    p.add_argument("--train_seeds", default="0,1,2")
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--epsilon", type=float, default=0.2)
    p.add_argument("--dev_fraction", type=float, default=0.25)
    p.add_argument("--json", help="write the per-seed results here (JSON lines)")
    return p.parse_args(argv)


def summary(rows: list[dict], name: str, where: str) -> dict:
    from adaptation import over_seeds

    runs = [{where: {"before": r["before"][where], name: r[where]}} for r in rows]
    return over_seeds(runs, name, where, "lit")


def main(argv=None) -> list[dict]:
    args = parse(argv)
    import numpy as np
    import torch

    from charattr_hf import fusion_training as ft
    from adaptation import accuracy_by_style, bound_events

    names = args.variants.split(",")
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    out = Path(args.output_dir)
    annotated, fresh_dir = Path(args.annotated or out / "annotated"), Path(args.fresh or out / "fresh")
    for path in (annotated, fresh_dir):
        if not path.exists():
            sys.exit(f"{path} does not exist: run benchmarks/adaptation.py --output_dir {out} first")
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    data = ft.load_table(str(annotated))
    config = ft.build_config(args.schema, data, sources=args.sources.split(","), use_embedding=False)
    sets = {"fresh": ft.build_features(ft.load_table(str(fresh_dir)), config, group_column="style")}
    command = "python benchmarks/adaptation_variants.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    results: list[dict] = []
    for seed in [int(s) for s in args.train_seeds.split(",")]:
        tr_i, te_i = ft.split_by_id(data["id"], 0.4, seed, salt="test")  # adaptation.py's split
        train_ds, test_ds = data.select(tr_i), data.select(te_i)
        fit_i, dev_i = ft.split_by_id(train_ds["id"], args.dev_fraction, seed, salt="dev")
        fit_ds, dev_ds = train_ds.select(fit_i), train_ds.select(dev_i)
        styles = np.asarray(fit_ds["style"])
        new_ds = fit_ds.select(np.flatnonzero(styles == "lit"))
        old = ft.build_features(fit_ds.select(np.flatnonzero(styles != "lit")), config)
        pool = ft.build_features(fit_ds, config, label_column=None, group_column="style")
        sets["dev"] = ft.build_features(dev_ds, config, group_column="style")
        sets["test"] = ft.build_features(test_ds, config, group_column="style")
        base = ft.FusionTrainingConfig(seed=seed, max_epochs=200)
        before = ft.build_model(config, seed=seed)
        ft.train_supervised(before, old, args=base)
        state, rounds = before.state_dict(), list(before.config.training_info)
        acc0 = {where: accuracy_by_style(before, d, config) for where, d in sets.items()}
        log = ft.simulate_feedback(new_ds, config, before, epsilon=args.epsilon, seed=seed, policy_version="before")
        first = log.select(range(min(args.events, len(log))))
        for name in names:
            changes, kind = VARIANTS[name]
            events = first if kind == "first" else bound_events(first, new_ds, config)
            model = ft.build_model(config, seed=seed)
            model.load_state_dict(state)
            model.config.training_info = list(rounds)  # continued training of `before`
            t = time.perf_counter()
            res = ft.train_from_feedback(model, pool, events, args=dataclasses.replace(base, **changes))
            row = {"variant": name, "seed": seed, "events": len(events), "images": len(set(events["id"])),
                   "changes": changes, "best_epoch": res.best_epoch, "val_objective": res.best_val_loss,
                   "seconds": round(time.perf_counter() - t), "before": acc0,
                   **{where: accuracy_by_style(model, d, config) for where, d in sets.items()}, "command": command}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("before", "command")}, default=float),
                  flush=True)
        if args.json:  # after every seed: a long run that stops keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "w") as f:
                f.writelines(json.dumps(r, default=float) + "\n" for r in results)

    print("\n| variant | set | lit (worst seed) | gain | largest loss on another style, mean over seeds | worst seed |")
    print("|---|---|---:|---:|---:|---:|")
    admissible = {}
    for name in names:
        rows = [r for r in results if r["variant"] == name]
        for where in ("dev", "test", "fresh"):
            s = summary(rows, name, where)
            mean_style = max(s["loss_mean"], key=s["loss_mean"].get)
            worst_style = max(s["loss_worst"], key=s["loss_worst"].get)
            print(f"| {name} | {where} | {100 * s['new']:.1f} ({100 * s['new_worst']:.1f}) | {100 * s['gain']:+.1f} | "
                  f"{100 * s['loss_mean'][mean_style]:.1f} ({mean_style}) | "
                  f"{100 * s['loss_worst'][worst_style]:.1f} ({worst_style}) |")
            if where == "dev" and VARIANTS[name][1] == "first" and s["loss_mean"][mean_style] <= MAX_MEAN_LOSS \
                    and s["loss_worst"][worst_style] <= MAX_WORST_LOSS:
                admissible[name] = s["new"]
    chosen = max(admissible, key=admissible.get) if admissible else None
    print(f"\nchosen on the development split: {chosen or 'none within the bounds'}")
    return results


if __name__ == "__main__":
    main()
