"""Evaluate an inpainting model (MAE-VQGAN, MAE, BEiT or the VQGAN transformer) on the paper's
visual-prompting tasks.

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

Models: the kind is told from the checkpoint (model/inpainters.py).
  MAE-VQGAN  --vqgan-config (taming's VQGAN model.yaml; --vqgan-ckpt if it holds no vae.*)
  MAE        pixel head (cvf's --target pixels, the public MAE {'model': ...}): nothing else
  BEiT       cvf's (VQGAN codes: --vqgan-config, as MAE-VQGAN) or unilm's pre-training
             checkpoints (DALL-E codes: --dall-e DIR with OpenAI's encoder.pkl/decoder.pkl)
  VQGAN      taming's transformer: --checkpoint last.ckpt --vqgan-config its Net2NetTransformer
             model.yaml; --class-label N for a class-conditional one (cin_transformer). Hidden
             codes are decoded greedily in raster order, one transformer step each.
--pretraining LABEL names the pre-training data in the results (the report's rows: python -m
model.report). Arithmetic is the release's by default: fp32 with TF32 off (--dtype bf16
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
import sys
from pathlib import Path

import numpy as np
import torch

from model import cli, metrics, tasks, voc
from model.files import atomic_write
# The run itself lives in model.evaluation; these names stay importable from here.
from model.evaluation import (BACKBONES, DEFAULT_EPISODES, DEFAULT_SEED, HEADLINE, TASKS,  # noqa: F401
                              ExactArithmetic, evaluate_dataset, load_model, model_options,
                              read_arch,
                              run, score, summarise)

STUDY_LAYOUTS = {"horizontal": "default", "vertical": "flip"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--checkpoint", required=True, type=cli.readable_file,
                   help="MAE-VQGAN checkpoint ({'model': state_dict}, released or cvf's), or a pixel "
                        "MAE (cvf's --target pixels, or the public MAE {'model': ...} layout)")
    p.add_argument("--vqgan-config", type=cli.readable_file,
                   help="taming VQGAN model.yaml of an MAE-VQGAN checkpoint (not for a pixel MAE)")
    p.add_argument("--vqgan-ckpt", type=cli.readable_file, help="taming last.ckpt, if the checkpoint has no vae.* weights")
    p.add_argument("--arch", help="released arch name, or a JSON file/string of MaeVqgan sizes "
                                  "(default: what the checkpoint's args record, as `python -m "
                                  "model.train` writes them; else mae_vit_large_patch16)")
    p.add_argument("--dall-e", metavar="DIR", type=cli.existing_dir,
                   help="BEiT of unilm's public checkpoints: folder holding OpenAI's DALL-E decoder.pkl "
                        "(and encoder.pkl); read without running pickled code")
    p.add_argument("--class-label", type=cli.non_negative_int, metavar="N",
                   help="class-conditional VQGAN transformer (taming's cin_transformer): the ImageNet "
                        "class index every prompt is conditioned on")
    p.add_argument("--pretraining", metavar="LABEL",
                   help="the model's pre-training data as the report shows it (e.g. CVF, ImageNet, "
                        "CVF+IN); recorded in results.json")
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
                       args.vqgan_ckpt, device, args.compile, **model_options(args))
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
