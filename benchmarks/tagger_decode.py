"""The tagger pipeline with one decode per image against the same pipeline with the tagger's own second decode (as it
was before #18), each as a ratio to the model-only ceiling, measured in one run.

    python benchmarks/tagger_decode.py --images 128 --rounds 3
    python benchmarks/tagger_decode.py --images 16 --rounds 1 --image_size 256     # a smoke run

A small tagger, where decoding matters: the demo tagger's architecture (timm ``resnet10t``, narrow) at the WD v3
input size (448 px) with the WD v3 vocabulary size (10,861 tags), random weights, saved in the WD folder layout and
loaded through ``local-dir:`` like a real one. Inputs: synthetic characters drawn at ``--image_size`` px, as JPEG
(quality 90) or PNG. Rows of the table, in alternating rounds (this machine is shared):

- ``model only``: the tagger's forward and sigmoid on ready tensors (batch ``--batch_size``), measured before and
  after each round's pipelines and averaged: the ceiling;
- ``one decode``: ``annotate_to_disk`` with the tagger as the only source: the decode stage reads and decodes each
  image once and makes the tagger's pixels (padded to a white square, resized) from that decode;
- ``two decodes (before #18)``: the same run with the tagger's CPU part as it was: the decode stage decodes each
  image for hash, quality and signatures (a thumbnail's worth), and a second stage opens the raw cell again with
  PIL and prepares the tagger's pixels from that second decode (its code, kept here as it was).

Both pipelines run ``--num_proc`` decode workers and the model in the main process, as the recipe does on CPU (one
after the other: no prefetch without a GPU). The CPU part of each run (identify, decode, the tagger's pixels: what
changed) is also timed on its own, as images/s: on a GPU machine, where the model is fast, it is what sets the
pipeline's speed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from charattr_hf.stages.base import ERROR, Stage  # noqa: E402

TAGGER_ARGS = {"channels": [4, 8, 16, 32], "stem_width": 4}  # a resnet10t much narrower than the demo tagger's
OLD_PIXELS = "_tagger_pixels"


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--image_size", type=int, default=768, help="side of the synthetic images")
    p.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    p.add_argument("--input_size", type=int, default=448, help="the tagger's input size (448: WD v3)")
    p.add_argument("--num_tags", type=int, default=10861)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_proc", type=int, default=2, help="decode workers")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- the tagger's CPU part before #18
def _old_prepare_image(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``prepare_image`` of ``charattr_hf/stages/tagger.py`` before #18 (RGB images: its alpha and 16-bit branches
    do not run on these inputs): pad to a white square, bicubic resize."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    side = max(rgb.size)
    if rgb.size != (side, side):
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        rgb = canvas
    if (side, side) != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


class OldTaggerPreprocess(Stage):
    """``TaggerPreprocess`` before #18: the tagger's pixels from a second decode of the raw image cell."""

    name = "tagger_preprocess"
    cpu_bound = True

    def __init__(self, image_size):
        self.image_size = (int(image_size[0]), int(image_size[-1]))

    def params(self) -> dict:
        return {"size": list(self.image_size), "version": 1}

    def features(self) -> dict:
        from datasets import Value

        return {OLD_PIXELS: Value("binary")}

    def input_columns(self) -> list[str]:
        return ["image"]

    def process(self, batch: dict[str, list]) -> dict[str, list]:
        out = []
        for cell, err in zip(batch["image"], batch.get(ERROR) or [None] * len(batch["image"])):
            if err is not None or cell is None:
                out.append(None)
                continue
            im = ImageOps.exif_transpose(Image.open(io.BytesIO(cell["bytes"])))
            out.append(_old_prepare_image(im, self.image_size).tobytes())
        return {OLD_PIXELS: out}


