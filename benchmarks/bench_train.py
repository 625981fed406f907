"""Training-step throughput and agreement: the RELEASED step, verbatim, vs cvf, side by side.

    python benchmarks/bench_train.py --out results/gpu/train.json   # one GPU, ~2 min on an H200
    python benchmarks/bench_train.py --tiny                         # tiny model on the CPU (a check)
    python benchmarks/bench_train.py --tiny --compile               # ... through the compiled paths

Same random weights (one cvf state_dict loaded into both models: the key names are the released
ones), same batches, one process, one GPU. Rows:
* released   the released code itself (github.com/amirbar/visual_prompting at 6351e0d, found
             as benchmarks/released.py says): models_mae.MaskedAutoencoderViT + vqgan.VQModel, and
             engine_pretrain.train_one_epoch called as released (fp16 autocast, its
             NativeScalerWithGradNormCount: GradScaler + grad norm, AdamW (0.9, 0.95) over timm's
             weight-decay groups, loss.item() and a synchronize every step), batch --batch (64).
* cvf fp32   model.train's step, eager fp32 (TF32 off), tokens on the fly, batch --batch.
* cvf fast   model.train's step compiled, bf16, channels-last bf16 VQGAN tokenizer, fused
             AdamW, batch --fast-batch (256), tokens on the fly.
* cvf cached the same compiled step fed tokens from a cache (no VQGAN in the step).
Timing: CUDA events around --steps steps of one configuration; the configurations run one after
another --repeats times (interleaved, so clock and thermal drift hit all alike); median and range
of img/s reported, and each configuration's peak GPU memory. Batches are already on the device:
the input pipeline is measured separately (bench_loader.py).

Agreement, reported beside the speed:
* first-step loss of cvf fp32 vs the released fp32 forward on the same weights, batch and mask
  noise (the released random_masking draws torch.rand(N, L) first: the same seed gives the same
  noise);
* held-out loss gap: cvf fp32 and cvf fast (and cached) each train --curve-steps steps from the
  same weights on the same batches and noise; then all are scored the same way (eager fp32, exact
  targets, held-out batches); gap = fast - fp32;
* the share of patches where the bf16 channels-last tokenizer picks the fp32 token.

Weights are random, images smooth random ones; no downloads. The JSON (--out) is rewritten after
every section, so a run cut short by its time limit still leaves what it measured.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import released as rel  # noqa: E402
from model.data import normalize  # noqa: E402
from model.mae_vqgan import arch_sizes, build  # noqa: E402
from model.train import (Formatter, forward_backward, make_tokenizer, masking_noise,  # noqa: E402
                         optimizer_step, param_groups)
from model.vqgan import VQModel  # noqa: E402

REAL_VQGAN = dict(ddconfig=dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3,
                                ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16],
                                dropout=0.0), n_embed=1024, embed_dim=256)
# 1024 codes even when tiny: the released decoder_pred has a hard-coded vocabulary of 1024.
TINY_VQGAN = dict(ddconfig=dict(double_z=False, z_channels=32, resolution=64, in_channels=3, out_ch=3,
                                ch=32, ch_mult=[1, 1, 1, 1, 2], num_res_blocks=1, attn_resolutions=[4],
                                dropout=0.0), n_embed=1024, embed_dim=16)
TINY_MAE = dict(patch_size=16, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=24,
                decoder_depth=1, decoder_num_heads=3)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Formatter)
    p.add_argument("--tiny", action="store_true", help="tiny model, 64 px, on the CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="torch.compile the fast rows (default: on a GPU yes, with --tiny no)")
    p.add_argument("--arch", default="mae_vit_large_patch16", help="MAE sizes (the released model's)")
    p.add_argument("--batch", type=int, default=64, help="batch of the released and cvf fp32 rows")
    p.add_argument("--fast-batch", type=int, default=256, help="batch of the fast rows and the curves")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration and repeat")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration (compiling)")
    p.add_argument("--curve-steps", type=int, default=8, help="steps before the held-out loss")
    p.add_argument("--lr", type=float, default=1.5e-4, help="lr of every row (warm-up not simulated)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="dense bf16/fp16 peak of the card, for MFU (H100/H200 SXM: 989)")
    p.add_argument("--no-released", action="store_true", help="skip the released rows")
    p.add_argument("--out", help="write the figures as JSON here (rewritten after every section)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class Report(dict):
    """The result dict, written atomically to `path` whenever a section adds to it."""

    def __init__(self, path):
        super().__init__()
        self.path = Path(path) if path else None

    def save(self, **items):
        self.update(items)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(self, indent=2) + "\n")
            os.replace(tmp, self.path)


def peak_memory_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB)


def timed(fn, device) -> float:
    """Seconds `fn()` takes: CUDA events on a GPU, the wall clock on the CPU."""
    if device.type != "cuda":
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def random_vqgan(kwargs, seed):
    torch.manual_seed(seed)
    vqgan = VQModel(**kwargs)
    # taming's U(-1/n, 1/n) codebook sends nearly every latent to one code; spread it out.
    torch.nn.init.normal_(vqgan.quantize.embedding.weight, std=0.1)
    return vqgan.eval().requires_grad_(False)


def smooth_images(n, size, seed, device):
    """uint8 [n,3,S,S]: bicubic upsampling of 16x smaller noise (VQGAN-friendly, not flat)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(size // 16, 2), max(size // 16, 2), generator=g)
    imgs = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic").clamp(0, 1) * 255
    return imgs.to(torch.uint8).to(device)


class CvfStep:
    """One model.train step in a given configuration (the trainer's own pieces)."""

    def __init__(self, model, tokenize, amp_dtype, fused, compile_, lr, tf32):
        self.model, self.run = model, torch.compile(model) if compile_ else model
        self.tokenize, self.amp_dtype, self.fused, self.lr, self.tf32 = tokenize, amp_dtype, fused, lr, tf32
        self.reset()

    def reset(self, state_dict=None):
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, 0.05), lr=self.lr,
                                           betas=(0.9, 0.95), fused=self.fused or None)
        self.scaler = torch.amp.GradScaler(next(self.model.parameters()).device.type,
                                           enabled=self.amp_dtype == torch.float16)

    def __call__(self, imgs_u8, noise, tokens=None):
        torch.backends.cudnn.allow_tf32 = self.tf32
        imgs = normalize(imgs_u8)
        if tokens is None:
            tokens = self.tokenize(imgs)
        loss = forward_backward(self.run, imgs, tokens, noise, 0.75, self.amp_dtype, self.scaler)
        optimizer_step(self.optimizer, self.scaler)
        return loss


