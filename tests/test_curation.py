"""Curation: signatures, global duplicate groups (precision/recall on planted copies and on edited copies of real
images among look-alikes), the representative rule (the better file is kept), filters that fire on images made to
trip them, config errors, and the annotate -> curate recipes end to end."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_dataset
from PIL import Image, ImageFilter

from charattr_hf.stages import signatures as signatures_module
from charattr_hf.curation.curate import assign_groups, curate
from charattr_hf.curation.dedup import Pairs, SemanticConfig, connected_components, exact_pairs, semantic_pairs
from charattr_hf.curation.keep import RowFacts
from charattr_hf.curation.planted import planted_rows, planted_set
from charattr_hf.schema import SIGNATURE_FEATURES
from charattr_hf.stages.signatures import compute_signature, content_box, phash_distance, thumb_distance
from charattr_hf.errors import UserError
from charattr_hf.schema import load_schema
from charattr_hf.stages.decode import DecodeStage
from tests import images as im_

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "dedup"  # real images (README.md there: origins and licences)


# --------------------------------------------------------------------------------------------- helpers
def annotated(tmp: Path, images: list[bytes], ids: list[str] | None = None, labels: dict | None = None,
              extra: dict | None = None) -> Path:
    """An annotated-output folder for ``images``: real decode-stage columns (hash, size, quality, flags,
    signature) + the default schema's attribute columns (null unless given in ``labels``)."""
    schema = load_schema("default")
    feats = schema.output_features(sources=[])
    n = len(images)
    out = DecodeStage()({"image": [{"bytes": b, "path": None} for b in images]})
    data = {c: [None] * n for c in feats}
    data.update({c: out[c] for c in ("sha256", "error", "flags", "width", "height", "quality", "signature")})
    data["id"] = ids or [f"img-{k}" for k in range(n)]
    data["index"] = list(range(n))
    for name, values in (labels or {}).items():
        data[name] = values
    features = dict(feats)
    for name, (feature, values) in (extra or {}).items():
        features[name] = feature
        data[name] = values
    from datasets import Features

    ds = Dataset.from_dict(data, features=Features(features))
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(tmp / "data" / "train-00000-of-00001.parquet"))
    return tmp


def write_config(tmp: Path, text: str) -> Path:
    path = tmp / "curate.yaml"
    path.write_text(text)
    return path


NEAR_ONLY = "dedup:\n  exact: true\n  near: {}\n"


class Split:
    """A loaded split whose columns are plain lists."""

    def __init__(self, ds):
        self.ds, self.columns = ds, ds.to_dict()

    def __getitem__(self, name):
        return self.columns[name]

    def __len__(self):
        return len(self.ds)

    def __iter__(self):
        return iter(self.ds)


def load(out: Path):
    return Split(load_dataset(str(out), split="train")), Split(load_dataset(str(out), split="quarantine"))


def pairwise(truth: list, predicted: list) -> tuple[float, float]:
    """Pairwise precision and recall of "same group" (predicted None = a group of its own)."""
    tp = fp = fn = 0
    for a, b in itertools.combinations(range(len(truth)), 2):
        same = truth[a] == truth[b]
        pred = predicted[a] is not None and predicted[a] == predicted[b]
        tp += same and pred
        fp += pred and not same
        fn += same and not pred
    return tp / max(1, tp + fp), tp / max(1, tp + fn)


# --------------------------------------------------------------------------------------------- signatures
def test_signature_columns_from_decode_and_error_rows():
    good = im_.encode(im_.scene(120, 90, seed=1))
    stage = DecodeStage()
    out = stage({"image": [{"bytes": good, "path": None}, {"bytes": b"not an image", "path": None}]})
    sig = out["signature"][0]
    assert len(sig["phash"]) == 32 and len(sig["thumb"]) == 2 * 16 * 16 * 3
    assert len(sig["keypoints"]) % 36 == 0 and 0 < len(sig["keypoints"]) <= 48 * 36
    assert sig["format"] == "PNG" and sig["lossless"] is True and sig["jpeg_quality"] is None
    assert sig["bits_per_pixel"] == pytest.approx(8 * len(good) / (120 * 90))
    assert out["signature"][1] is None and out["error"][1]
    assert "signature" in DecodeStage().features() and DecodeStage(signatures=False).fingerprint() != stage.fingerprint()
    assert DecodeStage(signatures=False)({"image": [good]})["signature"] == [None]
    # a row prints as text and numbers, not bytes, and the column is typed as declared
    assert all(not isinstance(v, bytes) for v in sig.values())
    from datasets import Features

    ds = Dataset.from_dict({"signature": out["signature"]}, features=Features({"signature": SIGNATURE_FEATURES}))
    row = ds[0]["signature"]
    assert row["bits_per_pixel"] == pytest.approx(sig["bits_per_pixel"])
    assert {k: v for k, v in row.items() if k != "bits_per_pixel"} == {k: v for k, v in sig.items()
                                                                        if k != "bits_per_pixel"}
    assert "\\x" not in repr(ds[0])


def test_jpeg_quality_estimate_and_lossless_webp():
    base = Image.open(REAL / "kohya_ss-Dariusz_Zawadzki_2.jpg").convert("RGB")
    for q in (40, 75, 93):
        data = im_.encode(base, "JPEG", quality=q)
        assert DecodeStage()({"image": [data]})["signature"][0]["jpeg_quality"] == q
    lossless = DecodeStage()({"image": [im_.encode(base, "WEBP", lossless=True), im_.encode(base, "WEBP")]})
    assert [s["lossless"] for s in lossless["signature"]] == [True, False]


