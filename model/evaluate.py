"""Evaluate a MAE-VQGAN checkpoint on the paper's visual-prompting tasks.

    python -m model.evaluate --task segmentation --checkpoint checkpoint-1000.pth \\
        --vqgan-config vqgan/model.yaml --data /data/pascal --fold 0 --seeds 0 1 2

Tasks (the released protocol by default; see model/tasks.py and model/metrics.py):
  segmentation  Pascal-5i fold (--fold) from the released fold lists (shipped with cvf;
                --splits derived|DIR otherwise), 1,000 episodes drawn as the release draws them,
                white-pixel IoU of the rounded answer averaged over episodes (the paper's
                "mIoU"), plus class-wise mIoU and FB-IoU.
  detection     VOC 2012 single-object images, the released episodes (--protocol released:
                indexed through the release's 2012_val_flattened_set.pth, --detection-index),
                largest white component -> box, IoU.
  colorization  ImageNet val folder (--data holds val/<class>/*), 1,000 images drawn with seed 5,
                MSE in normalised space, and LPIPS with --lpips.
  synthetic     --synthetic color|shape|size|shape_color|size_color|size_shape,
                100 queries, colour-aware IoU, colour-blind IoU, accuracy.

Models: an MAE-VQGAN checkpoint (with --vqgan-config) or a pixel MAE (cvf's --target pixels
checkpoints, the public MAE {'model': ...} checkpoints; no --vqgan-config), told apart by the
checkpoint's shapes. Arithmetic is the release's by default: fp32 with TF32 off (--dtype bf16
is faster on GPU and recorded in the results).

Better prompts than the paper: --support nearest (the same-class support from the fold's
training images whose features are closest to the query's, as UnsupPR; --support-pool,
--support-features), --ensemble K (K prompts per query with other supports, token
probabilities averaged), --layouts default flip (both layouts, also averaged),
--released-ensemble (the release's 4 canvases: both orders x bw/purple support masks) and
--shots N (N example rows in one prompt). The paper's prompt-engineering study: --layout
horizontal vertical --mask-style bw purple texture edges (every combination, one table per
fold in study.md); --attention-maps draws the decoder's attention for a hidden patch.

Writes <out>/results.json, results.md, episodes.csv (every episode: query, supports, scores) and
<out>/<task>.png (prompt | prediction | ground truth).
Batched, data loading and canvas building in DataLoader workers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from tqdm import tqdm

from model import cli, metrics, tasks, voc
from model.files import atomic_write
from model.vqgan import exact_attention
from model.prompting import (attention_overlay, cell_size, compile_for_inference, decoder_attention,
                             inpaint, inpaint_ensemble, normalize, quadrant_mask, rows_answer_box,
                             rows_mask, to_uint8)

TASKS = ("segmentation", "detection", "colorization", "synthetic")
DEFAULT_SEED = {"segmentation": 0, "detection": 0, "colorization": 5, "synthetic": 0}
DEFAULT_EPISODES = {"segmentation": 1000, "detection": None, "colorization": 1000, "synthetic": 100}
STUDY_LAYOUTS = {"horizontal": "default", "vertical": "flip"}
HEADLINE = {"segmentation": "iou", "detection": "iou", "colorization": "mse", "synthetic": "iou"}


# ----------------------------------------------------------------------------- model

def load_model(checkpoint, vqgan_config=None, arch=None, size: int | None = None,
               vqgan_ckpt=None, device="cpu", compile_: bool = False):
    """`load_checkpoint` on `device`: an MAE-VQGAN (needs `vqgan_config`) or a pixel MAE (told
    by its shapes); a checkpoint of another architecture is a clear ValueError.
    `compile_`: torch.compile the inference path (see `compile_for_inference`)."""
    from model.mae_vqgan import load_checkpoint

    model = load_checkpoint(checkpoint, vqgan_config, arch=arch, vqgan_ckpt=vqgan_ckpt, img_size=size)
    model = model.to(device).eval()
    return compile_for_inference(model) if compile_ else model


def read_arch(value: str | None):
    """--arch: a released name, or a JSON file / string of MaeVqgan sizes (None: the checkpoint's)."""
    if value is None:
        return None
    if value.startswith("{"):
        return json.loads(value)
    if value.endswith(".json"):
        return json.loads(Path(value).read_text())
    return value


@torch.no_grad()
def image_features(model, images: torch.Tensor, dtype=None) -> torch.Tensor:
    """Unmasked encoder features, mean over patch tokens, L2-normalised: [B, D]."""
    L = model.num_patches
    ids = torch.arange(L, device=images.device).expand(images.shape[0], L)
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
        latent = model.forward_encoder(images.float(), ids, L)
    return torch.nn.functional.normalize(latent[:, 1:].float().mean(1), dim=-1)


BACKBONES = ("resnet18", "resnet50")


def load_backbone(name: str, weights, device):
    """A torchvision ResNet from a local weights file (never downloaded), classifier removed:
    images -> globally pooled features."""
    import torchvision

    from model.checkpoint import load_safely

    if name not in BACKBONES:
        raise ValueError(f"--support-features must be encoder or one of {BACKBONES}, got {name!r}")
    if not weights:
        raise ValueError(f"--support-features {name} needs --support-weights FILE: torchvision's "
                         f"ImageNet {name} weights as a local file (e.g. resnet50-11ad3fa6.pth)")
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"--support-weights {path} does not exist")
    state = load_safely(path, allow_namespace=False)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    net = getattr(torchvision.models, name)(weights=None)
    from model.checkpoint import mismatches

    wrong = mismatches(net, state) if isinstance(state, dict) else {"": "not a state_dict"}
    if wrong:
        raise ValueError(f"{path} is not torchvision {name} weights ({len(wrong)} keys differ, e.g. "
                         f"{next(iter(wrong.values()))})")
    net.load_state_dict(state)
    net.fc = torch.nn.Identity()
    return net.eval().to(device)


