"""Benchmarks of the classify / filter / publish stages.

    python benchmarks/bench_classify.py                   # all: scoring, then filter+publish at 100k
    python benchmarks/bench_classify.py --figures 256 --records 100000 --arch resnet50

1. Scoring throughput (figures/s) with layout features only and with a backbone, on the CPU
   and on a GPU when one is present. The backbone is randomly initialised and saved as a
   standard state_dict: the arithmetic is that of the real weights, nothing is downloaded.
2. `pipeline.filter` + `pipeline.publish` on N synthetic scored figure records (goal: 100,000
   in under a minute on a 2-core CPU).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_features import make_corpus  # noqa: E402  (the synthetic figure corpus of the tests)

from pipeline import classify, filter as flt, publish, store  # noqa: E402


def bench_scoring(n_figures: int, arch: str, batch_size: int, workers: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        per_paper = 8
        make_corpus(root, n_papers=max(n_figures // per_paper, 4), figures_per_paper=per_paper, shards=("2021-01",))
        weights = Path(tmp) / f"{arch}-random.pth"
        torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), weights)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for name, w in [("layout-only", None), (arch, weights)]:
            classify.train(root, weights=w, folds=3, version=name, batch_size=batch_size, workers=workers)
            for device in devices if w else ["cpu"]:
                t0 = time.time()
                s = classify.score(root, version=name, weights=w, batch_size=batch_size, workers=workers, device=device)
                seconds = time.time() - t0
                results[f"{name}@{device}"] = {"figures": s["scored"], "seconds": round(seconds, 2),
                                               "figures_per_second": round(s["scored"] / seconds, 1)}
                for p in (root / "scores").glob("*_stats.json"):
                    p.unlink()  # rescore next time
    return results


def synthetic_records(root: Path, n: int, image: Path, seed: int = 0) -> None:
    """n scored figure records over ~n/8 papers in 12 month shards, written as the stages would."""
    rng = np.random.default_rng(seed)
    months = [f"2021-{m:02d}" for m in range(1, 13)]
    per_shard = -(-n // len(months))
    for k, month in enumerate(months):
        m = min(per_shard, n - k * per_shard)
        if m <= 0:
            break
        paper = np.array([f"21{month[5:]}.{i // 8:05d}" for i in range(m)])
        name = np.array([f"figures_fig{i % 8}.png" for i in range(m)])
        sha = np.array([f"{k:02d}{i:010d}" for i in range(m)])
        dup = np.where(rng.random(m) < 0.01, "x/y.png", "")
        near = np.where(rng.random(m) < 0.01, np.roll(paper, 1) + "/" + np.roll(name, 1), "")
        image_path = np.full(m, str(image.relative_to(root)))
        figures = pa.table({"paper_id": paper, "img_name": name, "sha256": sha, "width": np.full(m, 640),
                            "height": np.full(m, 480), "image_path": image_path, "source_kind": np.full(m, "eprint"),
                            "status": np.full(m, "ok"), "dup_of": dup, "near_dup_of": near})
        scores = pa.table({"paper_id": paper, "img_name": name, "sha256": sha, "score": rng.random(m),
                           "model_version": np.full(m, "bench"), "status": np.full(m, "ok"), "error": np.full(m, "")},
                          schema=classify.SCORE_SCHEMA)
        ids = np.unique(paper)
        papers = pa.table({"arxiv_id": ids, "version": np.ones(len(ids), np.int64),
                           "license": np.full(len(ids), "http://arxiv.org/licenses/nonexclusive-distrib/1.0/"),
                           "published": pa.array([dt.datetime(2021, int(month[5:]), 1, tzinfo=dt.timezone.utc)] * len(ids))})
        for stage, table in [("figures", figures), ("scores", scores), ("papers", papers)]:
            store.atomic_write_parquet(root / stage / f"{month}.parquet", table)
            store.write_stats(root / stage, month, {})


def bench_filter_publish(n_records: int) -> dict:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        image = root / "images" / "sample.png"
        image.parent.mkdir(parents=True)
        Image.new("RGB", (64, 48), "white").save(image)
        synthetic_records(root, n_records, image)
        t0 = time.time()
        _, report = flt.run(root, threshold=0.2)
        t1 = time.time()
        publish.publish(root, "cvf-bench", out=str(Path(tmp) / "manifests"))
        t2 = time.time()
        return {"records": n_records, "kept": report["kept"], "filter_seconds": round(t1 - t0, 2),
                "publish_seconds": round(t2 - t1, 2), "total_seconds": round(t2 - t0, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--figures", type=int, default=128, help="figures to score")
    p.add_argument("--records", type=int, default=100_000, help="synthetic records to filter and publish")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--skip-scoring", action="store_true")
    args = p.parse_args()
    out = {"torch_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if not args.skip_scoring:
        out["scoring"] = bench_scoring(args.figures, args.arch, args.batch_size, args.workers)
    out["filter_publish"] = bench_filter_publish(args.records)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