def _build_two_decodes(ctx, opts) -> None:
    """The tagger source as it was built before #18: the shared decode stage asked for no pixels, a second decode in
    the CPU part."""
    from charattr_hf.sources.tagger.stage import TaggerSpec, TaggerStage

    run = ctx.options
    tagger = TaggerStage(ctx.schema, TaggerSpec.parse(opts.tagger), batch_size=run.batch_size,
                         precision=run.precision, device=run.device, pixels_column=OLD_PIXELS)
    ctx.cpu.append(OldTaggerPreprocess(tagger.config.image_size))
    ctx.device.append(tagger)
    ctx.columns.update(tagger.output_features())


# ---------------------------------------------------------------------------------------------------- the run
def build_folder(folder: Path, num_tags: int, input_size: int) -> Path:
    import timm

    from charattr_hf.demo_tagger import save_tagger, wd_config

    model = timm.create_model("resnet10t", pretrained=False, num_classes=num_tags, **TAGGER_ARGS)
    vocab = [(n, 9, None, None) for n in ("general", "sensitive", "questionable", "explicit")]
    vocab += [(f"tag_{i}", 0, None, None) for i in range(num_tags - 4)]
    save_tagger(model, folder, wd_config(num_tags, model.num_features, input_size, "resnet10t", TAGGER_ARGS), vocab,
                dtype="fp32")
    return folder