@torch.no_grad()
def backbone_features(net, images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised images -> L2-normalised pooled backbone features [B, D]."""
    return torch.nn.functional.normalize(net(images.float()).float(), dim=-1)


# ----------------------------------------------------------------------------- tasks

def build_task(args, model, seed: int, device, dtype):
    """-> (dataset, how to score it: dict)."""
    size, layouts, n = args.size, tuple(args.layouts), args.episodes
    shots = args.shots * args.ensemble            # supports per episode
    variants = tasks.RELEASED_ENSEMBLE if args.released_ensemble else None
    prompt = dict(size=size, layouts=layouts, shots=args.shots, variants=variants)
    colours, background = tasks.style_colours(args.mask_style)
    binary = {"round": colours, "background": background, "style": args.mask_style}
    if args.task == "segmentation":
        root = voc.voc_root(args.data)
        voc.require(root, "JPEGImages", "SegmentationClassAug")
        pairs = voc.fold_list(args.data, args.fold, "val", args.splits)
        if not pairs:
            raise ValueError(f"fold {args.fold} has no images in {args.data}")
        check_listed_images(root, pairs, args.splits)
        n = n or DEFAULT_EPISODES["segmentation"]
        if args.support == "nearest":
            pool = None
            if args.support_pool == "trn":
                pool = voc.fold_list(args.data, args.fold, "trn", args.splits)
                check_listed_images(root, pool, args.splits)
            ids = sorted({p[0] for p in pairs + (pool or [])})
            feats = support_features(args, model, ids, device, dtype)
            episodes = tasks.nearest_supports(pairs, feats, n, shots, pool)
        else:
            episodes = tasks.random_supports(pairs, n, seed, shots)
        return (tasks.SegmentationTask(args.data, episodes, mask_style=args.mask_style, **prompt),
                {"kind": "binary", **binary})
    if args.task == "detection":
        root = voc.voc_root(args.data)
        voc.require(root, "JPEGImages", "Annotations")
        queries = voc.single_object_set(root, voc.read_ids(root, "Main/val"), args.area_filter)
        supports = voc.single_object_set(root, voc.read_ids(root, "Main/train"), args.area_filter)
        for name, found in (("val", queries), ("train", supports)):
            if not found:
                raise ValueError(f"no single-object image of ImageSets/Main/{name}.txt passes "
                                 f"--area-filter {args.area_filter}; try --area-filter paper or none")
        voc.check_images(root, [o.image_id for o in queries + supports])
        feats = None
        if args.support == "nearest":
            ids = sorted({o.image_id for o in queries + supports})
            feats = support_features(args, model, ids, device, dtype)
        if args.protocol == "released":
            index = read_detection_index(args.detection_index or default_detection_index(args.data))
            if feats is None:
                episodes = tasks.released_detection_episodes(queries, supports, index, n, seed)
            else:   # the released queries, nearest supports
                tasks.check_detection_index(index, len(queries), len(supports))
                queries = [queries[index[i][0]] for i in range(len(queries))]
                episodes = tasks.detection_episodes(queries, supports, n, seed, shots, feats)
        else:
            episodes = tasks.detection_episodes(queries, supports, n, seed, shots, feats)
        return tasks.DetectionTask(args.data, episodes, **prompt), {"kind": "box", **binary}
    if args.task == "colorization":
        files = tasks.image_folder(Path(args.data) / "val")
        episodes = tasks.colorization_episodes(len(files), n or DEFAULT_EPISODES["colorization"],
                                               seed, shots)
        return tasks.ColorizationTask(files, episodes, **prompt), {"kind": "colour"}
    episodes = tasks.synthetic_episodes(args.synthetic, n or DEFAULT_EPISODES["synthetic"], seed)
    return tasks.SyntheticTask(episodes, size), {
        "kind": "synthetic", "colours": tasks.synthetic_colours(args.synthetic),
        "colour": tasks.synthetic_output_colour(args.synthetic)}


def check_listed_images(root, pairs, splits) -> None:
    """Every image of a fold list is in the VOC tree, with its mask (checked up front)."""
    try:
        voc.check_images(root, [p[0] for p in pairs], masks=True)
    except voc.VocError as e:
        if str(splits) == "derived":
            raise
        raise voc.VocError(f"{e}; the image is in the {'standard' if splits == 'standard' else splits} "
                           "Pascal-5i list (for a VOC copy without all of its images, derive the "
                           "lists from the masks with --splits derived)") from None


DETECTION_INDEX = "2012_val_flattened_set.pth"
MAX_INDEX_BYTES = 16 << 20        # the released file is 141 kB


def default_detection_index(data) -> Path:
    """The released detection index beside the VOC root: in --data, the VOC2012 folder or the
    folders above it; a clear error naming the file and where it comes from otherwise."""
    root = voc.voc_root(data)
    places = list(dict.fromkeys([Path(data), root, root.parent, root.parent.parent]))
    for place in places:
        if (place / DETECTION_INDEX).is_file():
            return place / DETECTION_INDEX
    raise FileNotFoundError(
        f"the released detection episodes need {DETECTION_INDEX} (8,856 (index, class) pairs, in the "
        f"released code's evaluate_detection/ folder) and it is in none of "
        f"{', '.join(str(p) for p in places)}: copy it there, pass --detection-index FILE, or use "
        "--protocol clean (every single-object val image, cvf's own draws)")


def read_detection_index(path) -> list[tuple[int, int]]:
    """The release's `2012_val_flattened_set.pth`: a list of (image index, class) pairs, read
    confined (`weights_only`, size-bounded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--detection-index {path} does not exist")
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size} bytes; the released {DETECTION_INDEX} "
                         f"is 141 kB (not a detection index?)")
    try:
        # its classes are numpy int64 scalars: allow exactly those, nothing else
        allowed = [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype,
                   type(np.dtype(np.int64))]
        with torch.serialization.safe_globals(allowed):
            pairs = torch.load(path, map_location="cpu", weights_only=True)
        return [(int(i), int(c)) for i, c in pairs]
    except Exception as e:   # not a pickle, a refused global, or not (index, class) pairs
        import re

        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        why = f"it references {refused.group(1)}" if refused else type(e).__name__
        raise ValueError(f"{path} is not a detection index like the released {DETECTION_INDEX} "
                         f"(a list of (index, class) pairs): {why}") from None


