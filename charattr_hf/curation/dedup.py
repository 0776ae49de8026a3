"""Global duplicate grouping: exact (sha256), near (perceptual hash index, verified by a colour thumbnail) and
semantic (CLIP embedding cosine within k-means clusters, as SemDeDup), over the whole dataset at once.

Every kind yields pairs of rows (edges); the groups are the connected components of all edges together
(:func:`connected_components`, vectorised union-find). Nothing here holds an all-pairs matrix:

- exact: rows sorted by hash, equal neighbours linked (``O(n log n)``);
- near: a faiss binary index over the 64-bit ``phash`` values gives each row its ``neighbours`` nearest rows
  (exact search for small sets, an inverted-file index over Hamming k-means cells above ``ivf_min_rows``); a
  candidate within ``phash_radius`` bits is kept only when the colour thumbnails agree (``thumb_distance``);
- semantic: spherical k-means over the unit embeddings (trained on a sample), each row assigned to its nearest
  centroid, then cosine similarity within each cluster, blockwise; pairs at ``>= threshold`` are duplicates.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .signatures import THUMB_SIDE, normalise_thumbs

logger = logging.getLogger(__name__)

__all__ = ["NearConfig", "SemanticConfig", "Pairs", "connected_components", "exact_pairs", "near_pairs",
           "semantic_pairs"]


@dataclass
class NearConfig:
    enabled: bool = True
    #: candidate when the 64-bit luma phash differs in at most this many bits
    phash_radius: int = 14
    #: duplicate when the colour thumbnails' distance (see signatures.thumb_distance) is at most this
    thumb_threshold: float = 12.0
    #: nearest rows by phash looked at per row
    neighbours: int = 16
    #: above this many rows an inverted-file index (approximate) replaces exact search
    ivf_min_rows: int = 50_000
    #: inverted lists probed per query (IVF)
    nprobe: int = 16


@dataclass
class SemanticConfig:
    enabled: bool = True
    #: cosine similarity at or above which two embeddings are duplicates
    threshold: float = 0.95
    #: k-means clusters; 0 = about sqrt(rows)
    clusters: int = 0
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


def _binary_knn(codes: np.ndarray, k: int, cfg: NearConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    n, nbytes = codes.shape
    d = nbytes * 8
    k = min(k, n)
    if n < cfg.ivf_min_rows:
        index = faiss.IndexBinaryFlat(d)
    else:
        nlist = int(min(65536, max(256, 4 * math.sqrt(n))))
        quantizer = faiss.IndexBinaryFlat(d)
        index = faiss.IndexBinaryIVF(quantizer, d, nlist)
        rng = np.random.default_rng(seed)
        sample = codes[rng.choice(n, size=min(n, nlist * 32), replace=False)]
        index.train(sample)
        index.nprobe = cfg.nprobe
    index.add(codes)
    dist = np.empty((n, k), np.int32)
    nbr = np.empty((n, k), np.int64)
    block = 65536
    for s in range(0, n, block):
        D, I = index.search(codes[s : s + block], k)
        dist[s : s + block], nbr[s : s + block] = D, I
    return dist, nbr


def near_pairs(phash: np.ndarray, thumbs: np.ndarray, rows: np.ndarray, cfg: NearConfig) -> Pairs:
    """Near-duplicate edges among ``rows`` (indices into the dataset) given their ``phash`` ``(m, 8)`` and
    ``thumb`` ``(m, 768)`` arrays (``uint8``)."""
    start = time.perf_counter()
    m = len(rows)
    if m < 2:
        return Pairs("near", seconds=time.perf_counter() - start)
    dist, nbr = _binary_knn(np.ascontiguousarray(phash, dtype=np.uint8), cfg.neighbours + 1, cfg)
    qi = np.repeat(np.arange(m, dtype=np.int64), dist.shape[1])
    qj, qd = nbr.ravel(), dist.ravel()
    ok = (qj >= 0) & (qj != qi) & (qd <= cfg.phash_radius)
    a, b, hd = _unique_pairs(qi[ok], qj[ok], qd[ok])
    td = _thumb_distances(thumbs, a, b)
    keep = td <= cfg.thumb_threshold
    return Pairs("near", rows[a[keep]], rows[b[keep]], td[keep], candidates=td,
                 seconds=time.perf_counter() - start)


def semantic_pairs(emb: np.ndarray, rows: np.ndarray, cfg: SemanticConfig, block: int = 4096) -> Pairs:
    """Semantic duplicate edges among ``rows`` given their embeddings ``(m, d)`` (any float dtype)."""
    import faiss

    start = time.perf_counter()
    m = len(rows)
    if m < 2:
        return Pairs("semantic", seconds=time.perf_counter() - start)
    d = emb.shape[1]

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.maximum(norm, 1e-12)

    k = cfg.clusters or max(1, int(round(math.sqrt(m))))
    k = min(k, max(1, m // 4))
    assign = np.zeros(m, np.int64)
    if k > 1:
        rng = np.random.default_rng(cfg.seed)
        sample = unit(emb[np.sort(rng.choice(m, size=min(m, k * 64), replace=False))])
        km = faiss.Kmeans(d, k, niter=cfg.iterations, spherical=True, seed=cfg.seed, max_points_per_centroid=64,
                          verbose=False)
        km.train(sample)
        for s in range(0, m, 65536):
            _, a = km.index.search(unit(emb[s : s + 65536]), 1)
            assign[s : s + 65536] = a[:, 0]
    order = np.argsort(assign, kind="stable")
    bounds = np.flatnonzero(np.diff(assign[order])) + 1
    out_i, out_j, out_s, near_s = [], [], [], []
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        x = unit(emb[members])
        step = max(1, min(block, 32_000_000 // len(members)))  # at most ~128 MB of similarities at a time
        for s in range(0, len(members), step):
            sims = x[s : s + step] @ x[s:].T  # rows s.. against s.. (upper triangle by offset)
            r, c = np.nonzero(sims >= cfg.threshold)
            c_abs = c + s
            r_abs = r + s
            keep = c_abs > r_abs
            out_i.append(members[r_abs[keep]])
            out_j.append(members[c_abs[keep]])
            out_s.append(sims[r[keep], c[keep]])
            # nearest other member of each row in this block, for the distribution picture
            sims[np.arange(len(sims)), np.arange(len(sims))] = -1.0
            near_s.append(sims.max(axis=1) if sims.shape[1] > 1 else np.zeros(0, np.float32))
    if out_i:
        i, j, sim = _unique_pairs(rows[np.concatenate(out_i)], rows[np.concatenate(out_j)], np.concatenate(out_s))
    else:
        i = j = np.zeros(0, np.int64)
        sim = np.zeros(0, np.float32)
    cand = np.concatenate(near_s) if near_s else np.zeros(0, np.float32)
    return Pairs("semantic", i, j, (1.0 - sim).astype(np.float32), candidates=(1.0 - cand).astype(np.float32),
                 seconds=time.perf_counter() - start)


THUMB_BYTES = THUMB_SIDE * THUMB_SIDE * 3
