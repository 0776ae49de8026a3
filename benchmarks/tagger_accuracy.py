"""Accuracy of the demo tagger against the demo CLIP, the tags and their default fusion, per style, measured the way
a user would: ``recipes/annotate.py --tagger demo`` then ``recipes/evaluate_annotations.py``.

    python benchmarks/tagger_accuracy.py --output_dir runs/tagger-accuracy

Steps (each skipped when its output is already there, so an interrupted run resumes):

1. ``synthetic.build_benchmark(seed=0, n_test_per_style=N, styles=synthetic.ALL_STYLES)``: the ``test_<style>``
   splits (the five default styles and ``lit``; index ranges disjoint from the ``train`` indices the demo CLIP and the
   demo tagger were trained on), concatenated into one split ``styles`` and saved with ``save_to_disk``;
2. ``python recipes/annotate.py --dataset <benchmark> --split styles --tagger demo`` (the demo CLIP, the demo tagger
   and the tag parser, fused by the default confidence rule), and the same with ``--fusion demo`` (the shipped
   policy was trained on CLIP and tags only: it ignores the tagger, which must not break it);
3. ``python recipes/evaluate_annotations.py`` on both (grouped by the ``style`` column);
4. a table per style and source (``tagger``, ``clip``, ``tags``, ``fused``: the default rule over the three;
   ``policy``: ``--fusion demo``), written to ``tagger_accuracy.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("tagger", "clip", "tags", "fused", "policy")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="runs/tagger-accuracy")
    p.add_argument("--n_test_per_style", type=int, default=500)
    p.add_argument("--num_proc", type=int, default=2)
    p.add_argument("--torch_threads", type=int, default=0, help="torch threads of the annotate runs (0: all cores)")
    return p.parse_args(argv)


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table(report: dict, policy: dict) -> tuple[str, dict]:
    attrs = list(report["attributes"])
    multi = {a: report["attributes"][a]["multi_label"] for a in attrs}
    groups = sorted(next(iter(report["attributes"].values()))["results"]["clip"])
    groups = [g for g in groups if g != "all"] + ["all"]
    header = ["style", "source"] + [f"{a} (F1)" if multi[a] else a for a in attrs] + ["mean single-label"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary: dict = {}
    for g in groups:
        for src in SOURCES:
            rep = policy if src == "policy" else report
            key = "fused" if src == "policy" else src
            row = [g, src]
            for a in attrs:
                cell = rep["attributes"][a]["results"].get(key, {}).get(g)
                value = cell["micro_f1" if multi[a] else "accuracy"] if cell else None
                summary.setdefault(g, {}).setdefault(src, {})[a] = value
                row.append(fmt(value))
            mean = rep["summary"].get(key, {}).get(g, {}).get("mean_accuracy")
            summary[g][src]["mean_single_label"] = mean
            row.append(fmt(mean))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n", summary


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.output_dir).resolve()
    bench = out / "benchmark"
    if not (bench / "dataset_dict.json").is_file():
        from datasets import DatasetDict, concatenate_datasets

        from charattr_hf import synthetic

        per_style = synthetic.build_benchmark(seed=0, n_train=0, n_validation=0, n_test=0,
                                              n_test_per_style=args.n_test_per_style, styles=synthetic.ALL_STYLES,
                                              num_proc=args.num_proc)
        DatasetDict({"styles": concatenate_datasets(list(per_style.values()))}).save_to_disk(str(bench))
    reports = {}
    for kind, extra in (("", []), ("_policy", ["--fusion", "demo"])):
        annotated, evaluated = out / f"annotated{kind}", out / f"eval{kind}"
        if not (annotated / "README.md").is_file():
            run([sys.executable, "recipes/annotate.py", "--dataset", str(bench), "--split", "styles", "--tagger", "demo",
                 "--output_dir", str(annotated), "--num_proc", str(args.num_proc), "--torch_threads", str(args.torch_threads), "--quiet", *extra])
        run([sys.executable, "recipes/evaluate_annotations.py", "--dataset", str(annotated), "--split", "styles",
             "--output_dir", str(evaluated)])
        reports[kind] = json.loads((evaluated / "eval.json").read_text())
    md, summary = table(reports[""], reports["_policy"])
    (out / "tagger_accuracy.md").write_text(md)
    (out / "tagger_accuracy.json").write_text(json.dumps(summary, indent=1))
    print(md)
    print(f"wrote {out / 'tagger_accuracy.md'} and {out / 'tagger_accuracy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
