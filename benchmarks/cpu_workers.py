"""The CPU part of a chunk (identify, decode with CLIP-size pixels, tags) run three ways, in one process:

- one process (no workers);
- ``datasets.map(num_proc=N)``: workers forked from this process for every chunk (the former way; unsafe while
  a model runs in another thread);
- :class:`charattr_hf.workers.CpuWorkers`: N workers forked from a forkserver, one pool for every chunk (now).

    python benchmarks/cpu_workers.py --images 1024 --chunk_size 256 --num_proc 2

Prints images/s per way and the ratio to the forked ``datasets.map``; the first chunk of each way is included
(the pool's start-up is part of the cost).
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def images(n: int, size: int) -> "object":
    from datasets import Dataset, Image as HFImage
    from PIL import Image

    rng = np.random.default_rng(0)
    cells = []
    for i in range(n):
        arr = (rng.random((size, size, 3)) * 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        cells.append({"bytes": buf.getvalue(), "path": f"img_{i}.png"})
    tags = ["1girl, solo, long_hair, blonde_hair, blue_eyes"] * n
    return Dataset.from_dict({"image": cells, "tags": tags}).cast_column("image", HFImage(decode=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--chunk_size", type=int, default=256)
    parser.add_argument("--num_proc", type=int, default=2)
    args = parser.parse_args()

    import datasets
    from datasets import Features, Value

    from charattr_hf.schema import load_schema
    from charattr_hf.stages.base import Compose
    from charattr_hf.stages.decode import DecodeStage
    from charattr_hf.stages.pixels import PixelSpec
    from charattr_hf.stages.fusion import SimpleFusion
    from charattr_hf.stages.identity import Identify
    from charattr_hf.sources.tags.stage import TagStage
    from charattr_hf.pipeline import Pipeline
    from charattr_hf.workers import CpuWorkers

    datasets.disable_progress_bars()
    schema = load_schema("default")
    cpu = [Identify(), DecodeStage({"_pixels": PixelSpec(224)}), TagStage(schema)]
    from charattr_hf.stages.base import Stage

    class Model(Stage):  # stands for the CLIP stage: the reader of the pixels (the CPU part keeps them for it)
        name = "model"

        def input_columns(self):
            return ["_pixels", "sha256"]

        def features(self):
            return {}

    pipeline = Pipeline(schema, cpu=cpu, device=[Model()], fusion=SimpleFusion(schema, ["tags"]))
    tmp = Path(tempfile.mkdtemp(prefix="cpu-workers-"))
    # memory-mapped, as a dataset read with load_dataset is: workers receive the file's path, not the bytes
    images(args.images, args.size).save_to_disk(str(tmp / "input"))
    ds = datasets.load_from_disk(str(tmp / "input"))
    ds = ds.add_column("index", list(range(len(ds))), feature=Value("int64"))
    chunks = [ds.select(range(s, min(s + args.chunk_size, len(ds)))) for s in range(0, len(ds), args.chunk_size)]

    def forked(chunk, scratch):  # the former way: datasets' own pool, forked from this process per chunk
        stage = Compose(cpu)
        feats = Features({**chunk.features, **stage.features(), "error": Value("string")})
        return chunk.map(stage, batched=True, batch_size=64, num_proc=args.num_proc, features=feats,
                         cache_file_name=str(scratch / "cpu.arrow"), load_from_cache_file=False)

    results = {}
    try:
        for name in ("one process", "datasets.map(num_proc) forked", "CpuWorkers (forkserver)"):
            workers = CpuWorkers(args.num_proc) if name.startswith("CpuWorkers") else None
            start = time.perf_counter()
            rows = 0
            for k, chunk in enumerate(chunks):
                scratch = tmp / f"{name[:3]}-{k}"
                scratch.mkdir(parents=True)
                if name == "one process":
                    out = pipeline.cpu_part(chunk, scratch, num_proc=None)
                elif workers is None:
                    out = forked(chunk, scratch)
                else:
                    out = pipeline.cpu_part(chunk, scratch, num_proc=args.num_proc, workers=workers)
                rows += out.num_rows
            results[name] = rows / (time.perf_counter() - start)
            if workers is not None:
                workers.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = results["datasets.map(num_proc) forked"]
    print(f"| CPU part, {args.images} PNGs of {args.size} px, chunks of {args.chunk_size}, {args.num_proc} workers "
          "| images/s | vs. forked map |")
    print("|---|---:|---:|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.1f} | {100 * rate / base:.0f} % |")


if __name__ == "__main__":
    main()