def test_signatures_separate_copies_from_other_pictures():
    base = im_.scene(160, 160, seed=3)
    copy = base.resize((100, 100), Image.Resampling.LANCZOS)
    other = im_.scene(160, 160, seed=4).transpose(Image.Transpose.ROTATE_90)
    s_base, s_copy, s_other = (compute_signature(x) for x in (base, copy, other))
    assert phash_distance(s_base["phash"], s_copy["phash"]) <= 4
    assert thumb_distance(s_base["thumb"], s_copy["thumb"]) < 4
    assert thumb_distance(s_base["thumb"], s_other["thumb"]) > 12
    # a mirror image matches through the mirrored comparison
    mirrored = compute_signature(base.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert thumb_distance(s_base["thumb"], mirrored["thumb"]) < 2
    assert phash_distance(s_base["phash"], mirrored["phash"]) <= 2
    # a flat border of any colour is cut off before the signatures
    from PIL import ImageOps

    for fill in ((250, 20, 200), (255, 255, 255)):
        framed = compute_signature(ImageOps.expand(base, border=7, fill=fill))
        assert thumb_distance(s_base["thumb"], framed["thumb"]) < 3  # the frame is found to 1/64 of a side


def test_content_box_cuts_a_white_frame_around_a_white_background_illustration():
    from PIL import ImageOps

    art = Image.open(REAL / "sdeval-1.jpg").convert("RGB")  # a character on a white background
    box = content_box(art)
    framed = ImageOps.expand(art, border=40, fill=(255, 255, 255))
    fbox = content_box(framed)
    # the same picture is found inside the frame (within a few pixels of the downscaled measurement)
    assert np.allclose(np.subtract(fbox, 40), box, atol=0.02 * max(art.size))


# --------------------------------------------------------------------------------------------- groups
def test_connected_components_match_scipy():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_cc

    rng = np.random.default_rng(0)
    n = 3000
    i, j = rng.integers(0, n, 2500), rng.integers(0, n, 2500)
    ours = connected_components(n, i, j)
    _, theirs = scipy_cc(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    # the same partition: a bijection between labels
    pairs = set(zip(ours.tolist(), theirs.tolist()))
    assert len(pairs) == len(set(ours.tolist())) == len(set(theirs.tolist()))
    assert all(ours[k] <= k for k in range(n))  # label = smallest member


def test_cluster_pairs_split_into_cells_and_find_close_pairs():
    from charattr_hf.curation.dedup import cluster_pairs, partition

    rng = np.random.default_rng(2)
    base = rng.normal(size=(3000, 8)).astype(np.float32) * 10
    close = base[:300] + rng.normal(size=(300, 8)).astype(np.float32) * 0.1
    x = np.concatenate([base, close])
    cells = partition(lambda r: x[r], np.arange(len(x)), 8, radius=1.0, leaf=64)
    assert len(cells) > 20 and max(len(c) for c in cells) < 1000
    assert set(np.concatenate(cells).tolist()) == set(range(len(x)))  # every row is in some cell
    i, j, d, nearest = cluster_pairs(lambda r: x[r], len(x), 8, radius=1.0, leaf=64, rounds=2)
    truth = {(k, 3000 + k) for k in range(300)}
    found = set(zip(i.tolist(), j.tolist()))
    assert found <= truth | {p for p in found if np.linalg.norm(x[p[0]] - x[p[1]]) <= 1.0}
    assert len(found & truth) >= 0.95 * len(truth)
    assert np.allclose(d, np.linalg.norm(x[i] - x[j], axis=1), atol=1e-3)


def test_exact_pairs_link_equal_hashes_only():
    p = exact_pairs(["a", "b", None, "a", "c", "b", "a", None])
    assert sorted(zip(p.i.tolist(), p.j.tolist())) == [(0, 3), (0, 6), (1, 5)]


def _facts(n, **kw) -> RowFacts:
    base = dict(passes=np.ones(n, bool), width=np.full(n, 100.0), height=np.full(n, 100.0),
                sharpness=np.full(n, 0.5), nflags=np.zeros(n))
    base.update(kw)
    return RowFacts(**base)


def _all_near(kept: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A check that finds every member a near duplicate of its kept row (as copies of one picture are)."""
    return np.ones(len(rows), np.int64)


def test_representative_rule_resolution_then_encoding_then_sharpness_then_flags():
    # one group of 5 rows; rows 1 and 3 tie on resolution, row 3 is sharper; row 4 fails a filter
    n = 6
    pairs = [Pairs("near", np.array([0, 0, 0, 0]), np.array([1, 2, 3, 4]))]
    side = np.array([10.0, 20, 15, 20, 30, 8])
    sharp = np.array([0.5, 0.3, 0.9, 0.6, 0.9, 0.1])
    facts = _facts(n, passes=np.array([True, True, True, True, False, True]), width=side, height=side,
                   sharpness=sharp)
    group, rep, kind = assign_groups(n, pairs, facts, _all_near)[:3]
    assert rep[:5].tolist() == [3] * 5 and rep[5] == -1 and group[5] == -1
    assert len(set(group[:5].tolist())) == 1 and kind[:5].tolist() == [1] * 5 and kind[5] == -1
    sharp[1] = sharp[3]
    facts.nflags[3] = 2
    rep = assign_groups(n, pairs, facts, _all_near)[1]
    assert rep[0] == 1  # same resolution and sharpness: fewer flags wins
    # the encoding comes before sharpness: lossless, then the higher JPEG quality, else more bits per pixel
    facts = _facts(3, sharpness=np.array([0.9, 0.5, 0.4]), lossless=np.array([0.0, 1.0, 0.0]),
                   format=["JPEG", "PNG", "JPEG"], jpeg_quality=np.array([40.0, np.nan, 90.0]))
    tri = [Pairs("near", np.array([0, 0]), np.array([1, 2]))]
    assert assign_groups(3, tri, facts, _all_near)[1].tolist() == [1, 1, 1]
    from charattr_hf.curation.keep import compare

    assert compare(facts, 1, 0)[1] == "lossless PNG over lossy JPEG"
    assert compare(facts, 0, 2) == (1, "higher JPEG quality 90 > 40")
    facts.jpeg_quality[2] = np.nan  # a WebP, say: bits per pixel decide
    facts.bits_per_pixel = np.array([1.5, 9.0, 0.8])
    assert compare(facts, 0, 2) == (-1, "more bits per pixel 1.50 > 0.80")
    # a WebP among JPEGs: bits per pixel rule the WebP out; the JPEGs, a hair apart in bits, by their quality
    facts = _facts(3, lossless=np.zeros(3), format=["JPEG", "JPEG", "WEBP"], jpeg_quality=np.array([93.0, 90, np.nan]),
                   bits_per_pixel=np.array([2.7242, 2.7244, 1.44]))
    groups = assign_groups(3, [Pairs("near", np.array([0, 0, 1]), np.array([1, 2, 2]))], facts)
    assert groups.rep.tolist() == [0, 0, 0]
    assert compare(facts, 0, 1) == (-1, "higher JPEG quality 93 > 90")


def _abc_facts(order: str) -> RowFacts:
    """A: a 1000x1000 lossless PNG, B: a 1040x1040 JPEG q95, C: a 1080x1080 JPEG q80, in ``order``. Two at a time
    the rule goes round in circles: A beats B (lossless, sizes within 10 %), B beats C (quality, within 10 %), C
    beats A (more than 10 % larger)."""
    base = {"A": (1000, 1.0, np.nan, "PNG"), "B": (1040, 0.0, 95, "JPEG"), "C": (1080, 0.0, 80, "JPEG")}
    rows = [base[k] for k in order]
    side = np.array([r[0] for r in rows], float)
    return _facts(3, width=side, height=side, lossless=np.array([r[1] for r in rows]),
                  jpeg_quality=np.array([r[2] for r in rows], float), format=[r[3] for r in rows])


def _advantage_holds(reason: str, facts: RowFacts, kept: int, row: int) -> bool:
    """Whether what a duplicate's reason says the kept row has over it is true."""
    area = facts.content_width * facts.content_height
    if reason.startswith("larger picture "):
        return area[kept] > area[row]
    if reason.startswith("lossless "):
        return facts.lossless[kept] == 1.0 and facts.lossless[row] != 1.0
    m = re.fullmatch(r"higher JPEG quality (\d+) > (\d+)", reason)
    if m:
        return (int(m[1]), int(m[2])) == (facts.jpeg_quality[kept], facts.jpeg_quality[row]) and m[1] > m[2]
    raise AssertionError(f"unexpected reason {reason!r}")


def test_the_kept_copy_does_not_depend_on_the_row_order():
    """#17: the group is narrowed as a whole (sizes within 10 % of the largest, then the encoding), so every order
    of A, B, C keeps the same file, and each other row's reason names an advantage the kept row really has."""
    from charattr_hf.curation.keep import reason

    kept_files = set()
    for order in map("".join, itertools.permutations("ABC")):
        facts = _abc_facts(order)
        groups = assign_groups(3, [Pairs("near", np.array([0, 0, 1]), np.array([1, 2, 2]))], facts)
        rep = groups[1]
        assert len(set(rep.tolist())) == 1, order
        kept = int(rep[0])
        kept_files.add(order[kept])
        for row in range(3):
            if row != kept:
                text = reason(facts, kept, row, int(groups.stage[row]))
                assert _advantage_holds(text, facts, kept, row), (order, order[row], text)
    # A is more than 10 % smaller than C: out; B and C are JPEGs within 10 %: the higher quality
    assert kept_files == {"B"}


def test_the_kept_copy_and_its_reasons_through_curate(tmp_path, monkeypatch):
    """The same three files through curate, in two orders: one kept row, true reasons in the quarantine."""
    from charattr_hf.curation import curate as curate_module

    for order in ("ABC", "CBA"):
        facts = _abc_facts(order)
        monkeypatch.setattr(curate_module, "_facts", lambda files, table, passes, facts=facts: facts)
        imgs = [im_.encode(im_.scene(64, 64, seed=7)) for _ in range(3)]  # one file thrice: one exact group
        out = tmp_path / order
        curate(annotated(tmp_path / f"ann-{order}", imgs, [f"img-{c}" for c in order]), out,
               write_config(tmp_path, NEAR_ONLY))
        train, quarantine = load(out)
        assert train["id"] == ["img-B"], order
        for row in quarantine:
            text = re.fullmatch(r"exact_duplicate: of img-B \(kept: (.*)\)", row["reasons"][0])[1]
            assert _advantage_holds(text, facts, order.index("B"), order.index(row["id"][-1])), (order, text)


def test_the_kind_is_the_rows_relation_to_the_kept_row():
    """Rows 0 and 1 are one file (one sha256), row 2 a larger near copy of it: both are near duplicates of row 2,
    not exact ones; between rows of one file the kind is exact."""
    pairs = [Pairs("exact", np.array([0]), np.array([1])), Pairs("near", np.array([0, 1]), np.array([2, 2]))]
    facts = _facts(3, width=np.array([300.0, 300, 600]), height=np.array([300.0, 300, 600]))
    group, rep, kind = assign_groups(3, pairs, facts)[:3]
    assert rep.tolist() == [2, 2, 2] and kind.tolist() == [1, 1, 1]
    facts = _facts(3, width=np.array([600.0, 600, 300]), height=np.array([600.0, 600, 300]))
    group, rep, kind = assign_groups(3, pairs, facts)[:3]
    assert rep.tolist() == [0, 0, 0] and kind.tolist() == [0, 0, 1]
    # exact pairs link each copy to the file's first row only: two later copies are still one file
    pairs = [Pairs("exact", np.array([0, 0]), np.array([1, 2]))]
    facts = _facts(3, sharpness=np.array([0.1, 0.9, 0.5]))
    assert assign_groups(3, pairs, facts)[2].tolist() == [0, 0, 0]


def test_a_chain_of_small_steps_between_two_pictures_is_not_one_group(tmp_path):
    """Twenty-four blends from one real picture to another: each step is a near duplicate of the next, the two ends
    are different pictures. Every quarantined row is a near duplicate of its own kept row (the pairs' check, run on
    that pair), so the ends are not one group and no row is removed as a copy of a picture it does not match."""
    a, b = _real("sdeval-1.jpg").resize((256, 256)), _real("sdeval-5.jpg").resize((256, 256))
    imgs = [im_.encode(Image.blend(a, b, t)) for t in np.linspace(0, 1, 24)]
    folder = annotated(tmp_path / "ann", imgs)
    out = tmp_path / "out"
    curate(folder, out, write_config(tmp_path, NEAR_ONLY))
    train, quarantine = load(out)
    assert len(quarantine) >= 12  # the steps are still grouped with their neighbours
    group = dict(zip(train["id"] + quarantine["id"], train["dup_group"] + quarantine["dup_group"]))
    assert group["img-0"] is None or group["img-0"] != group["img-23"]
    import pyarrow.parquet as pq

    from charattr_hf.curation.dedup import NearConfig, near_distance
    from charattr_hf.stages.signatures import THUMB_BYTES, decode_hex, decode_keypoints

    sig = pq.read_table(next((folder / "data").glob("*.parquet")), columns=["signature"]).column("signature")
    sig = sig.to_pylist()
    thumbs = decode_hex([s["thumb"] for s in sig], THUMB_BYTES)[1]
    keypoints, counts = decode_keypoints([s["keypoints"] for s in sig])
    row = np.array([int(i.split("-")[1]) for i in quarantine["id"]])
    kept = np.array([int(i.split("-")[1]) for i in quarantine["duplicate_of"]])
    d = near_distance(thumbs, kept, row, NearConfig(), keypoints if keypoints.size else None, counts)
    assert (d <= NearConfig().thumb_threshold).all(), dict(zip(quarantine["id"], d.round(1)))


def test_semantic_pairs_find_planted_duplicates():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(600, 64)).astype(np.float32)
    dups = base[:100] + 0.05 * rng.normal(size=(100, 64)).astype(np.float32)
    emb = np.concatenate([base, dups]).astype(np.float16)
    p = semantic_pairs(emb, np.arange(700), SemanticConfig(threshold=0.95, leaf=32))
    found = set(zip(p.i.tolist(), p.j.tolist()))
    assert found == {(k, 600 + k) for k in range(100)}


def test_semantic_duplicates_through_curate(tmp_path):
    from datasets import List, Value

    rng = np.random.default_rng(1)
    imgs = [im_.encode(im_.scene(80 if s != 4 else 60, 80, seed=s).rotate(45 * s)) for s in range(6)]
    emb = rng.normal(size=(6, 16)).astype(np.float32)
    emb[4] = emb[1] + 0.01 * rng.normal(size=16)  # row 4 means what row 1 means
    folder = annotated(tmp_path / "ann", imgs, extra={"embedding": (List(Value("float16"), length=16),
                                                                      emb.astype(np.float16).tolist())})
    out = tmp_path / "out"
    curate(folder, out, write_config(tmp_path, "dedup:\n  semantic: {threshold: 0.99}\n"))
    train, quarantine = load(out)
    assert quarantine["id"] == ["img-4"]
    assert quarantine["reasons"] == [["semantic_duplicate: of img-1 (kept: larger picture 80x80 > 60x80)"]]
    assert "cosine >= 0.99" in (out / "README.md").read_text()


# --------------------------------------------------------------------------------------------- planted sets
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    rows = planted_rows(n_originals=90, copies=2, n_with_copies=45, hard_copies=0, size=128, seed=5)
    tmp = tmp_path_factory.mktemp("planted")
    folder = annotated(tmp / "annotated", [r["image"] for r in rows], [r["id"] for r in rows])
    return rows, folder


def test_near_duplicates_precision_recall_and_accounting(planted, tmp_path):
    rows, folder = planted
    out = tmp_path / "curated"
    result = curate(folder, out, write_config(tmp_path, NEAR_ONLY))
    train, quarantine = load(out)
    # every row accounted for, once
    assert len(train) + len(quarantine) == len(rows) == result.rows
    assert sorted(train["id"] + quarantine["id"]) == sorted(r["id"] for r in rows)
    assert all(r == [] for r in train["reasons"]) and all(r for r in quarantine["reasons"])
    assert all(d is None for d in train["duplicate_of"])
    # precision and recall of the groups against the planted truth
    truth = {r["id"]: r["group"] for r in rows}
    got = dict(zip(train["id"] + quarantine["id"], train["dup_group"] + quarantine["dup_group"]))
    ids = sorted(truth)
    precision, recall = pairwise([truth[i] for i in ids], [got[i] for i in ids])
    # tiny (128 px) drawings that share their composition: the signatures are tuned for real images, where
    # look-alike renders must stay apart; measured here: precision 1.0, recall 0.65 (0.74 when a group was a
    # connected component: two copies of one drawing, each within the threshold of the original, are often not
    # within it of each other, and a member must be a copy of the kept row itself)
    assert precision >= 0.95 and recall >= 0.6, (precision, recall)
    # quarantined duplicates point at a kept member of their own group, which is in train
    kept = dict(zip(train["id"], train["dup_group"]))
    for row in quarantine:
        if row["duplicate_of"] is not None:
            assert kept[row["duplicate_of"]] == row["dup_group"]
            assert row["reasons"][0].startswith("near_duplicate: of ")
    # the card states each kind with its threshold, and the picture exists
    card = (out / "README.md").read_text()
    assert "phash <= 12 bits" in card and (out / "images" / "dedup_distances.png").stat().st_size > 1000
    assert Image.open(out / "images" / "dedup_distances.png").size[0] == 720


# --------------------------------------------------------------------------------------------- real images
REAL_FILES = ["bikini-11.png", "bikini-12.png", "sdeval-1.jpg", "sdeval-5.jpg", "imagededup-ukbench01380.jpg",
              "kohya_ss-Dariusz_Zawadzki_2.jpg"]


def _real(name: str) -> Image.Image:
    return Image.open(REAL / name).convert("RGB")


def _real_edits(im: Image.Image) -> dict[str, bytes]:
    """Edited copies as reposts make them: recompressed at half size, cut by 4 % on every side and scaled back,
    framed in white, letterboxed, mirrored, cut by 15 % on one side, stamped with a watermark box."""
    from PIL import ImageDraw, ImageOps

    w, h = im.size
    framed = Image.new("RGB", (max(w, h), max(w, h)))
    framed.paste(im, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
    stamped = im.copy()
    ImageDraw.Draw(stamped).rectangle([w // 20, h - h // 10, w // 20 + w // 3, h - h // 40], fill="white")
    return {
        "half_q40": im_.encode(im.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "JPEG", quality=40),
        "crop4": im_.encode(im.crop((w // 25, h // 25, w - w // 25, h - h // 25)).resize((w, h)), "JPEG", quality=90),
        "white_border": im_.encode(ImageOps.expand(im, border=min(w, h) // 16, fill="white"), "JPEG", quality=90),
        "letterbox": im_.encode(framed, "JPEG", quality=90),
        "mirror": im_.encode(ImageOps.mirror(im), "WEBP", quality=80),
        "crop_side": im_.encode(im.crop((0, 0, w - (15 * w) // 100, h)), "JPEG", quality=90),
        "watermark": im_.encode(stamped, "JPEG", quality=90),
    }


@pytest.fixture(scope="module")
def real_set(tmp_path_factory):
    """Six real originals (two of them look-alike renders of one prompt) with seven edited copies each."""
    images, ids, truth = [], [], []
    for g, name in enumerate(REAL_FILES):
        images.append((REAL / name).read_bytes())
        ids.append(name)
        truth.append(g)
        for edit, data in _real_edits(_real(name)).items():
            images.append(data)
            ids.append(f"{name}-{edit}")
            truth.append(g)
    folder = annotated(tmp_path_factory.mktemp("real") / "ann", images, ids)
    return folder, dict(zip(ids, truth))


def test_near_duplicates_of_real_images_survive_crops_borders_and_mirrors(real_set, tmp_path):
    folder, truth = real_set
    out = tmp_path / "out"
    curate(folder, out, write_config(tmp_path, NEAR_ONLY))
    train, quarantine = load(out)
    got = dict(zip(train["id"] + quarantine["id"], train["dup_group"] + quarantine["dup_group"]))
    # one group per original, every copy in its original's group, the look-alike renders apart
    assert sorted(train["id"]) == sorted(REAL_FILES)
    for name in REAL_FILES:
        members = sorted(i for i, g in got.items() if g == got[name])
        assert members == sorted(i for i, t in truth.items() if t == truth[name]), name
    assert got["bikini-11.png"] != got["bikini-12.png"]


def test_without_local_features_the_whole_picture_path_still_finds_mirrors(real_set, tmp_path, monkeypatch):
    """Without OpenCV the signatures have no local features: copies that keep the framing (mirrors, recompressed,
    framed) are still found; crops of one side and zooms need the local features."""
    monkeypatch.setattr(signatures_module, "HAS_KEYPOINTS", False)
    name = "sdeval-5.jpg"
    edits = _real_edits(_real(name))
    images = [(REAL / name).read_bytes(), edits["mirror"], edits["half_q40"], edits["letterbox"], edits["crop_side"],
              (REAL / "sdeval-1.jpg").read_bytes()]
    folder = annotated(tmp_path / "ann", images, ["orig", "mirror", "half_q40", "letterbox", "crop_side", "other"])
    assert pq_signature_keypoints(folder) == [None] * 6
    out = tmp_path / "out"
    curate(folder, out, write_config(tmp_path, NEAR_ONLY))
    train, quarantine = load(out)
    assert sorted(quarantine["id"]) == ["half_q40", "letterbox", "mirror"]
    assert set(quarantine["duplicate_of"]) == {"orig"}


def pq_signature_keypoints(folder: Path) -> list:
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "data" / "train-00000-of-00001.parquet", columns=["signature"])
    return [s["keypoints"] for s in table.column("signature").to_pylist()]


def test_the_better_file_is_kept_on_real_images(tmp_path):
    """#17: each real picture as a lossless PNG, a same-size JPEG q40 and a half-size JPEG q90 copy: the PNG is kept
    in every group, and each copy's reason names the comparison that decided."""
    images, ids = [], []
    for name in REAL_FILES:
        im = _real(name)
        stem = name.rsplit(".", 1)[0]
        images += [im_.encode(im), im_.encode(im, "JPEG", quality=40),
                   im_.encode(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS), "JPEG", quality=90)]
        ids += [f"{stem}.png", f"{stem}_q40.jpg", f"{stem}_half.jpg"]
    out = tmp_path / "out"
    curate(annotated(tmp_path / "ann", images, ids), out, write_config(tmp_path, NEAR_ONLY))
    train, quarantine = load(out)
    assert sorted(train["id"]) == sorted(i for i in ids if i.endswith(".png"))
    reasons = dict(zip(quarantine["id"], quarantine["reasons"]))
    for name in REAL_FILES:
        stem = name.rsplit(".", 1)[0]
        assert reasons[f"{stem}_q40.jpg"] == [f"near_duplicate: of {stem}.png (kept: lossless PNG over lossy JPEG)"]
        assert reasons[f"{stem}_half.jpg"][0].startswith(f"near_duplicate: of {stem}.png (kept: larger picture ")
    # same size, both JPEG: the higher quality wins, whatever the sharpness says
    base = _real("kohya_ss-Dariusz_Zawadzki_2.jpg")
    pair = [im_.encode(base, "JPEG", quality=30), im_.encode(base, "JPEG", quality=92)]
    out = tmp_path / "out2"
    curate(annotated(tmp_path / "ann2", pair, ["q30.jpg", "q92.jpg"]), out, write_config(tmp_path, NEAR_ONLY))
    train, quarantine = load(out)
    assert train["id"] == ["q92.jpg"]
    assert quarantine["reasons"] == [["near_duplicate: of q92.jpg (kept: higher JPEG quality 92 > 30)"]]


def test_kept_representative_is_the_largest_copy(tmp_path):
    base = im_.scene(200, 200, seed=11)
    sizes = [120, 200, 160]
    imgs = [im_.encode(base.resize((s, s), Image.Resampling.LANCZOS)) for s in sizes]
    imgs.append(im_.encode(im_.scene(200, 200, seed=12).transpose(Image.Transpose.ROTATE_180)))
    out = tmp_path / "out"
    curate(annotated(tmp_path / "ann", imgs), out, write_config(tmp_path, NEAR_ONLY))
    train, quarantine = load(out)
    assert sorted(train["id"]) == ["img-1", "img-3"]
    assert sorted(quarantine["duplicate_of"]) == ["img-1", "img-1"]
    assert train["dup_group"][train["id"].index("img-3")] is None


def test_card_shows_example_groups_as_pictures_when_images_are_kept(tmp_path):
    from datasets import Image as ImageFeature, Value

    base = im_.scene(160, 160, seed=13)
    imgs = [im_.encode(base)] + [im_.encode(base.resize((150 - 5 * k, 150 - 5 * k))) for k in range(8)]
    imgs.append(im_.encode(im_.scene(160, 160, seed=14).rotate(90)))
    names = [f"a-long-file-name-that-used-to-be-cut-on-the-card-{k:02d}.png" for k in range(len(imgs))]
    folder = annotated(tmp_path / "ann", imgs,
                       extra={"image": (ImageFeature(), [{"bytes": b, "path": None} for b in imgs]),
                              "path": (Value("string"), [f"/data/set/{n}" for n in names])})
    out = tmp_path / "out"
    curate(folder, out, write_config(tmp_path, NEAR_ONLY))
    card = (out / "README.md").read_text()
    assert "![example groups](images/dedup_examples.png)" in card and "Showing the only group" in card
    # every member of the group is listed (no "..."), each by its id and full path
    assert all(f"/data/set/{n}" in card for n in names[:9]) and " ..." not in card
    train, _ = load(out)
    assert isinstance(train.ds[0]["image"], Image.Image)  # the images stay in the curated data
    # the picture shows all nine members (two lines of six at most) with their names wrapped, not cut
    from charattr_hf.curation.card import _images_png

    files = sorted((folder / "data").glob("*.parquet"))
    group = [list(range(9))]
    short = Image.open(__import__("io").BytesIO(_images_png(files, group, {r: f"{r}.png" for r in range(9)})))
    full = Image.open(out / "images" / "dedup_examples.png")
    assert full.size[0] == short.size[0] and full.size[1] > short.size[1]  # two-line names: taller, same width
    assert short.size[1] > 2 * 112  # nine members: two lines of pictures


def test_exact_duplicates_and_decode_errors(tmp_path):
    a = im_.encode(im_.scene(96, 96, seed=1))
    b = im_.encode(im_.scene(96, 96, seed=2).transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    out = tmp_path / "out"
    curate(annotated(tmp_path / "ann", [a, b, a, b"\x89PNG broken"]), out, write_config(tmp_path, "dedup: {exact: true}\n"))
    train, quarantine = load(out)
    assert sorted(train["id"]) == ["img-0", "img-1"]
    reasons = dict(zip(quarantine["id"], quarantine["reasons"]))
    assert reasons["img-2"] == ["exact_duplicate: of img-0 (kept: first in the data)"]
    assert reasons["img-3"][0].startswith("error: ")


# --------------------------------------------------------------------------------------------- filters
def _clean() -> Image.Image:
    return im_.scene(200, 200, seed=21)


TRIPS = {
    "too_small": ("too_small: {min_side: 100}", lambda: im_.scene(60, 60, seed=22)),
    "aspect_ratio": ("aspect_ratio: {max_ratio: 2.5}", lambda: im_.scene(400, 100, seed=23)),
    "monochrome": ("monochrome: {max_colorfulness: 0.03}", lambda: im_.scene(200, 200, seed=24).convert("L").convert("RGB")),
    "low_contrast": ("low_contrast: {min_contrast: 0.03}",
                     lambda: Image.new("RGB", (200, 200), (120, 130, 140))),
    "blurry": ("blurry: {min_sharpness: 0.1}",
               lambda: im_.scene(200, 200, seed=25).filter(ImageFilter.GaussianBlur(5))),
}


@pytest.mark.parametrize("name", sorted(TRIPS))
def test_image_filter_fires_on_a_tripping_image_only(name, tmp_path):
    option, make = TRIPS[name]
    out = tmp_path / "out"
    curate(annotated(tmp_path / "ann", [im_.encode(_clean()), im_.encode(make())]), out,
           write_config(tmp_path, f"filters:\n  {option}\n"))
    train, quarantine = load(out)
    assert train["id"] == ["img-0"] and quarantine["id"] == ["img-1"]
    assert quarantine["reasons"][0][0].startswith(f"{name}: ")
    card = (out / "README.md").read_text()
    assert f"| {name} |" in card and card.split(f"| {name} |")[1].split("\n")[0].rstrip().endswith("| 1 |")


def _label_rows(schema, **columns):
    """Label indices / confidences for two rows from names."""
    out = {}
    for attr, (labels, confs) in columns.items():
        a = schema[attr]
        if a.multi_label:
            out[attr] = [[a.index(x) for x in labs] for labs in labels]
        else:
            out[attr] = [a.index(x) for x in labels]
        out[f"{attr}_confidence"] = confs
    return out


LABEL_TRIPS = {
    "several_characters": ("several_characters: {}", {"character_count": (["one", "group"], [0.9, 0.8])}),
    "no_character": ("no_character: {min_confidence: 0.3}", {"character_count": (["one", "one"], [0.9, 0.1])}),
    "not_illustration": ("not_illustration: {labels: [realistic], min_confidence: 0.5}",
                         {"art_style": (["anime", "realistic"], [0.9, 0.7])}),
    "low_confidence": ("low_confidence: {attributes: [hair_color, eye_color], min_confidence: 0.4}",
                       {"hair_color": (["red", "red"], [0.9, 0.9]), "eye_color": (["blue", "blue"], [0.8, 0.2])}),
    "label_rules": ("label_rules:\n    - {attribute: hair_color, in: [green, pink]}",
                    {"hair_color": (["red", "pink"], [0.9, 0.9])}),
}


@pytest.mark.parametrize("name", sorted(LABEL_TRIPS))
def test_label_filter_fires_on_a_tripping_row_only(name, tmp_path):
    option, columns = LABEL_TRIPS[name]
    schema = load_schema("default")
    imgs = [im_.encode(_clean()), im_.encode(im_.scene(200, 200, seed=31).transpose(Image.Transpose.ROTATE_90))]
    out = tmp_path / "out"
    curate(annotated(tmp_path / "ann", imgs, labels=_label_rows(schema, **columns)), out,
           write_config(tmp_path, f"filters:\n  {option}\n"))
    train, quarantine = load(out)
    assert train["id"] == ["img-0"] and quarantine["id"] == ["img-1"], quarantine["reasons"]
    assert quarantine["reasons"][0][0].startswith(f"{name}: ")


def test_label_rule_not_in_and_multi_label(tmp_path):
    schema = load_schema("default")
    imgs = [im_.encode(im_.scene(150, 150, seed=s).rotate(90 * s)) for s in range(3)]
    labels = _label_rows(schema, accessories=([["glasses"], ["hat", "glasses"], []], [[0.9], [0.8, 0.9], []]),
                         hair_color=(["red", "blue", "red"], [0.9, 0.9, 0.9]))
    cfg = write_config(tmp_path, "filters:\n  label_rules:\n    - {attribute: accessories, in: [hat]}\n"
                                 "    - {attribute: hair_color, not_in: [red]}\n")
    out = tmp_path / "out"
    curate(annotated(tmp_path / "ann", imgs, labels=labels), out, cfg)
    train, quarantine = load(out)
    assert train["id"] == ["img-0", "img-2"] and quarantine["id"] == ["img-1"]
    assert quarantine["reasons"][0] == ["label_rules: accessories = [hat, glasses] (in [hat])"]


@pytest.mark.parametrize("max_rating, kept", [("sensitive", ["img-0", "img-1", "img-4"]),
                                               ("questionable", ["img-0", "img-1", "img-2", "img-4"])])
def test_rating_filter_uses_the_taggers_rating(max_rating, kept, tmp_path):
    from datasets import Value

    imgs = [im_.encode(im_.scene(150, 150, seed=s).rotate(90 * (s % 4))) for s in range(6)]
    ratings = ["general", "sensitive", "questionable", "explicit", None, "weird"]  # None: the tagger did not rate it
    out = tmp_path / "out"
    curate(annotated(tmp_path / "ann", imgs, extra={"tagger_rating": (Value("string"), ratings)}), out,
           write_config(tmp_path, f"filters:\n  rating: {{max_rating: {max_rating}}}\n"))
    train, quarantine = load(out)
    assert train["id"] == kept
    reasons = dict(zip(quarantine["id"], quarantine["reasons"]))
    assert reasons["img-3"] == [f"rating: explicit > {max_rating}"]
    assert reasons["img-5"][0].startswith("rating: 'weird' is not on the scale")


# --------------------------------------------------------------------------------------------- config errors
BAD = {
    "filters:\n  rating: {max_rating: nsfw}\n": "rating.max_rating must be one of general, sensitive",
    "filters:\n  too_smal: {min_side: 3}\n": "unknown filter 'too_smal'",
    "filters:\n  blurry: {min_sharpness: 1.5}\n": "blurry.min_sharpness must be a number in [0, 1]",
    "filters:\n  too_small: {min_side: -4}\n": "too_small.min_side must be a positive number",
    "filters:\n  too_small: {minside: 4}\n": "unknown option(s) ['minside']",
    "filters:\n  label_rules:\n    - {attribute: hair_colour, in: [red]}\n": "does not have",
    "filters:\n  label_rules:\n    - {attribute: hair_color, in: [reddish]}\n": "has no label(s) ['reddish']",
    "filters:\n  low_confidence: {attributes: [height_class]}\n": "attribute 'height_class'",
    "dedup:\n  near: {phash_radius: 99}\n": "phash_radius must be an integer in [0, 64]",
    "dedup:\n  near: {thumb_treshold: 3}\n": "unknown option(s) ['thumb_treshold']",
    "dedup:\n  near: {min_inliers: -1}\n": "min_inliers must be an integer in [0, 48]",
    "dedup:\n  near: {hash_bits: 12}\n": "hash_bits must be 8, 16, 24 or 32",
    "dedup:\n  semantic: {threshold: 0.9}\n": "needs an 'embedding' column",
    "dedup:\n  fuzzy: {}\n": "unknown dedup kind(s) ['fuzzy']",
    "filter:\n  blurry: {}\n": "unknown section(s) ['filter']",
    "filters: [blurry]\n": "'filters' must be a mapping",
}


@pytest.fixture(scope="module")
def tiny_annotated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    return annotated(tmp / "ann", [im_.encode(im_.scene(64, 64, seed=s)) for s in range(2)])


def test_rating_filter_needs_the_taggers_rating(tiny_annotated, tmp_path):
    with pytest.raises(UserError, match=r"rating needs column\(s\) \['tagger_rating'\].*--tagger"):
        curate(tiny_annotated, tmp_path / "out", write_config(tmp_path, "filters:\n  rating: {}\n"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", sorted(BAD))
def test_bad_config_is_a_clear_user_error(text, tiny_annotated, tmp_path):
    with pytest.raises(UserError) as info:
        curate(tiny_annotated, tmp_path / "out", write_config(tmp_path, text))
    assert BAD[text] in str(info.value)
    assert not (tmp_path / "out").exists()  # checked before any work


def test_missing_inputs_are_user_errors(tiny_annotated, tmp_path):
    with pytest.raises(UserError, match="not found"):
        curate(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(UserError, match="curation config not found"):
        curate(tiny_annotated, tmp_path / "out", tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="no split 'test'"):
        curate(tiny_annotated, tmp_path / "out", split="test")


def test_an_annotated_output_is_never_the_output_dir(tiny_annotated, tmp_path, capsys):
    """Writing replaces data/*.parquet: an annotated (not curated) folder as --output_dir is refused before any work,
    its shards intact; an earlier curated output is replaced."""
    import importlib.util
    import shutil

    from charattr_hf.cli import run_main

    other = tmp_path / "other_annotated"
    shutil.copytree(tiny_annotated, other)
    before = {p.name: p.read_bytes() for p in (other / "data").glob("*.parquet")}
    spec = importlib.util.spec_from_file_location("curate_recipe", ROOT / "recipes" / "curate.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules["curate_recipe"] = recipe  # dataclasses look their module up there
    try:
        spec.loader.exec_module(recipe)
        for target, message in ((other, "is not an earlier curated output"), (tiny_annotated, "must differ")):
            status = run_main(recipe.main, ["--dataset", str(tiny_annotated), "--output_dir", str(target)])
            err = capsys.readouterr().err
            assert status == 2 and message in err and err.count("\n") == 1, err
    finally:
        del sys.modules["curate_recipe"]
    assert {p.name: p.read_bytes() for p in (other / "data").glob("*.parquet")} == before
    assert not (other / "README.md").exists() or "curat" not in (other / "README.md").read_text().lower()
    with pytest.raises(UserError, match="not an earlier curated output.*new or empty --output_dir"):
        curate(tiny_annotated, other)
    out = tmp_path / "curated"
    curate(tiny_annotated, out)
    curate(tiny_annotated, out)  # an earlier curated output: replaced
    assert len(load(out)[0]) + len(load(out)[1]) == 2


# --------------------------------------------------------------------------------------------- recipes
def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HOME"] = str(tmp_path / "hf")
    return env


def test_annotate_then_curate_recipes(tiny_clip_dir, tmp_path):
    ds = planted_set(n_originals=16, copies=2, n_with_copies=8, size=96, seed=3)
    ds.to_parquet(str(tmp_path / "planted.parquet"))
    env = _env(tmp_path)
    ann, cur = tmp_path / "annotated", tmp_path / "curated"
    run = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "annotate.py"), "--dataset", str(tmp_path / "planted.parquet"),
         "--model", f"local-dir:{tiny_clip_dir}", "--output_dir", str(ann), "--keep_embedding",
         "--keep_columns", "group", "--num_proc", "1", "--quiet"],
        env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    cfg = write_config(tmp_path, "dedup:\n  exact: true\n  near: {}\nfilters:\n  too_small: {min_side: 32}\n")
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "curate.py"), "--dataset", str(ann),
                          "--output_dir", str(cur), "--config", str(cfg)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "train:" in run.stdout and "quarantine:" in run.stdout
    train, quarantine = load(cur)
    assert len(train) + len(quarantine) == 32
    truth = dict(zip(train["id"] + quarantine["id"], train["group"] + quarantine["group"]))
    got = dict(zip(train["id"] + quarantine["id"], train["dup_group"] + quarantine["dup_group"]))
    ids = sorted(truth)
    precision, recall = pairwise([truth[i] for i in ids], [got[i] for i in ids])
    assert precision >= 0.9 and recall >= 0.7, (precision, recall)  # measured: 1.0 and 0.75 (96 px drawings)
    assert "| near |" in (cur / "README.md").read_text()
    # a bad config: one line, exit status 2, nothing written
    bad = write_config(tmp_path, "filters:\n  sharpness: {}\n")
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "curate.py"), "--dataset", str(ann),
                          "--output_dir", str(tmp_path / "never"), "--config", str(bad)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "unknown filter 'sharpness'" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "never").exists()


# --------------------------------------------------------------------------------------------- shipped config (#17)
SHIPPED = ROOT / "recipes" / "configs" / "curate.yaml"


@pytest.fixture(scope="module")
def default_annotated(tmp_path_factory):
    """What `recipes/annotate.py` writes without options (the synthetic sample, the demo model, its `synthetic`
    schema, no embeddings), through the library the recipe calls; 16 rows."""
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.inputs import InputSpec

    out = tmp_path_factory.mktemp("default") / "annotated"
    annotate_to_disk(None, out, input_spec=InputSpec(limit=16), progress=False)
    return out


def test_shipped_config_works_on_the_default_annotate_output(default_annotated, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="charattr_hf.curation.curate"):
        result = curate(default_annotated, tmp_path / "out", SHIPPED)
    skipped = dict(result.skipped)
    assert list(skipped) == ["dedup.semantic", "several_characters", "not_illustration"]
    assert "--keep_embedding" in skipped["dedup.semantic"] and "'character_count'" in skipped["several_characters"]
    assert "'realistic'" in skipped["not_illustration"]  # synthetic's art_style has no photo/3D labels
    # the sample's pictures are 64 px: the shipped config (for real data) removes them all, and says why
    assert result.rows == 16 == result.quarantine and result.removed_by["too_small"] == 16
    quarantine = load_dataset(str(tmp_path / "out"), split="quarantine")  # loads beside the empty train split
    assert all(r[0].startswith("too_small: shorter side 64 < 128") for r in quarantine["reasons"])
    assert {"too_small", "low_confidence", "exact_duplicate", "near_duplicate"} <= set(result.removed_by)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"curation step {step} skipped" in logged for step in skipped)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Skipped, because this dataset cannot take them" in card and "| several_characters |" in card
    assert json.loads((tmp_path / "out" / "curation.json").read_text())["skipped"] == skipped
    # the same config without skip_unavailable asks for exactly what it names: an error before any work
    strict = write_config(tmp_path, SHIPPED.read_text().replace("skip_unavailable: true\n", ""))
    with pytest.raises(UserError, match="dedup.semantic needs an 'embedding' column"):
        curate(default_annotated, tmp_path / "strict", strict)
    with pytest.raises(UserError, match="names attribute 'character_count', which the dataset does not have"):
        curate(default_annotated, tmp_path / "strict", write_config(tmp_path, "filters:\n  several_characters: {}\n"))
    assert not (tmp_path / "strict").exists()


def test_the_default_config_names_what_it_skips(default_annotated, tmp_path):
    result = curate(default_annotated, tmp_path / "out")
    assert [step for step, _ in result.skipped] == ["dedup.semantic"]  # the default has no attribute filters here


@pytest.mark.parametrize("text, error", [
    ("skip_unavailable: true\nfilters:\n  too_smal: {}\n", "unknown filter 'too_smal'"),
    ("skip_unavailable: true\nfilters:\n  blurry: {min_sharpness: 1.5}\n", "must be a number in [0, 1]"),
    ("skip_unavailable: true\ndedup:\n  semantic: {threshold: 3}\n", "cosine similarity in [-1, 1]"),
    ("skip_unavailable: yes please\n", "skip_unavailable must be true or false"),
])
def test_skip_unavailable_never_hides_a_mistake(text, error, tiny_annotated, tmp_path):
    with pytest.raises(UserError, match=re.escape(error)):
        curate(tiny_annotated, tmp_path / "out", write_config(tmp_path, text))


def test_skip_unavailable_skips_only_what_the_dataset_lacks(tiny_annotated, tmp_path):
    text = ("skip_unavailable: true\nfilters:\n  several_characters: {}\n  too_small: {min_side: 8}\n"
            "  label_rules:\n    - {attribute: hair_colour, in: [red]}\n  no_character: {attribute: hair_color}\n")
    result = curate(tiny_annotated, tmp_path / "out", write_config(tmp_path, text))
    assert [step for step, _ in result.skipped] == ["label_rules"]  # the default schema has the others
    assert "hair_colour" in result.skipped[0][1] and set(result.removed_by) >= {"several_characters", "too_small",
                                                                                  "no_character"}


def test_error_rows_keep_no_image_in_the_curated_splits(tmp_path):
    """An annotated output of an older version kept the undecodable bytes of error rows: a real JPEG cut short.
    The curated splits iterate cleanly (every image decodes or is null); the hash and error stay."""
    from datasets import Image as ImageFeature

    real = (ROOT / "tests" / "data" / "real" / "ukbench08996.jpg").read_bytes()
    truncated = real[: len(real) // 3]
    good = im_.encode(im_.scene(96, 96, seed=4))
    images = [good, truncated]
    ann = annotated(tmp_path / "ann", images, extra={"image": (ImageFeature(), [{"bytes": b, "path": None}
                                                                               for b in images])})
    assert DecodeStage()({"image": [{"bytes": truncated, "path": None}]})["error"][0].startswith("truncated")
    stored = load_dataset(str(ann), split="train")
    with pytest.raises(OSError, match="truncated"):
        stored[1]  # what a reader of such an output meets
    stored = stored.cast_column("image", ImageFeature(decode=False))
    assert stored[1]["error"] and stored[1]["image"]["bytes"] == truncated
    curate(ann, tmp_path / "out", write_config(tmp_path, NEAR_ONLY))
    train = load_dataset(str(tmp_path / "out"), split="train")
    quarantine = load_dataset(str(tmp_path / "out"), split="quarantine")
    rows = list(train) + list(quarantine)  # decodes every image
    assert len(rows) == 2 and train[0]["image"].size == (96, 96)
    bad = quarantine[0]
    assert bad["image"] is None and bad["error"].startswith("truncated") and bad["sha256"] == stored[1]["sha256"]
    assert bad["reasons"][0].startswith("error: truncated")


def test_curate_recipe_with_the_shipped_config_on_the_default_annotate_output(default_annotated, tmp_path):
    """The README's command on what `recipes/annotate.py` writes by default."""
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "curate.py"), "--dataset", str(default_annotated),
                          "--output_dir", str(tmp_path / "curated"), "--config", str(SHIPPED)],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "skipped (the dataset cannot take them): dedup.semantic, several_characters, not_illustration" in run.stdout
    assert "curation step several_characters skipped" in run.stderr
    # the 64 px sample keeps nothing: the summary names the filter that removed every row and loads what there is
    assert "too_small removed every row" in run.stdout and "low_confidence removed every row" not in run.stdout
    assert "split='quarantine')" in run.stdout and "split='train'" not in run.stdout
    assert len(load_dataset(str(tmp_path / "curated"), split="quarantine")) == 16
    curate(default_annotated, tmp_path / "small", write_config(tmp_path, "filters:\n  too_small: {min_side: 32}\n"))
    assert load_dataset(str(tmp_path / "small"), split="train").num_rows > 0  # the remedy the line gives works


@pytest.mark.slow
def test_readme_annotate_then_curate_with_defaults(tmp_path):
    """`python recipes/annotate.py` with no options, then the README's curate command."""
    env = _env(tmp_path)
    ann = tmp_path / "outputs" / "annotated"
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "annotate.py"), "--limit", "24", "--output_dir",
                          str(ann), "--quiet"], env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "curate.py"), "--dataset", str(ann),
                          "--config", str(SHIPPED)], env=env, capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "skipped (the dataset cannot take them): dedup.semantic, several_characters" in run.stdout
    assert len(load_dataset(str(tmp_path / "outputs" / "curated"), split="quarantine")) == 24  # all 64 px


# --------------------------------------------------------------------------------------------- the Hub (doubles)
def test_hub_dataset_id_in_and_push_out(tiny_annotated, tmp_path, monkeypatch):
    import huggingface_hub

    from charattr_hf.hub import push_dataset

    calls = []

    def fake_snapshot(repo_id, repo_type=None, revision=None, allow_patterns=None):
        calls.append((repo_id, repo_type, revision, tuple(allow_patterns)))
        return str(tiny_annotated)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    out = tmp_path / "out"
    result = curate("someone/annotated", out, write_config(tmp_path, "dedup: {exact: true}\n"), revision="v1")
    assert result.rows == 2 and calls == [("someone/annotated", "dataset", "v1", ("data/*.parquet", "README.md"))]

    class FakeApi:
        def __init__(self):
            self.uploads = []

        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"url": f"https://huggingface.co/datasets/{repo_id}"})()

        def upload_folder(self, **kwargs):
            self.uploads.append(kwargs)

    api = FakeApi()
    url = push_dataset(out, "someone/curated", api=api)
    assert url.endswith("someone/curated")
    upload = api.uploads[0]
    assert "images/*.png" in upload["allow_patterns"] and "data/*.parquet" in upload["allow_patterns"]
    assert sorted(upload["delete_patterns"]) == ["data/quarantine-*.parquet", "data/train-*.parquet",
                                                 "images/quarantine-*.png", "images/train-*.png"]
