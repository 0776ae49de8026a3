"""Closing the loop through the review app: reviewer decisions on ``lit`` images, made through the app's API, teach
the fusion policy, and lit accuracy on other lit images goes up.

1. Draw two disjoint sets of ``lit`` synthetic characters (a flat drawing under night or sunset light: the demo
   CLIP reads the light's colours, while tags still name the character's own): a review pool and a held-out
   evaluation set; annotate both with the annotate pipeline (demo CLIP + tags, ``mixed`` tag noise).
2. Start the app on the pool (``--start rule``: with the confidence rule, as a user without a policy for this
   kind of image; ``--start demo``: with the shipped demo policy, trained with lit images among others), and make ``--decisions`` decisions through
   ``gradio_client``: ``/review_next`` gives the queue's top item, a simulated reviewer who knows the truth
   accepts a right label and corrects a wrong one to the truth (``/review_decide``).
3. ``/retrain`` (the page's button) continues the policy from the log; the held-out lit set is scored with the
   policy before and after, the fixed confidence rule and the sources alone, by the same code as
   ``benchmarks/fusion.py``.

    python benchmarks/app_loop.py --decisions 300 --start rule
    python benchmarks/app_loop.py --decisions 300 --start demo
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

_TMP = tempfile.mkdtemp(prefix="charattr-app-loop-")
os.environ.setdefault("HF_HOME", os.path.join(_TMP, "hf"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=300)
    parser.add_argument("--pool", type=int, default=400, help="lit images in the review pool")
    parser.add_argument("--eval", type=int, default=1000, help="held-out lit images")
    parser.add_argument("--order", default="queue", choices=["queue", "random"],
                        help="review the queue's order, or random items (for comparison)")
    parser.add_argument("--start", default="rule", choices=["rule", "demo"],
                        help="the app's fusion before feedback: the confidence rule (the retrained policy is then a "
                        "fresh one, learned from the log alone) or the shipped demo policy (continued)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import numpy as np
    from gradio_client import Client

    from charattr_hf import fusion_training as ft
    from charattr_hf import synthetic
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.app import AppConfig, AppState
    from charattr_hf.app.ui import launch
    from charattr_hf.models.fusion import CharattrFusionModel
    from charattr_hf.pipeline import PipelineOptions
    from charattr_hf.stages.policy import resolve_policy

    root = Path(_TMP)
    lit_start = synthetic.SPLIT_OFFSETS["test_style"] + 100_000_000 * synthetic.ALL_STYLES.index("lit")
    pool = synthetic.generate(args.pool, seed=args.seed, styles=["lit"], noise="mixed", start=lit_start)
    held = synthetic.generate(args.eval, seed=args.seed, styles=["lit"], noise="mixed",
                              start=lit_start + 10_000_000)
    t0 = time.perf_counter()
    for name, ds in (("pool", pool), ("eval", held)):
        annotate_to_disk(ds, root / name, progress=False, keep_images=(name == "pool"))
    print(f"annotated {args.pool} + {args.eval} lit images in {time.perf_counter() - t0:.0f} s")

    state = AppState(AppConfig(dataset=str(root / "pool"), feedback_log=str(root / "feedback.parquet"),
                               pool_size=args.pool, seed=args.seed,
                               pipeline=PipelineOptions(fusion="demo" if args.start == "demo" else None)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, url = launch(state, port=port, block=False, quiet=True)
    client = Client(url, verbose=False)
    truth = dict(zip(pool["id"], pool["truth"]))
    schema = state.schema
    rng = np.random.default_rng(args.seed)
    verdicts = {"accept": 0, "correct": 0}
    t0 = time.perf_counter()
    for _ in range(args.decisions):
        items = client.predict(1 if args.order == "queue" else 50, api_name="/review_next")
        if not items:
            break
        item = items[0] if args.order == "queue" else items[int(rng.integers(len(items)))]
        attr = schema[item["attribute"]]
        value = truth[item["id"]][attr.name]
        if attr.multi_label:
            right = sorted(attr.labels[i].name for i in value)
            ok = (attr.index(item["shown_label"]) in value)
            label = ",".join(right) if right else ""
            verdict = "accept" if ok else ("correct" if right else "reject")
        else:
            right = attr.labels[value].name
            verdict = "accept" if item["shown_label"] == right else "correct"
            label = right
        client.predict(item["token"], verdict, label if verdict == "correct" else "", api_name="/review_decide")
        verdicts[verdict if verdict in verdicts else "correct"] += 1
    review_s = time.perf_counter() - t0
    info = client.predict(api_name="/retrain")
    demo.close()

    held_ds = ft.load_table(str(root / "eval"))
    before = CharattrFusionModel.from_pretrained(resolve_policy("demo"))
    after = CharattrFusionModel.from_pretrained(info["saved_to"])
    columns = held_ds.to_dict()
    # each policy reads the inputs its own config describes (flag vocabulary, sources)
    records = ft.compare_methods(columns, ft.build_features(held_ds, before.config), before.config,
                                 policies={"demo policy": before}, baselines=("confidence",), include_sources=True)
    records += ft.compare_methods(columns, ft.build_features(held_ds, after.config), after.config,
                                  policies={f"after ({info['policy_version']})": after}, baselines=(),
                                  include_sources=False)
    methods = ["clip", "tags", "confidence", "demo policy", f"after ({info['policy_version']})"]
    attrs = [a["name"] for a in before.config.attributes]
    print(f"\n{sum(verdicts.values())} decisions through the API in {review_s:.0f} s ({verdicts['accept']} accepted, "
          f"{verdicts['correct']} corrected), {info['events']} events; retrained in {info['seconds']} s "
          f"({info['epochs']} epochs)\n")
    print("| method | " + " | ".join(attrs) + " | mean single-label |")
    print("|---|" + "---|" * (len(attrs) + 1))
    result = {"decisions": verdicts, "events": info["events"], "retrain": info, "accuracy": {}}
    for m in methods:
        acc = {r["attribute"]: r["accuracy"] for r in records if r["method"] == m and r["style"] is None}
        single = [acc[a["name"]] for a in before.config.attributes if not a["multi_label"]]
        print(f"| {m} | " + " | ".join(f"{100 * acc[a]:.1f}" for a in attrs) + f" | {100 * np.mean(single):.1f} |")
        result["accuracy"][m] = {**acc, "mean_single_label": float(np.mean(single))}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