class ReleasedTrainer:
    """engine_pretrain.train_one_epoch as released, over `steps` of our batches."""

    def __init__(self, model, lr, tiny):
        self.engine = __import__("engine_pretrain")
        self.misc = __import__("util.misc", fromlist=["misc"])
        self.model, self.lr = model, lr
        for n, p in model.named_parameters():  # main_pretrain.py freezes the VQGAN
            if "vae" in n:
                p.requires_grad = False
        self.args = argparse.Namespace(accum_iter=1, mask_ratio=0.75, lr=lr, min_lr=0.0,
                                       warmup_epochs=0, epochs=1000)
        self.tiny = tiny
        self.reset()

    def reset(self, state_dict=None):
        import timm.optim

        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        # main_pretrain.py: optim_factory.add_weight_decay (renamed param_groups_weight_decay)
        groups = timm.optim.param_groups_weight_decay(self.model, 0.05)
        self.optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.95))
        with warnings_quiet():
            self.loss_scaler = self.misc.NativeScalerWithGradNormCount()

    def run(self, batches, epoch=0):
        """train_one_epoch over `batches` (normalised float images on the device)."""
        loader = [(b, 0) for b in batches]   # (samples, label): visual_tokens = samples, as released
        with contextlib.redirect_stdout(io.StringIO()), warnings_quiet(), cpu_cuda_shim(self.tiny):
            return self.engine.train_one_epoch(self.model, loader, self.optimizer, batches[0].device,
                                               epoch, self.loss_scaler, log_writer=None, args=self.args,
                                               epoch_size=len(loader))


@contextlib.contextmanager
def warnings_quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.cuda.amp.* deprecation, autocast on CPU
        yield


@contextlib.contextmanager
def cpu_cuda_shim(active):
    """On a CPU-only run, the released step's torch.cuda.synchronize() is a no-op."""
    if not active or torch.cuda.is_available():
        yield
        return
    saved = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        yield
    finally:
        torch.cuda.synchronize = saved


def count_flops(model, tokenize, imgs_u8, noise) -> tuple[float, float]:
    """FLOPs per image of one eager step (tokenizer fwd + MAE fwd/bwd), and of the tokenizer."""
    with FlopCounterMode(display=False) as c_tok:
        tokens = tokenize(normalize(imgs_u8))
    with FlopCounterMode(display=False) as c_all:
        loss, _, _ = model(normalize(imgs_u8), 0.75, noise=noise, targets=tokens)
        loss.backward()
    model.zero_grad(set_to_none=True)
    n = imgs_u8.shape[0]
    return (c_all.get_total_flops() + c_tok.get_total_flops()) / n, c_tok.get_total_flops() / n


