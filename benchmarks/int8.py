"""--precision int8 against fp32 on CPU, in one run: speed (model only and end to end) and accuracy.

    python benchmarks/int8.py --images 256 --accuracy_images 2000 --json benchmarks/results/int8_cpu.json

- ``model only``: the image tower's forward (``encode_image``) on the same random batch, fp32 and int8 taking
  turns (``--rounds`` times each) so that the machine's drift hits both alike; ViT-B-32 with random weights.
- ``end to end``: ``annotate_to_disk`` on the same synthetic PNGs (feature cache off, model already loaded by a
  warm-up run on other images), fp32 then int8 then fp32 again (the two fp32 runs are averaged).
- ``accuracy``: the shipped demo CLIP (a small ModifiedResNet: in int8 only its attention pool's projections
  are quantized, the convolutions stay fp32) in fp32 and int8 on the synthetic benchmark's mixed ``test`` split
  (seed 0, as in benchmarks/accuracy.py): accuracy of CLIP alone (top label of ``probs_clip``) and of the fused
  labels (confidence rule with the tags), mean over the single-label attributes.
Each part runs with its own temporary ``HF_HOME`` and feature cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="none")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--images", type=int, default=256, help="images per end-to-end run")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="model-only rounds per precision (alternating)")
    p.add_argument("--model_batches", type=int, default=4, help="batches per model-only round")
    p.add_argument("--accuracy_images", type=int, default=2000, help="0 skips the accuracy part")
    p.add_argument("--num_proc", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--skip", nargs="*", default=[], choices=["model", "e2e", "accuracy"])
    return p.parse_args()


def fresh_home(tmp: Path, name: str) -> Path:
    home = tmp / name
    os.environ["HF_HOME"] = str(home / "hf")
    os.environ["CHARATTR_CACHE"] = str(home / "cache")
    return home


def model_only(spec, args) -> dict:
    import torch

    from charattr_hf.sources.clip.model import load_model, preprocess_config

    t0 = time.perf_counter()
    torch.manual_seed(0)  # the same random weights for both, so that their outputs can be compared
    models = {"fp32": load_model(spec, "cpu", "fp32")[0]}
    t1 = time.perf_counter()
    torch.manual_seed(0)
    models["int8"] = load_model(spec, "cpu", "int8")[0]
    t2 = time.perf_counter()
    h, w = preprocess_config(spec).image_size
    x = torch.randn(args.batch_size, 3, h, w, generator=torch.Generator().manual_seed(0))
    rates: dict[str, list[float]] = {"fp32": [], "int8": []}
    with torch.inference_mode():
        for m in models.values():
            m.encode_image(x)  # warm-up
        for _ in range(args.rounds):
            for name, m in models.items():
                start = time.perf_counter()
                for _ in range(args.model_batches):
                    m.encode_image(x, normalize=True)
                rates[name].append(args.model_batches * args.batch_size / (time.perf_counter() - start))
        a, b = models["fp32"].encode_image(x, normalize=True), models["int8"].encode_image(x, normalize=True)
        cos = torch.nn.functional.cosine_similarity(a, b).min().item()
    return {"rates": rates, "fp32": sum(rates["fp32"]) / len(rates["fp32"]), "int8": sum(rates["int8"]) / len(rates["int8"]),
            "load_seconds": {"fp32": t1 - t0, "int8": t2 - t1}, "min_cosine_vs_fp32": cos}


def end_to_end(args, tmp: Path, num_proc: int) -> dict:
    from datasets import load_from_disk

    from charattr_hf import synthetic
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.pipeline import PipelineOptions

    fresh_home(tmp, "e2e")
    data = synthetic.generate(args.images, seed=123, size=args.image_size, noise="clean", num_proc=2).flatten_indices()
    data.save_to_disk(str(tmp / "e2e-input"))
    data = load_from_disk(str(tmp / "e2e-input"))
    warm = synthetic.generate(2 * args.batch_size, seed=999, size=args.image_size, noise="clean")

    def opts(precision):
        return PipelineOptions(model=args.model, pretrained=args.pretrained, schema="default",
                               batch_size=args.batch_size, precision=precision, use_cache=False)

    for precision in ("fp32", "int8"):  # load each model once (kept per process), outside the timed runs
        annotate_to_disk(warm, tmp / f"warm-{precision}", options=opts(precision), chunk_size=256,
                         num_proc=num_proc, progress=False)
    rates: dict[str, list[float]] = {"fp32": [], "int8": []}
    for i, precision in enumerate(("fp32", "int8", "fp32")):
        t0 = time.perf_counter()
        result, _ = annotate_to_disk(data, tmp / f"e2e-{i}-{precision}", options=opts(precision), chunk_size=256,
                                     num_proc=num_proc, progress=False)
        assert result.complete and result.rows == args.images
        rates[precision].append(args.images / (time.perf_counter() - t0))
    return {"rates": rates, "fp32": sum(rates["fp32"]) / 2, "int8": rates["int8"][0]}


def accuracy(args, tmp: Path, num_proc: int) -> dict:
    import numpy as np
    import pyarrow.parquet as pq

    from charattr_hf import synthetic
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.pipeline import PipelineOptions

    fresh_home(tmp, "accuracy")
    test = synthetic.build_benchmark(seed=0, n_train=0, n_validation=0, n_test=args.accuracy_images,
                                     n_test_per_style=0, num_proc=2)["test"]
    out = {}
    for precision in ("fp32", "int8"):
        result, pipeline = annotate_to_disk(test, tmp / f"acc-{precision}", options=PipelineOptions(
            precision=precision, use_cache=False), chunk_size=1024, num_proc=num_proc, progress=False)
        assert result.complete, f"accuracy run ({precision}) incomplete"
        table = pq.read_table([str(f) for f in result.data_files][0]).to_pydict()
        scores: dict[str, dict[str, float]] = {"clip": {}, "fused": {}}
        for attr in pipeline.schema:
            if attr.multi_label:
                continue
            truth_names = test.features["truth"][attr.name].names
            names = attr.label_names
            truth = [names.index(truth_names[t[attr.name]]) if t and t.get(attr.name) is not None else None
                     for t in table["truth"]]
            clip = [int(np.argmax(p[attr.name])) if p else None for p in table["probs_clip"]]
            fused = table[attr.name]
            rows = [i for i, t in enumerate(truth) if t is not None]
            scores["clip"][attr.name] = 100 * sum(clip[i] == truth[i] for i in rows) / len(rows)
            scores["fused"][attr.name] = 100 * sum(fused[i] == truth[i] for i in rows) / len(rows)
        out[precision] = {k: {"per_attribute": v, "mean": sum(v.values()) / len(v)} for k, v in scores.items()}
    return out


def main() -> int:
    args = parse()
    import torch

    from charattr_hf.cli import configure_torch_threads
    from charattr_hf.sources.clip.model import ClipSpec

    tmp = Path(tempfile.mkdtemp(prefix="charattr-int8-"))
    threads = configure_torch_threads(0)
    num_proc = args.num_proc or threads
    results: dict = {"args": vars(args), "torch": torch.__version__, "threads": threads,
                     "quantized_engine": torch.backends.quantized.engine, "cpu": platform.processor() or "cpu"}
    # the CPU stages fork decode workers: run the end-to-end part before this process does any torch work
    def done(key):  # each part is printed and saved as soon as it is measured
        print(f"{key}: {json.dumps(results[key])}", flush=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=2))

    if "e2e" not in args.skip:
        results["end_to_end"] = end_to_end(args, tmp, num_proc)
        done("end_to_end")
    if "accuracy" not in args.skip and args.accuracy_images:
        results["accuracy"] = accuracy(args, tmp, num_proc)
        done("accuracy")
    if "model" not in args.skip:
        fresh_home(tmp, "model")
        results["model_only"] = model_only(ClipSpec.parse(args.model, args.pretrained), args)
        done("model_only")

    print(f"\n{args.model} ({args.pretrained}), batch {args.batch_size}, torch {torch.__version__} "
          f"({results['quantized_engine']} kernels), {threads} threads")
    print(f"{'measurement':<34} {'fp32':>10} {'int8':>10} {'int8 / fp32':>12}")
    for key, label in (("model_only", "model only (images/s)"), ("end_to_end", "end to end (images/s)")):
        if key in results:
            r = results[key]
            print(f"{label:<34} {r['fp32']:>10.1f} {r['int8']:>10.1f} {r['int8'] / r['fp32']:>11.2f}x")
    if "accuracy" in results:
        acc = results["accuracy"]
        for src in ("clip", "fused"):
            a, b = acc["fp32"][src]["mean"], acc["int8"][src]["mean"]
            print(f"{'demo accuracy, ' + src + ' (%)':<34} {a:>10.1f} {b:>10.1f} {b - a:>+11.1f} pt")
    if "model_only" in results:
        m = results["model_only"]
        print(f"model-only rounds: fp32 {[round(x, 1) for x in m['rates']['fp32']]}, "
              f"int8 {[round(x, 1) for x in m['rates']['int8']]}; min cosine int8 vs fp32 {m['min_cosine_vs_fp32']:.4f}; "
              f"load {m['load_seconds']['fp32']:.1f} s fp32, {m['load_seconds']['int8']:.1f} s int8 (incl. quantization)")
    if "end_to_end" in results:
        e = results["end_to_end"]["rates"]
        print(f"end-to-end runs: fp32 {[round(x, 1) for x in e['fp32']]}, int8 {[round(x, 1) for x in e['int8']]}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