def support_features(args, model, image_ids, device, dtype) -> dict:
    """Features of each VOC image for --support nearest: the model's encoder (--support-features
    encoder) on the image at the canvas size, or a torchvision backbone from --support-weights
    at 224."""
    if args.support_features == "encoder":
        return voc_image_features(lambda imgs: image_features(model, imgs, dtype), args.data,
                                  image_ids, args.size, args.batch_size, device)
    net = load_backbone(args.support_features, args.support_weights, device)
    return voc_image_features(lambda imgs: backbone_features(net, imgs), args.data, image_ids, 224,
                              args.batch_size, device)


def voc_image_features(featurize, data, image_ids, size, batch_size, device) -> dict:
    """image id -> featurize(ImageNet-normalised images resized bicubic to `size`), on CPU."""
    root = voc.voc_root(data)
    feats = {}
    for start in tqdm(range(0, len(image_ids), batch_size), desc="support features", leave=False):
        ids = image_ids[start:start + batch_size]
        imgs = torch.stack([tasks.to_tensor(voc.read_image(root, i).resize((size, size), Image.BICUBIC))
                            for i in ids])
        feats.update(zip(ids, featurize(normalize(imgs.to(device), torch.float32)).cpu()))
    return feats


# ----------------------------------------------------------------------------- scoring

def score(kind: dict, canvases: torch.Tensor, pasted: torch.Tensor, lpips=None) -> dict:
    """Per-episode scores of one batch: canvases normalised [B,3,S,S], pasted uint8 [B,S,S,3].

    The ground truth is the canvas's answer cell de-normalised as the release does; rounding is
    per pixel, so the answer cell is cropped first.
    """
    from model.prompting import to_uint8

    truth = to_uint8(canvases)
    size = truth.shape[1]
    wrap = kind.get("wraparound", True)
    if kind["kind"] == "synthetic":
        top, left, bottom, right = rows_answer_box(size, rows=3)
        ours, target = (metrics.round_image(x[:, top:bottom, left:right], kind["colours"], wrap).cpu()
                        for x in (pasted, truth))
        return metrics.synthetic_scores(ours, target, kind["colour"])
    c = size - cell_size(size)           # 113 at 224: the answer cell
    top, left, bottom, right = kind.get("answer_box", (c, c, size, size))
    ours, target = pasted[:, top:bottom, left:right], truth[:, top:bottom, left:right]
    if kind["kind"] == "colour":
        out = {"mse": metrics.normalised_mse(ours, target)}
        if lpips is not None:
            out["lpips"] = lpips(ours, target)
        return out
    colours, bg = kind.get("round", [metrics.WHITE, metrics.BLACK]), kind.get("background", metrics.BLACK)
    ours = metrics.round_image(ours, colours, wraparound=wrap).cpu()       # on the GPU when there is one
    target = metrics.round_image(target, colours, wraparound=wrap).cpu()
    fg = colours[0]
    if kind.get("style") == "texture":     # any texture colour is foreground
        ours, target = (torch.where(metrics.is_colour(x, bg)[..., None], torch.tensor(bg, dtype=x.dtype),
                                    torch.tensor(fg, dtype=x.dtype)) for x in (ours, target))
    if kind["kind"] == "box":
        ours = metrics.to_box(ours, fg, bg)
    out = metrics.segmentation_scores(ours, target, fg, bg)
    out["areas"] = metrics.fg_bg_areas(ours, target, fg)
    return out


