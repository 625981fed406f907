"""Speed and memory of `pipeline.contamination` at corpus scale, and the projection to 10^6 figures.

Two parts, because they scale differently:

1. Lookup (multi-index hashing), on synthetic hashes shaped like the real ones: every evaluation image
   gives len(BOXES) x 2 hashes that are near one another (its crops and mirror: 0-16 bits from the
   image's own hash), a share of images hash alike (flat and dark images crowd a few buckets), and each
   figure asks FIGURE_REGIONS x QUERIES_PER_REGION hashes, a small share of them near an indexed hash.
   Timed at several index sizes to show the cost per query does not grow with the index (sub-linear).
Times are CPU seconds of this process (the machine may be shared; wall time is printed beside the
lookup's). BLAS/OpenCV threads are pinned to one (OMP_NUM_THREADS=1 etc.) so that a CPU second is a
core second.

2. Per-image cost on real-size images: hashing an evaluation image (a 500x375 JPEG, VOC's size) and a
   figure (a 1000x700 PNG grid of photos: panels found, 6 hashes a panel), and verifying a candidate.

The projection: figures x (figure hashing + lookup + verification of the candidates found, per figure)
+ evaluation images x hashing, on the cores given (hashing runs in that many processes; lookup and
verification in one).

    python benchmarks/bench_contamination.py                     # 10^5 figures x 5x10^4 images
    python benchmarks/bench_contamination.py --figures 20000 --eval-images 10000 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import contamination as c  # noqa: E402

FIGURE_REGIONS = 5      # regions (panels + whole figure) an average figure asks about: 4.1 in the quality
                        # benchmark's grids of 1-6 panels; 5 to be on the safe side
CROWDED_SHARE = 0.05    # evaluation images whose hashes fall into a few crowded clusters
NEAR_QUERY_SHARE = 0.002  # query hashes that are near an indexed hash (copies and look-alikes)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flip_bits(h: np.ndarray, max_bits: int, rng) -> np.ndarray:
    out = h.copy()
    for k in range(max_bits):
        on = rng.random(len(h)) < 0.5
        out[on] ^= np.uint64(1) << rng.integers(0, 64, int(on.sum())).astype(np.uint64)
    return out


def index_hashes(n_images: int, rng) -> np.ndarray:
    per = len(c.BOXES) * 2
    centres = rng.integers(0, 2**64 - 1, n_images, dtype=np.uint64, endpoint=True)
    crowded = rng.random(n_images) < CROWDED_SHARE
    clusters = rng.integers(0, 2**64 - 1, 8, dtype=np.uint64, endpoint=True)
    centres[crowded] = clusters[rng.integers(0, 8, int(crowded.sum()))]
    hashes = np.repeat(centres, per)
    return flip_bits(hashes, 16, rng)


def query_hashes(n: int, stored: np.ndarray, rng) -> np.ndarray:
    q = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    near = rng.random(n) < NEAR_QUERY_SHARE
    q[near] = flip_bits(stored[rng.integers(0, len(stored), int(near.sum()))], 6, rng)
    return q


def bench_lookup(n_figures: int, n_images: int, rng) -> dict:
    stored = index_hashes(n_images, rng)
    before = rss_mib()
    t0 = time.perf_counter()
    index = c.HashIndex(stored)
    build_s = time.perf_counter() - t0
    index_mib = (stored.nbytes + sum(k.nbytes + o.nbytes for k, o in zip(index.keys, index.order))) / 2**20
    # as `match_shard` asks: per region EXACT_QUERIES hashes probed to RADIUS, the others to PROBE_BITS
    regions = n_figures * FIGURE_REGIONS
    exact = query_hashes(regions * c.EXACT_QUERIES, stored, rng)
    partial = query_hashes(regions * (c.QUERIES_PER_REGION - c.EXACT_QUERIES), stored, rng)
    queries = np.concatenate([exact, partial])
    t0, cpu0 = time.perf_counter(), time.process_time()
    q1, s, d = index.search(exact, probe_bits=c.RADIUS // c.BLOCKS)
    q2, s, d = index.search(partial, probe_bits=c.PROBE_BITS)
    q = np.concatenate([q1, q2])
    search_s, search_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"eval_images": n_images, "index_hashes": len(stored), "index_mib": round(index_mib, 1),
            "build_s": round(build_s, 2), "figures": n_figures, "query_hashes": len(queries),
            "search_s": round(search_s, 2), "search_cpu_s": round(search_cpu, 2),
            "us_per_query_hash": round(1e6 * search_cpu / len(queries), 2),
            "ms_per_figure": round(1e3 * search_cpu / n_figures, 3), "pairs_found": int(len(q)),
            "rss_growth_mib": round(rss_mib() - before, 1)}


def bench_hashing(repeat: int = 20) -> dict:
    import cv2
    from PIL import Image

    cv2.setNumThreads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from contamination_quality import evaluation_photos, grid_figure, other_photos, transform

    rng = np.random.default_rng(0)
    photos = list(evaluation_photos(None).values()) + other_photos()
    with tempfile.TemporaryDirectory() as tmp:
        jpg = Path(tmp) / "eval.jpg"
        Image.fromarray(photos[1]).resize((500, 375)).save(jpg, quality=90)
        figure = Path(tmp) / "figure.png"
        panels = [transform(photos[i % len(photos)], (), rng) for i in range(6)]
        Image.fromarray(grid_figure(panels, np.random.default_rng(1))).resize((1000, 700)).save(figure)
        t0 = time.process_time()
        for _ in range(repeat):
            c.image_hashes(c.open_grey(jpg, c.EVAL_SIDE))
        eval_ms = 1e3 * (time.process_time() - t0) / repeat
        t0 = time.process_time()
        for _ in range(repeat):
            boxes, hashes, _ = c.figure_queries(figure)
        figure_ms = 1e3 * (time.process_time() - t0) / repeat
        e = c.open_grey(jpg, c.EVAL_SIDE)
        panel = c.grey(np.asarray(Image.open(jpg).convert("RGB").resize((200, 150))))
        t0 = time.process_time()
        for _ in range(repeat):
            assert c.is_match(*c.verify(panel, e, 0))  # the whole path: search, guards, both scores
        verify_ms = 1e3 * (time.process_time() - t0) / repeat
    return {"eval_image_ms": round(eval_ms, 1), "figure_ms": round(figure_ms, 1), "figure_regions": len(boxes),
            "verify_ms": round(verify_ms, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--figures", type=int, default=100_000)
    ap.add_argument("--eval-images", type=int, default=50_000)
    ap.add_argument("--cores", type=int, default=2, help="cores the projection assumes for hashing")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    result = {"cpu_count": os.cpu_count(), "hashing": bench_hashing()}
    # the cost per query as the index grows tenfold: flat means sub-linear (a scan would grow tenfold)
    result["lookup_small_index"] = bench_lookup(args.figures // 10, max(1, args.eval_images // 10), rng)
    result["lookup"] = bench_lookup(args.figures, args.eval_images, rng)
    h, lk = result["hashing"], result["lookup"]
    # candidates reaching verification: the pairs found, at most CANDIDATES images a region
    verify_ms_per_figure = min(lk["pairs_found"] / lk["figures"], FIGURE_REGIONS * c.CANDIDATES) * h["verify_ms"]
    per_figure_s = h["figure_ms"] / 1e3 / args.cores + lk["ms_per_figure"] / 1e3 + verify_ms_per_figure / 1e3
    result["projection_1e6_figures"] = {
        "cores": args.cores, "eval_images": args.eval_images,
        "index_hours": round(args.eval_images * h["eval_image_ms"] / 1e3 / args.cores / 3600, 2),
        "figure_hashing_hours": round(1e6 * h["figure_ms"] / 1e3 / args.cores / 3600, 2),
        "lookup_hours": round(1e6 * lk["ms_per_figure"] / 1e3 / 3600, 2),
        "verify_hours": round(1e6 * verify_ms_per_figure / 1e3 / 3600, 2),
        "total_hours": round((1e6 * per_figure_s + args.eval_images * h["eval_image_ms"] / 1e3 / args.cores) / 3600, 2),
        "index_memory_mib": lk["index_mib"],
    }
    result["peak_rss_mib"] = round(rss_mib(), 1)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
