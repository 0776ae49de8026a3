"""Fusion benchmark: the learned policy (supervised and from feedback) against the fixed rules and the sources.

Given an annotated dataset with per-source probabilities (``probs_<source>``), a ``truth`` column and a
``style`` column (the kind of image, for the per-style breakdown), the script splits the images by id into
train and test, trains

- a **supervised** policy on the train labels, and
- a **feedback** policy on simulated reviewer events for the same train images (one event per image and
  attribute, logged by the confidence-weighted rule with epsilon-uniform exploration: reward only, no labels),

and prints (and with ``--output`` writes) Markdown tables of accuracy and ECE on the test images, per
attribute, per style and per method. The baselines are the ones a careful user would deploy: each source
alone; ``mean``, ``confidence`` (confidence-weighted) and ``vote`` (majority vote) from ``SimpleFusion``;
``fitted``, the confidence rule with per-source, per-attribute weights fitted on the same train images by
accuracy, the log-loss breaking ties (``fitted-ll``: by log-loss alone; both
:func:`~charattr_hf.stages.fusion.fit_source_weights`); and, as a reference no method can deploy, the
``oracle`` that picks the best single source for each style after seeing the test results. ``--sources`` picks
the sources compared (a deliberately broken source belongs in a separate robustness run, not in the headline).

A summary checks the targets: supervised >= fitted rule + 3 points and >= fitted + 10 points on the ``lit``
style (mean over attributes), never > 1 point below the best single source on any style, ECE <= 0.03; the
feedback policy's share of the supervised gain is reported. It also times the fusion stage itself (rows/s of
``PolicyFusion`` vs ``SimpleFusion``, same batches, same process).

    python benchmarks/fusion.py --simulate                          # offline test bed, about a minute
    python benchmarks/fusion.py --dataset runs/annotated-with-truth --schema synthetic --output runs/fusion.md

Counting follows ``charattr_hf.evaluation`` (the shared ``charattr_hf.metrics`` modules): accuracy is exact
match for multi-label attributes, and a row where a method has no answer (e.g. no tags) counts as wrong; ECE
uses 15 bins (top-label confidence for single-label, per-label presence probability for multi-label) over
the rows with an answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from charattr_hf import fusion_training as ft
from charattr_hf.markdown import markdown_table
from charattr_hf.schema import load_schema
from charattr_hf.stages.fusion import SimpleFusion, fit_source_weights
from charattr_hf.stages.policy import PolicyFusion

TARGETS = {"gain_over_fitted": 0.03, "gain_over_fitted_lit": 0.10, "max_style_deficit": 0.01, "ece": 0.03}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="annotated dataset with truth and style columns (folder, Parquet or Hub id)")
    src.add_argument("--simulate", action="store_true", help="use the simulated test bed")
    p.add_argument("--split", default="train", help="split of --dataset to read (Hub ids)")
    p.add_argument("--schema", default="default", help="attribute schema (name or YAML path)")
    p.add_argument("--style-column", default="style")
    p.add_argument("--sources", default=None,
                   help="comma-separated sources to compare (default: every probs_<source> column present)")
    p.add_argument("--rows", type=int, default=5000, help="simulated rows (train + test)")
    p.add_argument("--test-fraction", type=float, default=0.4, help="share of images held out for testing")
    p.add_argument("--epsilon", type=float, default=0.1, help="exploration of the feedback logging policy")
    p.add_argument("--reviewer-noise", type=float, default=0.0, help="simulated reviewer error rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--no-embedding", action="store_true",
                   help="do not give the policies the image embedding as context, even if the dataset has one")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--output", help="write the Markdown report here")
    p.add_argument("--json", help="write all records and the summary as JSON here")
    return p.parse_args(argv)


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def table(records: list[dict], methods: list[str], attributes: list[str], style: str | None) -> str:
    rows = {(r["attribute"], r["method"]): r for r in records if r.get("style") == style}
    body = []
    for a in attributes + ["**mean**"]:
        cells = []
        for m in methods:
            if a == "**mean**":
                sel = [rows[(x, m)] for x in attributes if (x, m) in rows]
                acc = np.nanmean([_num(r["accuracy"]) for r in sel]) if sel else float("nan")
                ece = np.nanmean([_num(r["ece"]) for r in sel]) if sel else float("nan")
            else:
                r = rows.get((a, m))
                acc, ece = (_num(r["accuracy"]), _num(r["ece"])) if r else (float("nan"), float("nan"))
            cells.append(f"{100 * acc:.1f} / {ece:.3f}")
        body.append([a, *cells])
    return markdown_table(["attribute", *methods], body, align="lr")


def style_table(records: list[dict], methods: list[str], styles: list[str]) -> str:
    """Mean accuracy (%) over attributes per style (rows) and method (columns)."""
    body = [["**all**" if s is None else s, *(f"{100 * ft.summarize(records, m, s):.1f}" for m in methods)]
            for s in [None, *styles]]
    return markdown_table(["style", *methods], body, align="lr")


def oracle_records(records: list[dict], sources: list[str], styles: list[str]) -> list[dict]:
    """The best single source of each style (by mean accuracy over attributes), chosen on the test results:
    a reference for what per-style source selection could reach, not a deployable method."""
    out = []
    for style in styles:
        best = max(sources, key=lambda src: ft.summarize(records, src, style))
        out += [{**r, "method": "oracle"} for r in records if r["method"] == best and r["style"] == style]
    # overall: the row-weighted mean of the per-style picks, per attribute
    for attribute in sorted({r["attribute"] for r in out}):
        sel = [r for r in out if r["attribute"] == attribute]
        n = sum(r["n"] for r in sel)
        out.append({"attribute": attribute, "method": "oracle", "style": None, "n": n,
                    "accuracy": sum(r["accuracy"] * r["n"] for r in sel) / n,
                    "ece": sum(_num(r["ece"]) * r["n"] for r in sel) / n,
                    "missing": sum(r["missing"] for r in sel)})
    return out


def throughput(columns: dict, policy, config, repeats: int = 3) -> dict:
    """Rows/s of the two fusion stages on the same batch (fuse + decide, as in a run)."""
    stages = {"SimpleFusion(confidence)": SimpleFusion(config.to_schema(), config.sources, "confidence"),
              "PolicyFusion": PolicyFusion(config.to_schema(), config.sources, policy)}
    n = len(columns["id"])
    out = {}
    for name, stage in stages.items():
        stage(columns)  # warm-up (lazy set-up)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            stage(columns)
            best = min(best, time.perf_counter() - t0)
        out[name] = n / best
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # one thread: stable timings on a shared machine, like a CPU map worker
    torch.manual_seed(args.seed)
    schema = load_schema(args.schema)
    t0 = time.perf_counter()
    data, name = ft.open_annotated(None if args.simulate else args.dataset, args.split, schema=schema,
                                   simulate_rows=args.rows, seed=args.seed)
    for col in ("truth", args.style_column, "id"):
        if col not in data.column_names:
            sys.exit(f"the benchmark dataset needs a {col!r} column")
    train_idx, test_idx = ft.split_by_id(data["id"], args.test_fraction, args.seed, salt="test")
    train_ds, test_ds = data.select(train_idx), data.select(test_idx)
    sources = args.sources.split(",") if args.sources else None
    config = ft.build_config(schema, train_ds, sources=sources, use_embedding=not args.no_embedding)
    train = ft.build_features(train_ds, config, group_column=args.style_column)
    test = ft.build_features(test_ds, config, group_column=args.style_column)
    targs = ft.FusionTrainingConfig(seed=args.seed, max_epochs=args.max_epochs)
    print(f"{name}: {len(train)} train / {len(test)} test images; sources {config.sources}", flush=True)

    supervised = ft.build_model(config, seed=args.seed)
    t = time.perf_counter()
    res = ft.train_supervised(supervised, train, args=targs, data_name=name)
    t_sup = time.perf_counter() - t
    print(f"supervised: best epoch {res.best_epoch}, {t_sup:.1f} s", flush=True)

    feedback_log = ft.simulate_feedback(
        train_ds, config, "confidence", epsilon=args.epsilon, noise_rate=args.reviewer_noise, seed=args.seed
    )
    learner = ft.build_model(config, seed=args.seed)
    targs_fb = ft.FusionTrainingConfig(seed=args.seed, max_epochs=args.max_epochs, reviewer_noise=args.reviewer_noise)
    t = time.perf_counter()
    res_fb = ft.train_from_feedback(learner, train, feedback_log, args=targs_fb, data_name=name)
    t_fb = time.perf_counter() - t
    print(f"feedback: {len(feedback_log)} events (accept rate {np.mean(feedback_log['reward']):.2f}), "
          f"best epoch {res_fb.best_epoch}, {t_fb:.1f} s", flush=True)

    fit_args = (train.inputs["source_probs"], train.inputs["source_mask"], train.labels, config.attributes,
                config.sources)
    weights = fit_source_weights(*fit_args, objective="accuracy")
    weights_ll = fit_source_weights(*fit_args, objective="log_loss")

    test_columns = test_ds.to_dict()
    records = ft.compare_methods(test_columns, test, config, policies={"supervised": supervised, "feedback": learner})
    for method, w in (("fitted", weights), ("fitted-ll", weights_ll)):
        rule = SimpleFusion(config.to_schema(), config.sources, "confidence", source_weights=w)
        records += ft.score(*ft.method_probs(rule, test_columns, config), test.labels, config, method,
                            test.groups)
    speed = throughput(test_columns, supervised, config)

    # ------------------------------------------------------------------ summary against the targets
    sources = list(config.sources)
    styles = sorted({str(g) for g in test.groups})
    records += oracle_records(records, sources, styles)
    baselines = sources + ["mean", "confidence", "vote", "fitted", "fitted-ll"]
    acc = {m: ft.summarize(records, m) for m in baselines + ["oracle", "supervised", "feedback"]}
    best_baseline = max(baselines, key=lambda m: acc[m])
    deficits = {
        s: max(ft.summarize(records, src, s) for src in sources) - ft.summarize(records, "supervised", s)
        for s in styles
    }
    lit = "lit" if "lit" in styles else None
    gain_lit = (ft.summarize(records, "supervised", lit) - ft.summarize(records, "fitted", lit)) if lit else float("nan")
    gain_sup = acc["supervised"] - acc["mean"]
    ratio = (acc["feedback"] - acc["mean"]) / gain_sup if gain_sup > 0 else float("nan")
    ece = {m: float(np.nanmean([_num(r["ece"]) for r in records if r["method"] == m and r["style"] is None]))
           for m in ("supervised", "feedback")}
    ece_max = {m: float(np.nanmax([_num(r["ece"]) for r in records if r["method"] == m and r["style"] is None]))
               for m in ("supervised", "feedback")}
    summary = {
        "data": name,
        "sources": sources,
        "train_images": len(train),
        "test_images": len(test),
        "feedback_events": len(feedback_log),
        "accuracy": acc,
        "fitted_weights": weights,
        "fitted_weights_log_loss": weights_ll,
        "best_baseline": best_baseline,
        "gain_over_best_baseline": acc["supervised"] - acc[best_baseline],
        "gain_over_fitted": acc["supervised"] - acc["fitted"],
        "gain_over_fitted_lit": gain_lit,
        "max_style_deficit": max(deficits.values()),
        "style_deficits": deficits,
        "feedback_gain_ratio": ratio,
        "ece": ece,
        "ece_max_attribute": ece_max,
        "train_seconds": {"supervised": t_sup, "feedback": t_fb},
        "rows_per_second": speed,
        "total_seconds": time.perf_counter() - t0,
    }
    checks = {
        "gain_over_fitted": summary["gain_over_fitted"] >= TARGETS["gain_over_fitted"],
        "gain_over_fitted_lit": bool(gain_lit >= TARGETS["gain_over_fitted_lit"]) if lit else None,
        "max_style_deficit": summary["max_style_deficit"] <= TARGETS["max_style_deficit"],
        "ece": ece["supervised"] <= TARGETS["ece"],
    }
    summary["targets_met"] = checks

    methods = baselines + ["oracle", "supervised", "feedback"]

    def met(key):
        return "n/a" if checks[key] is None else ("yes" if checks[key] else "no")

    attributes = config.attribute_names
    parts = [
        f"# Fusion benchmark: {name}",
        "",
        f"`python benchmarks/fusion.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        f"{len(train)} train / {len(test)} test images; feedback: {len(feedback_log)} simulated reviewer events "
        f"on the train images (epsilon {args.epsilon}, reviewer noise {args.reviewer_noise}). "
        "Cells: accuracy % / ECE.",
        "",
        "## Summary",
        "",
        markdown_table(["check", "value", "target", "met"], [
            ["supervised - fitted-weight rule, points", f"{100 * summary['gain_over_fitted']:.1f}",
             f">= {100 * TARGETS['gain_over_fitted']:.0f}", met("gain_over_fitted")],
            ["supervised - fitted-weight rule on lit, points", f"{100 * gain_lit:.1f}",
             f">= {100 * TARGETS['gain_over_fitted_lit']:.0f}", met("gain_over_fitted_lit")],
            [f"supervised - best deployable baseline ({best_baseline}), points",
             f"{100 * summary['gain_over_best_baseline']:.1f}", "(for information)", None],
            ["worst style: best single source - supervised, points (< 0: policy better)",
             f"{100 * summary['max_style_deficit']:.1f}", f"<= {100 * TARGETS['max_style_deficit']:.0f}",
             met("max_style_deficit")],
            ["ECE supervised (mean over attributes)", f"{ece['supervised']:.3f}", f"<= {TARGETS['ece']:.2f}",
             met("ece")],
            ["feedback policy: share of the supervised gain over mean fusion; its ECE",
             f"{ratio:.2f}; {ece['feedback']:.3f}", "(for information)", None],
            ["ECE supervised / feedback, worst attribute",
             f"{ece_max['supervised']:.3f} / {ece_max['feedback']:.3f}", "(for information)", None],
        ], align="lrrc", missing=""),
        "",
        "Fusion stage throughput (same batch, same process): "
        + ", ".join(f"{k} {v:,.0f} rows/s" for k, v in speed.items())
        + f". Training time: supervised {t_sup:.1f} s, feedback {t_fb:.1f} s.",
        "",
        "## Mean accuracy % over attributes, per style",
        "",
        style_table(records, methods, styles),
        "",
        "## All test images",
        "",
        table(records, methods, attributes, None),
    ]
    for s in styles:
        parts += ["", f"## Style: {s}", "", table(records, methods, attributes, s)]
    report = "\n".join(parts) + "\n"
    print(report)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(report)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "records": records}, indent=1, default=float))
    return summary


if __name__ == "__main__":
    main()
