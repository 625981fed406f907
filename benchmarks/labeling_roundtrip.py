"""Time the labeling round trip at the issue's scale against a real local Label Studio.

    .venv/bin/python benchmarks/labeling_roundtrip.py [--count 2000] [--answers 300]

Makes `count` figure records with small real PNGs over 13 years and two source kinds, plus
classifier scores, in a temporary dataset root; starts the server; then times: push (one round
with a prediction per task), annotating `answers` tasks through the API, pull, and the next
round after a retrained classifier (a new prediction for every unlabeled task).
"""
from __future__ import annotations

import argparse
import io
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from labeling import pull, push, serve, simulate
from labeling.client import connect
from pipeline.store import atomic_write_parquet, sha256_bytes, write_rows


def make_dataset(root: Path, count: int) -> dict:
    rng = random.Random(0)
    by_shard, scores, truth = {}, [], {}
    for i in range(count):
        year = 2010 + i % 13
        shard, paper = f"{year}-06", f"{year % 100:02d}06.{i // 4:05d}"
        name, kind = f"fig{i}.png", "pdf" if i % 7 == 0 else "eprint"
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (i % 256, (i * 7) % 256, 90)).save(buf, format="PNG")
        image_path = f"images/{shard}/{paper}/{name}"
        (root / image_path).parent.mkdir(parents=True, exist_ok=True)
        (root / image_path).write_bytes(buf.getvalue())
        sha = sha256_bytes(buf.getvalue())
        by_shard.setdefault(shard, []).append({
            "paper_id": paper, "img_name": name, "source_path": name, "source_kind": kind,
            "image_path": image_path, "sha256": sha, "status": "ok", "dup_of": ""})
        scores.append({"paper_id": paper, "img_name": name, "sha256": sha,
                       "score": rng.random(), "model_version": "bench-1"})
        truth[paper, name] = rng.random() < 0.3
    figure_schema = pa.schema([(k, pa.string()) for k in
                               ["paper_id", "img_name", "source_path", "source_kind",
                                "image_path", "sha256", "status", "dup_of"]])
    for shard, rows in by_shard.items():
        write_rows(root / "figures" / f"{shard}.parquet", rows, figure_schema)
    write_rows(root / "scores" / "all.parquet", scores, pa.schema(
        [("paper_id", pa.string()), ("img_name", pa.string()), ("sha256", pa.string()),
         ("score", pa.float64()), ("model_version", pa.string())]))
    return truth


def rescore(root: Path, model_version: str) -> None:
    path = root / "scores" / "all.parquet"
    table = pq.read_table(path)
    scores = pa.array(random.Random(model_version).random() for _ in range(table.num_rows))
    table = table.set_column(table.schema.get_field_index("score"), "score", scores)
    table = table.set_column(table.schema.get_field_index("model_version"), "model_version",
                             pa.array([model_version] * table.num_rows))
    atomic_write_parquet(path, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--answers", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        truth = make_dataset(root, args.count)
        t0 = time.perf_counter()
        server = serve.start(root / "labelstudio", root)
        timings = {"server start (fresh, migrations)": time.perf_counter() - t0}
        try:
            client = connect(server.url, (root / "labelstudio" / "token").read_text().strip())
            t0 = time.perf_counter()
            done = push.push(client, root, count=args.count, rule="uncertainty")
            timings[f"push {done['tasks_created']} tasks + predictions"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            answered = simulate.answer_from_truth(client, done["project_id"], truth,
                                                  share=args.answers / args.count)
            timings[f"annotate {answered} tasks via the API"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            pulled = pull.pull(client, root)
            timings[f"pull ({pulled['tasks']} tasks, {pulled['labels']} labels)"] = time.perf_counter() - t0
            # A retrained classifier: the next round re-predicts every unlabeled task (and records
            # the new probability in each task's data).
            rescore(root, "bench-2")
            t0 = time.perf_counter()
            done = push.push(client, root, count=1, rule="uncertainty")
            timings[f"next round: {done['predictions_created']} new predictions"] = time.perf_counter() - t0
        finally:
            server.stop()
    for what, seconds in timings.items():
        print(f"{what:45s} {seconds:7.1f} s")


if __name__ == "__main__":
    main()
