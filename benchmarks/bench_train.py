"""Training-step throughput of MAE-VQGAN: the released settings vs our fast paths.

    python benchmarks/bench_train.py            # one H100, under 5 minutes
    python benchmarks/bench_train.py --tiny     # tiny model on the CPU, a check that it runs
    python benchmarks/bench_train.py --tiny --compile   # ... through the compiled paths too

Rows (all the same ViT-L/16 MAE-VQGAN, the real VQGAN f16/1024 architecture, one GPU):
* released: eager, fp16 autocast + GradScaler, batch 64, tokens computed on the fly by the
  VQGAN under the same autocast, foreach AdamW. This is the released training step.
* fast, on the fly: torch.compile'd MAE and VQGAN tokenizer, bf16, channels-last VQGAN,
  fused AdamW, at --fast-batch (256; the recipe's total batch of 512 is two accumulation steps of
  it on one GPU, and lr follows the total batch, so the recipe is unchanged).
* fast, cached tokens: the same compiled MAE step with targets read from a token cache (no
  VQGAN), at --fast-batch.
Each row prints img/s, model FLOPs utilisation (FLOPs counted once by torch's FlopCounterMode
for forward + backward + tokenizer, over --peak-tflops) and peak GPU memory (peak RSS on the CPU). The step is timed
on batches already on the device (data loading runs in worker processes and is not measured).

Then the loss curve at --fast-batch: the same initial weights, batches and masks for
--curve-steps steps, plain eager fp32 vs the fast on-the-fly step vs the released step, side by side, plus how often
the bf16 tokenizer picks the same token as the fp32 one. Each run's own loss is against its own
targets, so the curve ends with every run's weights scored the same way: eager fp32 loss on
held-out batches against the fp32 tokenizer's targets.

Weights are random unless --vqgan-config/--vqgan-ckpt point at taming's files; images are
smooth random images unless --data names an image folder. No downloads.
"""
from __future__ import annotations

import argparse
import copy
import resource
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from model.data import CropDataset, list_images, normalize
from model.mae_vqgan import build
from model.train import (Formatter, forward_backward, make_tokenizer, masking_noise, optimizer_step,
                         param_groups)
from model.vqgan import VQModel, load_vqgan

REAL_VQGAN = dict(ddconfig=dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3,
                                ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16],
                                dropout=0.0), n_embed=1024, embed_dim=256)
TINY_VQGAN = dict(ddconfig=dict(double_z=False, z_channels=32, resolution=64, in_channels=3, out_ch=3,
                                ch=32, ch_mult=[1, 1, 1, 1, 2], num_res_blocks=1, attn_resolutions=[4],
                                dropout=0.0), n_embed=64, embed_dim=16)
TINY_MAE = dict(patch_size=16, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=24,
                decoder_depth=1, decoder_num_heads=3)


