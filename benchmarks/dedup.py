"""Near-duplicate benchmark: real images with planted edits and peers, synthetic planted copies, and scale.

    # real: real photos, illustrations and SD renders (many look-alikes) + edited copies; peers in the same run
    pip install imagededup imagehash                      # the peers (not dependencies of charattr-hf)
    python benchmarks/dedup.py real --real_dir ../shared/real --real_dir path/to/sdeval/test/testfile \
        --real_dir path/to/imagehash/tests/data [--before path/to/a/checkout/before/19]
    # quality: planted copies of synthetic characters (mild edits, then flips and heavy crops separately)
    python benchmarks/dedup.py quality --originals 1000 --size 256
    # scale: near-duplicate grouping of N signatures (each size in its own process, for its own peak memory)
    nice -n 5 python benchmarks/dedup.py scale --rows 100000 1000000
    # semantic: N 512-d embeddings with planted duplicates
    nice -n 5 python benchmarks/dedup.py semantic --rows 1000000

Real. Every image file under the ``--real_dir`` folders (recursively) is an original, except copies already
there (names ending in _hflip, _resize, _rotation, _gray, _corrupt; the same picture twice: same bytes, or the
same 64x64 thumbnail within 4 levels) and ``--exclude`` patterns (by default explicit renders and the folders of
``../shared/real`` that hold copies). Each original gets ``--copies`` edited copies, the edits taken in turn from
the common ones (half size, JPEG q40, WebP, 4 % cut from every side and scaled back, brightness +12 %, a watermark
box, a white border of 3-8 %, a black letterbox to square or 16:9) and the hard ones (mirror, 10-20 % cut from one
side). Everything is written to one folder; this toolkit annotates it (the real decode stage, no model) and runs
``curate`` with its default config, and the peers run on the same folder: imagededup PHash at its default
threshold (10) and imagehash phash / whash at Hamming distance <= 10 (and phash <= 6, a stricter setting).
Pairwise precision of "same group" over all rows (look-alikes included), and per edit the copies grouped with
their original. ``--before`` runs the signatures and grouping of another checkout (before #19) on the same folder.

Quality. ``planted_rows`` draws distinct synthetic characters (every style; distinct characters share
composition) and gives half of them two copies with 1-3 *mild* edits each (resize, JPEG, crop <= 5%, border,
brightness, colour, text stamp), and two *hard* copies (mirror, or a 15-30% crop). Signatures come from the
real decode stage; grouping is :func:`charattr_hf.curation.dedup.near_pairs` + connected components.

Scale. Synthetic signatures: random thumbnails (smooth, 16x16x3), random 64-bit hashes and 48 local features per
row whose descriptors scatter around 4,096 shared "visual words" (so that hash buckets collide as real ORB
descriptors do), a tenth of the rows being edited copies of others (thumbnail noise, a few flipped hash and
descriptor bits, jittered and dropped features). Times are wall seconds of ``near_pairs`` + grouping; the ratio
between sizes is what to compare (this machine's speed drifts).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
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


# --------------------------------------------------------------------------------------------- real
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
DERIVED = re.compile(r"_(hflip|resize|rotation|gray|corrupt)$|^alpha_channel_image$")
#: Left out by default: explicit renders, and the folders of ../shared/real that hold copies of other files there.
EXCLUDE = ("nude", "bondage", "danbooru_7134032", "danbooru_7134079", "sample/6.png", "formats/",
           "imagededup-mixed/", "kohya/img/", "aicorrupt/")
COMMON = ("half", "jpeg40", "webp", "crop4", "bright12", "watermark", "white_border", "letterbox")
HARD = ("mirror", "crop_side")


def real_pool(dirs: list[str], exclude=EXCLUDE) -> list[tuple[str, bytes, str]]:
    """``(relative path, file bytes, suffix)`` of the distinct real images under ``dirs``."""
    from PIL import Image

    seen, thumbs, out = set(), [], []
    for d in dirs:
        for p in sorted(Path(d).rglob("*")):
            rel = p.relative_to(d).as_posix()
            if p.suffix.lower() not in IMAGE_SUFFIXES or DERIVED.search(p.stem) or any(e in rel for e in exclude):
                continue
            data = p.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            try:
                im = Image.open(io.BytesIO(data))
                im.load()
                t = np.asarray(im.convert("RGB").resize((64, 64), Image.Resampling.BOX), np.float32)
            except Exception:  # noqa: BLE001 - not an image: not part of the set
                continue
            if digest in seen or any(np.abs(t - u).mean() < 4 for u in thumbs):
                continue
            seen.add(digest)
            thumbs.append(t)
            out.append((rel, data, p.suffix.lower()))
    return out


def _jpeg(im, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **({"quality": 90} | kw))
    return buf.getvalue()


def real_edit(im, name: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One edit of the real-image set: ``(file bytes, suffix)``."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageOps

    w, h = im.size
    if name == "half":
        return _jpeg(im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS)), ".jpg"
    if name == "jpeg40":
        return _jpeg(im, quality=40), ".jpg"
    if name == "webp":
        buf = io.BytesIO()
        im.save(buf, "WEBP", quality=80)
        return buf.getvalue(), ".webp"
    if name == "crop4":
        dx, dy = round(0.04 * w), round(0.04 * h)
        return _jpeg(im.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.LANCZOS)), ".jpg"
    if name == "bright12":
        return _jpeg(ImageEnhance.Brightness(im).enhance(1.12)), ".jpg"
    if name == "watermark":
        out = im.copy()
        d = ImageDraw.Draw(out)
        bw, bh = round(0.3 * w), round(0.07 * h)
        margin = round(w * rng.uniform(0.02, 0.05))
        x = margin if rng.random() < 0.5 else w - bw - margin
        y = h - bh - round(h * rng.uniform(0.02, 0.05))
        d.rectangle([x, y, x + bw, y + bh], fill=(255, 255, 255))
        d.text((x + 4, y + bh // 4), "@repost " + "".join(rng.choice(list("abcdefxyz0123"), 6)), fill=(0, 0, 0))
        return _jpeg(out), ".jpg"
    if name == "white_border":
        b = max(2, round(min(w, h) * rng.uniform(0.03, 0.08)))
        return _jpeg(ImageOps.expand(im, border=b, fill=(255, 255, 255))), ".jpg"
    if name == "letterbox":
        if rng.random() < 0.5:
            tw = th = max(w, h)
        else:  # to 16:9 (or 9:16) around the picture
            tw, th = (max(w, round(h * 16 / 9)), h) if w >= h else (w, max(h, round(w * 16 / 9)))
            if (tw, th) == (w, h):
                tw = round(w * 1.15)
        canvas = Image.new("RGB", (tw, th), (0, 0, 0))
        canvas.paste(im, ((tw - w) // 2, (th - h) // 2))
        return _jpeg(canvas), ".jpg"
    if name == "mirror":
        return _jpeg(ImageOps.mirror(im)), ".jpg"
    if name == "crop_side":
        f = rng.uniform(0.10, 0.20)
        box = [(round(f * w), 0, w, h), (0, round(f * h), w, h), (0, 0, w - round(f * w), h),
               (0, 0, w, h - round(f * h))][int(rng.integers(4))]
        return _jpeg(im.crop(box)), ".jpg"
    raise ValueError(f"unknown edit {name!r}")


def build_real_set(pool, folder: Path, copies: int = 2, seed: int = 0) -> list[dict]:
    """Originals (their own bytes) and edited copies written to ``folder``; the rows, with group and edit."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    edits = COMMON + HARD
    rows, k = [], 0
    for g, (rel, data, suffix) in enumerate(pool):
        name = f"o{g:03d}{suffix}"
        (folder / name).write_bytes(data)
        rows.append({"file": name, "group": g, "edit": None, "source": rel})
        im = Image.open(io.BytesIO(data)).convert("RGB")
        for c in range(copies):
            e = edits[k % len(edits)]
            k += 1
            blob, ext = real_edit(im, e, rng)
            fn = f"o{g:03d}-{c}-{e}{ext}"
            (folder / fn).write_bytes(blob)
            rows.append({"file": fn, "group": g, "edit": e, "source": rel})
    return rows


