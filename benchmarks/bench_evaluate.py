"""Whole-evaluation speed: the released one-episode-at-a-time fp32 path vs ours, side by side.

Both run Pascal-5i-style segmentation episodes end to end on the same model and data: JPEG
decoding, bicubic resizing, canvas building, normalisation, MAE-VQGAN on the 147 visible
patches, argmax, VQGAN decoding, pasting, rounding and scoring.

  released  batch 1, fp32, data and canvases built in the main process (as the released loop)
  ours      batched, bf16 autocast on GPU, DataLoader workers build the canvases
  compiled  ours with `model.evaluate --compile` (torch.compile, channels-last VQGAN); GPU default

    python benchmarks/bench_evaluate.py                  # GPU: ViT-L MAE-VQGAN + f16 VQGAN, 224
    python benchmarks/bench_evaluate.py --tiny           # CPU check: set_a-sized model, 64 px
    python benchmarks/bench_evaluate.py --tiny --compile # ... through the compiled path too

Prints, for both paths: episodes/s, MFU (model FLOPs per episode counted once, over
--peak-tflops) and peak memory. Weights are random (speed does not depend on them). Data: --data VOC root, or a generated
VOC-layout folder of JPEGs and class masks (default; no downloads).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import evaluate, tasks, voc  # noqa: E402
from model.mae_vqgan import MaeVqgan, build  # noqa: E402
from model.prompting import compile_for_inference, inpaint, quadrant_mask  # noqa: E402
from model.vqgan import VQModel  # noqa: E402

REAL_VQGAN = dict(ddconfig=dict(double_z=False, z_channels=256, resolution=256, in_channels=3,
                                out_ch=3, ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
                                attn_resolutions=[16], dropout=0.0), n_embed=1024, embed_dim=256)
TINY_VQGAN = dict(ddconfig=dict(double_z=False, z_channels=32, resolution=64, in_channels=3,
                                out_ch=3, ch=32, ch_mult=[1, 1, 1, 1, 2], num_res_blocks=1,
                                attn_resolutions=[4], dropout=0.0), n_embed=64, embed_dim=16)
TINY_MAE = dict(patch_size=16, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=24,
                decoder_depth=1, decoder_num_heads=3)


def make_model(tiny: bool, device) -> MaeVqgan:
    torch.manual_seed(0)
    if tiny:
        model = MaeVqgan(VQModel(**TINY_VQGAN), img_size=64, **TINY_MAE)
    else:
        model = build("mae_vit_large_patch16", VQModel(**REAL_VQGAN), img_size=224)
    return model.to(device).eval()


def generated_voc(root: Path, n_images: int = 40, seed: int = 0) -> Path:
    """A VOC-layout folder: textured 500x375 JPEGs with fold-0 objects in their class masks."""
    rng = np.random.RandomState(seed)
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n_images):
        image_id = f"2012_{i:06d}"
        pixels = rng.randint(0, 256, (375 // 25, 500 // 25, 3)).astype(np.uint8)
        Image.fromarray(pixels).resize((500, 375), Image.BICUBIC).save(
            root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        mask = np.zeros((375, 500), dtype=np.uint8)
        y, x = rng.randint(0, 250), rng.randint(0, 350)
        mask[y:y + rng.randint(60, 125), x:x + rng.randint(60, 150)] = 1 + i % 5
        Image.fromarray(mask, mode="L").save(root / "SegmentationClassAug" / f"{image_id}.png")
        ids.append(image_id)
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    return root


def flops_per_episode(model, size: int, device) -> float:
    """Model FLOPs of one episode (encoder on the visible patches, decoder, VQGAN decode),
    counted once by torch's FlopCounterMode; MFU = these FLOPs x episodes/s over the peak."""
    canvas = torch.zeros(1, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        inpaint(model, canvas, quadrant_mask(size, 16))
    return float(counter.get_total_flops())


def peak_memory_gib(device) -> float:
    """Peak GPU memory of the last run, or on the CPU the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux


def timed(model, data, episodes, size, batch_size, workers, device, dtype) -> dict:
    """Build the task and run it; the clock covers sampling, loading, canvases and scoring."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    pairs = voc.pascal5i_val_list(data, 0)
    dataset = tasks.SegmentationTask(data, tasks.random_supports(pairs, episodes, seed=0), size)
    result = evaluate.evaluate_dataset(model, dataset, {"kind": "binary"}, batch_size, workers,
                                       device, dtype, quadrant_mask(size, 16), progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"episodes": episodes, "seconds": round(seconds, 3),
            "episodes_per_s": round(episodes / seconds, 2),
            "peak_memory_gib": round(peak_memory_gib(device), 2),
            "iou": round(float(np.nanmean(result["scores"]["iou"].numpy())), 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU check: tiny model, 64-px canvases")
    p.add_argument("--data", help="VOC root (default: a generated VOC-layout folder)")
    p.add_argument("--released-episodes", type=int, help="episodes for the one-at-a-time path")
    p.add_argument("--episodes", type=int, help="episodes for ours")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="dense bf16 peak of the card, for MFU (H100 SXM: 989)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="also time the compiled path (default: on a GPU yes, with --tiny no)")
    p.add_argument("--out", help="write the figures as JSON here too")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    size = 64 if args.tiny else 224
    released_n = args.released_episodes or (24 if args.tiny else 300)
    ours_n = args.episodes or (96 if args.tiny else 3000)
    batch = args.batch_size or (16 if args.tiny else 256)
    workers = args.workers if args.workers is not None else (1 if args.tiny else 12)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False   # the released fp32 path: true fp32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    model = make_model(args.tiny, device)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or generated_voc(Path(tmp) / "voc")
        # warm-up: kernels, cuDNN autotuning and allocator, for both paths
        timed(model, data, 4, size, 1, 0, device, None)
        timed(model, data, min(batch, 64), size, batch, 0, device, dtype)
        released = timed(model, data, released_n, size, 1, 0, device, None)
        ours = timed(model, data, ours_n, size, batch, workers, device, dtype)
        flops = flops_per_episode(model, size, device)
        runs = [released, ours]
        if args.compile if args.compile is not None else not args.tiny:
            compile_for_inference(model)
            started = time.perf_counter()   # compile for a full batch and, once, a dynamic one
            timed(model, data, batch + min(batch, 8), size, batch, 0, device, dtype)
            compile_s = time.perf_counter() - started
            compiled = timed(model, data, ours_n, size, batch, workers, device, dtype)
            runs.append(compiled)
    for run in runs:
        run["mfu_percent"] = round(100 * flops * run["episodes_per_s"] / (args.peak_tflops * 1e12), 3)
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads(), "model": "tiny" if args.tiny else "mae_vit_large_patch16",
        "canvas": size, "model_gflops_per_episode": round(flops / 1e9, 3),
        "mfu_over_tflops": args.peak_tflops,
        "peak_memory": "GPU max allocated per run" if device.type == "cuda" else "process peak RSS",
        "released_one_at_a_time_fp32": released,
        "ours": {**ours, "batch_size": batch, "workers": workers, "dtype": "bf16" if dtype else "fp32"},
        "speedup": round(ours["episodes_per_s"] / released["episodes_per_s"], 2),
    }
    if len(runs) == 3:
        report["compiled"] = {**compiled, "batch_size": batch, "workers": workers,
                              "dtype": "bf16" if dtype else "fp32", "compile_seconds": round(compile_s, 1)}
        report["speedup_compiled"] = round(compiled["episodes_per_s"] / released["episodes_per_s"], 2)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
