"""Near-duplicate search: capped multi-index hashing (pipeline.near_duplicates.nearest_earlier) against
the method it replaced (every hash compared with every hash sharing a bit block, in Python).

Hashes are synthetic but shaped like a figure corpus's pHashes: a share of figures hash equal
(blank or near-blank renders: 40,000 equal hashes are what made the old search take minutes),
clusters of near copies (a figure and its revisions, a few bits apart), and the rest random.
Both methods run in this process on the same hashes; the old one is timed only up to
`--old-up-to` hashes (it is quadratic in bucket size: at 10^6 it runs for hours) and its
answers are compared with the new ones where both ran.

    .venv/bin/python benchmarks/bench_dedup.py                    # 10^5 and 10^6, old up to 10^5
    .venv/bin/python benchmarks/bench_dedup.py --sizes 100000 --old-up-to 100000
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from pipeline.near_duplicates import NEAR_DUP_BITS, NEAR_DUP_BUCKET_CAP, _bit_blocks, nearest_earlier


def corpus_hashes(n: int, seed: int = 0, equal_share: float = 0.02, cluster_share: float = 0.2) -> list[int]:
    """`n` 64-bit hashes: `equal_share` one value, `cluster_share` in clusters of 2-10 near copies
    (1-4 bits flipped from a centre), the rest uniform; shuffled."""
    rng = np.random.default_rng(seed)
    equal = int(n * equal_share)
    out = [0x8000000000000000] * equal
    while len(out) < equal + int(n * cluster_share):
        centre = int(rng.integers(0, 2**64 - 1, dtype=np.uint64, endpoint=True))
        for _ in range(int(rng.integers(2, 11))):
            h = centre
            for bit in rng.choice(64, int(rng.integers(0, NEAR_DUP_BITS + 1)), replace=False):
                h ^= 1 << int(bit)
            out.append(h)
    out = out[:equal + int(n * cluster_share)]
    out += [int(x) for x in rng.integers(0, 2**64 - 1, n - len(out), dtype=np.uint64, endpoint=True)]
    rng.shuffle(out)
    return out


def old_method(hashes: list[int], near_bits: int = NEAR_DUP_BITS) -> list[int]:
    """What `mark_duplicates` did before: for each hash, every earlier hash sharing one of its
    bit blocks is compared (the earliest within `near_bits` wins). Equal hashes share every
    bucket, so a bucket of k equal hashes costs k^2/2 comparisons."""
    blocks = _bit_blocks(near_bits + 1)
    tables: list[dict[int, list[tuple[int, int]]]] = [{} for _ in blocks]
    out = []
    for i, h in enumerate(hashes):
        match = -1
        for table, (shift, mask) in zip(tables, blocks):
            for other, j in table.get((h >> shift) & mask, ()):
                if bin(h ^ other).count("1") <= near_bits and (match < 0 or j < match):
                    match = j
        out.append(match)
        for table, (shift, mask) in zip(tables, blocks):
            table.setdefault((h >> shift) & mask, []).append((h, i))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--old-up-to", type=int, default=100_000,
                    help="time the old method only for sizes up to this (default 10^5)")
    ap.add_argument("--cap", type=int, default=NEAR_DUP_BUCKET_CAP, help="bucket cap of the new method")
    args = ap.parse_args()
    results = []
    for n in args.sizes:
        hashes = corpus_hashes(n)
        t0 = time.perf_counter()
        new = nearest_earlier(hashes, NEAR_DUP_BITS, args.cap)
        new_s = time.perf_counter() - t0
        row = {"hashes": n, "distinct": len(set(hashes)), "new_seconds": round(new_s, 3),
               "near_found_new": int((new >= 0).sum()), "cap": args.cap}
        if n <= args.old_up_to:
            t0 = time.perf_counter()
            old = old_method(hashes)
            old_s = time.perf_counter() - t0
            row.update(old_seconds=round(old_s, 3), speedup=round(old_s / new_s, 1),
                       near_found_old=sum(j >= 0 for j in old),
                       same_answers=sum(a == b for a, b in zip(old, new.tolist())) / n)
        results.append(row)
        print(json.dumps(row), flush=True)
    print("\nhashes     new s     old s   old/new   same answers")
    for r in results:
        print(f"{r['hashes']:>9,} {r['new_seconds']:>8.2f} {r.get('old_seconds', float('nan')):>9.2f} "
              f"{r.get('speedup', float('nan')):>9.1f}   {r.get('same_answers', float('nan')):.6f}")


if __name__ == "__main__":
    main()