def _real_scores(rows: list[dict], label: np.ndarray) -> dict:
    truth = np.array([r["group"] for r in rows])
    iu = np.triu_indices(len(rows), 1)
    same = (truth[:, None] == truth[None, :])[iu]
    pred = (label[:, None] == label[None, :])[iu]
    tp = int((same & pred).sum())
    orig = {r["group"]: k for k, r in enumerate(rows) if r["edit"] is None}
    by: dict[str, list[bool]] = defaultdict(list)
    for k, r in enumerate(rows):
        if r["edit"]:
            by[r["edit"]].append(bool(label[k] == label[orig[r["group"]]]))
    common = [v for e in COMMON for v in by[e]]
    return {"precision": round(tp / max(1, int(pred.sum())), 3), "recall": round(tp / max(1, int(same.sum())), 3),
            "false_pairs": int((pred & ~same).sum()), "common": round(float(np.mean(common)), 3),
            "by_edit": {e: [int(np.sum(by[e])), len(by[e])] for e in COMMON + HARD}}


def _labels(n: int, i, j) -> np.ndarray:
    from charattr_hf.curation.dedup import connected_components

    return connected_components(n, np.asarray(i, np.int64), np.asarray(j, np.int64))


def _ours(rows: list[dict], folder: Path, work: Path, configs: dict[str, str | None]) -> dict:
    """Annotate the folder (the real decode stage; no model) and curate it with each config."""
    from datasets import Dataset, Features

    from charattr_hf.curation.curate import curate
    from charattr_hf.schema import load_schema
    from charattr_hf.stages.decode import DecodeStage

    t0 = time.perf_counter()
    cells = [{"bytes": (folder / r["file"]).read_bytes(), "path": None} for r in rows]
    out = DecodeStage()({"image": cells})
    decode_s = time.perf_counter() - t0
    feats = load_schema("default").output_features(sources=[])
    data = {c: [None] * len(rows) for c in feats}
    data.update({c: out[c] for c in ("sha256", "error", "flags", "width", "height", "quality", "signature")})
    data["id"] = [r["file"] for r in rows]
    data["path"] = [str(folder / r["file"]) for r in rows]
    data["index"] = list(range(len(rows)))
    ann = work / "annotated"
    (ann / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(data, features=Features(feats)).to_parquet(str(ann / "data" / "train-00000-of-00001.parquet"))
    results = {}
    for name, cfg_text in configs.items():
        cfg = None
        if cfg_text is not None:
            cfg = work / f"{name}.yaml"
            cfg.write_text(cfg_text)
        start = time.perf_counter()
        curate(ann, work / f"curated-{name}", cfg)
        seconds = time.perf_counter() - start
        import pyarrow.parquet as pq

        got = {}
        kept_original = []
        for split in ("train", "quarantine"):
            for f in sorted((work / f"curated-{name}" / "data").glob(f"{split}-*.parquet")):
                t = pq.read_table(f, columns=["id", "dup_group", "duplicate_of"]).to_pylist()
                for r in t:
                    got[r["id"]] = (r["dup_group"], r["duplicate_of"])
        index = {r["file"]: k for k, r in enumerate(rows)}
        label = np.arange(len(rows))
        for fid, (g, _) in got.items():
            if g is not None:
                label[index[fid]] = len(rows) + g
        for r in rows:  # the original kept (in train, no duplicate_of) in its group
            if r["edit"] is None and got[r["file"]][0] is not None:
                kept_original.append(got[r["file"]][1] is None)
        results[name] = {**_real_scores(rows, label), "seconds": round(seconds, 2),
                         "original_kept": [int(np.sum(kept_original)), len(kept_original)]}
    return {"decode_s": round(decode_s, 1), "results": results}


def _peers(rows: list[dict], folder: Path) -> dict:
    out = {}
    files = [r["file"] for r in rows]
    index = {f: k for k, f in enumerate(files)}
    try:
        from imagededup.methods import PHash
    except ImportError:
        print("imagededup is not installed (pip install imagededup): its row is left out", file=sys.stderr)
    else:
        start = time.perf_counter()
        dups = PHash(verbose=False).find_duplicates(image_dir=str(folder))  # its default threshold: 10
        i = [index[a] for a, bs in dups.items() for _ in bs]
        j = [index[b] for bs in dups.values() for b in bs]
        out["imagededup PHash (default, <= 10)"] = {**_real_scores(rows, _labels(len(rows), i, j)),
                                                    "seconds": round(time.perf_counter() - start, 2)}
    try:
        import imagehash
        from PIL import Image
    except ImportError:
        print("imagehash is not installed (pip install imagehash): its rows are left out", file=sys.stderr)
        return out
    for fn, radius in ((imagehash.phash, 10), (imagehash.phash, 6), (imagehash.whash, 10)):
        start = time.perf_counter()
        bits = np.array([fn(Image.open(folder / f)).hash.ravel() for f in files], np.int8)
        dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
        i, j = np.nonzero(np.triu(dist <= radius, 1))
        out[f"imagehash {fn.__name__} <= {radius}"] = {**_real_scores(rows, _labels(len(rows), i, j)),
                                                       "seconds": round(time.perf_counter() - start, 2)}
    return out


_BEFORE = r"""
import json, sys
from pathlib import Path
import numpy as np
from charattr_hf.stages.decode import DecodeStage
from charattr_hf.curation.dedup import NearConfig, near_pairs
folder, files = Path(sys.argv[1]), json.loads(sys.stdin.read())
sig = DecodeStage()({"image": [{"bytes": (folder / f).read_bytes(), "path": None} for f in files]})["signature"]
ph = np.stack([np.frombuffer(s["phash"], np.uint8) for s in sig])
th = np.stack([np.frombuffer(s["thumb"], np.uint8) for s in sig])
p = near_pairs(ph, th, np.arange(len(files)), NearConfig())
print(json.dumps([p.i.tolist(), p.j.tolist()]))
"""


def _before(rows: list[dict], folder: Path, checkout: str) -> dict:
    """The near duplicates of another checkout's signatures and grouping (defaults), on the same folder."""
    env = dict(os.environ, PYTHONPATH=str(Path(checkout).resolve()))
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _BEFORE, str(folder)], input=json.dumps([r["file"] for r in rows]),
                         capture_output=True, text=True, env=env, cwd=str(Path(checkout).resolve()))
    if run.returncode:
        raise RuntimeError(f"--before {checkout} failed:\n{run.stderr[-3000:]}")
    i, j = json.loads(run.stdout.strip().splitlines()[-1])
    return {**_real_scores(rows, _labels(len(rows), i, j)), "seconds": round(time.perf_counter() - start, 2)}


