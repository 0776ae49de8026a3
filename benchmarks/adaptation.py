"""Learning a new style from reviewers without forgetting the others: a policy trained with labels on the five
default styles, continued from simulated accept/reject events on ``lit`` images only (no labels), measured after
0, 100, 300 and 1000 events, over several training seeds, on a held-out split of its own images and on fresh
images of another seed and another size mix.

    python benchmarks/adaptation.py --output_dir runs/adaptation

Steps (every number from one run, on images no model was trained on):

1. the benchmark's images: synthetic characters in the six styles (``synthetic.ALL_STYLES``, seed 7, 64 px; the
   demo CLIP was trained on seed 0), annotated by the pipeline with the demo CLIP, the demo tagger and the tag
   parser (``DIR/annotated``; ``--annotated DIR`` reuses an annotated output with ``truth`` and ``style``);
2. fresh images: the same six styles from another seed (23) and another size mix (48, 96 and 128 px in equal
   shares: what the decode stage measures and flags differs from the 64 px images), annotated the same way once
   (``DIR/fresh``, reused by a rerun; ``--fresh DIR`` reuses another). No policy ever trains on them;
3. for each training seed (``--train_seeds``, default 0, 1, 2; it sets the split, the initialisation and the
   simulated reviewers): the benchmark's images are split by id into train and test (``--test_fraction``);
   ``before`` is trained with labels on the train images of the five default styles; the deployed ``before``
   shows labels for the ``lit`` train images with epsilon-uniform exploration and a simulated reviewer accepts or
   rejects each (the feedback-log format the review app writes), the events taken in image order; ``before`` is
   continued (``train_from_feedback``, the library's defaults unless a flag below says otherwise) from the first
   100, 300 and 1000 of them, no labels used. The continued training is given every train image as the
   deployed policy annotated them (the images without events hold the earlier answers: see
   ``charattr_hf/fusion_training/feedback.py``). ``reference``: trained with labels on all six styles;
   ``--bound``: ``before`` continued the same way from every label of the images the first 1000 events are on,
   given as accepted events (labels, not feedback: what those images could teach at most);
4. every policy annotates the test split and the fresh images; accuracy is the mean over attributes, per style.

Reports, per evaluation set and per policy, the mean over seeds and the worst seed: lit accuracy and gain, and per
other style the accuracy lost against ``before`` (``DIR/adaptation.md``, ``adaptation.json``, and the learning
curve on the fresh images, ``adaptation.png``). The largest policy of each seed is saved with its card
(``DIR/seed<k>/adapted``, the card states before/after per style on the data it was given).
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

#: Targets on the fresh images (mean over training seeds; worst seed where stated), 1000 events.
TARGETS = {"lit_gain": 0.20, "lit_accuracy": 0.85, "mean_other_loss": 0.010, "worst_other_loss": 0.015}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="runs/adaptation")
    p.add_argument("--annotated", help="an annotated output with truth and style columns (skips annotating step 1)")
    p.add_argument("--images", type=int, default=6000, help="synthetic images to annotate (all six styles)")
    p.add_argument("--seed", type=int, default=7, help="synthetic images' seed (the demo CLIP saw seed 0)")
    p.add_argument("--fresh", help="an annotated output of fresh images with truth and style (skips step 2)")
    p.add_argument("--fresh_images", type=int, default=6000, help="fresh images, split equally over --fresh_sizes")
    p.add_argument("--fresh_seed", type=int, default=23)
    p.add_argument("--fresh_sizes", default="48,96,128", help="image sizes (px) of the fresh images")
    p.add_argument("--schema", default=None,
                   help="attribute schema of --annotated (default: its charattr_schema.yaml, else the demo model's)")
    p.add_argument("--sources", default=None,
                   help="comma-separated sources the policies fuse (default: every real source, i.e. not blip2)")
    p.add_argument("--tagger", default="demo", help="the tagger source when annotating ('' for none)")
    p.add_argument("--events", default="100,300,1000", help="feedback event counts to measure after")
    p.add_argument("--epsilon", type=float, default=0.2, help="exploration of the deployed policy")
    p.add_argument("--test_fraction", type=float, default=0.4)
    p.add_argument("--style", default="lit", help="the new style learnt from feedback")
    p.add_argument("--max_epochs", type=int, default=200)
    p.add_argument("--train_seeds", default="0,1,2", help="training seeds (split, initialisation, reviewers)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a FusionTrainingConfig field of the continued training, e.g. --set anchor_weight=0 "
                   "(repeatable; default: the library's defaults)")
    p.add_argument("--bound", action="store_true",
                   help="also continue from every label of the images the first 1000 events are on (labels, as "
                   "accepted events): what those images could teach at most")
    p.add_argument("--no_embedding", action="store_true",
                   help="do not give the policies the image embedding as context, even if the data has one")
    p.add_argument("--num_proc", type=int, default=2)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ images
def annotate_images(target: Path, n: int, seed: int, sizes: list[int], tagger: str, num_proc: int) -> Path:
    """``n`` synthetic images of the six styles (equal shares of ``sizes``) annotated by the demo CLIP, the tag
    parser and ``tagger`` into ``target``; an annotated output that is already complete is reused."""
    from datasets import concatenate_datasets

    from charattr_hf import synthetic
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.cli import configure_torch_threads
    from charattr_hf.pipeline import PipelineOptions

    if (target / "summary.json").is_file():
        return target
    shares = [n // len(sizes) + (i < n % len(sizes)) for i in range(len(sizes))]
    starts = [sum(shares[:i]) for i in range(len(sizes))]
    parts = [synthetic.generate(k, seed=seed, size=size, start=start, styles=synthetic.ALL_STYLES, noise="mixed",
                                num_proc=num_proc) for k, size, start in zip(shares, sizes, starts) if k]
    images = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    configure_torch_threads(0)
    options = PipelineOptions(model="demo", tagger=tagger or None, use_cache=False)
    result, _ = annotate_to_disk(images, target, options=options, num_proc=num_proc)
    if not result.complete:
        sys.exit("annotation incomplete; rerun to resume")
    return target


def prepare(args, out: Path) -> tuple[Path, Path]:
    """The benchmark's annotated images and the fresh ones (annotated here unless given)."""
    annotated = Path(args.annotated) if args.annotated else annotate_images(
        out / "annotated", args.images, args.seed, [64], args.tagger, args.num_proc)
    sizes = [int(s) for s in args.fresh_sizes.split(",")]
    fresh = Path(args.fresh) if args.fresh else annotate_images(
        out / "fresh", args.fresh_images, args.fresh_seed, sizes, args.tagger, args.num_proc)
    return annotated, fresh


