"""Learning a new style from reviewers: a policy trained with labels on the five default styles, continued from
simulated accept/reject events on ``lit`` images only (no labels), measured after 0, 100, 300 and 1000 events.

    python benchmarks/adaptation.py --output_dir runs/adaptation

Steps (every number from one run, on images no model was trained on):

1. synthetic characters in the six styles (``synthetic.ALL_STYLES``, seed 11; the demo CLIP was trained on
   seed 0) are annotated by the pipeline: demo CLIP + tag parser (+ ``--tagger``). ``--annotated DIR`` reuses
   an annotated output that has ``truth`` and ``style`` columns instead;
2. images are split by id into train and test (``--test_fraction``);
3. ``before``: a policy trained with labels on the train images of the five default styles
   (``DIR/before``, a ``save_pretrained`` folder);
4. the deployed ``before`` policy shows labels for the ``lit`` train images with epsilon-uniform exploration and
   a simulated reviewer accepts or rejects each (the feedback-log format of
   :data:`charattr_hf.fusion_training.FEEDBACK_FEATURES`, which the review app writes); the events are taken in
   image order, and ``before`` is continued (``train_from_feedback``) from the first 100, 300 and 1000 of them:
   no labels are used. The training data is every train image (as the deployed policy annotated them); the
   images without events anchor the policy's earlier answers (``--anchor_weight``, learning without
   forgetting; 0 turns it off), each weighted by how unlike the images with events it looks
   (``--anchor_rows unlike_feedback``, the default; ``all``: every image alike). The largest is saved as
   ``DIR/adapted``;
5. ``reference``: a policy trained with labels on the train images of all six styles, lit included (the upper
   reference for what the events could teach).

Reports accuracy (mean over attributes, % of test images) on lit and on each other style, as a Markdown table
(``DIR/adaptation.md``), JSON and a learning-curve picture (``DIR/adaptation.png``).
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

TARGETS = {"lit_gain": 0.08, "lit_accuracy": 0.88, "reference_gap": 0.02, "max_other_loss": 0.01}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="runs/adaptation")
    p.add_argument("--annotated", help="an annotated output with truth and style columns (skips annotation)")
    p.add_argument("--images", type=int, default=4800, help="synthetic images to annotate (all six styles)")
    p.add_argument("--seed", type=int, default=11, help="synthetic images' seed (the demo CLIP saw seed 0)")
    p.add_argument("--schema", default=None,
                   help="attribute schema of --annotated (default: its charattr_schema.yaml, else the demo model's)")
    p.add_argument("--sources", default=None,
                   help="comma-separated sources the policies fuse (default: every real source, i.e. not blip2)")
    p.add_argument("--tagger", default=None, help="also run this tagger source (e.g. demo) when annotating")
    p.add_argument("--events", default="100,300,1000", help="feedback event counts to measure after")
    p.add_argument("--epsilon", type=float, default=0.2, help="exploration of the deployed policy")
    p.add_argument("--test_fraction", type=float, default=0.4)
    p.add_argument("--style", default="lit", help="the new style learnt from feedback")
    p.add_argument("--max_epochs", type=int, default=200)
    p.add_argument("--anchor_weight", type=float, default=1.0,
                   help="keep the earlier answers on images without events (0: plain continued training)")
    p.add_argument("--anchor_rows", default="unlike_feedback", choices=["unlike_feedback", "all"],
                   help="which images the anchor keeps: weighted by how unlike the feedback images they look, or all")
    p.add_argument("--learning_rate", type=float, default=None,
                   help="of the continued training (default: the library's)")
    p.add_argument("--weighting", default=None, choices=["ips", "none"],
                   help="feedback event weights of the continued training (default: the library's)")
    p.add_argument("--no_embedding", action="store_true",
                   help="do not give the policies the image embedding as context, even if --annotated has one")
    p.add_argument("--num_proc", type=int, default=2)
    p.add_argument("--train_seed", type=int, default=0)
    return p.parse_args(argv)


def annotate(args, out: Path) -> Path:
    from charattr_hf import synthetic
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.cli import configure_torch_threads
    from charattr_hf.pipeline import PipelineOptions

    target = out / "annotated"
    images = synthetic.generate(args.images, seed=args.seed, styles=synthetic.ALL_STYLES, noise="mixed",
                                num_proc=args.num_proc)
    configure_torch_threads(0)
    options = {"model": "demo", "use_cache": False}
    if args.tagger:
        options["tagger"] = args.tagger
    result, _ = annotate_to_disk(images, target, options=PipelineOptions(**options), num_proc=args.num_proc)
    if not result.complete:
        sys.exit("annotation incomplete; rerun to resume")
    return target


def accuracy_by_style(model, data, config, name: str) -> dict[str, float]:
    from charattr_hf import fusion_training as ft

    probs, avail = ft.predict(model, data)
    records = ft.score(probs, avail, data.labels, config, name, data.groups)
    return {style: ft.summarize(records, name, style) for style in sorted({str(g) for g in data.groups})}


def first_events(log, k: int):
    """The first ``k`` events of the log (it lists events image by image, in the order images were shown)."""
    return log.select(range(min(k, len(log))))


def plot(curve: list[dict], reference: dict, style: str, path: Path) -> None:
    """A small learning-curve picture drawn with PIL: accuracy on the new style and on the others vs events."""
    from PIL import Image, ImageDraw

    W, H, left, right, top, bottom = 640, 400, 60, 150, 30, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [c["events"] for c in curve]
    values = [v for c in curve for v in (c["new"], c["others"])] + [reference["new"], reference["others"]]
    lo, hi = max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.02)
    xmax = max(xs) or 1

    def px(x, y):
        return (left + (W - left - right) * x / xmax, top + (H - top - bottom) * (hi - y) / (hi - lo))

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for i in range(6):
        y = lo + (hi - lo) * i / 5
        _, yy = px(0, y)
        d.line([left - 4, yy, left, yy], fill="black")
        d.text((8, yy - 6), f"{100 * y:.0f}%", fill="black")
    for x in xs:
        xx, _ = px(x, lo)
        d.line([xx, H - bottom, xx, H - bottom + 4], fill="black")
        d.text((xx - 10, H - bottom + 8), str(x), fill="black")
    d.text((left + 120, H - 20), "reviewer events (accept/reject, no labels)", fill="black")
    for key, colour, label in (("new", (200, 60, 30), style), ("others", (40, 90, 200), "other styles")):
        pts = [px(c["events"], c[key]) for c in curve]
        d.line(pts, fill=colour, width=3)
        for x, y in pts:
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        _, yr = px(0, reference[key])
        for x0 in range(left, W - right, 12):  # dashed: the labelled reference
            d.line([x0, yr, x0 + 6, yr], fill=colour, width=1)
        d.text((W - right + 8, pts[-1][1] - 6), label, fill=colour)
        d.text((W - right + 8, yr - 6), f"{label}, labelled", fill=colour)
    d.text((left, 8), f"Adapting to the '{style}' style from reviewer feedback", fill="black")
    img.save(path)


def main(argv=None) -> dict:
    args = parse(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    annotated = Path(args.annotated) if args.annotated else annotate(args, out)

    import numpy as np
    import torch

    from charattr_hf import fusion_training as ft
    from charattr_hf.models.fusion import CharattrFusionModel

    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    data = ft.load_table(str(annotated))
    for col in ("truth", "style", "id"):
        if col not in data.column_names:
            sys.exit(f"{annotated}: needs a {col!r} column")
    schema = args.schema
    schema_file = annotated / "charattr_schema.yaml"
    if schema:
        pass
    elif schema_file.is_file():
        schema = str(schema_file)
    else:
        from charattr_hf.sources.clip.model import ClipSpec
        from charattr_hf.sources.clip import spec_schema as _model_schema

        schema = str(_model_schema(ClipSpec.parse("demo")))
    train_idx, test_idx = ft.split_by_id(data["id"], args.test_fraction, args.train_seed, salt="test")
    train_ds, test_ds = data.select(train_idx), data.select(test_idx)
    styles = np.asarray(train_ds["style"])
    old_ds = train_ds.select(np.flatnonzero(styles != args.style))
    new_ds = train_ds.select(np.flatnonzero(styles == args.style))
    if len(new_ds) == 0:
        sys.exit(f"no {args.style!r} images in the train split")
    present = [c[len("probs_"):] for c in data.column_names if c.startswith("probs_")]
    sources = args.sources.split(",") if args.sources else [s for s in present if s != "blip2"] or present
    config = ft.build_config(schema, train_ds, sources=sources, use_embedding=not args.no_embedding)
    old = ft.build_features(old_ds, config, group_column="style")
    # what the reviewers' policy annotated: every train image, no labels (the events name the lit ones)
    pool = ft.build_features(train_ds, config, label_column=None, group_column="style")
    test = ft.build_features(test_ds, config, group_column="style")
    targs = ft.FusionTrainingConfig(seed=args.train_seed, max_epochs=args.max_epochs, anchor_weight=args.anchor_weight)
    ftargs = dataclasses.replace(targs, anchor_rows=args.anchor_rows,
                                 **({"learning_rate": args.learning_rate} if args.learning_rate else {}),
                                 **({"weighting": args.weighting} if args.weighting else {}))
    print(f"{annotated}: {len(old)} labelled train images in the default styles, {len(new_ds)} unlabelled "
          f"{args.style} images, {len(test)} test images; sources {config.sources}; image embedding "
          f"{config.embedding_dim or 'not used'}", flush=True)

    before = ft.build_model(config, seed=args.train_seed)
    ft.train_supervised(before, old, args=targs, data_name=f"{annotated} (default styles)")
    before.save_pretrained(out / "before")

    full = ft.build_features(train_ds, config, group_column="style")
    reference = ft.build_model(config, seed=args.train_seed)
    ft.train_supervised(reference, full, args=targs, data_name=f"{annotated} (all styles)")

    log = ft.simulate_feedback(new_ds, config, before, epsilon=args.epsilon, seed=args.train_seed,
                               policy_version="before")
    counts = [0] + [int(k) for k in args.events.split(",")]
    log.to_parquet(str(out / "feedback.parquet"))

    rows = []
    acc = {"before": accuracy_by_style(before, test, config, "before"),
           "reference": accuracy_by_style(reference, test, config, "reference")}
    others = [s for s in acc["before"] if s != args.style]

    def summary_row(name: str, events: int | None, by_style: dict[str, float]) -> dict:
        drops = {s: acc["before"][s] - by_style[s] for s in others}
        return {"policy": name, "events": events, "new": by_style[args.style],
                "others": float(np.mean([by_style[s] for s in others])), "max_other_loss": max(drops.values()),
                "by_style": by_style}

    adapted = None
    for k in counts:
        if k == 0:
            rows.append(summary_row("before", 0, acc["before"]))
            continue
        events = first_events(log, k)
        model = CharattrFusionModel.from_pretrained(out / "before")
        ft.train_from_feedback(model, pool, events, args=ftargs, data_name=f"{args.style} feedback")
        acc[f"adapted-{k}"] = accuracy_by_style(model, test, config, f"adapted-{k}")
        rows.append(summary_row(f"adapted ({len(events)} events)", len(events), acc[f"adapted-{k}"]))
        adapted = model
        print(f"{len(events)} events: {args.style} {100 * rows[-1]['new']:.1f} %, others "
              f"{100 * rows[-1]['others']:.1f} %", flush=True)
    if adapted is not None:
        adapted.save_pretrained(out / "adapted")
    ref_row = summary_row(f"reference (labels on {args.style})", None, acc["reference"])

    last = rows[-1]
    checks = {
        "lit_gain": last["new"] - rows[0]["new"] >= TARGETS["lit_gain"],
        "lit_accuracy": last["new"] >= TARGETS["lit_accuracy"],
        "reference_gap": ref_row["new"] - last["new"] <= TARGETS["reference_gap"],
        "max_other_loss": last["max_other_loss"] <= TARGETS["max_other_loss"],
    }
    command = "python benchmarks/adaptation.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# Adapting to the `{args.style}` style from reviewer feedback",
        "",
        f"`{command}` ({time.perf_counter() - t0:.0f} s). Sources: {', '.join(config.sources)}; image "
        f"embedding in the context: {config.embedding_dim or 'no'}. "
        f"Accuracy: mean over attributes, % of {len(test)} test images; `others`: mean over "
        f"{', '.join(others)}; `max loss`: the largest drop on one other style against `before`.",
        "",
        f"| policy | {args.style} | others | max loss on another style | " + " | ".join(others) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(others),
    ]
    for r in rows + [ref_row]:
        lines.append(f"| {r['policy']} | {100 * r['new']:.1f} | {100 * r['others']:.1f} | "
                     f"{100 * r['max_other_loss']:.1f} | " + " | ".join(f"{100 * r['by_style'][s]:.1f}" for s in others)
                     + " |")
    lines += [
        "",
        "| target | value | met |",
        "|---|---:|:---:|",
        f"| {args.style}: adapted - before >= 8 points | {100 * (last['new'] - rows[0]['new']):.1f} | "
        f"{'yes' if checks['lit_gain'] else 'no'} |",
        f"| {args.style}: adapted >= 88 % | {100 * last['new']:.1f} | {'yes' if checks['lit_accuracy'] else 'no'} |",
        f"| {args.style}: labelled reference - adapted <= 2 points | {100 * (ref_row['new'] - last['new']):.1f} | "
        f"{'yes' if checks['reference_gap'] else 'no'} |",
        f"| largest loss on another style <= 1 point | {100 * last['max_other_loss']:.1f} | "
        f"{'yes' if checks['max_other_loss'] else 'no'} |",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    (out / "adaptation.md").write_text(report)
    result = {"rows": rows, "reference": ref_row, "targets_met": checks, "command": command}
    (out / "adaptation.json").write_text(json.dumps(result, indent=1, default=float))
    plot([{"events": r["events"], "new": r["new"], "others": r["others"]} for r in rows], ref_row, args.style,
         out / "adaptation.png")
    return result


if __name__ == "__main__":
    main()
