"""Accuracy of the shipped demo CLIP, the tags, the default fusion rule and the shipped demo fusion policy on the
synthetic benchmark's test splits, measured the way a user would: ``recipes/annotate.py`` then
``recipes/evaluate_annotations.py`` on each split.

    python benchmarks/accuracy.py --output_dir runs/accuracy

Steps (each skipped when its output is already there, so an interrupted run resumes):

1. ``synthetic.build_benchmark(seed=0, n_train=0, n_validation=0, n_test=..., n_test_per_style=...,
   styles=synthetic.ALL_STYLES)`` saved with ``save_to_disk``: the mixed ``test`` split (the five default
   styles) and one ``test_<style>`` split per style, ``lit`` included; index ranges disjoint from the ``train``
   indices the demo model was trained on and the ``validation`` indices the demo policy was trained on;
2. ``python recipes/annotate.py --dataset <benchmark> --split <split> --output_dir <annotated>/<split>``
   (defaults otherwise: the demo model, the tag parser, confidence-weighted fusion), and again with
   ``--fusion demo`` into ``<annotated_policy>/<split>`` (the feature cache answers for CLIP the second time);
3. ``python recipes/evaluate_annotations.py --dataset <annotated>/<split> --split <split> --output_dir <eval>/<split>``,
   and the same for the policy's output;
4. one table over the splits, per attribute and source (``fused``: the confidence rule; ``policy``: the demo
   fusion policy), written to ``accuracy.md`` and ``accuracy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from charattr_hf.markdown import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("clip", "tags", "fused", "policy")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="runs/accuracy")
    p.add_argument("--n_test", type=int, default=2000)
    p.add_argument("--n_test_per_style", type=int, default=500)
    p.add_argument("--num_proc", type=int, default=2)
    p.add_argument("--abstain_threshold", type=float, default=0.5)
    return p.parse_args(argv)


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.2f}"


def table(reports: dict[str, dict]) -> tuple[str, dict]:
    """Accuracy (%) per split and source (rows) and attribute (columns), multi-label attributes as micro-F1 (%),
    then the mean over single-label attributes; and mean confidence, ECE and coverage of the colour attributes."""
    splits = list(reports)
    attrs = list(next(iter(reports.values()))["attributes"])
    multi = {a: reports[splits[0]]["attributes"][a]["multi_label"] for a in attrs}
    header = ["split", "source"] + [f"{a} (F1)" if multi[a] else a for a in attrs] + ["mean single-label"]
    rows = []
    summary: dict = {}
    for sp in splits:
        for src in SOURCES:
            row = [sp, src]
            for a in attrs:
                cell = reports[sp]["attributes"][a]["results"].get(src, {}).get("all")
                value = cell["micro_f1" if multi[a] else "accuracy"] if cell else None
                summary.setdefault(sp, {}).setdefault(src, {})[a] = value
                row.append(fmt(value))
            mean = reports[sp]["summary"].get(src, {}).get("all", {}).get("mean_accuracy")
            summary[sp][src]["mean_single_label"] = mean
            row.append(fmt(mean))
            rows.append(row)

    colour = [a for a in ("hair_color", "eye_color", "top_color") if a in attrs]
    conf_sources = ("clip", "fused", "policy")
    conf = []
    for sp in splits:
        for src in conf_sources:
            cells = [reports[sp]["attributes"][a]["results"].get(src, {}).get("all") for a in colour]
            conf.append([sp, src, *(
                None if c is None else f"{fmt(c['accuracy'])} / {fmt(c['mean_confidence'], False)} / "
                f"{fmt(c['ece'], False)} / {fmt(c['coverage'])}" for c in cells)])
    conf_header = ["split", "source", *(f"{a}: acc % / mean conf. / ECE / coverage %" for a in colour)]
    return markdown_table(header, rows) + "\n\n" + markdown_table(conf_header, conf) + "\n", summary


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.output_dir).resolve()
    bench = out / "benchmark"
    if not (bench / "dataset_dict.json").is_file():
        from charattr_hf import synthetic

        # the mixed test split keeps the default mix; the per-style splits add the extra "lit" style
        dd = synthetic.build_benchmark(seed=0, n_train=0, n_validation=0, n_test=args.n_test, n_test_per_style=0,
                                       num_proc=args.num_proc)
        per_style = synthetic.build_benchmark(seed=0, n_train=0, n_validation=0, n_test=0,
                                              n_test_per_style=args.n_test_per_style, styles=synthetic.ALL_STYLES,
                                              num_proc=args.num_proc)
        dd.update(per_style)
        dd.save_to_disk(str(bench))
    splits = json.loads((bench / "dataset_dict.json").read_text())["splits"]
    reports = {}
    for split in splits:
        for kind, extra in (("", []), ("_policy", ["--fusion", "demo"])):
            annotated, evaluated = out / f"annotated{kind}" / split, out / f"eval{kind}" / split
            if not (annotated / "README.md").is_file():
                run([sys.executable, "recipes/annotate.py", "--dataset", str(bench), "--split", split,
                     "--output_dir", str(annotated), "--num_proc", str(args.num_proc), "--quiet", *extra])
            run([sys.executable, "recipes/evaluate_annotations.py", "--dataset", str(annotated), "--split", split,
                 "--output_dir", str(evaluated), "--abstain_threshold", str(args.abstain_threshold)])
        report = json.loads((out / "eval" / split / "eval.json").read_text())
        policy = json.loads((out / "eval_policy" / split / "eval.json").read_text())
        for name, attr in report["attributes"].items():  # the policy's fused result, as a fourth column
            attr["results"]["policy"] = policy["attributes"][name]["results"]["fused"]
        report["summary"]["policy"] = policy["summary"]["fused"]
        reports[split] = report
    md, summary = table(reports)
    (out / "accuracy.md").write_text(md)
    (out / "accuracy.json").write_text(json.dumps(summary, indent=1))
    print(md)
    print(f"wrote {out / 'accuracy.md'} and {out / 'accuracy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