def real(args) -> dict:
    import tempfile

    dirs = [d for d in args.real_dir if Path(d).is_dir()]
    if not dirs:
        raise SystemExit("give --real_dir: a folder of real images (e.g. ../shared/real), several times for more")
    pool = real_pool(dirs)
    if args.seed:  # another order: other originals get each edit
        pool = [pool[k] for k in np.random.default_rng(args.seed).permutation(len(pool))]
    cost = _signature_cost(pool)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "images"
        rows = build_real_set(pool, folder, copies=args.copies, seed=args.seed)
        near_only = "dedup:\n  exact: true\n  near: {%s}\n"
        ours = _ours(rows, folder, work, {"defaults": None,
                                          "without local features (no OpenCV)": near_only % "min_inliers: 0"})
        methods = {f"this toolkit, curate {k}": v for k, v in ours["results"].items()}
        if args.before:
            methods["before #19 (v1 signatures, defaults)"] = _before(rows, folder, args.before)
        methods.update(_peers(rows, folder))
    kinds = defaultdict(int)
    for rel, _, _ in pool:
        kinds[rel.split("/")[0]] += 1
    return {"originals": len(pool), "rows": len(rows), "copies": len(rows) - len(pool), "sources": dict(kinds),
            "decode_s": ours["decode_s"], "signature_cost": cost, "methods": methods}