def evaluate_dataset(model, dataset, kind: dict, batch_size: int = 64, workers: int = 0,
                     device="cpu", dtype=None, mask=None, lpips=None, keep_examples: int = 0,
                     progress: bool = True) -> dict:
    """Run every episode; -> {"scores": {name: [N]}, "class_id": [N], "examples": [...]}."""
    device = torch.device(device)
    float64 = kind["kind"] in ("binary", "colour")   # the release normalises these in float64
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    scores: dict[str, list] = {}
    class_ids, examples = [], []
    for batch in tqdm(loader, desc="episodes", unit="batch", disable=not progress):
        canvas01 = batch["canvas"].to(device, non_blocking=True).float() / 255   # [B,K,3,S,S]
        canvases = normalize(canvas01, torch.float64 if float64 else torch.float32)
        if canvases.shape[1] == 1:
            pasted = inpaint(model, canvases[:, 0], mask, dtype)
        else:
            pasted = inpaint_ensemble(model, canvases, mask, dtype)
        for k, v in score(kind, canvases[:, 0], pasted, lpips).items():
            scores.setdefault(k, []).append(v)
        class_ids.append(batch["class_id"])
        if len(examples) < keep_examples:
            examples += [(canvases[i, 0].cpu(), pasted[i].cpu())
                         for i in range(min(keep_examples - len(examples), len(pasted)))]
    return {"scores": {k: torch.cat(v) for k, v in scores.items()},
            "class_id": torch.cat(class_ids), "examples": examples}


def summarise(result: dict) -> dict:
    """Episode means (NaN episodes skipped and counted), class-wise mIoU and FB-IoU."""
    out = {}
    for name, values in result["scores"].items():
        if name == "areas":
            continue
        values = values.double()
        out[name] = float(np.nanmean(values.numpy())) if len(values) else float("nan")
        if torch.isnan(values).any():
            out[f"{name}_nan_episodes"] = int(torch.isnan(values).sum())
    if "areas" in result["scores"]:
        areas = result["scores"]["areas"]
        out["class_miou"], per_class = metrics.classwise_miou(areas, result["class_id"])
        out["per_class_iou"] = {voc.VOC_CLASSES[c - 1] if 1 <= c <= 20 else str(c): v
                                for c, v in per_class.items()}
        out["fb_iou"] = metrics.fb_iou(areas)
    return out


# ----------------------------------------------------------------------------- outputs

def picture(examples, mask, patch: int, path: Path) -> None:
    """One row per example: prompt (answer hidden, grey) | prediction | ground truth."""
    from model.prompting import patch_mask_to_pixels, to_uint8

    rows = []
    for canvas, pasted in examples:
        truth = to_uint8(canvas[None])[0]
        size = truth.shape[0]
        hidden = patch_mask_to_pixels(mask, size, patch)
        prompt = torch.where(hidden[..., None], torch.tensor(128, dtype=torch.uint8), truth)
        rows.append(torch.cat([prompt, torch.full((size, 4, 3), 255, dtype=torch.uint8), pasted,
                               torch.full((size, 4, 3), 255, dtype=torch.uint8), truth], 1))
    grid = torch.cat([torch.cat([r, torch.full((4, r.shape[1], 3), 255, dtype=torch.uint8)])
                      for r in rows])
    header = 16
    img = Image.new("RGB", (grid.shape[1], grid.shape[0] + header), "white")
    img.paste(Image.fromarray(grid.numpy()), (0, header))
    draw, w = ImageDraw.Draw(img), rows[0].shape[1] // 3
    for i, label in enumerate(("prompt", "prediction", "ground truth")):
        draw.text((i * w + 4, 2), label, fill="black")
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def _name(item) -> str:
    """A readable id for an episode's query or support."""
    if isinstance(item, voc.VocObject):
        return item.image_id
    if isinstance(item, tuple):                          # synthetic (input, output) figures
        return f"{item[0].shape}@{item[0].center}r{item[0].radius}"
    return str(item)


def episode_table(seed: int, dataset, result: dict) -> list[dict]:
    """One row per episode: who was prompted with what, and its scores (for paired comparisons)."""
    scores = {k: v for k, v in result["scores"].items() if k != "areas"}
    rows = []
    for i, ep in enumerate(dataset.episodes):
        row = {"seed": seed, "index": i, "query": _name(ep.query),
               "supports": " ".join(_name(s) for s in ep.supports), "class_id": ep.class_id}
        rows.append(row | {k: float(v[i]) for k, v in scores.items()})
    return rows


