"""The feedback log under a long review session: what a reviewer's click costs as the log grows.

Each decision does what the app does for one click: append the decision's events to the log, then ask which
items are decided (the next item of the queue) and how many events there are (the status line). Two logs, in
one run, on the same decisions:

- **before**: the log as one Parquet file, rewritten whole for each decision (``charattr_hf/app/feedback.py``
  at ``--baseline``, loaded from git as it was);
- **after**: this checkout's log, a folder of Parquet files that grows by one file per decision (every 256
  files merged into one).

The two logs take each decision in turn (one click on one, the same click on the other), so that a shared,
noisy machine slows both alike. Printed: the time of the first and the last 500 decisions (per decision), the
whole session, the log's files, and reading the whole log back as training does (``recipes/train_fusion.py
--feedback``: ``load_table``), before and after the merge that continuing the policy starts with. Both logs must
read back the same events.

    python benchmarks/feedback_log.py --decisions 10000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_TMP = tempfile.mkdtemp(prefix="charattr-feedback-log-")
os.environ.setdefault("HF_HOME", os.path.join(_TMP, "hf"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
#: The last commit whose feedback log was one Parquet file rewritten per decision.
BASELINE = "8dee9de"


def load_baseline(ref: str):
    """``charattr_hf.app.feedback`` as it was at ``ref`` (its relative imports resolve in this checkout)."""
    source = subprocess.run(["git", "show", f"{ref}:charattr_hf/app/feedback.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("charattr_hf.app._feedback_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "charattr_hf.app"
    sys.modules[spec.name] = module
    exec(compile(source, f"{ref}:charattr_hf/app/feedback.py", "exec"), module.__dict__)
    return module


def session(logs: dict, decisions: list[list[dict]], window: int) -> dict:
    """Each decision on each log in turn; per log: the seconds of every click."""
    seconds: dict[str, list[float]] = {name: [] for name in logs}
    for events in decisions:
        for name, log in logs.items():
            t0 = time.perf_counter()
            log.append(events)
            log.decided()
            len(log)
            seconds[name].append(time.perf_counter() - t0)
    return {name: {"total_s": sum(s), "first_ms": 1000 * sum(s[:window]) / window,
                   "last_ms": 1000 * sum(s[-window:]) / window} for name, s in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=10_000)
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the one-file log")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from charattr_hf import fusion_training as ft
    from charattr_hf.app.feedback import FeedbackLog, decision_events
    from charattr_hf.schema import load_schema

    schema = load_schema("synthetic")
    attrs = [a for a in schema if not a.multi_label]
    decisions = []
    for i in range(args.decisions):  # accepts, rejects and corrections (two events), as reviewers make them
        attr = attrs[i % len(attrs)]
        verdict = ("accept", "reject", "correct")[i % 3]
        label = attr.labels[(i + 1) % attr.num_labels].name if verdict == "correct" else None
        decisions.append(decision_events(schema, f"img-{i // len(attrs)}", attr.name, i % attr.num_labels, 0.9,
                                         verdict, label, policy_version="p"))
    window = min(500, args.decisions // 2)
    before = load_baseline(args.baseline)
    paths, logs = {}, {}
    for name, cls in (("before", before.FeedbackLog), ("after", FeedbackLog)):
        paths[name] = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_TMP)) / "feedback.parquet"
        logs[name] = cls(paths[name])
    results = session(logs, decisions, window)
    tables = {}
    for name, path in paths.items():
        results[name]["files"] = len(list(path.glob("*.parquet"))) if path.is_dir() else 1
        t0 = time.perf_counter()
        tables[name] = ft.load_table(str(path))
        results[name]["read_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    logs["after"].compact()
    results["after"]["merge_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    merged = ft.load_table(str(paths["after"]))
    results["after"]["read_merged_s"] = time.perf_counter() - t0
    assert merged.to_dict() == tables["after"].to_dict()
    keep = ["id", "attribute", "action", "propensity", "reward", "verdict", "label", "decision_id"]
    assert tables["before"].select_columns(keep).to_dict() == tables["after"].select_columns(keep).to_dict()
    events = len(tables["after"])

    b, a = results["before"], results["after"]
    print(f"{args.decisions} decisions ({events} events), one click = append + decided items + count\n")
    print("| log | first 500 decisions, ms each | last 500, ms each | whole session, s | files | "
          "training reads it, s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| before: one Parquet file, rewritten per decision | {b['first_ms']:.2f} | {b['last_ms']:.2f} | "
          f"{b['total_s']:.1f} | {b['files']} | {b['read_s']:.2f} |")
    print(f"| after: a folder, one file per decision | {a['first_ms']:.2f} | {a['last_ms']:.2f} | {a['total_s']:.1f} "
          f"| {a['files']} | {a['read_s']:.2f} (after the merge: {a['read_merged_s']:.2f}) |")
    print(f"\nlast 500 decisions, after / before: {a['last_ms'] / b['last_ms']:.3f}; whole session: "
          f"{a['total_s'] / b['total_s']:.3f}; after, last / first 500: {a['last_ms'] / a['first_ms']:.2f}; "
          f"merging the whole log into one file: {a['merge_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"decisions": args.decisions, "events": events, **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