def model_only(folder: Path, batch_size: int, n: int) -> float:
    import torch

    from charattr_hf.sources.tagger.stage import TaggerConfig, _load_model

    cfg = TaggerConfig.read(folder)
    model = _load_model(folder, cfg, "cpu", "fp32")
    x = torch.randn(batch_size, 3, *cfg.image_size)
    batches = max(1, n // batch_size)
    with torch.inference_mode():
        model(x[:2])  # warm-up
        t = time.perf_counter()
        for _ in range(batches):
            torch.sigmoid(model(x).float()).numpy()
    return batches * batch_size / (time.perf_counter() - t)


def images(n: int, size: int, fmt: str, seed: int):
    from datasets import Image as ImageFeature

    from charattr_hf import synthetic

    ds = synthetic.generate(n, seed=seed, size=size).cast_column("image", ImageFeature(decode=False))
    if fmt == "png":
        return ds

    def to_jpeg(cell):
        buf = io.BytesIO()
        Image.open(io.BytesIO(cell["bytes"])).convert("RGB").save(buf, "JPEG", quality=90)
        return {"bytes": buf.getvalue(), "path": (cell["path"] or "x.png").rsplit(".", 1)[0] + ".jpg"}

    return ds.map(lambda row: {"image": to_jpeg(row["image"])}, features=ds.features)


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    from charattr_hf.api import annotate_to_disk
    from charattr_hf.cli import configure_torch_threads
    from charattr_hf.pipeline import PipelineOptions
    from charattr_hf.sources import Source, register_source, registered_sources

    threads = configure_torch_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="tagger-decode-bench-"))
    os.environ["HF_HOME"] = str(tmp / "hf")
    folder = build_folder(tmp / "tagger", args.num_tags, args.input_size)
    data = images(args.images + args.batch_size, args.image_size, args.format, seed=11)
    warm, data = data.select(range(args.batch_size)), data.select(range(args.batch_size, len(data)))
    options = PipelineOptions(model=None, tags=False, tagger=f"local-dir:{folder}", batch_size=args.batch_size,
                              use_cache=False)
    one_decode = registered_sources()["tagger"]
    two_decodes = Source("tagger", _build_two_decodes, options=one_decode.options, requires=one_decode.requires,
                         order=one_decode.order)

    from charattr_hf.pipeline import Pipeline

    cpu_seconds = []
    real_cpu_part = Pipeline.cpu_part

    def timed_cpu_part(self, *a, **k):
        start = time.perf_counter()
        try:
            return real_cpu_part(self, *a, **k)
        finally:
            cpu_seconds.append(time.perf_counter() - start)

    Pipeline.cpu_part = timed_cpu_part

    def pipeline(source: Source, out: Path, ds) -> tuple[float, float]:
        """(the run's images/s, its CPU part's images/s)."""
        register_source(source)
        cpu_seconds.clear()
        try:
            result, _ = annotate_to_disk(ds, out, options=options, num_proc=args.num_proc, progress=False,
                                         chunk_size=max(len(ds), 1))
        finally:
            register_source(one_decode)
        return result.images_per_second, len(ds) / sum(cpu_seconds)

    for source, name in ((one_decode, "one"), (two_decodes, "two")):  # model load, worker start-up, imports
        pipeline(source, tmp / f"warm-{name}", warm)
    rounds = []
    for r in range(args.rounds):
        before = model_only(folder, args.batch_size, args.images)
        # alternate which goes first, so that neither always follows the model-only measurement
        order = [(one_decode, "one"), (two_decodes, "two")]
        order = order if r % 2 == 0 else order[::-1]
        rates = {name: pipeline(source, tmp / f"out-{r}-{name}", data) for source, name in order}
        after = model_only(folder, args.batch_size, args.images)
        ceiling = (before + after) / 2
        rounds.append({"model_only_before": before, "model_only_after": after, "one_decode": rates["one"][0],
                       "two_decodes": rates["two"][0], "cpu_part_one_decode": rates["one"][1],
                       "cpu_part_two_decodes": rates["two"][1]})
        print(f"round {r + 1}: model only {before:.1f} / {after:.1f} images/s; one decode {rates['one'][0]:.1f} "
              f"({100 * rates['one'][0] / ceiling:.0f} %, CPU part {rates['one'][1]:.1f}), two decodes "
              f"{rates['two'][0]:.1f} ({100 * rates['two'][0] / ceiling:.0f} %, CPU part {rates['two'][1]:.1f})",
              flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    ceiling = sum((x["model_only_before"] + x["model_only_after"]) / 2 for x in rounds) / len(rounds)
    one = sum(x["one_decode"] for x in rounds) / len(rounds)
    two = sum(x["two_decodes"] for x in rounds) / len(rounds)
    cpu_one = sum(x["cpu_part_one_decode"] for x in rounds) / len(rounds)
    cpu_two = sum(x["cpu_part_two_decodes"] for x in rounds) / len(rounds)
    print(f"\nresnet10t tagger (narrow, the demo tagger's shape) at {args.input_size} px, {args.num_tags} tags, random "
          f"weights, batch {args.batch_size}; {args.images} {args.format.upper()}s of {args.image_size} px per round, "
          f"{args.rounds} round(s); {threads} torch threads, {args.num_proc} decode worker(s)\n")
    print("| measurement | images/s | vs. model only |\n|---|---:|---:|")
    print(f"| model only (mean of before and after each round) | {ceiling:.1f} | 100 % |")
    print(f"| pipeline, one decode per image | {one:.1f} | {100 * one / ceiling:.0f} % |")
    print(f"| pipeline, two decodes per image (before #18) | {two:.1f} | {100 * two / ceiling:.0f} % |")
    print(f"| CPU part alone, one decode per image | {cpu_one:.1f} | |")
    print(f"| CPU part alone, two decodes per image (before #18) | {cpu_two:.1f} | |")
    per_round = ", ".join(f"{x['one_decode'] / x['two_decodes']:.2f}x" for x in rounds)
    per_round_cpu = ", ".join(f"{x['cpu_part_one_decode'] / x['cpu_part_two_decodes']:.2f}x" for x in rounds)
    print(f"\none decode / two decodes: pipeline {one / two:.2f}x (per round: {per_round}); CPU part "
          f"{cpu_one / cpu_two:.2f}x (per round: {per_round_cpu})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "model_only": ceiling, "one_decode": one,
                                               "two_decodes": two, "cpu_part_one_decode": cpu_one,
                                               "cpu_part_two_decodes": cpu_two, "threads": threads,
                                               "args": vars(args), "torch": torch.__version__}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