def csv_text(rows: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def markdown(results: dict) -> str:
    head = HEADLINE[results["task"]]
    keys = [k for k in results["per_seed"][0]["metrics"]
            if isinstance(results["per_seed"][0]["metrics"][k], float)]
    lines = [f"# {results['title']}", "",
             f"checkpoint `{results['checkpoint']}`, {results['episodes']} episodes per seed, "
             f"support {results['support']}, ensemble {results['ensemble']}, "
             f"layouts {'+'.join(results['layouts'])}, masks {results['mask_style']}, "
             f"{results['model']}, {results['dtype']}; headline metric `{head}` "
             f"(the released one); {results['episodes_per_s']:.1f} episodes/s on {results['device']}.",
             "", "| seed | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for run in results["per_seed"]:
        lines.append(f"| {run['seed']} | " + " | ".join(f"{run['metrics'][k]:.4f}" for k in keys) + " |")
    s = results["summary"]
    if len(results["per_seed"]) > 1:  # one seed has no spread to report: its row is the result
        lines.append("| mean ± std | " + " | ".join(f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main

class ExactArithmetic:
    """fp32 as written: TF32 off for matmuls and cuDNN convolutions while evaluating (the
    release ran before TF32 defaults) and, with `attention`, attention computed op for op as
    released (`exact_attention`); the previous settings restored after."""

    def __init__(self, attention: bool = True):
        self.attention = exact_attention(attention)

    # torch's TF32 switches (its new API; mixing it with allow_tf32 is an error in torch >= 2.9)
    SWITCHES = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)

    def __enter__(self):
        self.saved = [s.fp32_precision for s in self.SWITCHES]
        for switch in self.SWITCHES:
            switch.fp32_precision = "ieee"
        self.attention.__enter__()
        return self

    def __exit__(self, *exc):
        self.attention.__exit__(*exc)
        for switch, value in zip(self.SWITCHES, self.saved):
            switch.fp32_precision = value


def run(args, model=None) -> dict:
    """Evaluate one task variant (one fold / one synthetic task) over all seeds; write outputs.
    fp32 runs are exact (`ExactArithmetic`); --dtype bf16 keeps the fused kernels."""
    with ExactArithmetic(attention=args.dtype != "bf16"):
        return _run(args, model)


def _run(args, model=None) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1)
                                                             if device.type == "cuda" else 0)
    torch.backends.cudnn.benchmark = device.type == "cuda"   # fixed shapes: pick fast kernels
    model = model or load_model(args.checkpoint, args.vqgan_config, read_arch(args.arch),
                                args.size, args.vqgan_ckpt, device, args.compile)
    args.size = model.patch_embed.img_size      # the canvas is the model's input
    patch = model.patch_embed.patch_size
    if args.task == "synthetic":
        mask = rows_mask(args.size, patch)
    elif args.shots > 1:                       # n-shot rows prompt: the last row's output hidden
        mask = rows_mask(args.size, patch, rows=args.shots + 1)
    else:
        mask = quadrant_mask(args.size, patch)
    lpips = metrics.Lpips(args.lpips_weights, device) if args.lpips else None
    seeds = args.seeds if args.seeds else [DEFAULT_SEED[args.task]]
    title = args.task + (f" fold {args.fold}" if args.task == "segmentation" else "") + \
        (f" {args.synthetic}" if args.task == "synthetic" else "")
    out = Path(args.out or f"results/{title.replace(' ', '-')}")
    per_seed, episode_rows, examples, n_done = [], [], [], 0
    started = time.perf_counter()
    for seed in seeds:
        dataset, kind = build_task(args, model, seed, device, dtype)
        kind["wraparound"] = not args.true_rounding
        if args.shots > 1 and args.task != "synthetic":
            kind["answer_box"] = rows_answer_box(args.size, rows=args.shots + 1)
        want = max(args.picture_rows, args.attention_maps)
        result = evaluate_dataset(model, dataset, kind, args.batch_size, workers, device, dtype,
                                  mask, lpips, keep_examples=0 if examples else want)
        examples = examples or result["examples"]
        n_done += len(dataset)
        episode_rows += episode_table(seed, dataset, result)
        per_seed.append({"seed": seed, "metrics": summarise(result)})
        head = HEADLINE[args.task]
        print(f"seed {seed}: {head} {per_seed[-1]['metrics'][head]:.4f}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    scalar = [k for k, v in per_seed[0]["metrics"].items() if isinstance(v, float)]
    summary = {k: {"mean": float(np.mean([r["metrics"][k] for r in per_seed])),
                   "std": float(np.std([r["metrics"][k] for r in per_seed]))} for k in scalar}
    results = {"task": args.task, "title": title, "fold": args.fold, "synthetic": args.synthetic,
               "checkpoint": str(args.checkpoint), "arch": args.arch or "from the checkpoint",
               "model": "MAE-VQGAN (tokens)" if model.target == "tokens" else
                        f"pixel MAE (norm_pix_loss {bool(model.norm_pix_loss)})",
               "size": args.size, "splits": str(args.splits), "protocol": args.protocol,
               "episodes": len(dataset), "seeds": seeds, "support": args.support,
               "support_pool": args.support_pool, "support_features": args.support_features,
               "shots": args.shots, "ensemble": args.ensemble, "layouts": list(dataset_layouts(dataset)),
               "released_ensemble": args.released_ensemble, "mask_style": args.mask_style,
               "area_filter": args.area_filter, "true_rounding": args.true_rounding,
               "device": str(device), "dtype": "bf16" if dtype else "fp32 (TF32 off)",
               "batch_size": args.batch_size,
               "seconds": elapsed, "episodes_per_s": n_done / elapsed,
               "per_seed": per_seed, "summary": summary}
    atomic_write(out / "results.json", lambda f: f.write(json.dumps(results, indent=2).encode()))
    atomic_write(out / "results.md", lambda f: f.write(markdown(results).encode()))
    atomic_write(out / "episodes.csv", lambda f: f.write(csv_text(episode_rows).encode()))
    if examples and args.picture_rows:
        picture(examples[:args.picture_rows], mask.cpu(), patch, out / f"{title.replace(' ', '-')}.png")
    if examples and args.attention_maps:
        attention_picture(model, examples[:args.attention_maps], mask, args.attention_patch,
                          args.attention_layer, device, out / "attention.png")
    print(markdown(results))
    return results


def dataset_layouts(dataset) -> tuple:
    return getattr(dataset, "layouts", ("default",))


def attention_picture(model, examples, mask, patch_index, layer, device, path: Path) -> None:
    """One row per example: the canvas, and the decoder's attention (block `layer`, averaged
    over heads) of hidden patch `patch_index` drawn over it (the paper's Fig. 9)."""
    canvases = torch.stack([c for c, _ in examples]).to(device)
    patch = model.patch_embed.patch_size
    hidden = mask.nonzero().flatten().tolist()
    if patch_index is None:                # the middle hidden patch
        patch_index = hidden[len(hidden) // 2]
    if patch_index not in hidden:
        raise ValueError(f"--attention-patch {patch_index} is not hidden; hidden patches are "
                         f"{hidden[0]}..{hidden[-1]} (row-major, {model.patch_embed.grid_size} per row)")
    weights = decoder_attention(model, canvases, mask.to(device), layer).cpu()
    truth = to_uint8(canvases.cpu())
    gap = torch.full((truth.shape[1], 4, 3), 255, dtype=torch.uint8)
    rows = [torch.cat([t, gap, attention_overlay(t, w[patch_index], patch_index, patch)], 1)
            for t, w in zip(truth, weights)]
    grid = torch.cat([torch.cat([r, torch.full((4, r.shape[1], 3), 255, dtype=torch.uint8)]) for r in rows])
    img = Image.fromarray(grid.numpy())
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--checkpoint", required=True, type=cli.readable_file,
                   help="MAE-VQGAN checkpoint ({'model': state_dict}, released or cvf's), or a pixel "
                        "MAE (cvf's --target pixels, or the public MAE {'model': ...} layout)")
    p.add_argument("--vqgan-config", type=cli.readable_file,
                   help="taming VQGAN model.yaml of an MAE-VQGAN checkpoint (not for a pixel MAE)")
    p.add_argument("--vqgan-ckpt", type=cli.readable_file,
                   help="taming last.ckpt, if the checkpoint has no vae.* weights")
    p.add_argument("--arch", help="released arch name, or a JSON file/string of MaeVqgan sizes "
                                  "(default: what the checkpoint's args record, as `python -m "
                                  "model.train` writes them; else mae_vit_large_patch16)")
    p.add_argument("--data", type=cli.existing_dir, help="VOC root (segmentation, detection) or ImageNet root with val/ "
                                  "(colorization); unused for synthetic")
    p.add_argument("--fold", default="0", choices=("0", "1", "2", "3", "all"),
                   help="Pascal-5i fold (segmentation); all: the four folds and their mean")
    p.add_argument("--synthetic", default="color", choices=sorted(tasks.SYNTHETIC_TASKS) + ["all"],
                   help="which synthetic task; all: the six of the paper")
    p.add_argument("--episodes", type=cli.positive_int, help="episodes per seed (default: the release's)")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="episode-sampling seeds; mean ± std over them (default 0; colorization 5)")
    p.add_argument("--batch-size", type=cli.positive_int, default=64)
    p.add_argument("--workers", type=cli.non_negative_int, help="DataLoader workers (default 8 on GPU, 0 on CPU)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model and VQGAN decode (GPU: faster after a minute or two "
                        "of compiling; worth it for thousands of episodes)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                   help="fp32 (default): the release's arithmetic, TF32 off; bf16: autocast, faster "
                        "on GPU, moves borderline pixels (recorded in the results)")
    p.add_argument("--size", type=cli.positive_int,
                   help="canvas size = the model's image size (default: the --arch's, else the one "
                        "the checkpoint was trained at; 224 for the released model)")
    p.add_argument("--splits", default="standard",
                   help="Pascal-5i fold lists: standard (default; the released lists, shipped with "
                        "cvf), derived (derived from the masks, for VOC copies without the standard "
                        "images), or a folder holding trn/ and val/ fold0..3.txt")
    p.add_argument("--protocol", default="released", choices=("released", "clean"),
                   help="detection episodes: released (the release's queries and draws, through its "
                        "2012_val_flattened_set.pth) or clean (every single-object val image once, "
                        "a random same-class train support; --area-filter applies)")
    p.add_argument("--detection-index", metavar="FILE", type=cli.readable_file,
                   help="the release's 2012_val_flattened_set.pth (default: looked up in --data and "
                        "the folders of the VOC root)")
    p.add_argument("--support", default="random", choices=("random", "nearest"),
                   help="random same-class support (released) or nearest by features, as UnsupPR "
                        "(segmentation, detection)")
    p.add_argument("--support-pool", default="trn", choices=("trn", "val"),
                   help="--support nearest, segmentation: retrieve from the fold's training images "
                        "(trn, as UnsupPR) or from the val list itself")
    p.add_argument("--support-features", default="encoder", choices=("encoder",) + BACKBONES,
                   help="--support nearest: the model's encoder features, or a torchvision "
                        "backbone's (needs --support-weights)")
    p.add_argument("--support-weights", metavar="FILE", type=cli.readable_file,
                   help="local torchvision weights for --support-features (never downloaded)")
    p.add_argument("--shots", type=cli.positive_int, default=1,
                   help="examples per prompt: 1 is the released 2x2 canvas; n > 1 stacks n "
                        "example rows above the query row (segmentation, detection, colorization)")
    p.add_argument("--ensemble", type=cli.positive_int, default=1,
                   help="prompts per query, each with other supports; probabilities averaged")
    p.add_argument("--layouts", nargs="+", default=["default"], choices=tasks.LAYOUTS,
                   help="canvas layouts to average over (flip: query top-right)")
    p.add_argument("--released-ensemble", action="store_true",
                   help="segmentation: the release's 4-canvas ensemble (default and flipped order, "
                        "each with the white and the purple/yellow support mask), averaged")
    p.add_argument("--layout", nargs="+", choices=STUDY_LAYOUTS,
                   help="prompt-engineering study (paper Fig. 10-11): horizontal (example pair in a "
                        "row, the released canvas) and/or vertical (example pair in a column)")
    p.add_argument("--mask-style", nargs="+", choices=tasks.MASK_STYLES, dest="mask_styles",
                   help="prompt-engineering study, segmentation: bw (white on black, released), "
                        "purple (the release's yellow on purple), texture (checkered foreground), "
                        "edges (mask boundary only); several values or --layout values: every "
                        "combination, one table per fold in <out>/study.md")
    p.add_argument("--attention-maps", type=cli.non_negative_int, nargs="?", const=4, default=0, metavar="N",
                   help="write <out>/attention.png: for N episodes (default 4), the decoder's "
                        "attention of one hidden patch averaged over heads, over the canvas (paper "
                        "Fig. 9)")
    p.add_argument("--attention-patch", type=cli.non_negative_int,
                   help="the hidden patch (row-major index; default the middle hidden patch)")
    p.add_argument("--attention-layer", type=int, default=-1,
                   help="decoder block of the attention maps (default the last)")
    p.add_argument("--area-filter", default="code", choices=("code", "paper", "none"),
                   help="detection: objects <20%% of the image (code) or <=50%% (paper text); "
                        "paper and none with --protocol clean")
    p.add_argument("--true-rounding", action="store_true",
                   help="round pixels to the truly nearest colour; the released code computes "
                        "the distances in uint8, which wrap modulo 256 (default, as published)")
    p.add_argument("--lpips", action="store_true", help="colorization: also LPIPS (AlexNet)")
    p.add_argument("--lpips-weights", type=cli.readable_file, help=f"local torchvision {metrics.ALEXNET_FILE} "
                                           f"(default {metrics.default_lpips_weights()})")
    p.add_argument("--picture-rows", type=cli.non_negative_int, default=4, help="examples in the PNG")
    p.add_argument("--out", type=cli.writable_dir, help="output folder (default results/<task>)")
    return p


def study_combinations(args) -> list[tuple[str, str]] | None:
    """(layout, mask style) pairs of the prompt-engineering study, or None without one."""
    if not args.layout and not args.mask_styles:
        return None
    return [(layout, style) for style in (args.mask_styles or ["bw"])
            for layout in (args.layout or ["horizontal"])]


def run_all(args) -> list[dict]:
    """`--fold all` / `--synthetic all` / the prompt-engineering study: every variant in its own
    folder, one model load, and <out>/summary.md + summary.json with the headline metric of
    each and their mean (the study: <out>/study.md, one table per fold)."""
    import copy

    if args.splits not in ("standard", "derived"):
        voc.check_split_dir(args.splits)
    folds = ["0", "1", "2", "3"] if args.fold == "all" else [args.fold]
    names = sorted(tasks.SYNTHETIC_TASKS) if args.synthetic == "all" else [args.synthetic]
    variants = ([("fold", f) for f in folds] if args.task == "segmentation" else
                [("synthetic", n) for n in names] if args.task == "synthetic" else [("fold", "0")])
    study = study_combinations(args)
    if len(variants) == 1 and study is None:
        args.fold = int(args.fold) if args.fold != "all" else 0
        return [run(args)]
    base = Path(args.out or f"results/{args.task}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(args.checkpoint, args.vqgan_config, read_arch(args.arch), args.size,
                       args.vqgan_ckpt, device, args.compile)
    results, cells = [], {}
    for key, value in variants:
        for combo in study or [None]:
            one = copy.copy(args)
            setattr(one, key, int(value) if key == "fold" else value)
            one.fold = int(one.fold) if one.fold != "all" else 0
            one.out = str(base / f"{key}-{value}")
            if combo is not None:
                layout, one.mask_style = combo
                one.layouts = [STUDY_LAYOUTS[layout]]
                one.out = str(Path(one.out) / f"{layout}-{one.mask_style}")
            results.append(run(one, model))
            if combo is not None:
                cells[(value, *combo)] = results[-1]["summary"][HEADLINE[args.task]]["mean"]
    head = HEADLINE[args.task]
    seeds = results[0]["seeds"]
    if study is not None:
        write_study(base, args.task, head, seeds, [v for _, v in variants], study, cells)
    if len(variants) == 1:
        return results
    rows = [(r["title"], r["summary"][head]["mean"], r["summary"][head]["std"]) for r in results]
    mean = float(np.mean([m for _, m, _ in rows]))
    spread = len(seeds) > 1  # a std over one seed would read as "no variance"
    lines = [f"# {args.task}: `{head}` per variant ({'mean ± std over seeds' if spread else 'seed'} "
             f"{' '.join(map(str, seeds))})", "", "| variant | " + head + " |", "|---|---|"]
    lines += [f"| {t} | {m:.4f}{f' ± {sd:.4f}' if spread else ''} |" for t, m, sd in rows]
    lines += [f"| mean | {mean:.4f} |"]
    atomic_write(base / "summary.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    atomic_write(base / "summary.json", lambda f: f.write(json.dumps(
        {"task": args.task, "metric": head, "mean": mean,
         "variants": {t: {"mean": m, "std": sd} for t, m, sd in rows}}, indent=2).encode()))
    print("\n".join(lines))
    return results


