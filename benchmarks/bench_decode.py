"""Sequential decoding of the VQGAN transformer (model.vqgan_gpt): hidden codes per second with
the key-value cache (one transformer step per hidden code) against the plain loop (a full
forward of the whole prefix per hidden code), in one run on the same weights, same prompts.

The task is the evaluation's: a 2x2 canvas whose bottom-right quadrant of codes is hidden (49 of
196 at 224 px, f16), decoded greedily in raster order. Both ways must give the same codes; the
run says so. Random weights: speed does not depend on them.

    .venv/bin/python benchmarks/bench_decode.py                       # 8 x 512 GPT, CPU
    .venv/bin/python benchmarks/bench_decode.py --preset base         # GPT-base size (12 x 768)
    .venv/bin/python benchmarks/bench_decode.py --preset cin --device cuda --batch 1 16
    .venv/bin/python benchmarks/bench_decode.py --preset tiny         # seconds, for a smoke test
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.prompting import quadrant_mask  # noqa: E402
from model.vqgan import VQModel  # noqa: E402
from model.vqgan_gpt import GPT, VqganTransformer  # noqa: E402

PRESETS = {   # transformer sizes; vocabulary of the f16 VQGAN it decodes
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, vocab_size=1024),
    "small": dict(n_layer=8, n_head=8, n_embd=512, vocab_size=1024),
    "base": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=1024),
    # taming's ImageNet class-conditional transformer (cin_transformer)
    "cin": dict(n_layer=48, n_head=24, n_embd=1536, vocab_size=16384),
}
# A stand-in first stage: only its downsampling factor matters here (codes are given).
TINY_FIRST_STAGE = {"ddconfig": {"double_z": False, "z_channels": 32, "resolution": 256, "in_channels": 3,
                                 "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1,
                                 "attn_resolutions": [], "dropout": 0.0}, "n_embed": 1024, "embed_dim": 8}


def build(preset: str, size: int, device) -> VqganTransformer:
    sizes = PRESETS[preset]
    torch.manual_seed(0)
    first = VQModel(**{**TINY_FIRST_STAGE, "n_embed": sizes["vocab_size"]})
    gpt = GPT(block_size=256, **sizes)
    return VqganTransformer(first, gpt, img_size=size).to(device).eval()


def timed(fn, device, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()                                   # warm-up (allocations, kernels)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="transformer size")
    p.add_argument("--size", type=int, default=224, help="canvas side (f16: (size/16)^2 codes)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="canvases decoded together")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="autocast dtype")
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                   help="CPU threads to run with, each in turn (a single decode step is tiny work: on a "
                        "busy machine one thread can be far faster than several)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per case (the best is kept)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    model = build(args.preset, args.size, device)
    grid = args.size // 16
    mask = quadrant_mask(args.size, 16).to(device)
    hidden = int(mask.sum())
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    rows = []
    print(f"VQGAN transformer '{args.preset}' ({sum(p.numel() for p in model.transformer.parameters()) / 1e6:.0f}M "
          f"params), {grid}x{grid} codes, {hidden} hidden, {device}, {args.dtype}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch:
            tokens = torch.randint(0, PRESETS[args.preset]["vocab_size"], (batch, grid * grid),
                                   generator=torch.Generator().manual_seed(batch)).to(device)

            def decode(use_cache):
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    return model.inpaint_tokens(tokens, mask, use_cache=use_cache)

            cached_s, cached = timed(lambda: decode(True), device, args.repeats)
            plain_s, plain = timed(lambda: decode(False), device, args.repeats)
            row = {"preset": args.preset, "batch": batch, "hidden_codes": hidden, "device": str(device),
                   "dtype": args.dtype, "threads": threads,
                   "cached_codes_per_s": batch * hidden / cached_s,
                   "plain_codes_per_s": batch * hidden / plain_s,
                   "speedup": plain_s / cached_s, "same_codes": bool(torch.equal(cached, plain))}
            rows.append(row)
            print(f"{threads} thread(s), batch {batch:3d}: cached {row['cached_codes_per_s']:9.1f} codes/s, "
                  f"plain loop {row['plain_codes_per_s']:9.1f} codes/s, x{row['speedup']:.1f}, "
                  f"same codes: {row['same_codes']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["same_codes"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
