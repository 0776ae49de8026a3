"""Throughput of the annotate pipeline next to the model-only ceiling, measured in one run.

    python benchmarks/throughput.py --model ViT-B-32 --pretrained none --batch_size 32 --images 512

Rows of the table (all on the same synthetic images, PNG at --image_size px, same model and batch size):

- ``model only``: the image tower's forward on pre-decoded, pre-normalised tensors; the ceiling.
- ``pipeline``: ``annotate_to_disk`` end to end (decode + hash + quality + tags in ``num_proc`` workers, CLIP,
  fusion, Parquet chunk writes, final shards and card), on images the feature cache has not seen. The
  one-off start-up (model load, label embeddings of the schema's prompts) is measured before, on other
  images, and reported on its own line: it is paid once per process, not per image.
- ``pipeline, cached``: the same run again into a fresh output folder with the feature cache warm
  (images already seen are not recomputed).
- ``naive``: one image at a time, decoded and preprocessed in line with open_clip's own transform.

The ceiling is measured twice (before and after the pipeline) and averaged, because this machine is shared.
ViT-B-32 with random weights costs the same compute as the pretrained one, and needs no download.
"""

from __future__ import annotations

import argparse
import io
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
    p.add_argument("--pretrained", default="none", help="pretrained tag, or none for random weights")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--image_size", type=int, default=256, help="side of the synthetic PNGs")
    p.add_argument("--chunk_size", type=int, default=256)
    p.add_argument("--num_proc", type=int, default=None)
    p.add_argument("--naive_images", type=int, default=96, help="images for the (slow) naive baseline")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--skip", nargs="*", default=[], choices=["naive", "cached"])
    return p.parse_args()


def model_only(spec, batch_size: int, n: int, device) -> float:
    import torch

    from charattr_hf.sources.clip.model import load_model, preprocess_config

    model, _ = load_model(spec, device)
    h, w = preprocess_config(spec).image_size
    x = torch.randn(batch_size, 3, h, w, device=device, dtype=next(model.parameters()).dtype)
    batches = max(1, n // batch_size)
    with torch.inference_mode():
        model.encode_image(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(batches):
            model.encode_image(x, normalize=True).float().cpu()
        t1 = time.perf_counter()
    return batches * batch_size / (t1 - t0)


def naive(spec, ds, n: int, schema, device) -> float:
    """One image at a time: decode, open_clip transform, forward, tags, fusion, all in line."""
    import open_clip
    import torch
    from PIL import Image

    from charattr_hf.sources.clip.model import load_model
    from charattr_hf.sources.clip.stage import ClipZeroShot
    from charattr_hf.stages.fusion import SimpleFusion
    from charattr_hf.sources.tags.stage import TagStage

    model, _ = load_model(spec, device)
    pre = open_clip.image_transform(model.visual.image_size, is_train=False)
    stage = ClipZeroShot(schema, spec, batch_size=1, device=str(device))
    stage.setup()
    from charattr_hf.sources.clip.stage import _REGISTRY

    reg = _REGISTRY[stage._key()]
    tags, fusion = TagStage(schema), SimpleFusion(schema, ["clip", "tags"])
    from datasets import Image as ImageFeature

    rows = ds.select(range(n)).cast_column("image", ImageFeature(decode=False))
    t0 = time.perf_counter()
    with torch.inference_mode():
        for row in rows:
            img = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
            x = pre(img).unsqueeze(0).to(device)
            emb = model.encode_image(x, normalize=True)
            probs, _ = stage._scores(emb, reg)
            clip_row = stage._split(probs[0].cpu().numpy())
            tag_row = tags({"tags": [row["tags"]], "caption": [None]})["probs_tags"][0]
            fusion({"probs_clip": [clip_row], "probs_tags": [tag_row]})
    return n / (time.perf_counter() - t0)


def main() -> int:
    args = parse()
    import torch

    from charattr_hf import synthetic
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.cli import configure_torch_threads
    from charattr_hf.sources.clip.model import ClipSpec
    from charattr_hf.pipeline import PipelineOptions
    from charattr_hf.schema import load_schema

    tmp = Path(tempfile.mkdtemp(prefix="charattr-bench-"))
    os.environ["CHARATTR_CACHE"] = str(tmp / "cache")
    data = synthetic.generate(args.images, seed=123, size=args.image_size, noise="clean", num_proc=2)
    data = data.flatten_indices()
    data.save_to_disk(str(tmp / "input"))
    from datasets import load_from_disk

    data = load_from_disk(str(tmp / "input"))

    # CPU stages first: the decode workers fork before the parent runs any torch op
    threads = configure_torch_threads(0)
    num_proc = args.num_proc or threads
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = ClipSpec.parse(args.model, args.pretrained)
    schema = load_schema("default")

    def pipeline_run(out: Path, use_cache: bool) -> tuple[float, float]:
        opts = PipelineOptions(
            model=args.model, pretrained=args.pretrained, schema="default", batch_size=args.batch_size,
            use_cache=use_cache, cache_dir=str(tmp / "cache"),
        )
        t0 = time.perf_counter()
        result, _ = annotate_to_disk(data, out, options=opts, chunk_size=args.chunk_size, num_proc=num_proc,
                                     progress=False)
        wall = time.perf_counter() - t0
        assert result.complete and result.rows == args.images
        return args.images / wall, result.images_per_second

    warm = synthetic.generate(2 * args.batch_size, seed=999, size=args.image_size, noise="clean")
    t0 = time.perf_counter()
    annotate_to_disk(warm, tmp / "out-0", options=PipelineOptions(
        model=args.model, pretrained=args.pretrained, schema="default", batch_size=args.batch_size,
        cache_dir=str(tmp / "cache")), chunk_size=args.chunk_size, num_proc=num_proc, progress=False)
    cold = time.perf_counter() - t0 - 2 * args.batch_size / model_only(spec, args.batch_size, 2 * args.batch_size, device)

    results: dict[str, float] = {}
    e2e, e2e_loop = pipeline_run(tmp / "out-1", use_cache=True)  # fills the cache as it goes
    results["pipeline"] = e2e
    results["pipeline (chunk loop only)"] = e2e_loop
    c1 = model_only(spec, args.batch_size, args.images, device)
    if "cached" not in args.skip:
        results["pipeline, cached"], _ = pipeline_run(tmp / "out-2", use_cache=True)
    c2 = model_only(spec, args.batch_size, args.images, device)
    results["model only"] = (c1 + c2) / 2
    if "naive" not in args.skip:
        results["naive"] = naive(spec, data, min(args.naive_images, args.images), schema, device)

    ceiling = results["model only"]
    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\n{args.model} ({args.pretrained}), batch {args.batch_size}, {args.images} images of "
          f"{args.image_size}px, device {device_name}, torch threads {threads}, num_proc {num_proc}")
    print(f"{'measurement':<30} {'images/s':>10} {'vs model only':>14}")
    for name in ["model only", "pipeline", "pipeline (chunk loop only)", "pipeline, cached", "naive"]:
        if name in results:
            print(f"{name:<30} {results[name]:>10.1f} {results[name] / ceiling:>13.0%}")
    print(f"(model only measured twice: {c1:.1f} and {c2:.1f} images/s)")
    print(f"one-off start-up per process (model load + label embeddings, uncached): {cold:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": device_name, "results": results,
                                               "ceiling_runs": [c1, c2], "startup_seconds": cold}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