def schema_of(args, annotated: Path) -> str:
    if args.schema:
        return args.schema
    if (annotated / "charattr_schema.yaml").is_file():
        return str(annotated / "charattr_schema.yaml")
    from charattr_hf.sources.clip import spec_schema
    from charattr_hf.sources.clip.model import ClipSpec

    return str(spec_schema(ClipSpec.parse("demo")))


def overrides(pairs: list[str]) -> dict:
    """``KEY=VALUE`` strings -> FusionTrainingConfig changes, each value typed like the field's default."""
    from charattr_hf import fusion_training as ft

    fields = {f.name: f for f in dataclasses.fields(ft.FusionTrainingConfig)}
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            sys.exit(f"--set {pair}: no FusionTrainingConfig field {key!r}; fields: {sorted(fields)}")
        kind = type(fields[key].default)
        out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return out


# ------------------------------------------------------------------------------------------------ scoring
def accuracy_by_style(model, data, config) -> dict[str, float]:
    """Mean accuracy over attributes per style (and ``all``)."""
    from charattr_hf import fusion_training as ft

    probs, avail = ft.predict(model, data)
    records = ft.score(probs, avail, data.labels, config, "m", data.groups)
    out = {style: ft.summarize(records, "m", style) for style in sorted({str(g) for g in data.groups})}
    out["all"] = ft.summarize(records, "m", None)
    return out


