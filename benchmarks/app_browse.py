"""Browsing a large annotated output with the review app's store: time to a page and memory, at 1M rows.

Builds an annotated output of ``--rows`` rows (a simulated 10,000-row table, typed like the pipeline's output,
repeated with new ids and hashes) in Parquet files of 100,000 rows with row groups of 1,024 rows (the runner's
layout), then times, on a fresh :class:`~charattr_hf.app.data.AnnotatedStore` each: opening it, the first and the
last page of a filter of each kind, and the process's peak RSS growth (the table itself is ~``--rows`` x 0.5 KB).

    python benchmarks/app_browse.py --rows 1000000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    """Resident memory now (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--page_size", type=int, default=24)
    args = parser.parse_args()

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from charattr_hf import fusion_training as ft
    from charattr_hf.app.data import AnnotatedStore, Query
    from charattr_hf.schema import load_schema

    schema = load_schema("synthetic")
    base_n = 10_000
    sim = ft.simulate_annotated(schema, base_n, seed=0, sources=("clip", "tags"), styles=("anime", "sketch"))
    cols = {"id": sim["id"], "index": sim["index"], "path": [None] * base_n,
            "sha256": [f"{i:064x}" for i in range(base_n)], "error": [None] * base_n, "flags": sim["flags"],
            "width": [512] * base_n, "height": [512] * base_n, "quality": sim["quality"]}
    for attr in schema:
        probs = [c[attr.name] for c in sim["probs_clip"]]
        if attr.multi_label:
            cols[attr.name] = [[i for i, p in enumerate(v) if p >= 0.5] for v in probs]
            cols[f"{attr.name}_confidence"] = [[float(p) for p in v if p >= 0.5] for v in probs]
        else:
            cols[attr.name] = [int(np.argmax(v)) for v in probs]
            cols[f"{attr.name}_confidence"] = [float(max(v)) for v in probs]
    cols["probs_clip"], cols["probs_tags"] = sim["probs_clip"], sim["probs_tags"]
    from datasets import Dataset

    feats = schema.output_features(("clip", "tags"))
    for column in feats:  # output columns of other stages (e.g. curation's signature): null here
        cols.setdefault(column, [None] * base_n)
    base = Dataset.from_dict(cols, features=feats).data.table
    root = Path(tempfile.mkdtemp(prefix="charattr-browse-")) / "annotated"
    (root / "data").mkdir(parents=True)
    t0 = time.perf_counter()
    per_file, files, written = 100_000, max(1, -(-args.rows // 100_000)), 0
    for f in range(files):
        n = min(per_file, args.rows - written)
        with pq.ParquetWriter(root / "data" / f"train-{f:05d}-of-{files:05d}.parquet", base.schema) as w:
            for k in range(0, n, base_n):
                m = min(base_n, n - k)
                part = base.slice(0, m)
                rep = (written + k) // base_n
                ids = pc.binary_join_element_wise(part.column("id"), pa.scalar(f"-r{rep}"), "")
                part = part.set_column(0, "id", ids)
                part = part.set_column(3, "sha256", pc.binary_join_element_wise(
                    part.column("sha256"), pa.scalar(f"{rep}"), ""))
                w.write_table(part, row_group_size=1024)
        written += n
    size = sum(p.stat().st_size for p in (root / "data").glob("*.parquet")) / 2**20
    print(f"wrote {written} rows in {files} files ({size:.0f} MiB) in {time.perf_counter() - t0:.0f} s\n")

    queries = {
        "no filter": Query(),
        "hair_color = blue": Query("hair_color", "blue"),
        "hair_color = blue, confidence 0.3-0.6": Query("hair_color", "blue", 0.3, 0.6),
        "flag grayscale": Query(flag="grayscale"),
        "sources disagree on hair_color": Query("hair_color", disagree=True),
        "accessories has hat, confidence <= 0.7": Query("accessories", "hat", 0.0, 0.7),
        "duplicates (none exist: full scan + hash count)": Query(duplicates="grouped"),
    }
    import gc

    del sim, cols, base
    gc.collect()
    rss0, rss_max = rss_mb(), 0.0
    print("| filter | open (s) | first page (s) | row groups read | page 100 (s) | matches (full scan) | full scan (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, q in queries.items():
        t = time.perf_counter()
        store = AnnotatedStore(str(root))
        t_open = time.perf_counter() - t
        t = time.perf_counter()
        rows, st = store.page(q, 0, args.page_size)
        store.read_rows(rows)
        t_first = time.perf_counter() - t
        scanned = st["scanned"]
        t = time.perf_counter()
        store.page(q, 99, args.page_size)
        t_100 = time.perf_counter() - t
        t = time.perf_counter()
        full = store.find(q, 10**12)
        t_full = time.perf_counter() - t + t_100 + t_first
        print(f"| {name} | {t_open:.2f} | {t_first:.3f} | {scanned} of {len(store.groups)} | {t_100:.3f} | "
              f"{len(full['matches'])} | {t_full:.1f} |")
        rss_max = max(rss_max, rss_mb())
        del store, full
    print(f"\nresident memory: {rss0:.0f} MB before the first store, at most {rss_max:.0f} MB after a query "
          "(the matches of a full scan are kept as a list of row numbers)")


if __name__ == "__main__":
    main()
