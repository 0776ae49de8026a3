"""Near-duplicate benchmark: quality on planted copies of synthetic characters, and speed/memory at scale.

    # quality: planted copies (mild edits, then flips and heavy crops separately), vs a grey 64-bit pHash
    python benchmarks/dedup.py quality --originals 1000 --size 256
    # scale: near-duplicate grouping of N signatures (each size in its own process, for its own peak memory)
    nice -n 5 python benchmarks/dedup.py scale --rows 100000 1000000
    # semantic: N 512-d embeddings with planted duplicates
    nice -n 5 python benchmarks/dedup.py semantic --rows 1000000

Quality. ``planted_rows`` draws distinct synthetic characters (every style; distinct characters share
composition) and gives half of them two copies with 1-3 *mild* edits each (resize, JPEG, crop <= 5%, border,
brightness, colour, text stamp), and two *hard* copies (mirror, or a 15-30% crop). Signatures come from the
real decode stage; grouping is :func:`charattr_hf.curation.dedup.near_pairs` + connected components. Pairwise
precision/recall of "same group" is reported on originals + mild copies; hard copies are scored separately (the
fraction of their pairs with their original's group found).

Scale. Synthetic signatures: random thumbnails (smooth, 16x16x3) and random 64-bit hashes, a tenth of the rows
being edited copies of others (thumbnail noise and a few flipped hash bits). Times are wall seconds of
``near_pairs`` + grouping; the ratio between sizes is what to compare (this machine's speed drifts).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


# --------------------------------------------------------------------------------------------- quality
def _pair_scores(truth: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    idx = np.flatnonzero(mask)
    t, p = truth[idx], pred[idx]
    same = t[:, None] == t[None, :]
    predicted = (p[:, None] == p[None, :]) & (p[:, None] >= 0)
    iu = np.triu_indices(len(idx), 1)
    same, predicted = same[iu], predicted[iu]
    tp = int((same & predicted).sum())
    return tp / max(1, int(predicted.sum())), tp / max(1, int(same.sum()))


def _grey_phash(data: bytes) -> np.ndarray:
    from PIL import Image

    from charattr_hf.stages.signatures import _dct_matrix

    dct = _dct_matrix(32)[:8]
    im = Image.open(io.BytesIO(data)).convert("L").resize((32, 32), Image.Resampling.BOX)
    low = (dct @ np.asarray(im, np.float32) @ dct.T).ravel()
    return np.packbits(low > np.median(low))


def quality(args) -> dict:
    from charattr_hf.curation.dedup import NearConfig, connected_components, near_pairs
    from charattr_hf.curation.planted import planted_rows
    from charattr_hf.stages.decode import DecodeStage

    t0 = time.perf_counter()
    rows = planted_rows(n_originals=args.originals, copies=2, n_with_copies=args.originals // 2, hard_copies=2,
                        size=args.size, seed=args.seed)
    t1 = time.perf_counter()
    stage = DecodeStage()
    sigs = []
    for s in range(0, len(rows), 256):
        out = stage({"image": [{"bytes": r["image"], "path": None} for r in rows[s : s + 256]]})
        sigs += out["signature"]
    t2 = time.perf_counter()
    n = len(rows)
    phash = np.stack([np.frombuffer(s["phash"], np.uint8) for s in sigs])
    thumbs = np.stack([np.frombuffer(s["thumb"], np.uint8) for s in sigs])
    truth = np.array([r["group"] for r in rows])
    kind = np.array([r["kind"] for r in rows])
    mild = kind != "hard"
    results = []

    def score(name: str, i: np.ndarray, j: np.ndarray, seconds: float):
        label = connected_components(n, i, j)
        size = np.bincount(label, minlength=n)
        pred = np.where(size[label] > 1, label, -1)
        p, r = _pair_scores(truth, pred, mild)
        # hard copies: found when grouped with their original
        orig = {g: k for k, (g, t) in enumerate(zip(truth, kind)) if t == "original"}
        hard = [k for k in range(n) if kind[k] == "hard"]
        hard_found = np.mean([pred[k] >= 0 and pred[k] == pred[orig[truth[k]]] for k in hard]) if hard else float("nan")
        by_edit = defaultdict(list)
        for k in range(n):
            if kind[k] == "mild":
                o = orig[truth[k]]
                for e in rows[k]["edits"]:
                    by_edit[e].append(pred[k] >= 0 and pred[k] == pred[o])
        hard_by = defaultdict(list)
        for k in hard:
            o = orig[truth[k]]
            hard_by[rows[k]["edits"][0]].append(pred[k] >= 0 and pred[k] == pred[o])
        results.append({"method": name, "precision": round(p, 4), "recall": round(r, 4),
                        "hard_found": round(float(hard_found), 3),
                        "hard_by_edit": {e: round(float(np.mean(v)), 3) for e, v in sorted(hard_by.items())},
                        "recall_by_edit": {e: round(float(np.mean(v)), 3) for e, v in sorted(by_edit.items())},
                        "seconds": round(seconds, 3)})

    # the curation's near duplicates (defaults), and a few thresholds around them
    for radius, thr in [(10, 10.0), (14, 10.0), (10, 11.0), (14, 12.0), (64, 10.0), (10, 8.0)]:
        cfg = NearConfig(phash_radius=radius, thumb_threshold=thr)
        s = time.perf_counter()
        p = near_pairs(phash, thumbs, np.arange(n), cfg)
        score(f"curation near: phash<={radius}, thumb<={thr:g}", p.i, p.j, time.perf_counter() - s)
    # baseline: grey 64-bit pHash of the whole image alone
    grey = np.stack([_grey_phash(r["image"]) for r in rows])
    bits = np.unpackbits(grey, axis=1).astype(np.int16)
    ham = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    for radius in (4, 8):
        i, j = np.nonzero(np.triu(ham <= radius, 1))
        score(f"baseline grey pHash-64 <= {radius}", i, j, 0.0)
    return {"rows": n, "originals": args.originals, "size": args.size, "mild_copies": int((kind == "mild").sum()),
            "hard_copies": int((kind == "hard").sum()), "draw_seconds": round(t1 - t0, 1),
            "decode_seconds": round(t2 - t1, 1), "results": results}


# --------------------------------------------------------------------------------------------- scale
def synthetic_signatures(n: int, seed: int = 0):
    """Random smooth thumbnails and random hashes; the last tenth are edited copies of earlier rows."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    # smooth random thumbnails: 4x4x3 random colours upsampled to 16x16 (bilinear), in blocks
    base = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    thumbs = np.empty((n, 16 * 16 * 3), np.uint8)
    grid = np.linspace(0, 3, 16)
    i0 = np.floor(grid).astype(int).clip(0, 2)
    f = (grid - i0).astype(np.float32)
    for s in range(0, n, 65536):
        b = base[s : s + 65536].astype(np.float32)
        rows_ = b[:, i0] * (1 - f)[None, :, None, None] + b[:, i0 + 1] * f[None, :, None, None]
        full = rows_[:, :, i0] * (1 - f)[None, None, :, None] + rows_[:, :, i0 + 1] * f[None, None, :, None]
        thumbs[s : s + 65536] = full.reshape(len(b), -1).astype(np.uint8)
    phash = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    m = n // 10
    src = rng.integers(0, n - m, m)
    noise = rng.normal(0, 4, (m, thumbs.shape[1]))
    thumbs[n - m :] = np.clip(thumbs[src].astype(np.float32) + noise, 0, 255).astype(np.uint8)
    bits = np.unpackbits(phash[src], axis=1)
    flips = rng.random(bits.shape) < 0.06  # ~4 bits of 64
    phash[n - m :] = np.packbits(bits ^ flips, axis=1)
    return phash, thumbs, src


