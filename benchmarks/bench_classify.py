"""Benchmarks of the classify / filter / publish stages.

    python benchmarks/bench_classify.py                   # all: scoring, then filter+publish at 100k
    python benchmarks/bench_classify.py --figures 256 --records 100000 --arch resnet50

1. Scoring throughput (figures/s) with layout features only and with a backbone, on the CPU
   and on a GPU when one is present. The backbone is randomly initialised and saved as a
   standard state_dict: the arithmetic is that of the real weights, nothing is downloaded.
2. The image features (goal: 50 figures/s per core or more), on the small synthetic figures of
   the tests and on full-size real figures: the e-prints of --eprints-dir are crawled through
   the local replay and extracted as `benchmarks/bench_real.py` does (figures up to 1024
   pixels). Each figure is decoded and featurized by this checkout and by the code of
   --baseline-rev, alternately in the same run, in CPU seconds of one thread: figures/s per
   core of both, and their ratio.
3. `pipeline.filter` + `pipeline.publish` on N synthetic scored figure records (goal: 100,000
   in under a minute on a 2-core CPU).
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
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


REPO = Path(__file__).resolve().parent.parent
EPRINTS = REPO.parent / "shared" / "testdata" / "eprints"
BASELINE_REV = "169f98a"  # the features before they were made to work on one small copy


def baseline_features(rev: str, into: Path):
    """`layout_features_of_file` of the feature code at git revision `rev` (features.py,
    photo_model.py and its weights), imported as a package of its own beside this checkout's."""
    pkg = into / "baseline_features"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name in ["features.py", "photo_model.py", "photo_model.json"]:
        shown = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:pipeline/{name}"], capture_output=True,
                               text=True)
        if shown.returncode:
            raise SystemExit(f"error: no pipeline/{name} at --baseline-rev {rev}: {shown.stderr.strip()}")
        text = shown.stdout
        (pkg / name).write_text(text.replace("pipeline.photo_model", "baseline_features.photo_model"))
    sys.path.insert(0, str(into))
    return importlib.import_module("baseline_features.features").layout_features_of_file


def time_features(paths: list[Path], baseline, rounds: int) -> dict:
    """Figures/s per core (CPU seconds of one thread) of decoding and featurizing `paths` with
    this checkout and with `baseline`, timed alternately figure by figure, so that the load of a
    shared machine falls on both alike."""
    from PIL import Image

    from pipeline.features import layout_features_of_file

    seconds = {"baseline": 0.0, "now": 0.0}
    for _ in range(rounds):
        for p in paths:
            for name, featurize in (("baseline", baseline), ("now", layout_features_of_file)):
                t0 = time.process_time()
                featurize(p)
                seconds[name] += time.process_time() - t0
    per_core = {name: round(len(paths) * rounds / s, 1) for name, s in seconds.items()}
    sides = [max(Image.open(p).size) for p in paths]
    return {"figures": len(paths), "rounds": rounds, "median_side": int(np.median(sides)), "max_side": max(sides),
            "figures_per_second_per_core": per_core, "speedup": round(per_core["now"] / per_core["baseline"], 2)}


def bench_features(eprints_dir: Path, baseline_rev: str, rounds: int, n_synthetic: int) -> dict:
    """time_features on the synthetic corpus of the tests and on the real figures extracted from
    `eprints_dir` (when present), this checkout against `baseline_rev`."""
    from bench_real import crawl_real
    from pipeline import extract

    with tempfile.TemporaryDirectory() as tmp:
        baseline = baseline_features(baseline_rev, Path(tmp) / "baseline")
        out = {"baseline_rev": baseline_rev}
        synthetic = Path(tmp) / "synthetic"
        make_corpus(synthetic, n_papers=max(n_synthetic // 8, 1), figures_per_paper=8, shards=("2021-01",))
        out["synthetic"] = time_features(sorted((synthetic / "images").rglob("*.png")), baseline, rounds)
        if not eprints_dir.is_dir():
            out["full_size"] = f"skipped: {eprints_dir} is absent"
            return out
        root = Path(tmp) / "data"
        extract.extract_shards(crawl_real(eprints_dir, root), root, progress=False)
        paths = sorted((root / "images").rglob("*.png")) + sorted((root / "images").rglob("*.jpg"))
        if not paths:
            raise SystemExit(f"error: no figures came out of the e-prints in {eprints_dir}")
        out["full_size"] = time_features(paths, baseline, rounds)
        return out


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
    p.add_argument("--eprints-dir", type=Path, default=EPRINTS,
                   help="real e-prints (<arxiv id>.tar.gz, with SOURCES.tsv) for the full-size figures; "
                        "that part is skipped when the folder is absent")
    p.add_argument("--baseline-rev", default=BASELINE_REV,
                   help=f"git revision whose feature code the figures are also timed with (default {BASELINE_REV})")
    p.add_argument("--rounds", type=int, default=2, help="passes over the figures when timing features (default 2)")
    p.add_argument("--skip-features", action="store_true", help="skip timing the features against --baseline-rev")
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    out = {"torch_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if not args.skip_scoring:
        out["scoring"] = bench_scoring(args.figures, args.arch, args.batch_size, args.workers)
    if not args.skip_features:
        out["features"] = bench_features(args.eprints_dir, args.baseline_rev, args.rounds, args.figures)
    out["filter_publish"] = bench_filter_publish(args.records)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
