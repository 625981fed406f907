"""Train MAE-VQGAN (or the plain pixel MAE, BEiT, the VQGAN transformer) on CVF figures:
`python -m model.train --help`.

The released recipe by default (batch 64 per GPU, blr 1e-4, AdamW (0.9, 0.95), wd 0.05 except
biases and 1-D params, 15 warm-up epochs then half-cosine per step, 1,000 epochs, 75% masking,
RandomResizedCrop(224, (0.2, 1)) + flip, VQGAN tokens of the same crop as targets), with what
makes it fast on current GPUs behind flags: bf16 autocast, `torch.compile`, channels-last
VQGAN, fused AdamW, and a cache of VQGAN tokens for K fixed crops per image.

Multi-GPU: `torchrun --nproc_per_node 8 -m model.train ...` (DDP, one process per GPU).
Checkpoints (`<out>/checkpoint-last.pth`, and `checkpoint-<epoch>.pth` every --save-epochs) hold
`{"model", "optimizer", "epoch", "scaler", "args"}` like the released ones, so the released
evaluation code loads them, plus what exact resume needs: the step, the data position and RNG.
A rerun with the same --out resumes where the last checkpoint left off; it refuses (one line
naming what) a changed --accum-iter, seed, lr schedule or data mixture, which would make the
resumed run a different run.

Several sources (`--data A --data B --data-weights 1 1`: manifests, image folders, ImageFolder
trees, shard folders) are sampled with the given weights (the paper's data study, its Fig. 8);
`--init CKPT` starts from the released checkpoint, or a cvf one, for fine-tuning.

`--model` picks one of the paper's four inpainting models, each with its own recipe as defaults
(RECIPES; any flag given overrides them), all on the same data, precision, DDP and resume:
mae-vqgan (above), mae (pixels), beit (unilm's recipe: block-wise masking of 75 of 196 patches,
AdamW (0.9, 0.999), lr 1.5e-3 at batch 2048, gradients clipped at 3, drop path 0.1, layer scale
0.1; it predicts the same VQGAN codes as MAE-VQGAN) and vqgan-gpt (taming's: next-code
cross-entropy over the raster sequence after an SOS token, lr 4.5e-6 x batch, constant,
AdamW (0.9, 0.95), weight decay 0.01 off embeddings). BEiT and the transformer take their
width, depth and heads from --arch / --embed-dim --depth --num-heads.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from model import cli
from model.checkpoint import load_safely, save_atomically
from model.files import atomic_write, atomic_write_bytes
from model.data import (CropDataset, MixtureSampler, ResumableSampler, TokenCache, fingerprint,
                        list_images, normalize)
from model.mae_vqgan import ARCHS, arch_sizes, build
from model.beit import Beit, block_masks
from model.inpainters import KINDS
from model.vqgan_gpt import GPT, VqganTransformer, net2net_config
from model.vqgan import load_vqgan

DEFAULT_VQGAN_DIR = Path("checkpoints/vqgan")
SIZE_FLAGS = ("embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")


# Each model's recipe: the defaults `--model` sets (flags given on the command line win).
RECIPES = {
    "mae-vqgan": {},
    "mae": {"target": "pixels"},
    # unilm's run_beit_pretraining.py: lr 1.5e-3 at batch 2048 (= blr 1.875e-4 per 256), warm-up
    # 10, betas (0.9, 0.999), clip 3.0, drop path 0.1, layer scale 0.1, 800 epochs
    "beit": {"blr": 1.5e-3 * 256 / 2048, "betas": (0.9, 0.999), "warmup_epochs": 10, "epochs": 800,
             "clip_grad": 3.0, "drop_path": 0.1, "layer_scale": 0.1, "min_lr": 1e-5},
    # taming's Net2NetTransformer: lr = 4.5e-6 x batch (blr x batch / 256), constant, no warm-up,
    # AdamW (0.9, 0.95), weight decay 0.01 on Linear weights only
    "vqgan-gpt": {"blr": 4.5e-6 * 256, "betas": (0.9, 0.95), "warmup_epochs": 0, "epochs": 100,
                  "lr_schedule": "constant", "weight_decay": 0.01},
}


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):  # no "(default: None)": the help says what unset means
        return action.help if action.default is None else super()._get_help_string(action)


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m model.train", formatter_class=Formatter,
        description="Train MAE-VQGAN on a published CVF manifest or an image folder. Defaults are "
                    "the released recipe; a rerun with the same --out resumes.\n"
                    "Writes <out>/checkpoint-last.pth, <out>/checkpoint-<epoch>.pth, <out>/args.json and "
                    "TensorBoard logs in <out>/tb (train/loss, train/lr, train/img_per_s), the same as JSON lines in "
                    "<out>/log.jsonl. Several --data sources mix, with --data-weights.",
        epilog="examples:\n"
               "  python -m model.train manifests/cvf-2026.11/train.parquet --images $CVF_DATA/images --fast\n"
               "  torchrun --nproc_per_node 8 -m model.train DIR_OF_IMAGES --fast --token-cache runs/tokens\n"
               "  python -m model.train DIR_OF_IMAGES --target pixels --norm-pix-loss   # plain MAE baseline\n"
               "  python -m model.train --data cvf/train.parquet --images $CVF_DATA/images "
               "--data /data/imagenet/train --data-weights 1 1   # CVF + ImageNet, as the paper's Fig. 8\n"
               "  python -m model.train DIR_OF_IMAGES --init checkpoint-1000.pth --epochs 50   # fine-tune\n"
               "VQGAN files (taming's vqgan_imagenet_f16_1024) go to checkpoints/vqgan/{model.yaml,last.ckpt}.")
    d = p.add_argument_group("data")
    d.add_argument("data", nargs="?", help="image folder (searched recursively, so an ImageFolder tree "
                   "too), folder of tar shards (`python -m model.data pack`), or manifest "
                   "(.parquet/.jsonl/official .csv)")
    d.add_argument("--data", dest="more_data", action="append", metavar="SOURCE",
                   help="a source as above; repeat for a mixture (with the positional one, if given, first)")
    d.add_argument("--data-weights", type=float, nargs="+", metavar="W",
                   help="sampling weight of each source, in order (default: every image alike). An "
                   "epoch stays as many draws as there are images; a source repeats an image only "
                   "after drawing all of its images")
    d.add_argument("--images", action="append", help="folder the manifest's images were rebuilt into "
                   "(manifests only); once for all manifests, or once per manifest in order")
    d.add_argument("--split", help="keep only the manifest rows of this split (default: every row)")
    d.add_argument("--input-size", type=cli.positive_int, default=224, help="crop side in pixels (the model's image size)")
    d.add_argument("--min-crop-scale", type=cli.unit_interval, default=0.2, help="RandomResizedCrop scale lower bound")
    d.add_argument("--num-workers", type=cli.non_negative_int, default=8, help="decoding processes per GPU")
    d.add_argument("--token-cache", type=cli.writable_dir, help="folder of cached VQGAN tokens for fixed crops; built on first use")
    d.add_argument("--crops-per-image", type=cli.positive_int, default=10, help="crops per image in a new token cache")

    m = p.add_argument_group("model")
    m.add_argument("--model", choices=KINDS, help="which inpainting model: mae-vqgan (default; mae with "
                   "--target pixels), mae, beit, vqgan-gpt; sets that model's recipe as the defaults")
    m.add_argument("--arch", default="mae_vit_large_patch16", choices=sorted(ARCHS),
                   help="MAE encoder/decoder sizes (the released model is ViT-L/16)")
    for flag in SIZE_FLAGS:
        m.add_argument("--" + flag.replace("_", "-"), type=cli.positive_int, help="override the arch's value")
    m.add_argument("--target", default="tokens", choices=["tokens", "pixels"],
                   help="tokens: VQGAN token classification (MAE-VQGAN); pixels: plain MAE regression")
    m.add_argument("--norm-pix-loss", action="store_true", help="per-patch normalised pixels (pixels target)")
    m.add_argument("--vqgan-config", default=str(DEFAULT_VQGAN_DIR / "model.yaml"), help="taming's model.yaml")
    m.add_argument("--vqgan-ckpt", default=str(DEFAULT_VQGAN_DIR / "last.ckpt"), help="taming's last.ckpt")
    m.add_argument("--mask-ratio", type=cli.open_unit_interval, default=0.75, help="fraction of patches hidden from the encoder")
    m.add_argument("--beit-mask-patches", type=cli.positive_int, help="beit: patches hidden per image by block-wise "
                   "masking (default: 75 of 196, in proportion for other sizes)")
    m.add_argument("--beit-min-block", type=cli.positive_int, default=16, help="beit: fewest patches per masked block")
    m.add_argument("--beit-positions", default="shared", choices=("shared", "abs"),
                   help="beit: a relative position bias shared by the blocks (unilm's checkpoints) or "
                   "absolute positions")
    m.add_argument("--layer-scale", type=cli.non_negative_float, default=0.0, help="beit: initial layer scale (0: none)")
    m.add_argument("--drop-path", type=cli.unit_interval, default=0.0, help="beit: stochastic depth rate")
    m.add_argument("--init", metavar="CKPT", type=cli.readable_file, help="start from these weights (the released checkpoint-*.pth "
                   "or a cvf one; the VQGAN's from --vqgan-ckpt if it holds none); optimizer and "
                   "schedule start afresh. Ignored when resuming")

    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=cli.positive_int, default=64, help="per GPU and per micro-step")
    o.add_argument("--accum-iter", type=cli.positive_int, default=1, help="micro-steps per optimizer step")
    o.add_argument("--epochs", type=cli.positive_int, default=1000, help="passes over the data (cosine lr schedule)")
    o.add_argument("--warmup-epochs", type=cli.non_negative_float, default=15, help="linear lr warm-up")
    o.add_argument("--blr", type=cli.positive_float, default=1e-4, help="lr = blr * effective batch / 256")
    o.add_argument("--lr", type=cli.non_negative_float, help="absolute lr (overrides --blr)")
    o.add_argument("--min-lr", type=cli.non_negative_float, default=0.0, help="lr at the end of the cosine schedule")
    o.add_argument("--weight-decay", type=cli.non_negative_float, default=0.05, help="AdamW (not on biases and norms)")
    o.add_argument("--betas", type=cli.unit_interval, nargs=2, default=(0.9, 0.95), help="AdamW betas")
    o.add_argument("--lr-schedule", default="cosine", choices=("cosine", "constant"),
                   help="after warm-up: half-cosine to --min-lr, or constant")
    o.add_argument("--clip-grad", type=cli.positive_float, help="clip the gradient norm to this (unset: no clipping)")
    o.add_argument("--max-steps", type=cli.positive_int, help="stop after this many optimizer steps in total "
                   "(the schedule still spans --epochs); a checkpoint is written")
    o.add_argument("--seed", type=int, default=0, help="weights, crops, masks and data order")

    s = p.add_argument_group("speed")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (under torchrun: one GPU per process)")
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast dtype; auto = bf16 on CUDA, fp32 on CPU; fp16 uses a loss scaler")
    s.add_argument("--tokenizer-precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="VQGAN encoder dtype (bf16 is faster but flips some near-tied tokens)")
    s.add_argument("--compile", action="store_true", help="torch.compile the MAE and the tokenizer")
    s.add_argument("--channels-last", action="store_true", help="channels-last VQGAN convolutions")
    s.add_argument("--fused-adamw", action="store_true", help="fused AdamW kernel (CUDA)")
    s.add_argument("--fast", action="store_true", help="all of: --compile --channels-last "
                   "--fused-adamw --tokenizer-precision bf16")

    c = p.add_argument_group("output")
    c.add_argument("--out", default="runs/mae_vqgan", type=cli.writable_dir, help="checkpoints and TensorBoard logs")
    c.add_argument("--save-every", type=cli.positive_int, default=1000, help="write checkpoint-last.pth every N steps")
    c.add_argument("--save-epochs", type=cli.positive_int, default=20, help="keep checkpoint-<epoch>.pth every N epochs")
    c.add_argument("--log-every", type=cli.positive_int, default=20, help="log loss and img/s every N steps")
    c.add_argument("--no-resume", action="store_true", help="start afresh even if --out has a checkpoint")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    # The model's recipe becomes the defaults before parsing (so --help shows them too).
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    pre.add_argument("--target")
    known, _ = pre.parse_known_args(argv)
    p.set_defaults(**RECIPES.get(known.model or ("mae" if known.target == "pixels" else "mae-vqgan"), {}))
    args = p.parse_args(argv)
    args.model = args.model or ("mae" if args.target == "pixels" else "mae-vqgan")
    if args.target == "pixels" and args.model != "mae":
        p.error(f"--target pixels is the plain MAE; --model {args.model} predicts VQGAN codes")
    args.data = ([args.data] if args.data else []) + (args.more_data or [])
    del args.more_data
    if not args.data:
        p.error("name the training data: a positional SOURCE or --data SOURCE (repeatable)")
    if args.data_weights is not None and len(args.data_weights) != len(args.data):
        p.error(f"--data-weights has {len(args.data_weights)} values for {len(args.data)} source(s)")
    if args.data_weights is not None and (min(args.data_weights) < 0 or not sum(args.data_weights) > 0):
        p.error("--data-weights must be >= 0 and not all 0")
    if args.fast:
        args.compile = args.channels_last = args.fused_adamw = True
        args.tokenizer_precision = "bf16"
    return args


# -- pieces ----------------------------------------------------------------------------------

def setup_distributed(device: str):
    """-> (rank, world_size, device). Under torchrun, one process per GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return 0, 1, torch.device(device)
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return dist.get_rank(), world_size, torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return dist.get_rank(), world_size, torch.device(device)


