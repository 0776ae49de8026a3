"""Throughput of the tagger source end to end next to its model-only ceiling, measured in one run.

    python benchmarks/tagger_throughput.py --images 96 --batch_size 32
    python benchmarks/tagger_throughput.py --input_size 64 --images 8 --batch_size 4 --num_tags 200   # a smoke run

A WD v3 ViT tagger's shape with random weights (timm ``vit_base_patch16_224`` at 448 px, no class token, average
pooling, 10,861 tags: the architecture of ``SmilingWolf/wd-vit-tagger-v3``, the same compute, no download), saved
in the WD folder layout and loaded through ``local-dir:`` like a real one. Rows of the table:

- ``model only``: the model's forward on ready tensors (batch ``--batch_size``), measured before and after each
  pipeline round and averaged (this machine is shared; ``--rounds`` alternates the two);
- ``pipeline``: ``annotate_to_disk`` with the tagger as the only source (decode, hash, quality and the tagger's
  white-square bicubic preparation in ``num_proc`` workers, the model, thresholds and the alias mapping, fusion,
  Parquet), on synthetic PNGs of ``--image_size`` px; the one-off model load is measured apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WD_VIT_ARGS = {"img_size": 448, "class_token": False, "global_pool": "avg", "fc_norm": False, "act_layer": "gelu_tanh"}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=512, help="side of the synthetic PNGs")
    p.add_argument("--num_tags", type=int, default=10861)
    p.add_argument("--input_size", type=int, default=448, help="the tagger's input size (448: WD v3)")
    p.add_argument("--num_proc", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3, help="model only / pipeline / model only, this many times")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def build_folder(folder: Path, num_tags: int, input_size: int = 448) -> Path:
    import timm

    from charattr_hf.demo_tagger import save_tagger, wd_config

    args = dict(WD_VIT_ARGS, img_size=input_size)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=num_tags, **args)
    vocab = [(n, 9, None, None) for n in ("general", "sensitive", "questionable", "explicit")]
    vocab += [(f"tag_{i}", 0, None, None) for i in range(num_tags - 4)]
    config = wd_config(num_tags, model.num_features, input_size, "vit_base_patch16_224", args)
    save_tagger(model, folder, config, vocab, dtype="fp32")
    return folder


def model_only(folder: Path, batch_size: int, n: int) -> float:
    import torch

    from charattr_hf.sources.tagger.stage import TaggerConfig, _load_model

    cfg = TaggerConfig.read(folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _load_model(folder, cfg, device, "fp16" if device == "cuda" else "fp32")
    x = torch.randn(batch_size, 3, *cfg.image_size, device=device, dtype=next(model.parameters()).dtype)
    batches = max(1, n // batch_size)
    with torch.inference_mode():
        model(x[:2])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(batches):
            torch.sigmoid(model(x).float()).cpu()
        if device == "cuda":
            torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - t)


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    from charattr_hf import synthetic
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.cli import configure_torch_threads
    from charattr_hf.pipeline import PipelineOptions

    threads = configure_torch_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    os.environ["HF_HOME"] = str(tmp / "hf")
    t = time.perf_counter()
    folder = build_folder(tmp / "wd-vit-random", args.num_tags, args.input_size)
    print(f"built the random WD ViT tagger in {time.perf_counter() - t:.1f} s", flush=True)
    ds = synthetic.generate(args.images + args.batch_size, seed=11, size=args.image_size)
    warm, ds = ds.select(range(args.batch_size)), ds.select(range(args.batch_size, args.images + args.batch_size))
    options = PipelineOptions(model=None, tags=False, tagger=f"local-dir:{folder}", batch_size=args.batch_size,
                              use_cache=False)

    t = time.perf_counter()
    annotate_to_disk(warm, tmp / "warm", options=options, num_proc=args.num_proc or 1, progress=False)
    startup = time.perf_counter() - t
    # rounds of model only / pipeline / model only: each pipeline figure is set against the ceiling measured just
    # before and just after it, so a change in the machine's load between rounds does not tilt the ratio
    rounds = []
    for r in range(args.rounds):
        before = model_only(folder, args.batch_size, args.images)
        result, _ = annotate_to_disk(ds, tmp / f"out-{r}", options=options, num_proc=args.num_proc or 1,
                                     progress=False, chunk_size=max(args.images, 1))
        after = model_only(folder, args.batch_size, args.images)
        pipe = result.images_per_second
        rounds.append({"model_only_before": before, "pipeline": pipe, "model_only_after": after,
                       "ratio": pipe / ((before + after) / 2)})
        print(f"round {r + 1}: model only {before:.3f} / {after:.3f} images/s, pipeline {pipe:.3f} images/s "
              f"({100 * rounds[-1]['ratio']:.0f} %)", flush=True)
    ceiling = sum((x["model_only_before"] + x["model_only_after"]) / 2 for x in rounds) / len(rounds)
    pipe = sum(x["pipeline"] for x in rounds) / len(rounds)
    ratios = sorted(x["ratio"] for x in rounds)
    print(f"\nWD ViT tagger shape (vit_base_patch16_224 at {args.input_size} px, {args.num_tags} tags, random weights), batch "
          f"{args.batch_size}, {args.images} PNGs of {args.image_size} px per round, {args.rounds} round(s), {threads} "
          f"torch threads, {args.num_proc or 1} decode worker(s); start-up run (model load, {args.batch_size} images): "
          f"{startup:.1f} s\n")
    print("| measurement | images/s | vs. model only |\n|---|---:|---:|")
    print(f"| model only (mean over rounds of before and after) | {ceiling:.3f} | 100 % |")
    print(f"| pipeline (tagger only, end to end; mean over rounds) | {pipe:.3f} | {100 * pipe / ceiling:.0f} % |")
    print(f"\nper-round ratio: {', '.join(f'{100 * x:.0f} %' for x in ratios)} (median "
          f"{100 * ratios[len(ratios) // 2]:.0f} %)")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)  # the random weights alone are 350 MB
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "model_only": ceiling, "pipeline": pipe,
                                               "startup_s": startup, "threads": threads,
                                               "args": vars(args), "torch": torch.__version__}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