def write_study(base: Path, task: str, head: str, seeds, variants, study, cells) -> None:
    """<base>/study.md and study.json: per fold (variant), mask styles x layouts of `head`."""
    layouts = list(dict.fromkeys(layout for layout, _ in study))
    styles = list(dict.fromkeys(style for _, style in study))
    lines = [f"# {task}: prompt-engineering study, `{head}` (mean over seeds {' '.join(map(str, seeds))})"]
    for value in variants:
        lines += ["", f"## fold {value}" if task == "segmentation" else f"## {value}", "",
                  "| mask style | " + " | ".join(layouts) + " |", "|---" * (len(layouts) + 1) + "|"]
        lines += [f"| {style} | " + " | ".join(f"{cells[(value, layout, style)]:.4f}" for layout in layouts)
                  + " |" for style in styles]
    atomic_write(base / "study.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    atomic_write(base / "study.json", lambda f: f.write(json.dumps(
        {"task": task, "metric": head, "seeds": seeds,
         "cells": [{"variant": v, "layout": l, "mask_style": m, head: x} for (v, l, m), x in cells.items()]},
        indent=2).encode()))
    print("\n".join(lines))


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.task != "synthetic" and not args.data:
        parser().error(f"--data is required for --task {args.task}")
    if args.shots > 1 and args.layouts != ["default"]:
        parser().error("--layouts applies to the 2x2 canvas (--shots 1)")
    # Say so rather than run the released prompts under a label that claims otherwise.
    if args.support == "nearest" and args.task not in ("segmentation", "detection"):
        parser().error("--support nearest applies to --task segmentation and detection")
    if args.task == "synthetic" and (args.shots, args.ensemble, args.layouts) != (1, 1, ["default"]):
        parser().error("the synthetic tasks use the released 3x2 prompt: no --shots, --ensemble "
                       "or --layouts")
    if args.layout and (args.layouts != ["default"] or args.shots > 1 or args.task == "synthetic"):
        parser().error("--layout (the study) sets the 2x2 canvas's layout: not with --layouts, "
                       "--shots or --task synthetic")
    if args.mask_styles and (args.task != "segmentation" or args.shots > 1):
        parser().error("--mask-style applies to --task segmentation with the 2x2 canvas")
    if args.released_ensemble and (args.task != "segmentation" or args.shots > 1 or args.layout
                                   or args.mask_styles or args.layouts != ["default"]):
        parser().error("--released-ensemble is the release's 4 segmentation canvases: not with "
                       "--shots, --layout(s) or --mask-style")
    if args.task == "detection" and args.protocol == "released" and args.area_filter != "code":
        parser().error("the released detection episodes keep objects under 20% of the image; "
                       "--area-filter paper|none goes with --protocol clean")
    if args.support_weights and args.support_features == "encoder":
        parser().error("--support-weights goes with --support-features resnet18|resnet50")
    args.mask_style = "bw"            # the study's variants set their own
    try:
        run_all(args)
    except (ValueError, OSError) as e:  # OSError: a missing file, an unwritable --out
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
