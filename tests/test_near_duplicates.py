"""The near-duplicate search (capped multi-index hashing) finds exactly the pairs of an
exhaustive comparison on small inputs, stays sound when a bucket overflows its cap, and
mark_duplicates flags the same figures as before."""
from __future__ import annotations

import random

import pytest

from pipeline.extract import mark_duplicates
from pipeline.near_duplicates import NEAR_DUP_BITS, nearest_earlier


def exhaustive(hashes: list[int], near_bits: int = NEAR_DUP_BITS) -> list[int]:
    """For each hash, the first earlier one within `near_bits` bits, by comparing all pairs."""
    return [next((j for j in range(i) if bin(h ^ hashes[j]).count("1") <= near_bits), -1)
            for i, h in enumerate(hashes)]


def clustered(seed: int, n: int) -> list[int]:
    """Equal hashes, near clusters (0-6 bits flipped: some within 4 bits, some beyond), noise."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        kind = rng.random()
        if kind < 0.1:
            out += [0xFFFF0000FFFF0000] * rng.randint(1, 30)  # blank renders: one hash
        elif kind < 0.6:
            centre = rng.getrandbits(64)
            for _ in range(rng.randint(2, 8)):
                h = centre
                for bit in rng.sample(range(64), rng.randint(0, 6)):
                    h ^= 1 << bit
                out.append(h)
        else:
            out.append(rng.getrandbits(64))
    out = out[:n]
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_same_pairs_as_the_exhaustive_method(seed):
    hashes = clustered(seed, 1200)
    expected = exhaustive(hashes)
    assert sum(j >= 0 for j in expected) > 300  # the inputs do have near pairs
    assert nearest_earlier(hashes).tolist() == expected


def test_wider_distance_and_edge_sizes():
    hashes = clustered(99, 600)
    assert nearest_earlier(hashes, near_bits=8).tolist() == exhaustive(hashes, 8)
    assert nearest_earlier([]).tolist() == [] and nearest_earlier([5]).tolist() == [-1]
    assert nearest_earlier([2**64 - 1, 2**64 - 2]).tolist() == [-1, 0]


def test_an_overfull_bucket_stays_sound():
    """With a cap far below the bucket sizes, a match may be missed, never made up."""
    hashes = clustered(7, 1500)
    truth = exhaustive(hashes)
    capped = nearest_earlier(hashes, bucket_cap=1).tolist()
    for i, j in enumerate(capped):
        if j >= 0:
            assert j < i and bin(hashes[i] ^ hashes[j]).count("1") <= NEAR_DUP_BITS
            assert j >= truth[i] >= 0  # a true near pair; the earliest one or a later one
    assert sum(j >= 0 for j in capped) <= sum(j >= 0 for j in truth)


def test_mark_duplicates_flags_as_the_exhaustive_method():
    hashes = clustered(3, 400)
    rows = [{"paper_id": f"2101.{i // 4:05d}", "img_name": f"f{i % 4}.png", "source_path": "",
             "status": "ok", "sha256": f"{i:064x}" if i % 50 else "same", "phash": f"{h:016x}"}
            for i, h in enumerate(hashes)]
    mark_duplicates(rows)
    ordered = sorted(rows, key=lambda r: (r["paper_id"], r["img_name"]))
    searched = [r for r in ordered if not r["dup_of"]]
    keys = [f"{r['paper_id']}/{r['img_name']}" for r in searched]
    expected = exhaustive([int(r["phash"], 16) for r in searched])
    assert [r["near_dup_of"] for r in searched] == [keys[j] if j >= 0 else "" for j in expected]
    assert sum(bool(r["dup_of"]) for r in rows) == 7  # sha256 "same": 8 rows, 7 copies
    assert all(not r["near_dup_of"] for r in rows if r["dup_of"])