def scale_one(n: int, seed: int = 0) -> dict:
    from charattr_hf.curation.dedup import NearConfig, connected_components, near_pairs

    t0 = time.perf_counter()
    phash, thumbs, src = synthetic_signatures(n, seed)
    t1, c1 = time.perf_counter(), time.process_time()
    p = near_pairs(phash, thumbs, np.arange(n), NearConfig())
    t2 = time.perf_counter()
    label = connected_components(n, p.i, p.j)
    t3, c3 = time.perf_counter(), time.process_time()
    m = len(src)
    found = float(np.mean(label[n - m :] == label[src]))
    truth = np.arange(n)
    truth[n - m :] = src
    false = int((truth[p.i] != truth[p.j]).sum())  # pairs that are not planted copies
    return {"rows": n, "generate_s": round(t1 - t0, 1), "near_pairs_s": round(t2 - t1, 1), "cpu_s": round(c3 - c1, 1),
            "components_s": round(t3 - t2, 2), "grouping_s": round(t3 - t1, 1), "pairs": len(p),
            "planted_found": round(found, 4), "false_pairs": false, "peak_rss_gb": round(_peak_gb(), 2)}


def semantic_one(n: int, dim: int = 512, seed: int = 0) -> dict:
    from charattr_hf.curation.dedup import SemanticConfig, connected_components, semantic_pairs

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    # clustered embeddings (like CLIP's: many near a few hundred directions), float16 as stored
    centres = rng.normal(size=(512, dim)).astype(np.float32)
    emb = np.empty((n, dim), np.float16)
    for s in range(0, n, 65536):
        k = min(65536, n - s)
        c = centres[rng.integers(0, len(centres), k)]
        emb[s : s + k] = (c + 1.2 * rng.normal(size=(k, dim)).astype(np.float32)).astype(np.float16)
    m = n // 10
    src = rng.integers(0, n - m, m)
    for s in range(0, m, 65536):
        k = min(65536, m - s)
        x = emb[src[s : s + k]].astype(np.float32)
        emb[n - m + s : n - m + s + k] = (x + 0.08 * rng.normal(size=x.shape).astype(np.float32)).astype(np.float16)
    t1, c1 = time.perf_counter(), time.process_time()
    p = semantic_pairs(emb, np.arange(n), SemanticConfig(threshold=0.95))
    t2, c2 = time.perf_counter(), time.process_time()
    label = connected_components(n, p.i, p.j)
    found = float(np.mean(label[n - m :] == label[src]))
    truth = np.arange(n)
    truth[n - m :] = src
    extra = int((truth[p.i] != truth[p.j]).sum())
    return {"rows": n, "dim": dim, "generate_s": round(t1 - t0, 1), "semantic_s": round(t2 - t1, 1), "cpu_s": round(c2 - c1, 1),
            "pairs": len(p), "planted_found": round(found, 4), "false_pairs": extra,
            "peak_rss_gb": round(_peak_gb(), 2)}


