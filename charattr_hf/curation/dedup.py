"""Global duplicate grouping: exact (sha256), near (perceptual hash index, verified by a colour thumbnail) and
semantic (CLIP embedding cosine within k-means clusters, as SemDeDup), over the whole dataset at once.

Every kind yields pairs of rows (edges); the groups are the connected components of all edges together
(:func:`connected_components`, vectorised union-find). Nothing here holds an all-pairs matrix:

- exact: rows sorted by hash, equal neighbours linked (``O(n log n)``);
- near: the colour thumbnails (luma-normalised) are first compared on 4x4-pixel block means (an orthogonal
  projection: it never lengthens a distance, so it loses no pair) within k-means cells; a candidate within
  ``thumb_threshold`` is verified on the full thumbnail and on the 64-bit ``phash`` (``phash_radius`` bits);
- semantic: unit CLIP embeddings within k-means clusters (as SemDeDup); pairs at cosine ``>= threshold``.

Both use :func:`cluster_pairs`: cells from :func:`partition` (k-means on a sample, split recursively until a
cell holds about ``leaf`` rows, so the work grows linearly with the rows; ``rounds`` independent partitions, so
a pair cut apart by one cell boundary is found in another), then BLAS products within cells in bounded blocks,
at most ``neighbours`` partners per row. Measured in ``benchmarks/dedup.py``: on planted copies of synthetic
characters, grey pHash candidates alone (a faiss binary index over ``phash``) are not selective (distinct
characters of the same composition sit within a few bits), and a faiss binary IVF index over 1M random 64-bit
codes took minutes on two cores with poor recall, so the colour thumbnail drives the candidates here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..stages.signatures import THUMB_SIDE, normalise_thumbs

logger = logging.getLogger(__name__)

__all__ = ["NearConfig", "SemanticConfig", "Pairs", "connected_components", "exact_pairs", "near_pairs",
           "semantic_pairs"]


@dataclass
class NearConfig:
    enabled: bool = True
    #: candidate when the 64-bit luma phash differs in at most this many bits
    phash_radius: int = 10
    #: duplicate when the colour thumbnails' distance (see signatures.thumb_distance) is at most this
    thumb_threshold: float = 10.0
    #: most partners kept per row (its nearest); bounds the work on large clusters of look-alikes
    neighbours: int = 16
    #: rows per cell compared all-pairs (k-means cells, split recursively)
    leaf: int = 512
    #: independent partitions compared (a pair cut apart by one is usually together in another)
    rounds: int = 2
    #: nearest centroids looked at when a row near a cell boundary also joins the cell across it (1: only its own)
    assign: int = 1


@dataclass
class SemanticConfig:
    enabled: bool = True
    #: cosine similarity at or above which two embeddings are duplicates
    threshold: float = 0.95
    #: rows per cluster compared all-pairs (k-means clusters, split recursively)
    leaf: int = 1024
    #: independent partitions compared (1: one clustering, as SemDeDup)
    rounds: int = 2
    #: nearest centroids looked at when a row near a cluster boundary also joins the cluster across it (1: only
    #: its own cluster, as SemDeDup)
    assign: int = 1
    #: most partners kept per row
    neighbours: int = 16
    #: k-means iterations
    iterations: int = 10
    seed: int = 0


@dataclass
class Pairs:
    """Edges ``(i, j)``, ``i < j``, of one kind, with a distance per edge (for the card)."""

    kind: str
    i: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    j: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    distance: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    #: distances of every candidate looked at (verified or not), for the distribution picture
    candidates: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.i)


def _unique_pairs(i: np.ndarray, j: np.ndarray, *extra: np.ndarray):
    """Pairs with ``i < j``, each once (the first occurrence's extras)."""
    lo, hi = np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)
    keep = lo != hi
    lo, hi = lo[keep], hi[keep]
    extra = tuple(e[keep] for e in extra)
    if not len(lo):
        return (lo, hi, *extra)
    key = lo * (int(hi.max()) + 1) + hi
    _, first = np.unique(key, return_index=True)
    return (lo[first], hi[first], *(e[first] for e in extra))


