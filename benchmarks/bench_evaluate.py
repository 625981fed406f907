"""Whole-evaluation speed and agreement: the RELEASED per-episode loop vs model.evaluate, side by side.

    python benchmarks/bench_evaluate.py --out results/gpu/evaluate.json   # one GPU, ~100 s
    python benchmarks/bench_evaluate.py --tiny                             # CPU check, tiny widths
    python benchmarks/bench_evaluate.py --tiny --compile                   # ... compiled path too

The same Pascal-5i segmentation episodes (fold 0, --episodes of them, sampled by model.evaluate)
on the same random weights (one cvf state_dict loaded into both models), end to end:
* released   the loop body of the released evaluate/evaluate_segmentation.py, one canvas at a
             time, fp32, in the main process: its DatasetPASCAL builds the canvas (Resize 111 bicubic,
             ToTensor, the 2x2 grid; only the episode list is ours, so that both sides run the same
             episodes), numpy normalisation, mae_utils.generate_image, uint8 conversion,
             round_image, calculate_metric. Its PNG writes and log-file appends are LEFT OUT (they
             are I/O, not evaluation; with them the released loop is slower still).
* cvf_fp32   `model.evaluate`'s whole path (model.evaluation.run: sampling, DataLoader workers
             building canvases, batched model, metrics, its results/episodes files), fp32: the
             default.
* cvf_bf16   the same with --dtype bf16.
* cvf_compiled_fp32   the same, fp32, with --compile (compile time reported apart).
* cvf_fp32_batch1     fp32 at batch 1, workers 0, on the first 100 episodes: agreement only (it
             separates what batching changes, kernel choice per batch size, from what the code does).
Each row: episodes/s over the timed run (after an untimed warm-up on a few episodes, which for
the compiled row includes compiling), peak GPU memory, mean IoU, and `iou_agreement`: the share
of episodes whose IoU equals the released loop's (|diff| <= 1e-6: the release sums in float32),
the share within 0.001 and the mean |diff|. Equality is a hard test: the released rounding
computes colour distances in uint8, which wrap, so a pixel one grey level off (a float landing on
the other side of an integer after another kernel's rounding) flips to the other colour about
half the time; random weights make such pixels common.
Both sides run true fp32 where they run fp32: TF32 is off for matmuls and cuDNN (torch's own
default leaves cuDNN's convolutions in TF32, which would make the comparison about TF32).

Weights are random (speed does not depend on them); data: --data VOC root, or a generated
VOC-layout folder of JPEGs and class masks (default; no downloads). JSON (--out) is rewritten
after every row, so a run cut short still leaves what it measured.
"""
from __future__ import annotations

import argparse
import copy
import csv
import functools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import released as rel  # noqa: E402
from benchmarks.bench_train import REAL_VQGAN, Report, random_vqgan  # noqa: E402
from benchmarks.bench_train import TINY_VQGAN as TINY_VQGAN_64  # noqa: E402
from model import evaluate, evaluation, voc  # noqa: E402
from model.mae_vqgan import arch_sizes, build  # noqa: E402
from model.prompting import compile_for_inference  # noqa: E402

# the released loop is hard-wired to 224-px canvases of 14x14 patches: tiny means narrow, not
# small (64-px canvases only with --no-released)
TINY_MAE = dict(patch_size=16, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=24,
                decoder_depth=1, decoder_num_heads=3)
TINY_VQGAN = dict(ddconfig=dict(double_z=False, z_channels=32, resolution=224, in_channels=3, out_ch=3,
                                ch=32, ch_mult=[1, 1, 1, 1, 2], num_res_blocks=1, attn_resolutions=[14],
                                dropout=0.0), n_embed=1024, embed_dim=8)