def _in_subprocess(mode: str, n: int, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "_one", mode, str(n), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--originals", type=int, default=1000)
    q.add_argument("--size", type=int, default=256)
    q.add_argument("--seed", type=int, default=0)
    for name in ("scale", "semantic"):
        s = sub.add_parser(name)
        s.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
        s.add_argument("--threads", type=int, default=0, help="faiss/BLAS threads (0: library default)")
    one = sub.add_parser("_one")
    one.add_argument("kind")
    one.add_argument("rows", type=int)
    one.add_argument("--threads", type=int, default=0)
    one.add_argument("--quality_json", default=None)
    q.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    if args.mode == "_one":
        if args.threads:
            import faiss

            faiss.omp_set_num_threads(args.threads)
        res = scale_one(args.rows) if args.kind == "scale" else semantic_one(args.rows)
        print(json.dumps(res))
        return 0
    if args.mode == "quality":
        res = quality(args)
        print(f"planted set: {res['rows']} rows ({res['originals']} originals, {res['mild_copies']} mild copies, "
              f"{res['hard_copies']} hard copies), {res['size']} px; decode {res['decode_seconds']}s")
        print(f"{'method':42s} {'precision':>9s} {'recall':>7s} {'hard':>6s}  recall by edit / hard by edit")
        for r in res["results"]:
            edits = " ".join(f"{k} {v:.2f}" for k, v in r["recall_by_edit"].items())
            hard = " ".join(f"{k} {v:.2f}" for k, v in r["hard_by_edit"].items())
            print(f"{r['method']:42s} {r['precision']:9.3f} {r['recall']:7.3f} {r['hard_found']:6.3f}  {edits} | {hard}")
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
        return 0
    extra = ["--threads", str(args.threads)] if args.threads else []
    rows = []
    for n in args.rows:
        res = _in_subprocess(args.mode, n, extra)
        rows.append(res)
        print(json.dumps(res), flush=True)
    key = "grouping_s" if args.mode == "scale" else "semantic_s"
    print()
    print(f"{'rows':>10s} {'seconds':>8s} {'x time':>7s} {'cpu s':>7s} {'x cpu':>6s} {'peak GB':>8s} "
          f"{'planted found':>14s} {'false pairs':>12s}")
    for r in rows:
        ratio = r[key] / rows[0][key] if rows[0][key] else float("nan")
        cpu = r["cpu_s"] / rows[0]["cpu_s"] if rows[0]["cpu_s"] else float("nan")
        print(f"{r['rows']:>10d} {r[key]:>8.1f} {ratio:>7.2f} {r['cpu_s']:>7.1f} {cpu:>6.2f} {r['peak_rss_gb']:>8.2f} "
              f"{r['planted_found']:>14.4f} {r['false_pairs']:>12d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