def connected_components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component label per node (the smallest node index in its component), by hooking and pointer jumping."""
    parent = np.arange(n, dtype=np.int64)
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    while len(i):
        pi, pj = parent[i], parent[j]
        lo, hi = np.minimum(pi, pj), np.maximum(pi, pj)
        moving = lo != hi
        if not moving.any():
            break
        i, j = i[moving], j[moving]  # edges already inside one tree stay there
        np.minimum.at(parent, hi[moving], lo[moving])
        while True:  # compress: every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def exact_pairs(keys: list) -> Pairs:
    """Rows with the same non-null key (sha256), each linked to the first row holding it."""
    start = time.perf_counter()
    idx = np.array([k is not None for k in keys])
    rows = np.flatnonzero(idx)
    vals = np.array([keys[r] for r in rows], dtype=object)
    if not len(rows):
        return Pairs("exact", seconds=time.perf_counter() - start)
    order = np.argsort(vals, kind="stable")
    sorted_vals = vals[order]
    new = np.ones(len(order), bool)
    new[1:] = sorted_vals[1:] != sorted_vals[:-1]
    head = rows[order][np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))]
    members = rows[order]
    keep = members != head
    i, j = _unique_pairs(head[keep], members[keep])
    return Pairs("exact", i, j, np.zeros(len(i), np.float32), seconds=time.perf_counter() - start)


def _thumb_distances(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 65536) -> np.ndarray:
    out = np.empty(len(i), np.float32)
    for s in range(0, len(i), block):
        a = normalise_thumbs(thumbs[i[s : s + block]])
        b = normalise_thumbs(thumbs[j[s : s + block]])
        out[s : s + block] = np.sqrt(np.mean((a - b) ** 2, axis=1))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """``k`` centroids of ``x`` (faiss k-means, on one thread: it trains on a small sample, and faiss's OpenMP
    threads spin-wait, which on a shared machine made it 20 times slower than one thread)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, max_points_per_centroid=64,
                          min_points_per_centroid=1, verbose=False)
        km.train(np.ascontiguousarray(x, dtype=np.float32))
    finally:
        faiss.omp_set_num_threads(threads)
    return km.centroids


def partition(get, rows: np.ndarray, dim: int, *, radius: float, leaf: int, fanout: int = 64, assign: int = 4,
              iterations: int = 8, seed: int = 0, _depth: int = 0) -> list[np.ndarray]:
    """Cells (arrays of rows, possibly overlapping) such that two rows within ``radius`` (L2) share a cell.

    A node of more than ``2 * leaf`` rows is split by k-means into up to ``fanout`` children, recursively, so
    the work is linear in the rows (depth ~ log_fanout(rows / leaf)). A row goes to its nearest centroid and
    also to any of its ``assign`` nearest whose bisector with the nearest lies within ``radius`` of it: a partner
    within ``radius`` that went to that other centroid must lie across that bisector. Exact for the centroids
    looked at; a row rarely has more than ``assign`` bisectors that close.
    """
    m = len(rows)
    if m <= 2 * leaf or _depth >= 6:
        return [rows]
    k = int(min(fanout, math.ceil(m / leaf)))
    rng = np.random.default_rng(seed + _depth)
    sample = rows[np.sort(rng.choice(m, size=min(m, k * 64), replace=False))]
    cent = _kmeans(get(sample), k, iterations, seed + _depth)
    csq = np.einsum("ij,ij->i", cent, cent)
    a = min(assign, k)
    owners, cells = [], []
    for s in range(0, m, 65536):
        x = get(rows[s : s + 65536])
        d2 = np.einsum("ij,ij->i", x, x)[:, None] + csq[None, :] - 2.0 * (x @ cent.T)
        near = np.argpartition(d2, a - 1, axis=1)[:, :a] if a < k else np.tile(np.arange(k), (len(x), 1))
        nd = np.take_along_axis(d2, near, axis=1)
        o = np.argsort(nd, axis=1)
        near, nd = np.take_along_axis(near, o, axis=1), np.take_along_axis(nd, o, axis=1)
        gap = np.linalg.norm(cent[near] - cent[near[:, :1]], axis=2)  # |c_1 - c_j|
        with np.errstate(divide="ignore", invalid="ignore"):
            to_bisector = (nd - nd[:, :1]) / (2.0 * gap)
        join = to_bisector <= radius
        join[:, 0] = True
        r, c = np.nonzero(join)
        owners.append(rows[s + r])
        cells.append(near[r, c])
    owners_a, cells_a = np.concatenate(owners), np.concatenate(cells)
    order = np.argsort(cells_a, kind="stable")
    bounds = np.flatnonzero(np.diff(cells_a[order])) + 1
    out: list[np.ndarray] = []
    for child in np.split(owners_a[order], bounds):
        if len(child) >= m:  # k-means could not split it (identical rows): stop here
            out.append(child)
            continue
        out += partition(get, child, dim, radius=radius, leaf=leaf, fanout=fanout, assign=assign,
                         iterations=iterations, seed=seed, _depth=_depth + 1)
    return out