@torch.no_grad()
def held_out_loss(model, batches, noises, tokens) -> float:
    """Eager fp32 loss of `model` on batches it never trained on, against exact targets."""
    torch.backends.cudnn.allow_tf32 = False
    losses = [model(normalize(b), 0.75, noise=n, targets=t)[0] for b, n, t in zip(batches, noises, tokens)]
    return torch.stack(losses).mean().item()


def summary(img_s: list[float], peak: float, batch: int, warm_s: float, flops_per_img: float,
            peak_tflops: float) -> dict:
    med = statistics.median(img_s)
    return {"img_s": round(med, 2), "img_s_min": round(min(img_s), 2), "img_s_max": round(max(img_s), 2),
            "img_s_runs": [round(x, 2) for x in img_s], "batch": batch,
            "peak_memory_gib": round(peak, 2), "warmup_s": round(warm_s, 1),
            "mfu_percent": round(100 * flops_per_img * med / (peak_tflops * 1e12), 2)}


def main(argv=None) -> int:
    args = get_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    on_gpu = device.type == "cuda"
    if args.tiny:
        args.batch, args.fast_batch = min(args.batch, 4), min(args.fast_batch, 8)
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
        args.repeats, args.curve_steps = min(args.repeats, 2), min(args.curve_steps, 4)
    fast = args.compile if args.compile is not None else on_gpu
    size = 64 if args.tiny else 224
    sizes = TINY_MAE if args.tiny else arch_sizes(args.arch)
    vq_kwargs = TINY_VQGAN if args.tiny else REAL_VQGAN
    torch.backends.cuda.matmul.allow_tf32 = False  # torch's default; fp32 rows must be real fp32
    torch.backends.cudnn.benchmark = on_gpu
    report = Report(args.out)
    report.save(device=torch.cuda.get_device_name() if on_gpu else "cpu", torch=torch.__version__,
                model="tiny" if args.tiny else args.arch, image_size=size, batch=args.batch,
                fast_batch=args.fast_batch, compiled=fast, lr=args.lr,
                timing=f"CUDA events, {args.steps} steps x {args.repeats} interleaved repeats"
                       if on_gpu else f"wall clock, {args.steps} steps x {args.repeats} repeats")
    print(f"device: {report['device']}; torch {torch.__version__}; {report['model']}, {size} px", flush=True)

    vqgan = random_vqgan(vq_kwargs, args.seed).to(device)
    torch.manual_seed(args.seed)
    init = build(sizes, vqgan, img_size=size).to(device)
    state = copy.deepcopy(init.state_dict())
    L = init.num_patches
    n_batches = 2 if args.tiny else 4
    imgs = smooth_images((n_batches + 2) * args.fast_batch, size, args.seed, device)
    *batches, held_a, held_b = list(imgs.split(args.fast_batch))
    small = [b[:args.batch] for b in batches]
    noises = [masking_noise(args.fast_batch, L, args.seed, 1, i, device) for i in range(n_batches)]
    small_noises = [n[:args.batch] for n in noises]
    fp32_tokenize = make_tokenizer(vqgan, device, "fp32")
    tok32 = [fp32_tokenize(normalize(b)) for b in batches]

    reason = None if not args.no_released else "--no-released"
    reason = reason or rel.missing_reason()
    released = None
    if reason is None:
        modules = rel.import_released(vq_kwargs)
        released = rel.released_model(modules, sizes, size, state).to(device)

    # -- agreement: first-step loss, same weights, batch and noise -----------------------------
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        torch.manual_seed(1234)
        noise = torch.rand(args.batch, L, device=device)
        cvf_loss = init(normalize(small[0]), 0.75, noise=noise, targets=tok32[0][:args.batch])[0].item()
        agreement = {"cvf_fp32_first_loss": cvf_loss}
        if released is not None:
            released.eval()
            torch.manual_seed(1234)  # random_masking's torch.rand(N, L) is the first draw
            x = normalize(small[0])
            ref_loss = released(x, x, mask_ratio=0.75)[0]["mae"].item()
            agreement |= {"released_fp32_first_loss": ref_loss, "first_loss_abs_diff": abs(cvf_loss - ref_loss)}
            released.train()
    report.save(agreement=agreement)
    print("first-step loss: " + ", ".join(f"{k} {v:.6f}" for k, v in agreement.items()), flush=True)

    # -- configurations ------------------------------------------------------------------------
    flops, tok_flops = count_flops(copy.deepcopy(init), fp32_tokenize, small[0][:2], small_noises[0][:2])
    fast_vqgan = copy.deepcopy(vqgan)
    fast_tokenize = make_tokenizer(fast_vqgan, device, "bf16", channels_last=True, compile_=fast)
    fp32_step = CvfStep(copy.deepcopy(init), fp32_tokenize, None, fused=False, compile_=False,
                        lr=args.lr, tf32=False)
    fast_step = CvfStep(copy.deepcopy(init), fast_tokenize, torch.bfloat16, fused=on_gpu, compile_=fast,
                        lr=args.lr, tf32=True)

    def cvf_runner(step, bs, tokens):
        def run(n):
            for i in range(n):
                j = i % n_batches
                step(batches[j][:bs], noises[j][:bs], tokens[j][:bs] if tokens else None)
        return run

    configs = {}  # name -> (run(n_steps), batch, flops per image)
    if released is not None:
        trainer = ReleasedTrainer(released, args.lr, args.tiny)
        normed = [normalize(b) for b in small]
        configs["released"] = (lambda n: trainer.run([normed[i % n_batches] for i in range(n)]),
                               args.batch, flops)
    configs["cvf_fp32"] = (cvf_runner(fp32_step, args.batch, None), args.batch, flops)
    configs["cvf_fast_onthefly"] = (cvf_runner(fast_step, args.fast_batch, None), args.fast_batch, flops)
    configs["cvf_fast_cached"] = (cvf_runner(fast_step, args.fast_batch, tok32), args.fast_batch,
                                  flops - tok_flops)
    warm, runs, peaks = {}, {n: [] for n in configs}, {n: 0.0 for n in configs}
    for name, (run, _, _) in configs.items():
        warm[name] = timed(lambda: run(args.warmup), device)
        print(f"warm-up {name}: {warm[name]:.1f} s", flush=True)
    report.save(warmup_s={k: round(v, 1) for k, v in warm.items()})
    print(f"{'configuration':<20} {'img/s (median, min-max)':>30} {'peak GiB':>9} {'MFU':>7}")
    for _ in range(args.repeats):
        for name, (run, bs, _) in configs.items():
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            runs[name].append(args.steps * bs / timed(lambda: run(args.steps), device))
            peaks[name] = max(peaks[name], peak_memory_gib(device))
        rows = {name: summary(runs[name], peaks[name], bs, warm[name], f, args.peak_tflops)
                for name, (_, bs, f) in configs.items()}
        report.save(rows=rows)
    for name, r in rows.items():
        print(f"{name:<20} {r['img_s']:>12.1f} ({r['img_s_min']:.1f}-{r['img_s_max']:.1f}) "
              f"{r['peak_memory_gib']:>9.2f} {r['mfu_percent']:>6.2f}%", flush=True)
    if "released" in rows:
        ratios = {f"{k}_vs_released": round(rows[k]["img_s"] / rows["released"]["img_s"], 3)
                  for k in rows if k != "released"}
        report.save(ratios=ratios)
        print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()), flush=True)
    if not on_gpu:
        print("(CPU: these speeds say nothing about a GPU)", flush=True)

    # -- agreement: tokens, and held-out loss after the same steps --------------------------------
    tok16 = [fast_tokenize(normalize(b)) for b in batches]
    agree = torch.cat([(a == b).float().flatten() for a, b in zip(tok32, tok16)]).mean().item()
    held_noise = [masking_noise(args.fast_batch, L, args.seed, 2, i, device) for i in range(2)]
    held_tokens = [fp32_tokenize(normalize(b)) for b in (held_a, held_b)]
    curves, final = {}, {}
    for name, step, tokens in (("cvf_fp32", fp32_step, None), ("cvf_fast_onthefly", fast_step, None),
                               ("cvf_fast_cached", fast_step, tok32)):
        step.reset(state)
        curves[name] = [step(batches[i % n_batches], noises[i % n_batches],
                             tokens[i % n_batches] if tokens else None).item()
                        for i in range(args.curve_steps)]
        final[name] = held_out_loss(step.model, (held_a, held_b), held_noise, held_tokens)
        report.save(curves=curves, held_out_loss=final)
    gap = {k: final[k] - final["cvf_fp32"] for k in final if k != "cvf_fp32"}
    report.save(bf16_tokenizer_agreement=agree, held_out_loss_gap=gap,
                curve=f"{args.curve_steps} steps of batch {args.fast_batch} at lr {args.lr}, "
                      f"held-out: {2 * args.fast_batch} images, eager fp32, fp32-tokenizer targets")
    print(f"bf16 channels-last tokenizer picks the fp32 token for {100 * agree:.2f}% of patches", flush=True)
    print(f"held-out loss after {args.curve_steps} steps: "
          + ", ".join(f"{k} {v:.4f}" for k, v in final.items())
          + "; gap vs fp32: " + ", ".join(f"{k} {v:+.4f}" for k, v in gap.items()), flush=True)
    if any(not math.isfinite(v) for v in final.values()):
        print("error: a run's held-out loss is not finite", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