def over_seeds(runs: list[dict], name: str, where: str, new: str) -> dict:
    """Mean and worst seed of one policy on one evaluation set: lit accuracy and gain over ``before``, and per
    other style the accuracy lost against ``before`` (positive = worse)."""
    import numpy as np

    acc = [r[where][name] for r in runs]
    base = [r[where]["before"] for r in runs]
    others = [s for s in acc[0] if s not in (new, "all")]
    loss = {s: [b[s] - a[s] for a, b in zip(acc, base)] for s in others}
    return {
        "new": float(np.mean([a[new] for a in acc])), "new_worst": float(min(a[new] for a in acc)),
        "gain": float(np.mean([a[new] - b[new] for a, b in zip(acc, base)])),
        "gain_worst": float(min(a[new] - b[new] for a, b in zip(acc, base))),
        "loss_mean": {s: float(np.mean(v)) for s, v in loss.items()},
        "loss_worst": {s: float(max(v)) for s, v in loss.items()},
        "by_style": {s: float(np.mean([a[s] for a in acc])) for s in acc[0]},
    }


def bound_events(first, new_ds, config):
    """Every label of the images ``first`` has events on, as accepted events with propensity 1: what those images
    could teach at most (*labels*, not feedback)."""
    from datasets import Dataset

    truth = dict(zip(new_ds["id"], new_ds["truth"]))
    out = {k: [] for k in ("id", "attribute", "action", "propensity", "reward")}
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


def first_events(log, k: int):
    """The first ``k`` events of the log (it lists events image by image, in the order images were shown)."""
    return log.select(range(min(k, len(log))))


def run_seed(seed: int, sets: dict, config, args, changes: dict, out: Path) -> dict:
    """One training seed: before, the continued policies and the reference, scored on every evaluation set."""
    import numpy as np

    from charattr_hf import fusion_training as ft
    from charattr_hf.models.fusion import CharattrFusionModel

    data, fresh = sets["annotated"], sets["fresh"]
    train_idx, test_idx = ft.split_by_id(data["id"], args.test_fraction, seed, salt="test")
    train_ds, test_ds = data.select(train_idx), data.select(test_idx)
    styles = np.asarray(train_ds["style"])
    old = ft.build_features(train_ds.select(np.flatnonzero(styles != args.style)), config, group_column="style")
    new_ds = train_ds.select(np.flatnonzero(styles == args.style))
    if len(new_ds) == 0:
        sys.exit(f"no {args.style!r} images in the train split")
    # what the reviewers' policy annotated: every train image, no labels (the events name the new-style ones)
    pool = ft.build_features(train_ds, config, label_column=None, group_column="style")
    evaluate = {"own": ft.build_features(test_ds, config, group_column="style"), "fresh": fresh}
    base = ft.FusionTrainingConfig(seed=seed, max_epochs=args.max_epochs)
    continued = dataclasses.replace(base, **changes)
    seed_dir = out / f"seed{seed}"

    before = ft.build_model(config, seed=seed)
    ft.train_supervised(before, old, args=base, data_name=f"{sets['name']} (default styles)")
    before.save_pretrained(seed_dir / "before", model_card_id=str(seed_dir / "before"))
    reference = ft.build_model(config, seed=seed)
    ft.train_supervised(reference, ft.build_features(train_ds, config, group_column="style"), args=base,
                        data_name=f"{sets['name']} (all styles)")
    log = ft.simulate_feedback(new_ds, config, before, epsilon=args.epsilon, seed=seed, policy_version="before")
    scores = {where: {"before": accuracy_by_style(before, d, config),
                      "reference": accuracy_by_style(reference, d, config)} for where, d in evaluate.items()}
    counts = [int(k) for k in args.events.split(",")]
    for k in counts:
        model = CharattrFusionModel.from_pretrained(seed_dir / "before")
        t = time.perf_counter()
        result = ft.train_from_feedback(model, pool, first_events(log, k), args=continued,
                                        data_name=f"{sets['name']}, train split (seed {seed})")
        for where, d in evaluate.items():
            scores[where][f"adapted-{k}"] = accuracy_by_style(model, d, config)
        print(f"seed {seed}, {k} events ({time.perf_counter() - t:.0f} s, best epoch {result.best_epoch}): "
              + "; ".join(f"{where} {args.style} {100 * s[f'adapted-{k}'][args.style]:.1f} % (before "
                          f"{100 * s['before'][args.style]:.1f})" for where, s in scores.items()), flush=True)
        if k == counts[-1]:
            model.save_pretrained(seed_dir / "adapted", model_card_id=str(seed_dir / "adapted"))
    if args.bound:
        at = 1000 if 1000 in counts else counts[-1]
        model = CharattrFusionModel.from_pretrained(seed_dir / "before")
        ft.train_from_feedback(model, pool, bound_events(first_events(log, at), new_ds, config), args=continued)
        for where, d in evaluate.items():
            scores[where]["bound"] = accuracy_by_style(model, d, config)
    return {"seed": seed, "events_available": len(log), **scores}


