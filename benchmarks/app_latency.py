"""Latency of the review app's ``/annotate`` endpoint: one 512 px image, demo models, after warm-up.

Starts the app on a free localhost port in this process (its own temporary HF_HOME and feature cache, the cache
off so that every call runs the models), then calls ``/annotate`` through ``gradio_client`` ``--calls`` times with
distinct synthetic characters, and the in-memory annotator directly the same number of times (what the HTTP
layer adds is the difference). A 2048x2048 fp32 matmul, timed before and after, says how fast this machine was
during the run (its speed drifts; see benchmarks/README.md).

    python benchmarks/app_latency.py --calls 50
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

_TMP = tempfile.mkdtemp(prefix="charattr-app-bench-")
os.environ.setdefault("HF_HOME", os.path.join(_TMP, "hf"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402


def matmul_gflops(reps: int = 5) -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * 2048**3 * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    from charattr_hf import synthetic
    from charattr_hf.app import AppConfig, AppState
    from charattr_hf.app.ui import launch
    from charattr_hf.pipeline import PipelineOptions

    ceiling_before = matmul_gflops()
    folder = Path(_TMP) / "images"
    folder.mkdir()
    paths = []
    for i in range(args.calls + args.warmup):
        p = folder / f"{i}.png"
        p.write_bytes(synthetic.make_item(11, i, size=args.size, styles=["flat"])["image"]["bytes"])
        paths.append(p)
    t0 = time.perf_counter()
    state = AppState(AppConfig(feedback_log=str(Path(_TMP) / "feedback.parquet"),
                               pipeline=PipelineOptions(fusion="demo", use_cache=False)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, url = launch(state, port=port, block=False, quiet=True)
    startup = time.perf_counter() - t0
    client = Client(url, verbose=False)

    def timed(fn, items):
        out = []
        for p in items:
            t = time.perf_counter()
            fn(p)
            out.append(time.perf_counter() - t)
        return np.asarray(out)

    timed(lambda p: client.predict(handle_file(str(p)), "", api_name="/annotate"), paths[: args.warmup])
    http = timed(lambda p: client.predict(handle_file(str(p)), "", api_name="/annotate"), paths[args.warmup:])
    direct = timed(lambda p: state.annotate_json(str(p)), paths[args.warmup:])
    demo.close()
    ceiling_after = matmul_gflops()

    rows = {
        "/annotate over HTTP (gradio_client)": http,
        "in-memory pipeline (AppState.annotate_json)": direct,
    }
    print(f"{args.calls} calls, {args.size}x{args.size} PNG, demo CLIP + demo fusion policy, feature cache off, "
          f"torch threads {__import__('torch').get_num_threads()}")
    print(f"app start-up (pipeline built, warmed up, server listening): {startup:.1f} s")
    print(f"machine: 2048^2 fp32 matmul {ceiling_before:.0f} GFLOP/s before, {ceiling_after:.0f} after\n")
    print("| path | p50 (s) | p95 (s) | mean (s) |")
    print("|---|---|---|---|")
    result = {"calls": args.calls, "size": args.size, "startup_s": startup,
              "gflops_before": ceiling_before, "gflops_after": ceiling_after}
    for name, values in rows.items():
        p50, p95 = np.percentile(values, 50), np.percentile(values, 95)
        print(f"| {name} | {p50:.3f} | {p95:.3f} | {values.mean():.3f} |")
        result[name] = {"p50": p50, "p95": p95, "mean": float(values.mean())}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
