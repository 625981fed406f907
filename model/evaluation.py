"""One evaluation run: the model loaded (any of the four inpainting models), the task's episodes
built, every canvas inpainted and scored, results written (results.json, results.md,
episodes.csv, pictures). `python -m model.evaluate` (model/evaluate.py) is its command line and
the prompt-engineering study; see its --help for the tasks and the protocol.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from tqdm import tqdm

from model import metrics, tasks, voc
from model.files import atomic_write
from model.inpainters import describe, kind_of
from model.vqgan import exact_attention
from model.prompting import (attention_overlay, cell_size, compile_for_inference, decoder_attention,
                             inpaint, inpaint_ensemble, normalize, quadrant_mask, rows_answer_box,
                             rows_mask, to_uint8)

TASKS = ("segmentation", "detection", "colorization", "synthetic")
DEFAULT_SEED = {"segmentation": 0, "detection": 0, "colorization": 5, "synthetic": 0}
DEFAULT_EPISODES = {"segmentation": 1000, "detection": None, "colorization": 1000, "synthetic": 100}
HEADLINE = {"segmentation": "iou", "detection": "iou", "colorization": "mse", "synthetic": "iou"}


# ----------------------------------------------------------------------------- model

def load_model(checkpoint, vqgan_config=None, arch=None, size: int | None = None,
               vqgan_ckpt=None, device="cpu", compile_: bool = False, dall_e=None,
               class_label: int | None = None):
    """Any of the four inpainting models on `device`, its kind told from the checkpoint
    (`model.inpainters.load_inpainter`): MAE-VQGAN (needs `vqgan_config`), pixel MAE, BEiT
    (its tokenizer: `vae.*` + vqgan_config, vqgan_config + vqgan_ckpt, or `dall_e`), VQGAN
    transformer (`vqgan_config` = taming's Net2NetTransformer model.yaml). A checkpoint of
    another architecture is a clear ValueError. `compile_`: torch.compile the inference path
    (see `compile_for_inference`)."""
    from model.inpainters import load_inpainter

    model = load_inpainter(checkpoint, vqgan_config, arch=arch, size=size, vqgan_ckpt=vqgan_ckpt,
                           dall_e=dall_e, class_label=class_label)
    model = model.to(device).eval()
    return compile_for_inference(model) if compile_ else model


def model_options(args) -> dict:
    """The loader options only some kinds need (absent from older or other callers' args)."""
    return {"dall_e": getattr(args, "dall_e", None), "class_label": getattr(args, "class_label", None)}


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
    if hasattr(model, "encoder_features"):           # BEiT
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            return model.encoder_features(images.float())
    if not hasattr(model, "forward_encoder"):
        raise ValueError("the VQGAN transformer has no image encoder: use --support-features "
                         "resnet18|resnet50 for --support nearest")
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
                                args.size, args.vqgan_ckpt, device, args.compile, **model_options(args))
    if args.attention_maps and not hasattr(model, "decoder_blocks"):
        raise ValueError(f"--attention-maps draws MAE's decoder attention; a {kind_of(model)} model has "
                         "no such decoder")
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
               "model": describe(model), "model_kind": kind_of(model),
               "pretraining": getattr(args, "pretraining", None),
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