def _signature_cost(pool) -> dict:
    """Milliseconds per image of the signature (with and without local features) and its size as stored."""
    from PIL import Image

    from charattr_hf.stages import signatures

    images = [Image.open(io.BytesIO(data)).convert("RGB") for _, data, _ in pool]
    images = [im.resize((round(im.width * s), round(im.height * s))) if (s := 512 / max(im.size)) < 1 else im
              for im in images]  # as the decode stage sees them after a draft decode, about
    out = {}
    for name, local in (("with local features", True), ("without", False)):
        old, signatures.HAS_KEYPOINTS = signatures.HAS_KEYPOINTS, local and signatures.HAS_KEYPOINTS
        try:
            start = time.process_time()
            sigs = [signatures.compute_signature(im) for im in images]
            ms = 1000 * (time.process_time() - start) / len(images)
        finally:
            signatures.HAS_KEYPOINTS = old
        size = np.mean([sum(len(v) for v in (s["phash"], s["thumb"], s["keypoints"] or "")) for s in sigs])
        out[name] = {"cpu_ms_per_image": round(ms, 1), "stored_chars": int(size)}
    return out


def _print_real(res: dict) -> None:
    print(f"real set: {res['originals']} originals ({res['sources']}), {res['copies']} copies, {res['rows']} rows; "
          f"decode {res['decode_s']} s; signature cost {res['signature_cost']}")
    head = ["method", "precision", "recall", "false pairs", "common", *COMMON, *HARD, "original kept"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for name, r in res["methods"].items():
        cells = [name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", str(r["false_pairs"]), f"{r['common']:.3f}"]
        cells += [f"{a}/{b}" for a, b in (r["by_edit"][e] for e in COMMON + HARD)]
        cells.append("{}/{}".format(*r["original_kept"]) if "original_kept" in r else "")
        print("| " + " | ".join(cells) + " |")


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
    from charattr_hf.stages.signatures import decode_hex, decode_keypoints

    _, phash = decode_hex([s["phash"] for s in sigs], 16)
    _, thumbs = decode_hex([s["thumb"] for s in sigs], 768)
    keypoints, counts = decode_keypoints([s["keypoints"] for s in sigs])
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

    # the curation's near duplicates (defaults), without local features, and thresholds around the default
    for name, kw in [("defaults", {}), ("without local features", {"min_inliers": 0}),
                     ("thumb<=4", {"thumb_threshold": 4.0}), ("thumb<=2.5", {"thumb_threshold": 2.5})]:
        s = time.perf_counter()
        p = near_pairs(phash, thumbs, np.arange(n), NearConfig(**kw), keypoints, counts)
        score(f"curation near: {name}", p.i, p.j, time.perf_counter() - s)
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
    """Random smooth thumbnails, random hashes and local features; the last tenth are edited copies of earlier
    rows."""
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
    phash = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    m = n // 10
    src = rng.integers(0, n - m, m)
    noise = rng.normal(0, 4, (m, thumbs.shape[1]))
    thumbs[n - m :] = np.clip(thumbs[src].astype(np.float32) + noise, 0, 255).astype(np.uint8)
    bits = np.unpackbits(phash[src], axis=1)
    flips = rng.random(bits.shape) < 0.06  # ~4 bits of 64
    phash[n - m :] = np.packbits(bits ^ flips, axis=1)
    keypoints, counts = synthetic_keypoints(n, src, rng)
    return phash, thumbs, keypoints, counts, src


def synthetic_keypoints(n: int, src: np.ndarray, rng: np.random.Generator, k: int = 48, words: int = 4096):
    """Local features: descriptors around shared "visual words" (12 % of bits flipped), random positions; the
    copies (the last ``len(src)`` rows) keep 80 % of their source's features, 4 % of bits flipped, positions
    jittered by a unit, and get new ones for the rest."""
    centres = rng.integers(0, 256, (words, 16), dtype=np.uint8)
    kp = np.empty((n, k, 18), np.uint8)
    for s in range(0, n, 4096):
        e = min(n, s + 4096)
        desc = centres[rng.integers(0, words, (e - s, k))]
        flip = np.packbits(rng.random((e - s, k, 128)) < 0.12, axis=2)
        kp[s:e, :, 2:] = desc ^ flip
        kp[s:e, :, :2] = rng.integers(0, 256, (e - s, k, 2), dtype=np.uint8)
    m = len(src)
    for s in range(0, m, 4096):
        e = min(m, s + 4096)
        rows = np.arange(n - m + s, n - m + e)
        keep = rng.random((e - s, k)) < 0.8
        copy = kp[src[s:e]].copy()
        copy[:, :, 2:] ^= np.packbits(rng.random((e - s, k, 128)) < 0.04, axis=2)
        copy[:, :, :2] = np.clip(copy[:, :, :2].astype(np.int16) + rng.integers(-1, 2, (e - s, k, 2)), 0, 255)
        kp[rows] = np.where(keep[:, :, None], copy, kp[rows])
    return kp, np.full(n, k, np.int64)


def scale_one(n: int, seed: int = 0) -> dict:
    from charattr_hf.curation.dedup import NearConfig, connected_components, near_distance, near_pairs

    t0 = time.perf_counter()
    phash, thumbs, keypoints, counts, src = synthetic_signatures(n, seed)
    import gc

    gc.collect()
    inputs_gb = (phash.nbytes + thumbs.nbytes + keypoints.nbytes) / 1e9
    import tracemalloc

    tracemalloc.start()  # numpy reports its buffers: the grouping's own peak, apart from generating the inputs
    t1, c1 = time.perf_counter(), time.process_time()
    p = near_pairs(phash, thumbs, np.arange(n), NearConfig(), keypoints, counts)
    grouping_peak = tracemalloc.get_traced_memory()[1] / 1e9
    tracemalloc.stop()
    t2 = time.perf_counter()
    label = connected_components(n, p.i, p.j)
    t3, c3 = time.perf_counter(), time.process_time()
    # what curate does next: the kept row of each group, and every other member checked against it directly
    from charattr_hf.curation.curate import assign_groups
    from charattr_hf.curation.keep import RowFacts

    rng = np.random.default_rng(seed + 1)
    facts = RowFacts(passes=np.ones(n, bool), width=rng.integers(200, 2000, n).astype(float),
                     height=rng.integers(200, 2000, n).astype(float), sharpness=rng.random(n), nflags=np.zeros(n))
    checked = [0]
    cfg = NearConfig()

    def check(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        checked[0] += len(a)
        d = near_distance(thumbs, a, b, cfg, keypoints, counts)
        return np.where(d <= cfg.thumb_threshold, 1, -1)

    p.kind = "near"
    groups = assign_groups(n, [p], facts, check)
    t4, c4 = time.perf_counter(), time.process_time()
    m = len(src)
    found = float(np.mean(label[n - m :] == label[src]))
    truth = np.arange(n)
    truth[n - m :] = src
    false = int((truth[p.i] != truth[p.j]).sum())  # pairs that are not planted copies
    in_group = groups.group[n - m :] >= 0
    return {"rows": n, "generate_s": round(t1 - t0, 1), "near_pairs_s": round(t2 - t1, 1), "cpu_s": round(c3 - c1, 1),
            "components_s": round(t3 - t2, 2), "grouping_s": round(t3 - t1, 1), "pairs": len(p),
            "assign_s": round(t4 - t3, 1), "assign_cpu_s": round(c4 - c3, 1), "with_assign_cpu_s": round(c4 - c1, 1),
            "members_checked": checked[0], "planted_grouped_after_check": round(float(np.mean(in_group)), 4),
            "planted_found": round(found, 4), "false_pairs": false, "inputs_gb": round(inputs_gb, 2),
            "grouping_peak_gb": round(inputs_gb + grouping_peak, 2), "peak_rss_gb": round(_peak_gb(), 2)}


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
    r = sub.add_parser("real")
    r.add_argument("--real_dir", action="append", default=[], help="folder of real images (several times for more)")
    r.add_argument("--copies", type=int, default=2, help="edited copies per original")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--before", default=None, help="a checkout from before #19, run on the same folder")
    r.add_argument("--json", default=None)
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
    if args.mode == "real":
        res = real(args)
        _print_real(res)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
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
