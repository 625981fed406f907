"""Near-duplicate search over 64-bit perceptual hashes: capped multi-index hashing.

`png_phash` is the hash figure records store; `nearest_earlier` finds, for every hash, the
first earlier one within a few bits, in time linear in the number of hashes (see its docstring
for the trade the bucket cap makes). The bit-block helpers are shared with other searches over
the same hashes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

NEAR_DUP_BITS = 4  # perceptual hashes at most this many bits apart are near duplicates
# Most distinct hashes of one bucket (hashes agreeing on one bit block) a hash is compared with;
# see `nearest_earlier` for what the cap bounds and what it may miss.
NEAR_DUP_BUCKET_CAP = 64


def png_phash(path: str | Path) -> str:
    """The perceptual hash (64-bit pHash, hex) of a PNG as figure records store it; also what
    `pipeline.verify` compares a copy's pixels by."""
    import imagehash
    from PIL import Image

    with Image.open(path) as img:
        return str(imagehash.phash(img.convert("RGB")))


def phash_bits(a: str, b: str) -> int:
    """How many of two perceptual hashes' 64 bits differ."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def nearest_earlier(hashes, near_bits: int = NEAR_DUP_BITS,
                    bucket_cap: int = NEAR_DUP_BUCKET_CAP) -> np.ndarray:
    """For each 64-bit hash i, the smallest j < i whose hash differs in at most `near_bits`
    bits, else -1: multi-index hashing, vectorised.

    Equal hashes are one entry (a row's earliest equal hash is a candidate at no cost: 40,000
    equal blank-figure hashes once made 8e8 comparisons). The distinct hashes, in order of first
    appearance, are cut into m = near_bits // 2 + 1 bit blocks (3 blocks of 21-22 bits for 4
    bits): two hashes within `near_bits` bits differ in at most near_bits // m (here 1) bits of
    some block (pigeonhole), so each hash is compared only with the hashes whose block value is
    its own or one bit off (a bucket; 1 + 22 buckets a block). Of each bucket it is compared
    with at most the first `bucket_cap` hashes (the earliest, which are the answers wanted), so
    the work is at most m x (1 + block bits) x bucket_cap comparisons per distinct hash: O(n),
    where comparing whole buckets is quadratic in their size. Random hashes leave buckets of
    2^21 values nearly empty (10^6 hashes: 0.5 a bucket), so the cap only bites on clusters.
    The trade: the result is exact whenever no bucket holds more than `bucket_cap` distinct
    hashes; in a fuller one, hashes past the cap are not compared, so a near pair can be missed
    when every bucket that would have paired them is over-full with earlier hashes (crowds of
    near-identical flat or blank figures). Every match reported is a true one."""
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    out = np.full(n, -1, np.int64)
    if n < 2:
        return out
    uniq, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    by_first = np.argsort(first, kind="stable")
    distinct, first = uniq[by_first], first[by_first]  # distinct hashes, first-appearance order
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(len(by_first))
    d = len(distinct)
    best = np.full(d, d, np.int64)  # earliest near distinct hash before each (d: none)
    blocks = near_bits // 2 + 1
    radius = near_bits // blocks
    for shift, mask in _bit_blocks(blocks):
        width = mask.bit_length()
        key = (distinct >> np.uint64(shift)) & np.uint64(mask)
        order = np.argsort(key, kind="stable")  # buckets, each in first-appearance order
        sorted_key = key[order]
        place = np.empty(d, np.int64)
        place[order] = np.arange(d)
        if width <= 24:  # a dense table: bucket start and size by block value
            counts = np.bincount(key.astype(np.int64), minlength=1 << width)
            starts = np.cumsum(counts) - counts
        for flip in _flips(width, radius):
            probe = key ^ np.uint64(flip)
            if width <= 24:
                lo, size = starts[probe.astype(np.int64)], counts[probe.astype(np.int64)]
            else:
                lo = np.searchsorted(sorted_key, probe, "left")
                size = np.searchsorted(sorted_key, probe, "right") - lo
            if flip == 0:
                size = place - lo  # its own bucket: only the hashes before it
            size = np.minimum(size, bucket_cap)
            _closest_in_buckets(distinct, order, lo, size, near_bits, best)
    u = rank[inverse.reshape(-1)]
    rows = np.arange(n)
    has_near = best[u] < d
    out[has_near] = first[best[u[has_near]]]
    same = ~has_near & (first[u] < rows)  # else: the earliest equal hash, when earlier
    out[same] = first[u[same]]
    return out


def _flips(width: int, radius: int) -> list[int]:
    """XOR masks of up to `radius` bits in a `width`-bit block (0 first)."""
    from itertools import combinations

    return [sum(1 << b for b in bits) for r in range(radius + 1) for bits in combinations(range(width), r)]


def _closest_in_buckets(distinct: np.ndarray, order: np.ndarray, lo: np.ndarray, size: np.ndarray,
                        near_bits: int, best: np.ndarray, chunk: int = 1 << 16) -> None:
    """Lower `best[i]` to the earliest hash within `near_bits` of hash i among the `size[i]`
    hashes at `order[lo[i]:]` (a bucket, in first-appearance order) that come before i."""
    for start in range(0, len(distinct), chunk):
        sizes = size[start:start + chunk]
        total = int(sizes.sum())
        if not total:
            continue
        element = np.repeat(np.arange(start, start + len(sizes)), sizes)
        offset = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        partner = order[np.repeat(lo[start:start + chunk], sizes) + offset]
        close = (partner < element) & (_popcount(distinct[element] ^ distinct[partner]) <= near_bits)
        element, partner = element[close], partner[close]
        if len(element):  # each element's partners ascend: its first is its earliest
            firsts = np.flatnonzero(np.r_[True, element[1:] != element[:-1]])
            element, partner = element[firsts], partner[firsts]
            best[element] = np.minimum(best[element], partner)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(len(x), 8).sum(axis=1)


def _bit_blocks(n: int) -> list[tuple[int, int]]:
    sizes = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    out, shift = [], 0
    for size in sizes:
        out.append((shift, (1 << size) - 1))
        shift += size
    return out