def cluster_pairs(get, m: int, dim: int, *, radius: float, leaf: int = 512, assign: int = 1, rounds: int = 2,
                  neighbours: int = 16, iterations: int = 8, seed: int = 0, block: int = 4096):
    """Pairs of rows at L2 distance <= ``radius``: the rows are cut into cells by :func:`partition` and compared
    within cells with BLAS, in bounded blocks; each row keeps at most ``neighbours`` partners (its nearest), so a
    cell of thousands of look-alikes cannot make the output quadratic. ``rounds`` independent partitions (other
    k-means seeds and samples) are compared and their pairs merged: a pair that one partition cuts apart is
    usually together in another.

    ``get(rows) -> (len(rows), dim) float32`` gives the vectors (so large inputs stay compact until used).
    Returns ``(i, j, distance, nearest)``: pairs ``i < j``, their L2 distance, and per row the distance to its
    nearest other row in its cells (``inf`` when alone).
    """
    nearest = np.full(m, np.inf, np.float32)
    cells = []
    for k in range(rounds if m > 2 * leaf else 1):
        cells += partition(get, np.arange(m, dtype=np.int64), dim, radius=radius, leaf=leaf, assign=assign,
                           iterations=iterations, seed=seed + 1000 * k)
    r2 = np.float32(radius * radius)
    out_i, out_j, out_d = [], [], []
    for members in cells:
        if len(members) < 2:
            continue
        x = get(members)
        sq = np.einsum("ij,ij->i", x, x)
        step = max(1, min(block, 32_000_000 // len(members)))  # at most ~128 MB of distances at a time
        for s in range(0, len(members), step):
            d2 = x[s : s + step] @ x.T
            d2 *= -2.0
            d2 += sq[s : s + step, None]
            d2 += sq[None, :]
            rows = np.arange(len(d2))
            d2[rows, rows + s] = np.inf  # a row is not its own duplicate
            np.minimum.at(nearest, members[s : s + step], d2.min(axis=1))
            r, c = np.nonzero(d2 <= r2)
            if not len(r):
                continue
            d = d2[r, c]
            counts = np.bincount(r, minlength=len(d2))
            if counts.max() > neighbours:  # keep each row's nearest partners only
                o = np.lexsort((d, r))
                r, c, d = r[o], c[o], d[o]
                rank = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
                keep = rank < neighbours
                r, c, d = r[keep], c[keep], d[keep]
            out_i.append(members[r + s])
            out_j.append(members[c])
            out_d.append(np.sqrt(np.maximum(d, 0)).astype(np.float32))
    nearest = np.sqrt(np.maximum(nearest, 0))
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), nearest
    i, j, d = _unique_pairs(np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d))
    return i, j, d, nearest


#: The thumbnails are compared first on 4x4-pixel block means (4x4 blocks x 3 channels = 48 numbers): an
#: orthogonal projection, so a distance there never exceeds the full thumbnail distance and no pair is lost.
BLOCK = 4