def generated_voc(root: Path, n_images: int = 40, seed: int = 0) -> Path:
    """The released layout `root/VOCdevkit/VOC2012`: textured 500x375 JPEGs, fold-0 objects in
    their class masks, a Segmentation/val.txt."""
    rng = np.random.RandomState(seed)
    base = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n_images):
        image_id = f"2012_{i:06d}"
        pixels = rng.randint(0, 256, (375 // 25, 500 // 25, 3)).astype(np.uint8)
        Image.fromarray(pixels).resize((500, 375), Image.BICUBIC).save(
            base / "JPEGImages" / f"{image_id}.jpg", quality=90)
        mask = np.zeros((375, 500), dtype=np.uint8)
        y, x = rng.randint(0, 250), rng.randint(0, 350)
        mask[y:y + rng.randint(60, 125), x:x + rng.randint(60, 150)] = 1 + i % 5
        Image.fromarray(mask, mode="L").save(base / "SegmentationClassAug" / f"{image_id}.png")
        ids.append(image_id)
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    return root


def released_layout(data: Path, tmp: Path) -> Path:
    """A folder holding VOCdevkit/VOC2012 (what DatasetPASCAL opens) for the VOC root `data`."""
    root = voc.voc_root(data)
    if root.name == "VOC2012" and root.parent.name == "VOCdevkit":
        return root.parent.parent
    (tmp / "VOCdevkit").mkdir(parents=True, exist_ok=True)
    (tmp / "VOCdevkit" / "VOC2012").symlink_to(root.resolve(), target_is_directory=True)
    return tmp


def peak_memory_gib(device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def true_fp32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def run_cvf(model, data, episodes, batch, workers, device, dtype, out, splits="standard"
            ) -> tuple[dict, list[dict]]:
    """model.evaluate's whole path on fold 0; -> (timings, per-episode rows of episodes.csv)."""
    here = __file__  # the model is passed in memory: the checkpoint options only need a readable file
    args = evaluate.parser().parse_args(["--splits", splits,
        "--task", "segmentation", "--checkpoint", here, "--vqgan-config", here,
        "--data", str(data), "--fold", "0", "--episodes", str(episodes), "--seeds", "0",
        "--batch-size", str(batch), "--workers", str(workers), "--device", device.type,
        "--dtype", dtype, "--picture-rows", "0", "--out", str(out)])
    args.fold, args.mask_style = 0, "bw"   # as model.evaluate.main sets them
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    true_fp32()
    result = evaluation.run(args, model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    with open(Path(out) / "episodes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return ({"episodes": len(rows), "seconds": round(seconds, 3),
             "episodes_per_s": round(len(rows) / seconds, 2), "peak_memory_gib": peak_memory_gib(device),
             "iou": round(result["summary"]["iou"]["mean"], 6), "batch_size": batch, "workers": workers,
             "dtype": dtype}, rows)


class ReleasedEpisodes:
    """The released DatasetPASCAL, on a given episode list (query, support, VOC class 1..20)."""

    def __new__(cls, modules, root, episodes):
        import torchvision

        base = modules["pascal_dataloader"].DatasetPASCAL

        class Episodes(base):
            def build_img_metadata(self):
                return [(q, c - 1) for q, _, c in episodes]   # the release counts classes from 0

            def sample_episode(self, idx):
                q, s, c = episodes[idx]
                return q, s, c - 1, c - 1

            def __len__(self):
                return len(episodes)

        padding = 1   # evaluate_segmentation.evaluate's transforms
        image_transform = torchvision.transforms.Compose(
            [torchvision.transforms.Resize((224 // 2 - padding, 224 // 2 - padding), 3),
             torchvision.transforms.ToTensor()])
        mask_transform = torchvision.transforms.Compose(
            [torchvision.transforms.Resize((224 // 2 - padding, 224 // 2 - padding), 3),
             torchvision.transforms.ToTensor()])
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            return Episodes(str(root), fold=0, image_transform=image_transform,
                            mask_transform=mask_transform, flipped_order=0, purple=0)


def run_released(modules, model, root, episodes, device) -> tuple[dict, list[float]]:
    """evaluate_segmentation.evaluate's loop body, PNG writes and log appends left out."""
    mu, seg, rd = modules["mae_utils"], modules["segmentation_utils"], modules["reasoning_dataloader"]
    ds = ReleasedEpisodes(modules, root, episodes)
    args = argparse.Namespace(device=device.type, t=[0, 0, 0], purple=0, task="segmentation")
    true_fp32()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    ious = []
    for idx in range(len(ds)):
        canvas = ds[idx]["grid"]
        canvas = (canvas - mu.imagenet_mean[:, None, None]) / mu.imagenet_std[:, None, None]
        # _generate_result_for_canvas(args, model, canvas):
        ids_shuffle, len_keep = mu.generate_mask_for_evaluation()
        _, im_paste, _ = mu.generate_image(canvas.unsqueeze(0).to(args.device), model,
                                           ids_shuffle.to(args.device), len_keep, device=args.device)
        canvas = torch.einsum("chw->hwc", canvas)
        canvas = torch.clip((canvas.cpu().detach() * mu.imagenet_std + mu.imagenet_mean) * 255, 0, 255).int().numpy()
        original_image, generated_result = np.uint8(canvas), np.uint8(im_paste)
        original_image = rd.round_image(original_image, [mu.WHITE, mu.BLACK])
        generated_result = rd.round_image(generated_result, [mu.WHITE, mu.BLACK], t=args.t)
        metric = seg.calculate_metric(args, original_image, generated_result, fg_color=mu.WHITE,
                                      bg_color=mu.BLACK)
        ious.append(float(metric["iou"]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return ({"episodes": len(ious), "seconds": round(seconds, 3),
             "episodes_per_s": round(len(ious) / seconds, 2), "peak_memory_gib": peak_memory_gib(device),
             "iou": round(float(np.nanmean(ious)), 6), "batch_size": 1, "dtype": "fp32",
             "left_out": "PNG writes and log.txt appends of evaluate_segmentation.py"}, ious)


def agreement(ours: list[dict], released_ious: list[float]) -> dict:
    """Share of episodes whose IoU equals the released loop's (1e-6: the release sums in float32),
    share within 0.001, and the mean |difference|."""
    a, b = np.array([float(r["iou"]) for r in ours]), np.array(released_ious[:len(ours)])
    diff = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
    return {"iou_agreement": round(float(np.mean(diff <= 1e-6)), 4),
            "iou_agreement_within_0.001": round(float(np.mean(diff <= 1e-3)), 4),
            "mean_abs_iou_diff": round(float(np.nanmean(diff)), 6)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tiny", action="store_true", help="CPU check: tiny widths (canvases stay 224 px "
                   "for the released loop; 64 px with --no-released)")
    p.add_argument("--data", help="VOC root (default: a generated VOC-layout folder)")
    p.add_argument("--episodes", type=int, help="episodes of every row (default 256; --tiny 6); a "
                   "multiple of the batch keeps the compiled row to one compilation")
    p.add_argument("--batch-size", type=int, help="cvf batch (default 128; --tiny 3)")
    p.add_argument("--workers", type=int, help="cvf DataLoader workers (default 12; --tiny 0)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="also the --compile row (default: on a GPU yes, with --tiny no)")
    p.add_argument("--no-released", action="store_true", help="skip the released loop")
    p.add_argument("--splits", help="model.evaluate --splits (default: standard with --data, derived "
                   "for the generated folder)")
    p.add_argument("--out", help="write the figures as JSON here (rewritten after every row)")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    n = args.episodes or (6 if args.tiny else 256)
    batch = args.batch_size or (3 if args.tiny else 128)
    workers = args.workers if args.workers is not None else (0 if args.tiny else min(12, os.cpu_count() or 1))
    compile_ = args.compile if args.compile is not None else not args.tiny
    torch.backends.cudnn.benchmark = device.type == "cuda"
    reason = "--no-released" if args.no_released else rel.missing_reason()
    sizes = TINY_MAE if args.tiny else arch_sizes("mae_vit_large_patch16")
    size = 64 if args.tiny and reason else 224
    vq_kwargs = (TINY_VQGAN_64 if size == 64 else TINY_VQGAN) if args.tiny else REAL_VQGAN
    model = build(sizes, random_vqgan(vq_kwargs, 0), img_size=size).to(device).eval()
    report = Report(args.out)
    report.save(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                torch=torch.__version__, model="tiny" if args.tiny else "mae_vit_large_patch16", canvas=size,
                episodes=n, task="segmentation fold 0, one seed",
                numerics="TF32 off (matmul and cuDNN) for every fp32 row")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else generated_voc(tmp / "voc")
        # the generated folder lacks the standard lists' images: fold lists derived from its masks
        splits = args.splits or ("standard" if args.data else "derived")
        cvf = functools.partial(run_cvf, splits=splits)
        # warm-up (kernels, cuDNN autotuning, allocator), then the timed runs
        cvf(model, data, min(n, batch), batch, 0, device, "fp32", tmp / "warm")
        fp32, rows = cvf(model, data, n, batch, workers, device, "fp32", tmp / "fp32")
        report.save(cvf_fp32=fp32)
        episodes = [(r["query"], r["supports"], int(r["class_id"])) for r in rows]
        released_ious = None
        if reason is None:
            modules = rel.import_released(vq_kwargs)
            ref_model = rel.released_model(modules, sizes, size, model.state_dict()).to(device).eval()
            run_released(modules, ref_model, released_layout(data, tmp / "rel"), episodes[:4], device)
            released, released_ious = run_released(modules, ref_model, released_layout(data, tmp / "rel2"),
                                                   episodes, device)
            del ref_model
            fp32 |= agreement(rows, released_ious)
            report.save(released=released, cvf_fp32=fp32)
            # the same path one episode per batch: what batching's kernel choices change alone
            b1, rows1 = cvf(model, data, min(n, 100), 1, 0, device, "fp32", tmp / "b1")
            report.save(cvf_fp32_batch1={**b1, **agreement(rows1, released_ious)})
        else:
            report.save(released={"skipped": reason})
            print(f"released loop skipped: {reason}", file=sys.stderr)
        bf16, rows16 = cvf(model, data, n, batch, workers, device, "bf16", tmp / "bf16")
        if released_ious is not None:
            bf16 |= agreement(rows16, released_ious)
        report.save(cvf_bf16=bf16)
        if compile_:
            compiled_model = compile_for_inference(copy.deepcopy(model))
            started = time.perf_counter()   # compile for the batch shape (n is a multiple of it)
            cvf(compiled_model, data, batch, batch, 0, device, "fp32", tmp / "warmc")
            compile_s = time.perf_counter() - started
            compiled, rowsc = cvf(compiled_model, data, n, batch, workers, device, "fp32", tmp / "comp")
            compiled["compile_and_warmup_s"] = round(compile_s, 1)
            if released_ious is not None:
                compiled |= agreement(rowsc, released_ious)
            report.save(cvf_compiled_fp32=compiled)
    if "episodes_per_s" in report.get("released", {}):
        base = report["released"]["episodes_per_s"]
        report.save(ratios={k + "_vs_released": round(report[k]["episodes_per_s"] / base, 2)
                            for k in ("cvf_fp32", "cvf_bf16", "cvf_compiled_fp32") if k in report})
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
