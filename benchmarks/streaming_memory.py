"""Peak memory of a streamed annotation run as the input grows: N rows of a Parquet input, several sizes.

    python benchmarks/streaming_memory.py --rows 10000 100000 --json benchmarks/results/streaming_memory.json

For each size, a Parquet input of ``--rows_per_file`` rows per file (small distinct PNGs with tags) is written,
then ``recipes/annotate.py --streaming`` runs on it in a subprocess with its own ``HF_HOME`` (no warm cache),
the demo CLIP, the tag parser and ``--num_proc`` decode workers. The whole process tree's resident memory
(the recipe and its workers, summed) is sampled every 0.1 s; the table gives its peak, the recipe process's own
peak (``ru_maxrss``), the wall time and the rows per second. Memory that stays flat as the input grows 10x is
the point; the sizes' ratio is what to read (this machine's speed drifts).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--rows_per_file", type=int, default=5_000)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--model", default="demo", help="--model of the recipe ('' for decode and tags only)")
    p.add_argument("--num_proc", type=int, default=2)
    p.add_argument("--chunk_size", type=int, default=1024)
    p.add_argument("--workdir", default=None, help="keep inputs and outputs here (default: a temp folder)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


TAGS = ["1girl, blonde_hair, blue_eyes", "1boy, black_hair, red_eyes, glasses", "1girl, long_hair, smile, hat",
        "silver_hair, green_eyes, school_uniform"]


def write_input(folder: Path, rows: int, per_file: int, size: int) -> None:
    """Distinct small PNGs (random blocks), in files of ``per_file`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("tags", pa.string())])
    meta = {b"huggingface": json.dumps({"info": {"features": {
        "image": {"_type": "Image"}, "tags": {"dtype": "string", "_type": "Value"}}}}).encode()}
    schema = schema.with_metadata(meta)
    for f, start in enumerate(range(0, rows, per_file)):
        images, tags = [], []
        for i in range(start, min(rows, start + per_file)):
            blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
            img = Image.fromarray(blocks).resize((size, size), Image.NEAREST)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            images.append({"bytes": buf.getvalue(), "path": f"img_{i:07d}.png"})
            tags.append(TAGS[i % len(TAGS)])
        table = pa.table({"image": images, "tags": tags}, schema=schema)
        pq.write_table(table, folder / f"part-{f:05d}.parquet")


class TreeSampler(threading.Thread):
    """The peak of the summed RSS of a process and its descendants."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self):
        import psutil

        while not self.stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.1)


def measure(args, rows: int, work: Path) -> dict:
    data = work / f"input-{rows}"
    if not data.exists():
        t = time.perf_counter()
        write_input(data, rows, args.rows_per_file, args.image_size)
        print(f"wrote {rows} rows in {time.perf_counter() - t:.0f}s", flush=True)
    out = work / f"out-{rows}"
    env = dict(os.environ, HF_HOME=str(work / f"hf-{rows}"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(ROOT / "recipes" / "annotate.py"), "--dataset", str(data), "--streaming",
           "--model", args.model, "--output_dir", str(out), "--num_proc", str(args.num_proc),
           "--chunk_size", str(args.chunk_size), "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    log, _ = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"run of {rows} rows failed:\n{log[-3000:]}")
    own = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    info = json.loads((out / "run_info.json").read_text())
    assert info["rows"] == rows, info
    return {
        "rows": rows,
        "files": -(-rows // args.rows_per_file),
        "peak_tree_rss_mib": round(sampler.peak / 2**20, 1),
        # ru_maxrss of the children is a running maximum: only meaningful when it grew in this run
        "peak_recipe_rss_mib": round(own / 1024, 1) if own > before else None,
        "seconds": round(seconds, 1),
        "rows_per_second": round(rows / seconds, 1),
    }


def main(argv=None) -> int:
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="charattr-stream-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        results = []
        for rows in args.rows:
            results.append(measure(args, rows, work))
            print(json.dumps(results[-1]), flush=True)
    print()
    print("| rows | Parquet files | peak RSS, recipe + workers (MiB) | peak RSS, recipe process (MiB) | wall (s) | rows/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']:,} | {r['files']} | {r['peak_tree_rss_mib']} | {r['peak_recipe_rss_mib']} | "
              f"{r['seconds']} | {r['rows_per_second']} |")
    if len(results) > 1:
        first, last = results[0], results[-1]
        print(f"\npeak RSS ratio {last['rows']:,} / {first['rows']:,} rows: "
              f"{last['peak_tree_rss_mib'] / first['peak_tree_rss_mib']:.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