def _block_means(thumbs: np.ndarray) -> np.ndarray:
    """Normalised thumbnails projected on block indicators, scaled so that distances are RMS over 768 values."""
    t = normalise_thumbs(thumbs).reshape(len(thumbs), THUMB_SIDE // BLOCK, BLOCK, THUMB_SIDE // BLOCK, BLOCK, 3)
    coords = t.sum(axis=(2, 4)) / BLOCK  # block sum / sqrt(block size): orthonormal coordinates
    return (coords.reshape(len(thumbs), -1) / math.sqrt(THUMB_SIDE * THUMB_SIDE * 3)).astype(np.float32)


def near_pairs(phash: np.ndarray, thumbs: np.ndarray, rows: np.ndarray, cfg: NearConfig) -> Pairs:
    """Near-duplicate edges among ``rows`` (indices into the dataset) given their ``phash`` ``(m, 8)`` and
    ``thumb`` ``(m, 768)`` arrays (``uint8``).

    Candidates: the normalised colour thumbnails are projected on 4x4-pixel block means (a projection never
    lengthens a distance, so no pair within the threshold is lost there) and compared within the cells of
    :func:`partition` (:func:`cluster_pairs`). A candidate is a duplicate when its
    full thumbnail distance is within ``thumb_threshold`` and its phash distance within ``phash_radius``."""
    start = time.perf_counter()
    m = len(rows)
    if m < 2:
        return Pairs("near", seconds=time.perf_counter() - start)
    projected = np.empty((m, 3 * (THUMB_SIDE // BLOCK) ** 2), np.float32)
    for s in range(0, m, 65536):
        projected[s : s + 65536] = _block_means(thumbs[s : s + 65536])
    a, b, _, nearest = cluster_pairs(lambda r: projected[r], m, projected.shape[1], radius=cfg.thumb_threshold,
                                     leaf=cfg.leaf, assign=cfg.assign, rounds=cfg.rounds, neighbours=cfg.neighbours)
    del projected
    td = _thumb_distances(thumbs, a, b)
    x = np.bitwise_xor(phash[a].view(np.uint64), phash[b].view(np.uint64)).ravel()
    hd = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1) if len(x) else np.zeros(0, np.int64)
    keep = (td <= cfg.thumb_threshold) & (hd <= cfg.phash_radius)
    # for the picture: each row's nearest other row (block-mean distance, a lower bound of the thumbnail distance)
    near = nearest[np.isfinite(nearest)]
    return Pairs("near", rows[a[keep]], rows[b[keep]], td[keep], candidates=near.astype(np.float32),
                 seconds=time.perf_counter() - start)


def semantic_pairs(emb: np.ndarray, rows: np.ndarray, cfg: SemanticConfig) -> Pairs:
    """Semantic duplicate edges among ``rows`` given their embeddings ``(m, d)`` (any float dtype)."""
    start = time.perf_counter()
    m = len(rows)
    if m < 2:
        return Pairs("semantic", seconds=time.perf_counter() - start)
    # unit vectors: cosine >= t  <=>  L2 <= sqrt(2 - 2t)
    radius = math.sqrt(max(0.0, 2.0 - 2.0 * cfg.threshold))
    i, j, d, nearest = cluster_pairs(lambda r: _unit(emb[r]), m, emb.shape[1], radius=radius, leaf=cfg.leaf,
                                     assign=cfg.assign, rounds=cfg.rounds, neighbours=cfg.neighbours,
                                     iterations=cfg.iterations,
                                     seed=cfg.seed)
    d = (d * d / 2.0).astype(np.float32)  # L2 -> 1 - cosine
    nearest = nearest * nearest / 2.0
    near = nearest[np.isfinite(nearest)]
    return Pairs("semantic", rows[i], rows[j], d, candidates=near.astype(np.float32),
                 seconds=time.perf_counter() - start)


THUMB_BYTES = THUMB_SIDE * THUMB_SIDE * 3