# ------------------------------------------------------------------------------------------------ report
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
    d.text((left, 8), f"Adapting to the '{style}' style from reviewer feedback (fresh images)", fill="black")
    img.save(path)


def table(runs: list[dict], where: str, names: list[tuple[str, str]], new: str) -> list[str]:
    first = runs[0][where]["before"]
    others = [s for s in first if s not in (new, "all")]
    lines = [f"| policy | {new} (worst seed) | gain (worst) | " + " | ".join(others) + " |",
             "|---|---:|---:|" + "---:|" * len(others)]
    for key, label in names:
        s = over_seeds(runs, key, where, new)
        cells = [f"{100 * s['by_style'][o]:.1f}" if key in ("before", "reference") else
                 f"{-100 * s['loss_mean'][o]:+.1f} ({-100 * s['loss_worst'][o]:+.1f})" for o in others]
        gain = "" if key == "before" else f"{100 * s['gain']:+.1f} ({100 * s['gain_worst']:+.1f})"
        lines.append(f"| {label} | {100 * s['new']:.1f} ({100 * s['new_worst']:.1f}) | {gain} | "
                     + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> dict:
    args = parse(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    changes = overrides(args.overrides)
    annotated, fresh_dir = prepare(args, out)

    import numpy as np
    import torch

    from charattr_hf import fusion_training as ft

    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    data, fresh_ds = ft.load_table(str(annotated)), ft.load_table(str(fresh_dir))
    for name, ds in (("annotated", data), ("fresh", fresh_ds)):
        for col in ("truth", "style", "id"):
            if col not in ds.column_names:
                sys.exit(f"{name}: needs a {col!r} column")
    present = [c[len("probs_"):] for c in data.column_names if c.startswith("probs_")]
    sources = args.sources.split(",") if args.sources else [s for s in present if s != "blip2"] or present
    config = ft.build_config(schema_of(args, annotated), data, sources=sources, use_embedding=not args.no_embedding)
    fresh = ft.build_features(fresh_ds, config, group_column="style")  # computed once for every seed and policy
    sets = {"annotated": data, "fresh": fresh, "name": str(annotated)}
    seeds = [int(s) for s in args.train_seeds.split(",")]
    print(f"{annotated}: {len(data)} images; fresh: {fresh_dir}, {len(fresh)} images; sources {config.sources}; "
          f"seeds {seeds}; continued training: the library's defaults{f' with {changes}' if changes else ''}",
          flush=True)
    runs = [run_seed(seed, sets, config, args, changes, out) for seed in seeds]

    counts = [int(k) for k in args.events.split(",")]
    at = 1000 if 1000 in counts else counts[-1]  # the targets are set at 1000 events
    names = [("before", "before")] + [(f"adapted-{k}", f"adapted ({k} events)") for k in counts]
    if args.bound:
        names.append(("bound", f"bound: every label of the images of the first {at} events (labels)"))
    names.append(("reference", f"reference (labels on every {args.style} train image)"))
    last = over_seeds(runs, f"adapted-{at}", "fresh", args.style)
    worst_mean = max(last["loss_mean"], key=last["loss_mean"].get)
    worst_seed = max(last["loss_worst"], key=last["loss_worst"].get)
    checks = {
        "lit_gain": last["gain"] >= TARGETS["lit_gain"],
        "lit_accuracy": last["new"] >= TARGETS["lit_accuracy"],
        "mean_other_loss": last["loss_mean"][worst_mean] <= TARGETS["mean_other_loss"],
        "worst_other_loss": last["loss_worst"][worst_seed] <= TARGETS["worst_other_loss"],
    }
    command = "python benchmarks/adaptation.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    yes = {True: "yes", False: "no"}
    lines = [
        f"# Adapting to the `{args.style}` style from reviewer feedback, without forgetting the others",
        "",
        f"`{command}` ({time.perf_counter() - t0:.0f} s). Sources: {', '.join(config.sources)}; image embedding in "
        f"the context: {config.embedding_dim or 'no'}. Continued training: the library's defaults"
        f"{f' with {changes}' if changes else ''}. Training seeds {', '.join(map(str, seeds))} (each: its own "
        "split, initialisation and simulated reviewers). Accuracy: mean over attributes, %. "
        f"`{args.style}`: mean over seeds (worst seed); `gain`: against `before` of the same seed; other styles: "
        "accuracy change against `before`, mean over seeds (worst seed), or the accuracy for `before` and "
        "`reference`.",
        "",
        f"## Fresh images ({len(fresh)}: seed {args.fresh_seed if not args.fresh else '?'}, sizes "
        f"{args.fresh_sizes if not args.fresh else '?'} px, `{fresh_dir}`)",
        "",
        *table(runs, "fresh", names, args.style),
        "",
        f"## The benchmark's own test split ({args.test_fraction:.0%} of `{annotated}` by id, per seed)",
        "",
        *table(runs, "own", names, args.style),
        "",
        f"| target (fresh images, {at} events) | value | met |",
        "|---|---:|:---:|",
        f"| {args.style}: gain >= +20 points (mean over seeds) | {100 * last['gain']:+.1f} | "
        f"{yes[checks['lit_gain']]} |",
        f"| {args.style}: >= 85 % (mean over seeds) | {100 * last['new']:.1f} | {yes[checks['lit_accuracy']]} |",
        f"| every other style: <= 1.0 point lost (mean over seeds) | {100 * last['loss_mean'][worst_mean]:.1f} "
        f"({worst_mean}) | {yes[checks['mean_other_loss']]} |",
        f"| every other style: <= 1.5 points lost (worst seed) | {100 * last['loss_worst'][worst_seed]:.1f} "
        f"({worst_seed}) | {yes[checks['worst_other_loss']]} |",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    (out / "adaptation.md").write_text(report)
    result = {"runs": runs, "targets_met": checks, "command": command, "changes": changes,
              "summary": {where: {key: over_seeds(runs, key, where, args.style) for key, _ in names}
                          for where in ("fresh", "own")}}
    (out / "adaptation.json").write_text(json.dumps(result, indent=1, default=float))

    def others(key):
        s = result["summary"]["fresh"][key]["by_style"]
        return float(np.mean([v for k, v in s.items() if k not in (args.style, "all")]))

    curve = [{"events": 0, "new": result["summary"]["fresh"]["before"]["new"], "others": others("before")}]
    curve += [{"events": k, "new": result["summary"]["fresh"][f"adapted-{k}"]["new"],
               "others": others(f"adapted-{k}")} for k in counts]
    plot(curve, {"new": result["summary"]["fresh"]["reference"]["new"], "others": others("reference")}, args.style,
         out / "adaptation.png")
    return result


if __name__ == "__main__":
    main()
