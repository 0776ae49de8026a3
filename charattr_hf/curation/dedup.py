"""Global duplicate grouping: exact (sha256), near (whole-picture thumbnails and local features, verified on
aligned thumbnails) and semantic (CLIP embedding cosine within k-means clusters, as SemDeDup), over the whole
dataset at once.

Every kind yields pairs of rows (edges); the groups are the connected components of all edges together
(:func:`connected_components`, vectorised union-find). Nothing here holds an all-pairs matrix:

- exact: rows sorted by hash, equal neighbours linked (``O(n log n)``);
- near (:func:`near_pairs`), two candidate paths, one check:

  - whole picture: the colour thumbnails (luma-normalised) are compared on mirror-symmetric 4x4-pixel block
    means (an orthogonal projection: it never lengthens a distance, and a mirror image lands on its original)
    within k-means cells; candidates within ``phash_radius`` bits (direct or mirrored pHash) go on;
  - local features (crops, zooms, borders): rows sharing ORB descriptors in hash buckets
    (:func:`keypoint_candidates`, a sort of the keys) with at least ``min_inliers`` matches agreeing on one scale
    and shift per axis (:func:`keypoint_fit`);
  - the check: the thumbnails, aligned by the fit (or as they are, or mirrored), agree within
    ``thumb_threshold`` on the 80 % of cells that agree best (:func:`aligned_thumb_distance`);
- semantic: unit CLIP embeddings within k-means clusters (as SemDeDup); pairs at cosine ``>= threshold``.

Thumbnails and embeddings use :func:`cluster_pairs`: cells from :func:`partition` (k-means on a sample, split
recursively until a cell holds about ``leaf`` rows, so the work grows linearly with the rows; ``rounds``
independent partitions, so a pair cut apart by one cell boundary is found in another), then BLAS products within
cells in bounded blocks, at most ``neighbours`` partners per row. Measured in ``benchmarks/dedup.py``: grey pHash
candidates alone are not selective (distinct characters of the same composition sit within a few bits), and a
faiss binary IVF index over 1M random 64-bit codes took minutes on two cores with poor recall, so the colour
thumbnail drives the whole-picture candidates.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..stages.signatures import THUMB_SIDE, mirror_thumbs, normalise_thumbs

logger = logging.getLogger(__name__)

__all__ = ["NearConfig", "SemanticConfig", "Pairs", "connected_components", "exact_pairs", "near_pairs",
           "near_distance", "semantic_pairs"]


@dataclass
class NearConfig:
    enabled: bool = True
    #: whole-picture candidate when the 64-bit luma phash (direct or mirrored) differs in at most this many bits
    phash_radius: int = 12
    #: whole-picture candidate when the thumbnails' mirror-symmetric block means are this close (RMS)
    candidate_radius: float = 10.0
    #: duplicate when the robust distance of the (aligned) colour thumbnails is at most this (see
    #: aligned_thumb_distance: RMS over the 80 % of cells that agree best)
    thumb_threshold: float = 3.2
    #: most partners kept per row (its nearest); bounds the work on large clusters of look-alikes
    neighbours: int = 16
    #: rows per cell compared all-pairs (k-means cells, split recursively)
    leaf: int = 512
    #: independent partitions compared (a pair cut apart by one is usually together in another)
    rounds: int = 2
    #: nearest centroids looked at when a row near a cell boundary also joins the cell across it (1: only its own)
    assign: int = 1
    #: duplicate when at least this many local features agree on one shift and scale (0: local features unused)
    min_inliers: int = 13
    #: bits of a descriptor (whole bytes) that key it in one hash table (local-feature candidates)
    hash_bits: int = 32
    #: hash tables; rows sharing features in at least two (table, bucket) places are compared
    hash_tables: int = 2


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


#: The thumbnails are compared first on 4x4-pixel block means averaged with their mirror image (4x2 blocks x 3
#: channels = 24 numbers): an orthogonal projection, so a distance there never exceeds the thumbnail distance of
#: either orientation and no pair is lost, and a mirrored copy lands on its original.
BLOCK = 4


def _block_means(thumbs: np.ndarray) -> np.ndarray:
    """Normalised thumbnails projected on mirror-symmetric block indicators, scaled so that distances are RMS over
    768 values."""
    side = THUMB_SIDE // BLOCK
    t = normalise_thumbs(thumbs).reshape(len(thumbs), side, BLOCK, side, BLOCK, 3)
    coords = t.sum(axis=(2, 4)) / BLOCK  # block sum / sqrt(block size): orthonormal coordinates
    sym = (coords[:, :, : side // 2] + coords[:, :, side // 2 :][:, :, ::-1]) / math.sqrt(2.0)
    return (sym.reshape(len(thumbs), -1) / math.sqrt(THUMB_SIDE * THUMB_SIDE * 3)).astype(np.float32)


def _phash_distances(phash: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Hamming distance of row ``i``'s hash to row ``j``'s hash or to its mirror's, the smaller (``phash`` is
    ``(m, 16)``: the picture's 8 bytes, then its mirror image's)."""
    if not len(i):
        return np.zeros(0, np.int64)
    a = phash[i, :8].view(np.uint64).ravel()
    b = phash[j].view(np.uint64)
    return np.minimum(np.bitwise_count(a ^ b[:, 0]), np.bitwise_count(a ^ b[:, 1])).astype(np.int64)


