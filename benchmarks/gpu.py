"""Throughput on one CUDA GPU: the model-only ceiling, the annotate pipeline end to end with CPU decode workers,
a GPU-decode loop (``torchvision.io.decode_jpeg(device="cuda")``), and how many CPU decode workers keep the GPU fed.

    bash benchmarks/gpu.sh                      # ViT-B-32 and ViT-L-14, batch 256, fp16; < 10 minutes on an H100
    python benchmarks/gpu.py --smoke --output_dir /tmp/gpu-smoke   # seconds, on CPU: checks the script itself

Everything is offline: random weights (``--pretrained none``: the same compute as the pretrained checkpoints) and
synthetic JPEGs made on the spot (synthetic characters at several sizes, each image distinct so that nothing is
deduplicated). For each model, in this order:

1. ``cpu decode``: the pipeline's decode stage (read, sha256, quality, open_clip's resize and crop to the model's
   input) in 1, 2, 4, ... worker processes, without the model: images/s per number of workers;
2. ``model only``: ``encode_image`` on pre-made fp16 tensors already on the GPU: the ceiling;
3. ``pipeline``: ``annotate_to_disk`` end to end (CPU decode in ``--num_proc`` workers, prefetching the next chunk,
   CLIP zero-shot with the default schema, fusion, Parquet), feature cache off, model loaded beforehand;
4. ``gpu decode``: a loop over the same JPEG bytes: ``decode_jpeg`` on the GPU in batches, resize and crop on the
   GPU, ``encode_image``; a measure of what decoding on the GPU would give (the pipeline decodes on CPU).

``workers to feed the GPU`` = the model-only rate divided by the measured per-worker decode rate, rounded up.
Writes ``results.json`` and ``results.md`` (a Markdown table) to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14"])
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--precision", default="fp16")
    p.add_argument("--images", type=int, default=8192, help="distinct synthetic JPEGs")
    p.add_argument("--sizes", nargs="+", default=["512x512", "640x480", "480x640", "768x768"],
                   help="JPEG sizes (WxH), used in turn")
    p.add_argument("--model_batches", type=int, default=20, help="batches timed for the model-only ceiling")
    p.add_argument("--workers", nargs="+", type=int, default=None, help="CPU decode worker counts (default 1,2,4..cores)")
    p.add_argument("--num_proc", type=int, default=None, help="decode workers of the pipeline run (default: cores)")
    p.add_argument("--chunk_size", type=int, default=2048)
    p.add_argument("--device", default=None, help="default: cuda")
    p.add_argument("--output_dir", default="benchmarks/results/gpu")
    p.add_argument("--smoke", action="store_true", help="a tiny local model, a few small images, on CPU: seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.batch_size, args.images, args.sizes = ["tiny"], 8, 16, ["96x80", "64x64"]
        args.model_batches, args.workers, args.num_proc, args.chunk_size = 2, [1, 2], 1, 16
        args.device = args.device or "cpu"
        args.precision = "fp32"
    return args


# ---------------------------------------------------------------------------------------------- inputs
def _make_jpegs(task) -> list[bytes]:
    """JPEGs of synthetic characters, each made distinct by a shift and a tint (no two share a sha256)."""
    start, count, sizes, seed = task
    import numpy as np
    from PIL import Image

    from charattr_hf import synthetic

    base = synthetic.generate(min(count, 16), seed=seed, size=min(256, max(max(s) for s in sizes)), noise="clean")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        w, h = sizes[(start + i) % len(sizes)]
        img = base[i % len(base)]["image"].convert("RGB").resize((w, h), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.int16)
        arr = np.roll(arr, int(rng.integers(-8, 9)), axis=1) + rng.integers(-6, 7, size=3)
        buf = io.BytesIO()
        Image.fromarray(arr.clip(0, 255).astype("uint8")).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_jpegs(n: int, sizes: list[tuple[int, int]], procs: int) -> list[bytes]:
    per = math.ceil(n / procs)
    tasks = [(i * per, min(per, n - i * per), sizes, 1000 + i) for i in range(procs) if n - i * per > 0]
    with mp.get_context("fork").Pool(len(tasks)) as pool:
        parts = pool.map(_make_jpegs, tasks)
    return [b for part in parts for b in part]


# ---------------------------------------------------------------------------------------------- measurements
_DECODE = None


def _decode_init(image_size):
    global _DECODE
    from charattr_hf.stages.decode import DecodeStage
    from charattr_hf.stages.pixels import PixelSpec

    _DECODE = DecodeStage({"_pixels": PixelSpec(image_size)})


def _decode_batch(blobs: list[bytes]) -> int:
    out = _DECODE({"image": [{"bytes": b, "path": None} for b in blobs]})
    return sum(e is None for e in out["error"])


def cpu_decode_rates(jpegs: list[bytes], image_size, workers: list[int]) -> dict[int, float]:
    """images/s of the decode stage (to the model's input size) in k forked workers, for each k."""
    rates = {}
    for k in workers:
        subset = jpegs[: min(len(jpegs), 512 * k)]  # enough work for every worker, not minutes of it
        batches = [subset[i : i + 64] for i in range(0, len(subset), 64)]
        with mp.get_context("fork").Pool(k, initializer=_decode_init, initargs=(image_size,)) as pool:
            pool.map(_decode_batch, batches[: 2 * k])  # warm-up: workers started, modules imported
            t0 = time.perf_counter()
            ok = sum(pool.map(_decode_batch, batches, chunksize=1))
            rates[k] = len(subset) / (time.perf_counter() - t0)
        assert ok == len(subset), f"{len(subset) - ok} JPEGs failed to decode"
    return rates


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(model, image_size, batch_size: int, batches: int, device, dtype) -> float:
    import torch

    x = torch.randn(batch_size, 3, *image_size, device=device).to(dtype)
    with torch.inference_mode():
        for _ in range(2):
            model.encode_image(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(batches):
            out = model.encode_image(x, normalize=True)
        out.float().cpu()
        _sync(device)
    return batches * batch_size / (time.perf_counter() - t0)


def gpu_decode_loop(model, pre, jpegs: list[bytes], batch_size: int, device, dtype) -> float:
    """JPEG bytes -> decode_jpeg on ``device`` -> resize (shortest side) + centre crop -> normalise -> model."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg

    h, w = pre.image_size
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1) * 255
    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]

    def prepare(part):
        images = decode_jpeg(part, device=device)
        out = []
        for im in images:
            ih, iw = im.shape[-2:]
            scale = max(h / ih, w / iw)
            nh, nw = max(h, round(ih * scale)), max(w, round(iw * scale))
            r = F.interpolate(im[None].float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            top, left = (nh - h) // 2, (nw - w) // 2
            out.append(r[:, :, top : top + h, left : left + w])
        return ((torch.cat(out).clamp_(0, 255) - mean) / std).to(dtype)

    parts = [datas[i : i + batch_size] for i in range(0, len(datas), batch_size)]
    with torch.inference_mode():
        model.encode_image(prepare(parts[0]))  # warm-up (kernels, decoder handles)
        _sync(device)
        t0 = time.perf_counter()
        for part in parts:
            emb = model.encode_image(prepare(part), normalize=True)
        emb.float().cpu()
        _sync(device)
    return len(datas) / (time.perf_counter() - t0)


def pipeline_run(spec_args: dict, data, out: Path, batch_size: int, precision: str, device: str, num_proc: int,
                 chunk_size: int) -> float:
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.pipeline import PipelineOptions

    opts = PipelineOptions(**spec_args, schema="default", batch_size=batch_size, precision=precision,
                           use_cache=False, device=device, tags=False)
    t0 = time.perf_counter()
    result, _ = annotate_to_disk(data, out, options=opts, chunk_size=chunk_size, num_proc=num_proc, progress=False)
    assert result.complete and result.rows == len(data), "pipeline run incomplete"
    return len(data) / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse(argv)
    t_start = time.perf_counter()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="charattr-gpu-"))
    os.environ["HF_HOME"] = str(tmp / "hf")
    os.environ["CHARATTR_CACHE"] = str(tmp / "cache")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = args.workers or sorted({k for k in (1, 2, 4, 8, 16, 32, 64, cores) if k <= cores})
    num_proc = args.num_proc or cores
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]

    # CPU work that forks comes before this process touches torch or CUDA
    t0 = time.perf_counter()
    jpegs = make_jpegs(args.images, sizes, min(cores, 16))
    print(f"{len(jpegs)} synthetic JPEGs ({', '.join(args.sizes)}) in {time.perf_counter() - t0:.1f} s", flush=True)
    from datasets import Dataset, Image as ImageFeature, load_from_disk

    Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in jpegs]}).cast_column(
        "image", ImageFeature()).save_to_disk(str(tmp / "input"))
    data = load_from_disk(str(tmp / "input"))

    from charattr_hf.sources.clip.model import ClipSpec, preprocess_config

    specs = {}
    for name in args.models:
        if name == "tiny":
            from charattr_hf.testing import build_tiny_clip

            folder = build_tiny_clip(tmp / "tiny-clip", image_size=64)
            specs[name] = ({"model": f"local-dir:{folder}"}, ClipSpec.parse(f"local-dir:{folder}"))
        else:
            specs[name] = ({"model": name, "pretrained": "none"}, ClipSpec.parse(name, "none"))
    decode = {}
    for name, (_, spec) in specs.items():
        size = preprocess_config(spec).image_size
        if size not in decode:
            decode[size] = cpu_decode_rates(jpegs, size, workers)
            print(f"cpu decode to {size[0]}x{size[1]}: " + ", ".join(f"{k} workers {r:.0f}/s" for k, r in
                                                                        decode[size].items()), flush=True)

    import torch

    from charattr_hf.sources.clip.model import load_model

    device = torch.device(args.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke (CPU) to check the script", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    rows = []
    for name, (spec_args, spec) in specs.items():
        pre = preprocess_config(spec)
        model, _ = load_model(spec, device, args.precision)
        dtype = next(model.parameters()).dtype
        # the pipeline first: its process-wide model registry is filled by a small warm-up run
        warm = data.select(range(min(len(data), 2 * args.batch_size)))
        pipeline_run(spec_args, warm, tmp / f"warm-{name}", args.batch_size, args.precision, str(device), num_proc,
                     args.chunk_size)
        e2e = pipeline_run(spec_args, data, tmp / f"run-{name}", args.batch_size, args.precision, str(device),
                           num_proc, args.chunk_size)
        ceiling = model_only(model, pre.image_size, args.batch_size, args.model_batches, device, dtype)
        gdec = gpu_decode_loop(model, pre, jpegs, args.batch_size, device, dtype)
        rates = decode[pre.image_size]
        per_worker = max(r / k for k, r in rates.items())
        need = math.ceil(ceiling / per_worker)
        fed = [k for k, r in sorted(rates.items()) if r >= ceiling]
        row = {"model": name, "image_size": list(pre.image_size), "batch_size": args.batch_size,
               "precision": args.precision, "model_only": ceiling, "pipeline": e2e, "pipeline_num_proc": num_proc,
               "pipeline_vs_model_only": e2e / ceiling, "gpu_decode_loop": gdec,
               "cpu_decode": {str(k): r for k, r in rates.items()}, "cpu_decode_per_worker": per_worker,
               "workers_to_feed_gpu": need, "measured_workers_that_feed_gpu": fed[0] if fed else None}
        rows.append(row)
        print(f"{name}: model only {ceiling:.0f}/s, pipeline {e2e:.0f}/s ({num_proc} workers), "
              f"gpu decode loop {gdec:.0f}/s, cpu decode {per_worker:.0f}/s per worker -> {need} workers to feed it",
              flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        info = write_results(out_dir, gpu, cores, jpegs, args, t_start, rows, workers)  # after each model

    print()
    print(markdown(info, rows, workers))
    return 0


def write_results(out_dir: Path, gpu: str, cores: int, jpegs, args, t_start: float, rows, workers) -> dict:
    import torch

    info = {"device": gpu, "cores": cores, "torch": torch.__version__, "images": len(jpegs), "sizes": args.sizes,
            "cuda": torch.version.cuda, "seconds": time.perf_counter() - t_start, "smoke": args.smoke}
    (out_dir / "results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    (out_dir / "results.md").write_text(markdown(info, rows, workers))
    return info


def markdown(info: dict, rows: list[dict], workers: list[int]) -> str:
    lines = [f"Device: {info['device']}; {info['cores']} CPU cores; torch {info['torch']} (CUDA {info['cuda']}); "
             f"{info['images']} synthetic JPEGs ({', '.join(info['sizes'])}); whole script {info['seconds']:.0f} s.",
             "",
             "| model | batch | precision | model only (img/s) | pipeline, CPU decode (img/s) | pipeline / model only "
             "| GPU-decode loop (img/s) | CPU decode per worker (img/s) | workers to feed the GPU |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['precision']} | {r['model_only']:.0f} | {r['pipeline']:.0f} "
            f"({r['pipeline_num_proc']} workers) | {r['pipeline_vs_model_only']:.0%} | {r['gpu_decode_loop']:.0f} "
            f"| {r['cpu_decode_per_worker']:.0f} | {r['workers_to_feed_gpu']} |")
    lines += ["", "CPU decode (read + sha256 + quality + resize/crop to the model input) by number of workers:", "",
              "| model input | " + " | ".join(f"{k} workers" for k in workers) + " |",
              "|---|" + "---:|" * len(workers)]
    seen = set()
    for r in rows:
        key = tuple(r["image_size"])
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"| {key[0]}x{key[1]} | " + " | ".join(f"{r['cpu_decode'].get(str(k), float('nan')):.0f}"
                                                            for k in workers) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