def autocast_dtype(precision: str, device: torch.device):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_tokenizer(args):
    """The frozen VQGAN, or a clear message about where its files go."""
    config, ckpt = Path(args.vqgan_config), Path(args.vqgan_ckpt)
    missing = [str(f) for f in (config, ckpt) if not f.is_file()]
    if missing:
        raise SystemExit(
            f"VQGAN files missing: {', '.join(missing)}.\n"
            "MAE-VQGAN's targets come from taming-transformers' VQGAN `vqgan_imagenet_f16_1024` "
            "(ImageNet, f=16, 1024 codes; linked from the taming-transformers README). Put its "
            f"configs/model.yaml at {DEFAULT_VQGAN_DIR}/model.yaml and its checkpoints/last.ckpt at "
            f"{DEFAULT_VQGAN_DIR}/last.ckpt, or pass --vqgan-config and --vqgan-ckpt. "
            "(--target pixels trains the plain MAE without it.)")
    return load_vqgan(config, ckpt)


def param_groups(model, weight_decay: float):
    """MAE's rule: no weight decay on biases and 1-D parameters (norms, tokens), nor on what the
    model's `no_weight_decay()` names (BEiT: positions, cls; the transformer: its embeddings)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(epoch: float, args) -> float:
    """Linear warm-up then half-cosine, evaluated at a fractional epoch (per step)."""
    if epoch < args.warmup_epochs:
        return args.lr * epoch / args.warmup_epochs
    if getattr(args, "lr_schedule", "cosine") == "constant":
        return args.lr
    progress = (epoch - args.warmup_epochs) / max(args.epochs - args.warmup_epochs, 1e-8)
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def masking_noise(n: int, num_patches: int, seed: int, rank: int, micro_step: int, device) -> torch.Tensor:
    """The random-masking draw of one micro-batch: a pure function of (seed, rank, step)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed, rank, micro_step]).generate_state(1)[0]))
    return torch.rand(n, num_patches, generator=g, device=device)