def get_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=Formatter)
    p.add_argument("--tiny", action="store_true", help="tiny model, 64 px, on the CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="torch.compile the fast rows (default: on a GPU yes, with --tiny no)")
    p.add_argument("--arch", default="mae_vit_large_patch16", help="MAE sizes (the released model's)")
    p.add_argument("--batch", type=int, default=64, help="batch of the released row")
    p.add_argument("--fast-batch", type=int, default=256, help="batch of the fast rows and the loss curve")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per row (compilation)")
    p.add_argument("--curve-steps", type=int, default=20, help="steps of the side-by-side loss curve")
    p.add_argument("--curve-batches", type=int, default=8, help="distinct batches cycled in the curve")
    p.add_argument("--lr", type=float, default=1.5e-4, help="curve lr (warm-up not simulated)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="dense bf16/fp16 peak of the card (H100 SXM: 989)")
    p.add_argument("--fast-tokenizer", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="encoder dtype of the fast paths' compiled tokenizer")
    p.add_argument("--vqgan-config", help="taming model.yaml (default: random real-size VQGAN)")
    p.add_argument("--vqgan-ckpt", help="taming last.ckpt")
    p.add_argument("--data", help="image folder for the batches (default: smooth random images)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def make_vqgan(args, device):
    if args.vqgan_config:
        return load_vqgan(args.vqgan_config, args.vqgan_ckpt).to(device)
    torch.manual_seed(args.seed)
    vqgan = VQModel(**(TINY_VQGAN if args.tiny else REAL_VQGAN))
    # taming's U(-1/n, 1/n) codebook sends nearly every latent to one code; spread it out.
    torch.nn.init.normal_(vqgan.quantize.embedding.weight, std=0.1)
    return vqgan.eval().requires_grad_(False).to(device)


def make_batches(args, n_batches, batch, size, device):
    """uint8 [B,3,S,S] batches on the device: crops of --data, or smooth random images."""
    if args.data:
        ds = CropDataset(list_images(args.data), size, seed=args.seed)
        idx = np.arange(n_batches * batch) % len(ds)
        imgs = torch.stack([ds[(int(i), 0)][0] for i in idx])
    else:
        g = torch.Generator().manual_seed(args.seed)
        low = torch.rand(n_batches * batch, 3, size // 16, size // 16, generator=g)
        imgs = (torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic").clamp(0, 1) * 255)
        imgs = imgs.to(torch.uint8)
    return list(imgs.to(device).split(batch))


class Step:
    """One training step in a given configuration (wraps the trainer's own pieces)."""

    def __init__(self, model, tokenize, amp_dtype, fused, compile_, lr):
        self.model = model
        self.run = torch.compile(model) if compile_ else model
        self.tokenize, self.amp_dtype, self.fused, self.lr = tokenize, amp_dtype, fused, lr
        self.reset()

    def reset(self, state_dict=None):
        """Fresh optimizer and scaler (and weights): a new run, without recompiling."""
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, 0.05), lr=self.lr,
                                           betas=(0.9, 0.95), fused=self.fused or None)
        device_type = next(self.model.parameters()).device.type
        self.scaler = torch.amp.GradScaler(device_type, enabled=self.amp_dtype == torch.float16)

    def __call__(self, imgs_u8, noise, tokens=None):
        imgs = normalize(imgs_u8)
        if tokens is None:
            tokens = self.tokenize(imgs)
        loss = forward_backward(self.run, imgs, tokens, noise, 0.75, self.amp_dtype, self.scaler)
        optimizer_step(self.optimizer, self.scaler)
        return loss


def count_flops(model, tokenize, imgs_u8, noise) -> float:
    """FLOPs of one eager step (tokenizer forward + MAE forward and backward), per image."""
    with FlopCounterMode(display=False) as counter:
        imgs = normalize(imgs_u8)
        tokens = tokenize(imgs)
        loss, _, _ = model(imgs, 0.75, noise=noise, targets=tokens)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / imgs_u8.shape[0]


def tokenizer_flops(tokenize, imgs_u8) -> float:
    with FlopCounterMode(display=False) as counter:
        tokenize(normalize(imgs_u8))
    return counter.get_total_flops() / imgs_u8.shape[0]


@torch.no_grad()
def held_out_loss(model, batches, noises, tokens) -> float:
    """Mean eager fp32 loss of `model` on batches it never trained on, against exact targets."""
    losses = [model(normalize(b), 0.75, noise=n, targets=t)[0] for b, n, t in zip(batches, noises, tokens)]
    return torch.stack(losses).mean().item()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_row(name, step, batches, noises, tokens, args, device, flops_per_img):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(batches[i % len(batches)], noises[i % len(noises)], tokens[i % len(tokens)] if tokens else None)
    sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(batches[i % len(batches)], noises[i % len(noises)], tokens[i % len(tokens)] if tokens else None)
    sync(device)
    seconds = time.perf_counter() - t0
    img_s = args.steps * batches[0].shape[0] / seconds
    mfu = flops_per_img * img_s / (args.peak_tflops * 1e12)
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated() / 2**30
    else:  # the process's peak RSS so far (KiB on Linux): a rough figure for --tiny
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{name:<34} {img_s:>9.1f} {1e3 * seconds / args.steps:>9.1f} {100 * mfu:>6.1f}% "
          f"{mem:>8.1f} {warm_s:>8.1f}", flush=True)
    return img_s


def main():
    args = get_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if args.tiny:
        args.batch, args.fast_batch = min(args.batch, 8), min(args.fast_batch, 16)
        args.steps, args.warmup, args.curve_steps = min(args.steps, 3), min(args.warmup, 1), min(args.curve_steps, 6)
    on_gpu = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must be real fp32
    torch.backends.cudnn.allow_tf32 = False
    size = 64 if args.tiny else 224
    print(f"device: {torch.cuda.get_device_name() if on_gpu else 'CPU'}; torch {torch.__version__}; "
          f"{'tiny' if args.tiny else args.arch}, {size} px", flush=True)

    vqgan = make_vqgan(args, device)
    torch.manual_seed(args.seed)
    init = build(TINY_MAE if args.tiny else args.arch, vqgan, img_size=size).to(device)
    L = init.num_patches
    # released row: --batch; fast rows and the curves: --fast-batch (the last 2 batches held out)
    small = make_batches(args, 2, args.batch, size, device)
    small_noises = [masking_noise(args.batch, L, args.seed, 0, i, device) for i in range(2)]
    *batches, held_a, held_b = make_batches(args, args.curve_batches + 2, args.fast_batch, size, device)
    noises = [masking_noise(args.fast_batch, L, args.seed, 1, i, device) for i in range(args.curve_batches)]

    fp32_tokenize = make_tokenizer(vqgan, device, "fp32")
    flops = count_flops(copy.deepcopy(init), fp32_tokenize, small[0], small_noises[0])
    print(f"model FLOPs per image (tokenizer fwd + MAE fwd/bwd): {flops / 1e9:.1f} GFLOP; "
          f"MFU over {args.peak_tflops:.0f} TFLOP/s", flush=True)
    print(f"{'step':<34} {'img/s':>9} {'ms/step':>9} {'MFU':>7} {'peak GiB':>8} {'warm-up s':>8}")

    fast = not args.tiny if args.compile is None else args.compile
    released = Step(copy.deepcopy(init), make_tokenizer(vqgan, device, "fp16"), torch.float16,
                    fused=False, compile_=False, lr=args.lr)
    base = time_row(f"released (eager fp16, b{args.batch})", released, small, small_noises, None, args, device,
                    flops)

    fast_vqgan = copy.deepcopy(vqgan)
    fast_tokenize = make_tokenizer(fast_vqgan, device, args.fast_tokenizer, channels_last=True, compile_=fast)
    fast_step = Step(copy.deepcopy(init), fast_tokenize, torch.bfloat16, fused=on_gpu, compile_=fast, lr=args.lr)
    fly = time_row(f"fast, tokens on the fly (b{args.fast_batch})", fast_step, batches, noises, None, args,
                   device, flops)
    # the same compiled step (one compilation) fed cached tokens: a token cache's training step
    tok32 = [fp32_tokenize(normalize(b)) for b in batches]
    mae_flops = flops - tokenizer_flops(fp32_tokenize, small[0])  # the cached step runs no VQGAN
    cache = time_row(f"fast, cached tokens (b{args.fast_batch})", fast_step, batches, noises, tok32, args,
                     device, mae_flops)
    print(f"speed-up vs released: on the fly {fly / base:.2f}x, cached tokens {cache / base:.2f}x", flush=True)
    if not on_gpu:
        print("(CPU: fp16 autocast is emulated, which makes the released row slow; these ratios and "
              "the MFU say nothing about a GPU)", flush=True)

    # Same loss curve? Same init, batches and masks; eager fp32 vs the fast and released steps.
    tok16 = [fast_tokenize(normalize(b)) for b in batches]
    agree = torch.cat([(a == b).float().flatten() for a, b in zip(tok32, tok16)]).mean().item()
    print(f"the fast ({args.fast_tokenizer}, channels-last) tokenizer picks the eager fp32 token for "
          f"{100 * agree:.2f}% of patches", flush=True)
    eager = Step(copy.deepcopy(init), fp32_tokenize, None, fused=False, compile_=False, lr=args.lr)
    state = init.state_dict()
    curves = {}
    # "fast cached": the same compiled bf16 step fed the cached (exact, fp32-encoder) tokens.
    runs = [("eager fp32", eager, None), ("fast on the fly", fast_step, None),
            ("fast cached", fast_step, tok32), ("released fp16", released, None)]
    held_out = [held_a, held_b]
    held_out_noise = [masking_noise(args.fast_batch, L, args.seed, 2, i, device) for i in range(2)]
    held_out_tokens = [fp32_tokenize(normalize(b)) for b in held_out]
    final = {}
    for name, step, tokens in runs:
        step.reset(state)
        curves[name] = [step(batches[i % len(batches)], noises[i % len(noises)],
                             tokens[i % len(tokens)] if tokens else None).item()
                        for i in range(args.curve_steps)]
        final[name] = held_out_loss(step.model, held_out, held_out_noise, held_out_tokens)
    print(f"\nloss curve, {args.curve_steps} steps of batch {args.fast_batch}, lr {args.lr}:")
    print(f"{'step':>4} " + " ".join(f"{n:>16}" for n in curves))
    for i in range(args.curve_steps):
        print(f"{i + 1:>4} " + " ".join(f"{c[i]:>16.4f}" for c in curves.values()))
    ref = np.array(curves["eager fp32"])
    for name, c in curves.items():
        if name != "eager fp32":
            d = np.abs(np.array(c) - ref)
            print(f"{name} vs eager fp32: max |diff| {d.max():.4f}, mean |diff| {d.mean():.4f}, "
                  f"final {c[-1]:.4f} vs {ref[-1]:.4f}")
    print(f"held-out loss after {args.curve_steps} steps (eager fp32, fp32-tokenizer targets, "
          f"{2 * args.fast_batch} images): " + ", ".join(f"{n} {v:.4f}" for n, v in final.items()), flush=True)


if __name__ == "__main__":
    main()
