"""Training with its input pipeline: `python -m model.train --max-steps N` end to end from packed
tar shards, with the machine's cores as DataLoader workers, vs the decoding rate alone.

    python benchmarks/bench_loader.py --out results/gpu/loader.json   # one GPU, ~1.5 min
    python benchmarks/bench_loader.py --tiny                           # CPU check

1. --images generated JPEGs (500x375, textured, like VOC/figure photos) packed by
   `python -m model.data pack` into tar shards (timed);
2. loader only: model.train's CropDataset + sampler in a DataLoader of --workers processes,
   batches of --batch-size, no model: the images/s the input pipeline can deliver;
3. end to end: `python -m model.train SHARDS --precision bf16 --tokenizer-precision bf16
   --channels-last --fused-adamw --max-steps N` (--fast without compiling, which would cost a
   cold minute or more of the 6-minute budget; --compile adds it), a random real-size VQGAN
   written to taming's file layout; img/s from its log.jsonl windows after the first, i.e. with
   decoding, copies, tokenizing and the step all included.
Input keeps up when the loader-only rate exceeds the compiled step's own img/s (bench_train.py,
cvf_fast_onthefly; gpu_summary.py compares them). The JSON (--out) is rewritten after every part.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_train import REAL_VQGAN, TINY_VQGAN, Report, random_vqgan  # noqa: E402
from model.data import CropDataset, ResumableSampler, list_images  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY_SIZES = ["--input-size", "64", "--embed-dim", "32", "--depth", "2", "--num-heads", "4",
              "--decoder-embed-dim", "24", "--decoder-depth", "1", "--decoder-num-heads", "3"]


def write_image(job):
    path, seed = job
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (375 // 25, 500 // 25, 3), dtype=np.uint8)
    Image.fromarray(low).resize((500, 375), Image.BICUBIC).save(path, quality=90)


def write_vqgan_files(folder: Path, kwargs: dict) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(yaml.safe_dump({"model": {"params": kwargs}}))
    torch.save({"state_dict": random_vqgan(kwargs, 0).state_dict()}, folder / "last.ckpt")
    return ["--vqgan-config", str(folder / "model.yaml"), "--vqgan-ckpt", str(folder / "last.ckpt")]


def loader_only(shards: Path, size: int, batch: int, workers: int, batches: int) -> dict:
    """img/s of decoding + cropping alone (after the workers' first batches)."""
    from torch.utils.data import DataLoader

    files = list_images(shards)
    sampler = ResumableSampler(len(files), seed=0)
    loader = DataLoader(CropDataset(files, size), batch_size=batch, sampler=sampler, drop_last=True,
                        num_workers=workers, pin_memory=torch.cuda.is_available())
    batches = min(batches, len(files) // batch)
    it = iter(loader)
    skip = min(max(workers, 1), batches // 2)   # the first batch of every worker holds its start-up
    for _ in range(skip):
        next(it)
    t = time.perf_counter()
    n = 0
    for _ in range(batches - skip):
        imgs, _ = next(it)
        n += imgs.shape[0]
    seconds = time.perf_counter() - t
    return {"img_s": round(n / seconds, 1), "images": n, "seconds": round(seconds, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tiny", action="store_true", help="CPU check: tiny model, 64 px, few images")
    p.add_argument("--images", type=int, help="images to generate and pack (default 12288; --tiny 32)")
    p.add_argument("--batch-size", type=int, help="per step (default 256; --tiny 8)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: cores - 2)")
    p.add_argument("--max-steps", type=int, help="steps of the end-to-end run (default 48; --tiny 4)")
    p.add_argument("--log-every", type=int, help="steps per img/s window (default 8; --tiny 1)")
    p.add_argument("--compile", action="store_true", help="end-to-end run with --fast (compiling too)")
    p.add_argument("--out", help="write the figures as JSON here (rewritten after every part)")
    args = p.parse_args(argv)
    on_gpu = torch.cuda.is_available() and not args.tiny
    n_images = args.images or (32 if args.tiny else 12288)
    batch = args.batch_size or (8 if args.tiny else 256)
    workers = args.workers if args.workers is not None else (1 if args.tiny else max((os.cpu_count() or 2) - 2, 1))
    steps = args.max_steps or (4 if args.tiny else 48)
    log_every = args.log_every or (1 if args.tiny else 8)
    size = 64 if args.tiny else 224
    report = Report(args.out)
    report.save(device=torch.cuda.get_device_name() if on_gpu else "cpu", torch=torch.__version__,
                cpu_count=os.cpu_count(), images=n_images, batch=batch, workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "imgs").mkdir()
        t = time.perf_counter()
        with Pool(max(workers, 1)) as pool:
            pool.map(write_image, [(tmp / "imgs" / f"{i:06d}.jpg", i) for i in range(n_images)], chunksize=64)
        generate_s = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "model.data", "pack", str(tmp / "imgs"), "--out",
                        str(tmp / "shards"), "--shard-size", str(max(n_images // 8, 1))],
                       cwd=REPO, check=True, capture_output=True, text=True)
        report.save(generate_s=round(generate_s, 1), pack_s=round(time.perf_counter() - t, 1))

        report.save(loader_only=loader_only(tmp / "shards", size, batch, workers,
                                            batches=6 if args.tiny else 48))
        print(f"loader only: {report['loader_only']['img_s']} img/s with {workers} workers", flush=True)

        vqgan = write_vqgan_files(tmp / "vqgan", TINY_VQGAN if args.tiny else REAL_VQGAN)
        run = tmp / "run"
        cmd = [sys.executable, "-m", "model.train", str(tmp / "shards"), *vqgan,
               "--batch-size", str(batch), "--num-workers", str(workers), "--max-steps", str(steps),
               "--log-every", str(log_every), "--warmup-epochs", "1", "--save-every", str(10**9),
               "--no-progress", "--out", str(run)]
        cmd += TINY_SIZES if args.tiny else []
        if not args.tiny:
            cmd += ["--fast"] if args.compile else ["--precision", "bf16", "--tokenizer-precision", "bf16",
                                                   "--channels-last", "--fused-adamw"]
        if args.tiny:
            cmd += ["--device", "cpu"]
        t = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if done.returncode != 0:
            report.save(end_to_end={"error": done.stderr[-2000:]})
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        windows = [r["img_s"] for r in log[1:]] or [r["img_s"] for r in log]
        report.save(end_to_end={
            "command": "python -m model.train " + " ".join(cmd[3:]).replace(str(tmp), "TMP"),
            "img_s": round(statistics.median(windows), 1), "img_s_windows": [round(w, 1) for w in windows],
            "first_window_s": round(log[0]["seconds"], 1), "wall_s": round(wall, 1), "steps": steps,
            "final_loss": log[-1]["loss"]})
    e2e = report["end_to_end"]
    print(f"end to end: {e2e['img_s']} img/s (median of {len(e2e['img_s_windows'])} windows of "
          f"{log_every} steps after the first); wall {e2e['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