def batch_masking(args, n: int, num_patches: int, rank: int, micro_step: int, device):
    """What hides patches in one micro-batch, a pure function of (seed, rank, step): MAE's
    random-masking noise, BEiT's block masks, nothing for the transformer (it sees every code)."""
    if args.model == "beit":
        grid = math.isqrt(num_patches)
        hidden = args.beit_mask_patches or round(75 / 196 * num_patches)
        return block_masks(n, grid, hidden, min(args.beit_min_block, hidden), args.seed, rank,
                           micro_step).to(device)
    if args.model == "vqgan-gpt":
        return None
    return masking_noise(n, num_patches, args.seed, rank, micro_step, device)


class TrainStep(torch.nn.Module):
    """BEiT's and the transformer's training loss behind MAE-VQGAN's call,
    `step(imgs, mask_ratio, noise=..., targets=...) -> (loss, None, None)`, so that one
    `forward_backward` (and DDP, which wraps this module) serves every model. For BEiT `noise`
    is the block mask."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, imgs, mask_ratio=None, noise=None, targets=None):
        if isinstance(self.model, Beit):
            return self.model.training_loss(imgs, noise, targets), None, None
        return self.model.training_loss(imgs, targets), None, None


def build_model(args, vqgan, sizes: dict):
    """The --model to train, of --arch's sizes (BEiT and the transformer take its encoder's
    width, depth and heads), predicting the VQGAN's codes (pixels for the plain MAE)."""
    if args.model in ("mae-vqgan", "mae"):
        return build(sizes, vqgan, img_size=args.input_size, target=args.target,
                     norm_pix_loss=args.norm_pix_loss)
    f = vqgan.downsample_factor
    if args.model == "beit":
        if sizes["patch_size"] != f:
            raise SystemExit(f"error: BEiT's patch ({sizes['patch_size']}) must be the VQGAN's factor ({f})")
        return Beit(img_size=args.input_size, patch_size=f, embed_dim=sizes["embed_dim"],
                    depth=sizes["depth"], num_heads=sizes["num_heads"], vocab_size=vqgan.quantize.n_e,
                    mlp_ratio=sizes.get("mlp_ratio", 4.0), positions=args.beit_positions,
                    layer_scale=args.layer_scale or None, vae=vqgan, input_norm="imagenet",
                    drop_path=args.drop_path)
    gpt = GPT(vocab_size=vqgan.quantize.n_e, block_size=(args.input_size // f) ** 2, n_layer=sizes["depth"],
              n_head=sizes["num_heads"], n_embd=sizes["embed_dim"])
    return VqganTransformer(vqgan, gpt, sos_token=0, unconditional=True, img_size=args.input_size)


def make_tokenizer(vqgan, device, precision: str = "fp32", channels_last: bool = False,
                   compile_: bool = False):
    """ImageNet-normalised images -> VQGAN tokens, with the encoder in the requested dtype
    (the nearest-code search stays fp32) and memory layout."""
    if channels_last:
        vqgan.to(memory_format=torch.channels_last)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def tokenize(imgs):
        if channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return vqgan.tokenize(imgs)

    return torch.compile(tokenize) if compile_ else tokenize


def forward_backward(model, imgs, targets, noise, mask_ratio: float, amp_dtype, scaler,
                     accum_iter: int = 1) -> torch.Tensor:
    """One micro-batch: autocast forward, scaled backward. -> the (detached) loss."""
    with torch.autocast(imgs.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss, _, _ = model(imgs, mask_ratio, noise=noise, targets=targets)
    scaler.scale(loss / accum_iter).backward()
    return loss.detach()


def optimizer_step(optimizer, scaler, clip_grad: float | None = None):
    if clip_grad:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def save_npy_atomically(array: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda f: np.save(f, array))


def build_token_cache(files, vqgan, folder, crops_per_image: int, size: int, scale, seed: int,
                      batch_size: int, num_workers: int, device, tokenize, progress: bool = True,
                      rank: int = 0, world_size: int = 1):
    """VQGAN tokens of K fixed crops of every image -> `folder/tokens.npy` + `meta.json` (last).

    Under DDP every rank calls this and tokenizes its share (images rank, rank + world_size, ...)
    into `.part-<fingerprint>-<rank>of<world>.npy`; rank 0 joins the parts once all are written
    (a barrier, so no rank waits longer than its own share takes). A part already written by an
    interrupted build is kept, so a rerun only does what is missing."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    print_ = tqdm.write if progress else print
    n_tokens = (size // vqgan.downsample_factor) ** 2
    key = fingerprint(files)
    mine = list(range(rank, len(files), world_size))
    part = folder / f".part-{key}-{rank}of{world_size}.npy"
    if not part.is_file():
        dataset = CropDataset(files, size, scale, seed)
        items = [(i, k) for i in mine for k in range(crops_per_image)]
        loader = DataLoader(dataset, batch_size=batch_size, sampler=items, num_workers=num_workers,
                            pin_memory=device.type == "cuda")
        tokens = np.zeros((len(items), n_tokens), dtype=np.uint16)
        done = 0
        for imgs, _ in tqdm(loader, desc=f"caching VQGAN tokens (rank {rank})", unit="batch",
                            disable=not progress or rank != 0):
            t = tokenize(normalize(imgs.to(device, non_blocking=True)))
            tokens[done:done + len(t)] = t.cpu().numpy()
            done += len(t)
        save_npy_atomically(tokens.reshape(len(mine), crops_per_image, n_tokens), part)
        print_(f"token cache: rank {rank} of {world_size} tokenized {len(mine) * crops_per_image} crops "
               f"of {len(mine)} images")
    if world_size > 1:
        dist.barrier()
    if rank != 0:
        return
    tokens = np.zeros((len(files), crops_per_image, n_tokens), dtype=np.uint16)
    parts = [folder / f".part-{key}-{r}of{world_size}.npy" for r in range(world_size)]
    for r, path in enumerate(parts):
        tokens[r::world_size] = np.load(path)
    save_npy_atomically(tokens, folder / "tokens.npy")
    meta = {"fingerprint": key, "num_images": len(files), "size": size,
            "scale": list(scale), "seed": seed, "n_embed": vqgan.quantize.n_e,
            "crops_per_image": crops_per_image, "num_tokens": n_tokens, "built_by_ranks": world_size}
    atomic_write_bytes(folder / "meta.json", json.dumps(meta, indent=2).encode())
    for path in parts:
        path.unlink()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_sources(sources, images, split) -> tuple[list, list[int]]:
    """Images of every source, concatenated in order, and how many each source has."""
    manifests = [s for s in sources if Path(s).is_file()]
    if images and len(images) not in (1, len(manifests)):
        raise ValueError(f"{len(images)} --images for {len(manifests)} manifest(s): give one for all, "
                         "or one per manifest in order")
    files, sizes, m = [], [], 0
    for source in sources:
        folder = None
        if Path(source).is_file() and images:
            folder = images[0] if len(images) == 1 else images[m]
            m += 1
        found = list_images(source, folder, split)
        files += found
        sizes.append(len(found))
    return files, sizes


def run_identity(args, sizes: list[int]) -> dict:
    """What a resume must not change (it would make the resumed run another run)."""
    return {"--model": args.model, "--accum-iter": args.accum_iter, "--seed": args.seed,
            "schedule (--epochs, --warmup-epochs, lr, --min-lr)":
                [args.epochs, args.warmup_epochs, args.lr, args.min_lr],
            "data mixture (sources, --data-weights, images per source)":
                [[str(d) for d in args.data], args.data_weights, sizes]}


def changed_since(recorded: dict, now: dict) -> str | None:
    """One line naming what differs from a checkpoint's run identity, or None."""
    diffs = [f"{k} {recorded[k]} then, {v} now" for k, v in now.items()
             if k in recorded and recorded[k] != v]
    return "; ".join(diffs) or None


def init_weights(model, path, has_vqgan: bool, prefix: str = "vae.") -> None:
    """--init: the weights of a released or cvf checkpoint ({'model': state_dict} or a state_dict).
    VQGAN weights it lacks stay those of --vqgan-ckpt; a pixel-target model drops its `vae.*`."""
    from model.checkpoint import mismatches

    if not Path(path).is_file():
        raise SystemExit(f"error: --init {path}: no such file")
    ckpt = load_safely(path, map_location="cpu")
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    if not isinstance(state, dict) or not state:
        raise SystemExit(f"error: --init {path} holds no state_dict")
    for wrapper in ("module.", "_orig_mod."):  # saved from a DDP or torch.compile wrapper
        if all(k.startswith(wrapper) for k in state):
            state = {k[len(wrapper):]: v for k, v in state.items()}
    own = model.state_dict()
    if has_vqgan and not any(k.startswith(prefix) for k in state):
        state = {**state, **{k: v for k, v in own.items() if k.startswith(prefix)}}
    if not has_vqgan:
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    wrong = mismatches(model, state)
    if wrong:
        raise SystemExit(f"error: --init {path} does not fit this model ({len(wrong)} keys differ, e.g. "
                         f"{'; '.join(list(wrong.values())[:3])}); pass the --arch/sizes it was trained with")
    model.load_state_dict(state)


def plain_args(args) -> argparse.Namespace:
    """Only builtin types, so the checkpoint loads with weights_only + Namespace."""
    return argparse.Namespace(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()})


# -- training --------------------------------------------------------------------------------

def train(args) -> dict:
    """Run (or resume) training; returns {"step", "epoch", "losses": [(step, loss), ...]}."""
    rank, world_size, device = setup_distributed(args.device)
    is_main = rank == 0
    out = Path(args.out)
    amp_dtype = autocast_dtype(args.precision, device)

    # Data.
    try:
        files, source_sizes = list_sources(args.data, args.images, args.split)
    except (ValueError, FileNotFoundError) as e:  # a wrong path or manifest: say so, no traceback
        raise SystemExit(f"error: {e}") from None
    scale = (args.min_crop_scale, 1.0)
    vqgan = load_tokenizer(args) if args.target == "tokens" else None
    tokenize = None
    if vqgan is not None:
        vqgan.to(device)
        tokenize = make_tokenizer(vqgan, device, args.tokenizer_precision, args.channels_last, args.compile)
    cache = None
    if args.token_cache:
        if args.target != "tokens":
            raise SystemExit("--token-cache only applies to --target tokens")
        if not TokenCache.exists(args.token_cache):
            # Computed once, so computed exactly: fp32 encoder whatever --tokenizer-precision says.
            # Every rank tokenizes its share (one rank alone would outlast DDP's barrier timeout).
            exact = make_tokenizer(vqgan, device, "fp32", args.channels_last, args.compile)
            build_token_cache(files, vqgan, args.token_cache, args.crops_per_image, args.input_size,
                              scale, args.seed, args.batch_size, args.num_workers, device, exact,
                              progress=is_main and not args.no_progress, rank=rank,
                              world_size=world_size)
        if world_size > 1:
            dist.barrier()
        cache = TokenCache(args.token_cache)
        cache.check(files, args.input_size, scale, args.seed, vqgan.quantize.n_e)
    dataset = CropDataset(files, args.input_size, scale, args.seed, cache)
    if len(args.data) == 1:
        sampler = ResumableSampler(len(files), rank, world_size, args.seed)
    else:  # no weights: every image alike, i.e. weights in proportion to the sources' sizes
        sampler = MixtureSampler(source_sizes, args.data_weights or source_sizes, rank, world_size,
                                 args.seed)
    micro_per_epoch = sampler.per_rank // args.batch_size
    steps_per_epoch = micro_per_epoch // args.accum_iter
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(files)} images over {world_size} rank(s) do not fill one step of "
                         f"{args.accum_iter} x {args.batch_size}; lower --batch-size or --accum-iter")

    # Model and optimiser.
    sizes = arch_sizes(args.arch)
    sizes.update({k: getattr(args, k) for k in SIZE_FLAGS if getattr(args, k) is not None})
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    model = build_model(args, vqgan, sizes).to(device)
    eff_batch = args.batch_size * args.accum_iter * world_size
    if args.lr is None:
        args.lr = args.blr * eff_batch / 256
    fused = args.fused_adamw and device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr,
                                  betas=tuple(args.betas), fused=fused or None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    identity = run_identity(args, source_sizes)

    # Resume.
    step, epoch, micro_done = 0, 0, 0  # optimizer steps; epoch; micro-batches done in that epoch
    last = out / "checkpoint-last.pth"
    if last.is_file() and not args.no_resume:
        ckpt = load_safely(last, map_location="cpu")
        if ckpt["data"]["world_size"] != world_size or ckpt["data"]["batch_size"] != args.batch_size:
            raise SystemExit(f"{last} was written with {ckpt['data']['world_size']} rank(s) x batch "
                             f"{ckpt['data']['batch_size']}; resume with the same, or use --no-resume")
        changed = changed_since(ckpt.get("run", {}), identity)
        if changed:
            raise SystemExit(f"error: cannot resume {last}: {changed}; rerun with the same, "
                             "or start afresh with --no-resume or another --out")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, epoch, micro_done = ckpt["step"], ckpt["data"]["epoch"], ckpt["data"]["micro_done"]
        set_rng_state(ckpt["rng"][rank] if rank < len(ckpt["rng"]) else ckpt["rng"][0])
        if is_main:
            print(f"resumed from {last}: step {step}, epoch {epoch}, batch {micro_done}"
                  + (f" (--init {args.init} ignored: the checkpoint's weights continue)" if args.init else ""))
    elif args.init:
        init_weights(model, args.init, vqgan is not None,
                     "first_stage_model." if args.model == "vqgan-gpt" else "vae.")
        if is_main:
            print(f"initialised from {args.init}")

    train_model = model if args.model in ("mae-vqgan", "mae") else TrainStep(model)
    if world_size > 1:
        train_model = DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model)

    writer = None
    if is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(out / "tb")
        except ImportError:  # a bare GPU image may lack tensorboard: log.jsonl still has it all
            print("tensorboard is not installed: no TensorBoard logs (log.jsonl has the same figures)")
        (out / "args.json").parent.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(vars(plain_args(args)), indent=2, default=str))

    def save(path):
        states = [rng_state()]
        if world_size > 1:
            states = [None] * world_size
            dist.all_gather_object(states, rng_state())
        if is_main:
            save_atomically({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scaler": scaler.state_dict(), "epoch": epoch, "args": plain_args(args),
                             "step": step, "rng": states, "run": identity, "kind": args.model,
                             **({"config": net2net_config(model, args.vqgan_config)}
                                if args.model == "vqgan-gpt" else {}),
                             "data": {"epoch": epoch, "micro_done": micro_done,
                                      "world_size": world_size, "batch_size": args.batch_size}}, path)

    total_steps = args.epochs * steps_per_epoch
    end_step = min(total_steps, args.max_steps) if args.max_steps else total_steps
    losses = []
    bar = tqdm(total=end_step, initial=step, unit="step", disable=not is_main or args.no_progress,
               desc="train")
    model.train()
    running, running_n = torch.zeros((), device=device), 0
    t0, seen = time.perf_counter(), 0
    while step < end_step:
        sampler.set_epoch(epoch, micro_done * args.batch_size)
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                            num_workers=args.num_workers, pin_memory=device.type == "cuda",
                            persistent_workers=False)
        for imgs, cached in loader:
            micro_in_step = micro_done % args.accum_iter
            if micro_in_step == 0:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(epoch + micro_done / micro_per_epoch, args)
            imgs = normalize(imgs.to(device, non_blocking=True))
            targets = cached.to(device, non_blocking=True) if cached.numel() else None
            if targets is None and tokenize is not None:
                targets = tokenize(imgs)
            micro_step = epoch * micro_per_epoch + micro_done
            noise = batch_masking(args, imgs.shape[0], model.num_patches, rank, micro_step, device)
            if args.model in ("beit", "vqgan-gpt"):
                # drop path / dropout draw from the global generator, which DataLoaders also draw
                # from: seeded per micro-step, so that a resumed run draws the same
                torch.manual_seed(int(np.random.SeedSequence([args.seed, rank, micro_step, 2])
                                      .generate_state(1)[0]))
            last_micro = micro_in_step == args.accum_iter - 1
            sync = nullcontext() if last_micro or world_size == 1 else train_model.no_sync()
            with sync:
                running += forward_backward(train_model, imgs, targets, noise, args.mask_ratio,
                                            amp_dtype, scaler, args.accum_iter)
            running_n += 1
            seen += imgs.shape[0] * world_size
            micro_done += 1
            if not last_micro:
                continue
            optimizer_step(optimizer, scaler, args.clip_grad)
            step += 1
            bar.update(1)
            if step % args.log_every == 0 or step == end_step:
                mean_loss = (running / running_n).item()  # the only host sync, once per log
                if not math.isfinite(mean_loss):
                    raise SystemExit(f"loss is {mean_loss} at step {step}; stopping")
                seconds = time.perf_counter() - t0
                img_s = seen / seconds
                losses.append((step, mean_loss))
                if is_main:
                    with open(out / "log.jsonl", "a") as log:
                        log.write(json.dumps({"step": step, "loss": mean_loss, "img_s": img_s,
                                              "seconds": seconds, "lr": optimizer.param_groups[0]["lr"],
                                              "epoch": epoch}) + "\n")
                if writer is not None:
                    writer.add_scalar("train/loss", mean_loss, step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                    writer.add_scalar("train/img_per_s", img_s, step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                img_s=f"{img_s:.0f}")
                running.zero_()
                running_n, t0, seen = 0, time.perf_counter(), 0
            if micro_done == micro_per_epoch - micro_per_epoch % args.accum_iter:
                epoch, micro_done = epoch + 1, 0
                if epoch % args.save_epochs == 0 or epoch == args.epochs:
                    save(out / f"checkpoint-{epoch}.pth")
            if step % args.save_every == 0 or step == end_step:
                save(last)
            if step >= end_step or micro_done == 0:
                break
    bar.close()
    if writer is not None:
        writer.close()
    if is_main:
        # Say where things went: the bar alone leaves a newcomer guessing.
        print(f"step {step}/{total_steps}, epoch {epoch}/{args.epochs}: {last}\n"
              f"curves: tensorboard --logdir {out / 'tb'} (and {out / 'log.jsonl'})")
    if world_size > 1:
        # Tear down together: a rank that destroys its gloo group while rank 0 is still writing
        # the checkpoint can abort at exit ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
    return {"step": step, "epoch": epoch, "losses": losses}


def main(argv=None):
    # A file that is not what its flag says (--init, --vqgan-config, a manifest) or an output that
    # cannot be written: one `error:` line, exit 2
    with cli.exit_on(ValueError, OSError):
        train(get_args(argv))


if __name__ == "__main__":
    main()