# ------------------------------------------------------------------------------------------ local features
def keypoint_candidates(desc: np.ndarray, counts: np.ndarray, *, bits: int = 32, tables: int = 2,
                        max_bucket: int = 8, min_shared: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of rows that share local features: locality-sensitive hashing of the descriptors.

    Each table keys every descriptor by ``bits // 8`` fixed random bytes of it; rows whose descriptors fall in the
    same bucket in at least ``min_shared`` (table, bucket) places are candidates. Buckets of more than
    ``max_bucket`` rows (flat corners, text: features many pictures have) are left out, so the pairs stay linear in
    the rows; the work is a sort of ``tables x features`` keys.
    ``desc`` is ``(m, K, d)`` uint8, ``counts`` the valid features per row."""
    m, k, d = desc.shape
    valid = np.arange(k)[None, :] < counts[:, None]
    rng = np.random.default_rng(seed)
    codes = []
    for _ in range(tables):
        # whole bytes of the descriptor (each byte is 8 of ORB's binary tests): a gather, not a loop over bits;
        # the key and the row share one uint64, so one sort groups the buckets (arrays kept to a few bytes a key)
        v = np.repeat(np.arange(m, dtype=np.uint64), counts.astype(np.int64))
        for b, p in enumerate(rng.choice(d, size=bits // 8, replace=False)):
            v |= desc[:, :, p][valid].astype(np.uint64) << np.uint64(32 + 8 * b)
        v.sort()
        rows = (v & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        v >>= np.uint64(32)
        keys = v.astype(np.uint32)
        del v
        start = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        del keys
        size = np.diff(np.r_[start, len(rows)])
        pairable = (size >= 2) & (size <= max_bucket)
        start, size = start[pairable], size[pairable]
        del pairable
        for sz in np.unique(size):
            s0 = start[size == sz]
            members = rows[s0[:, None] + np.arange(sz)[None, :]].astype(np.int64)
            a, b = np.triu_indices(sz, 1)
            lo, hi = members[:, a].ravel(), members[:, b].ravel()
            keep = lo != hi
            codes.append(lo[keep] * m + hi[keep])
        del rows, start, size
    if not codes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    code, shared = np.unique(np.concatenate(codes), return_counts=True)
    code = code[shared >= min_shared]
    return code // m, code % m


#: Relative scales allowed between two pictures' content along each axis (a crop of up to 40 % of a side, a zoom,
#: a resize that changes the aspect ratio), and the width of the bins in which each scale is voted for (log).
_SCALES = (0.6, 1.0 / 0.6)
_SCALE_BIN = 0.02


def _vote_scale(pa: np.ndarray, pb: np.ndarray, ok: np.ndarray, min_span: float) -> np.ndarray:
    """Per pair, the most voted ratio of coordinate spans of two matches (``pa``, ``pb``: ``(p, K)`` one axis)."""
    lo, hi = math.log(_SCALES[0]), math.log(_SCALES[1])
    nbins = int(math.ceil((hi - lo) / _SCALE_BIN))
    sa = pa[:, :, None] - pa[:, None, :]
    sb = pb[:, :, None] - pb[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.log(sb / sa)
    vote = ok[:, :, None] & ok[:, None, :] & (sa >= min_span) & (ls >= lo) & (ls < hi)
    p = len(pa)
    pi = np.nonzero(vote)[0]
    hist = np.bincount(pi * nbins + ((ls[vote] - lo) / _SCALE_BIN).astype(np.int64),
                       minlength=p * nbins).reshape(p, nbins)
    hist[:, :-1] += hist[:, 1:]  # a bin and its right neighbour
    centre = lo + (hist.argmax(axis=1) + 1.0) * _SCALE_BIN
    near = vote & (np.abs(ls - centre[:, None, None]) <= _SCALE_BIN)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.exp(np.where(near, ls, 0).sum(axis=(1, 2)) / near.sum(axis=(1, 2)))
    return np.where(np.isfinite(scale), scale, 1.0).astype(np.float32)


def _fit(pa: np.ndarray, pb: np.ndarray, ok: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Best scale-and-shift per axis of matched points ``pa -> pb`` (``(p, M, 2)``, ``ok`` marks real matches):
    ``(count, (p, 4) fit)`` as :func:`keypoint_fit` returns them."""
    p = len(pa)
    scale = np.stack([_vote_scale(pa[..., d], pb[..., d], ok, 24.0) for d in (0, 1)], axis=1)  # (p, 2)
    t = pb - scale[:, None, :] * pa  # (p, M, 2): the shift each match proposes
    tx, ty = t[..., 0], t[..., 1]
    close = np.abs(tx[:, :, None] - tx[:, None, :]) <= tolerance
    close &= np.abs(ty[:, :, None] - ty[:, None, :]) <= tolerance
    close &= ok[:, :, None] & ok[:, None, :]
    agree = close.sum(axis=2)
    best = agree.argmax(axis=1)
    members = close[np.arange(p), best]  # the matches that agree with the best shift: their mean shift
    shift = (t * members[..., None]).sum(axis=1) / np.maximum(members.sum(axis=1, keepdims=True), 1)
    return agree[np.arange(p), best], np.concatenate([scale, shift / 255.0], axis=1)


def keypoint_fit(kp_a: np.ndarray, n_a: np.ndarray, kp_b: np.ndarray, n_b: np.ndarray, *,
                 max_hamming: int = 28, tolerance: float = 4.0, need: int = 0, block: int = 2048):
    """Per pair, the most local features that one scale-and-shift per axis maps from picture ``a`` onto ``b``.

    ``kp_*`` are ``(P, K, 18)`` uint8 (``x, y`` in 1/255 of the content's width and height, then a 128-bit
    descriptor), ``n_*`` the valid features per row. Features are matched to their mutual nearest neighbour by
    Hamming distance (at most ``max_hamming`` bits of 128). Along each axis, every two matches far enough apart
    vote for the ratio of their spans (the scale, within :data:`_SCALES`; no rotation or mirroring: the whole
    picture path finds mirrors); at those scales each match proposes a shift, and the shift that the most matches
    agree with (within ``tolerance``, in 1/255 of the side) gives the count. Pairs with fewer than ``need``
    matches get their match count and no fit (it cannot reach ``need``).

    Returns ``(count, fit)``: ``fit`` is ``(P, 4)`` float32 ``sx, sy, tx, ty`` with ``b = s * a + t`` in
    content coordinates 0..1 (NaN without a fit)."""
    count = np.zeros(len(kp_a), np.int64)
    fit = np.full((len(kp_a), 4), np.nan, np.float32)
    k = kp_a.shape[1]
    ar = np.arange(k)
    for s in range(0, len(kp_a), block):
        a, b = kp_a[s : s + block], kp_b[s : s + block]
        p = len(a)
        da = np.ascontiguousarray(a[:, :, 2:]).view(np.uint64)  # (p, K, 2)
        db = np.ascontiguousarray(b[:, :, 2:]).view(np.uint64)
        ham = np.zeros((p, k, k), np.uint8)  # one 64-bit word at a time: long inner loops
        for w in range(da.shape[2]):
            ham += np.bitwise_count(da[:, :, w, None] ^ db[:, None, :, w])
        ham[~(ar[None, :] < n_a[s : s + block, None])] = 255
        ham.transpose(0, 2, 1)[~(ar[None, :] < n_b[s : s + block, None])] = 255
        ab = ham.argmin(axis=2)  # (p, K): a's nearest in b
        ba = ham.argmin(axis=1)  # (p, K): b's nearest in a
        rows = np.arange(p)[:, None]
        ok = (ba[rows, ab] == ar[None, :]) & (np.take_along_axis(ham, ab[:, :, None], axis=2)[:, :, 0] <= max_hamming)
        count[s : s + p] = ok.sum(axis=1)
        enough = np.flatnonzero(count[s : s + p] >= max(need, 2))  # fewer matches than needed: no fit can reach it
        # the fit works on each pair's matches only, in groups of pairs with about as many matches
        enough = enough[np.argsort(count[s + enough], kind="stable")]
        for g in range(0, len(enough), 256):
            sel = enough[g : g + 256]
            m = int(count[s + sel].max())
            order = np.argsort(~ok[sel], axis=1, kind="stable")[:, :m]  # matched features first
            okc = np.take_along_axis(ok[sel], order, axis=1)
            pa = np.take_along_axis(a[sel, :, :2], order[:, :, None], axis=1).astype(np.float32)
            pb = b[sel[:, None], np.take_along_axis(ab[sel], order, axis=1), :2].astype(np.float32)
            count[s + sel], fit[s + sel] = _fit(pa, pb, okc, tolerance)
    return count, fit


def _smooth(t: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along both axes of ``(p, n, n, 3)`` thumbnails (edges repeated): sampling one
    thumbnail between its cells, as an alignment does, then errs far less on sharp pictures."""
    for axis in (1, 2):
        pad = np.concatenate([t.take([0], axis=axis), t, t.take([-1], axis=axis)], axis=axis)
        n = t.shape[axis]
        t = (pad.take(range(0, n), axis=axis) + 2 * pad.take(range(1, n + 1), axis=axis)
             + pad.take(range(2, n + 2), axis=axis)) / 4.0
    return t


def aligned_thumb_distance(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, fit: np.ndarray | None = None, *,
                           mirror: bool = False, keep: float = 0.8, min_overlap: float = 0.5) -> np.ndarray:
    """Robust thumbnail distance of each pair ``(i, j)``, with ``j``'s picture seen through ``fit``.

    ``fit`` (``(P, 4)``: ``sx, sy, tx, ty``, ``j = s * i + t`` in content coordinates; None: the identity) says
    where each of ``j``'s thumbnail cells lies in ``i``'s picture; ``i``'s thumbnail is sampled there (bilinear)
    on the cells that fall inside it (at least ``min_overlap`` of them, else the distance is infinite). Luma is
    normalised over those cells in both, and the distance is the RMS over the ``keep`` share of cells that agree
    best, so a watermark or a stamp does not count while look-alike renders, which differ a little everywhere,
    stay apart. ``mirror`` compares with ``j``'s mirror image (its fit must then be the identity)."""
    from ..stages.signatures import MARGIN

    n = THUMB_SIDE
    out = np.full(len(i), np.inf, np.float32)
    centres = MARGIN + (1 - 2 * MARGIN) * (np.arange(n, dtype=np.float32) + 0.5) / n
    for s in range(0, len(i), 16384):
        ti = _smooth(thumbs[i[s : s + 16384]].reshape(-1, n, n, 3).astype(np.float32))
        tj = thumbs[j[s : s + 16384]]
        tj = _smooth((mirror_thumbs(tj) if mirror else tj).reshape(-1, n, n, 3).astype(np.float32))
        p = len(ti)
        if fit is None:
            sampled, inside = ti, np.ones((p, n, n), bool)
        else:
            f = np.nan_to_num(fit[s : s + 16384], nan=0.0)
            # j's cell centres in i's content coordinates, then in i's cell units
            cx = (centres[None, :] - f[:, 2:3]) / np.maximum(f[:, 0:1], 1e-3)
            cy = (centres[None, :] - f[:, 3:4]) / np.maximum(f[:, 1:2], 1e-3)
            ux = (cx - MARGIN) / (1 - 2 * MARGIN) * n - 0.5  # (p, n)
            uy = (cy - MARGIN) / (1 - 2 * MARGIN) * n - 0.5
            inside = ((uy >= -0.5) & (uy <= n - 0.5))[:, :, None] & ((ux >= -0.5) & (ux <= n - 0.5))[:, None, :]
            x0 = np.clip(np.floor(ux), 0, n - 2).astype(np.int64)
            y0 = np.clip(np.floor(uy), 0, n - 2).astype(np.int64)
            fx = np.clip(ux - x0, 0, 1)[:, None, :, None]
            fy = np.clip(uy - y0, 0, 1)[:, :, None, None]
            r = np.arange(p)[:, None, None]
            yy, xx = y0[:, :, None], x0[:, None, :]
            sampled = ((ti[r, yy, xx] * (1 - fx) + ti[r, yy, xx + 1] * fx) * (1 - fy)
                       + (ti[r, yy + 1, xx] * (1 - fx) + ti[r, yy + 1, xx + 1] * fx) * fy)
        w = inside.reshape(p, -1).astype(np.float32)
        cells = np.maximum(w.sum(axis=1), 1.0)
        a, b = sampled.reshape(p, -1, 3), tj.reshape(p, -1, 3)
        for x in (a, b):  # luma normalised over the shared cells (as normalise_thumbs over the whole thumbnail)
            mean = (x[:, :, 0] * w).sum(axis=1) / cells
            spread = np.sqrt((((x[:, :, 0] - mean[:, None]) ** 2) * w).sum(axis=1) / cells) + 8.0
            x[:, :, 0] = (x[:, :, 0] - mean[:, None]) / spread[:, None] * 48.0
        d2 = np.where(w > 0, ((a - b) ** 2).mean(axis=2), np.inf)
        d2.sort(axis=1)
        used = np.maximum((keep * cells).astype(np.int64), 1)
        csum = np.cumsum(np.where(np.isfinite(d2), d2, 0.0), axis=1)
        dist = np.sqrt(csum[np.arange(p), used - 1] / used)
        out[s : s + p] = np.where(w.sum(axis=1) >= min_overlap * n * n, dist, np.inf)
    return out


def _whole_picture_distance(thumbs: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """The robust thumbnail distance of each pair as they are, or mirrored where that is above ``threshold``: the
    smaller."""
    td = aligned_thumb_distance(thumbs, a, b)
    other = np.flatnonzero(td > threshold)  # the mirrored comparison only where the direct one fails
    td[other] = np.minimum(td[other], aligned_thumb_distance(thumbs, a[other], b[other], mirror=True))
    return td


def near_distance(thumbs: np.ndarray, a: np.ndarray, b: np.ndarray, cfg: NearConfig,
                  keypoints: np.ndarray | None = None, counts: np.ndarray | None = None) -> np.ndarray:
    """The check of :func:`near_pairs` on given pairs (positions in ``thumbs``), without its candidate searches:
    the thumbnails as they are or mirrored, else, where local features agree on a fit (``min_inliers``, from
    either picture to the other), aligned by it; the smallest robust distance (a duplicate: at most
    ``thumb_threshold``). Grouping runs it between a group's kept row and each other member."""
    d = _whole_picture_distance(thumbs, a, b, cfg.thumb_threshold)
    if keypoints is None or counts is None or cfg.min_inliers <= 0:
        return d
    for x, y in ((a, b), (b, a)):
        other = np.flatnonzero(d > cfg.thumb_threshold)
        for s in range(0, len(other), 65536):
            o = other[s : s + 65536]
            count, fit = keypoint_fit(keypoints[x[o]], counts[x[o]], keypoints[y[o]], counts[y[o]],
                                      need=cfg.min_inliers)
            good = count >= cfg.min_inliers
            o = o[good]
            d[o] = np.minimum(d[o], aligned_thumb_distance(thumbs, x[o], y[o], fit[good]))
    return d


def near_pairs(phash: np.ndarray, thumbs: np.ndarray, rows: np.ndarray, cfg: NearConfig,
               keypoints: np.ndarray | None = None, counts: np.ndarray | None = None) -> Pairs:
    """Near-duplicate edges among ``rows`` (indices into the dataset) given their ``phash`` ``(m, 16)``,
    ``thumb`` ``(m, 768)`` and, when there are local features, ``keypoints`` ``(m, K, 18)`` with ``counts``
    (all ``uint8``; see charattr_hf.stages.signatures).

    Two paths, whose edges are merged; both end with the same check, the robust thumbnail distance
    (:func:`aligned_thumb_distance`) within ``thumb_threshold``:

    - *whole picture* (edits that keep the framing, mirrors): the normalised colour thumbnails, projected on
      mirror-symmetric 4x4-pixel block means (a projection never lengthens a distance), are compared within the
      cells of :func:`partition` (:func:`cluster_pairs`); a candidate within ``candidate_radius`` there whose
      phash (direct or mirrored) is within ``phash_radius`` is checked with the thumbnails in the orientation that
      matches best;
    - *local features* (crops, zooms, borders, re-framing): rows that share features
      (:func:`keypoint_candidates`) and have at least ``min_inliers`` features agreeing on one scale and shift
      (:func:`keypoint_fit`) are checked with the thumbnails aligned by that fit.
    """
    start = time.perf_counter()
    m = len(rows)
    if m < 2:
        return Pairs("near", seconds=time.perf_counter() - start)
    projected = np.empty((m, 3 * (THUMB_SIDE // BLOCK) ** 2 // 2), np.float32)
    for s in range(0, m, 65536):
        projected[s : s + 65536] = _block_means(thumbs[s : s + 65536])
    a, b, _, nearest = cluster_pairs(lambda r: projected[r], m, projected.shape[1], radius=cfg.candidate_radius,
                                     leaf=cfg.leaf, assign=cfg.assign, rounds=cfg.rounds, neighbours=cfg.neighbours)
    del projected
    hashed = _phash_distances(phash, a, b) <= cfg.phash_radius
    a, b = a[hashed], b[hashed]
    td = _whole_picture_distance(thumbs, a, b, cfg.thumb_threshold)
    keep = td <= cfg.thumb_threshold
    i, j, dist = [a[keep]], [b[keep]], [td[keep]]
    if keypoints is not None and cfg.min_inliers > 0 and len(keypoints):
        ka, kb = keypoint_candidates(keypoints[:, :, 2:], counts, bits=cfg.hash_bits, tables=cfg.hash_tables)
        if len(ka) and keep.any():  # pairs the whole-picture path has linked need no fit
            lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
            new = ~np.isin(np.minimum(ka, kb) * m + np.maximum(ka, kb), lo * m + hi)
            ka, kb = ka[new], kb[new]
        for s in range(0, len(ka), 65536):
            x, y = ka[s : s + 65536], kb[s : s + 65536]
            count, fit = keypoint_fit(keypoints[x], counts[x], keypoints[y], counts[y], need=cfg.min_inliers)
            good = count >= cfg.min_inliers
            x, y, fit = x[good], y[good], fit[good]
            d = aligned_thumb_distance(thumbs, x, y, fit)
            ok = d <= cfg.thumb_threshold
            i.append(x[ok])
            j.append(y[ok])
            dist.append(d[ok])
    i, j, d = _unique_pairs(np.concatenate(i), np.concatenate(j), np.concatenate(dist))
    # for the picture: each row's nearest other row (block-mean distance, a lower bound of the thumbnail distance)
    near = nearest[np.isfinite(nearest)]
    return Pairs("near", rows[i], rows[j], d, candidates=near.astype(np.float32), seconds=time.perf_counter() - start)


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

