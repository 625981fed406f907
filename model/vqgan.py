"""The VQGAN tokenizer of MAE-VQGAN: taming-transformers' `VQModel`, inference only.

Architecture and state_dict keys are those of taming-transformers (CompVis, `VQModel` with
`Encoder`/`Decoder` from `diffusionmodules/model.py` and `VectorQuantizer2(legacy=True)`), so
taming's `last.ckpt` loads with `strict=True` (minus its `loss.*` discriminator/LPIPS keys).
The released `vqgan_imagenet_f16_1024` config: ch 128, ch_mult [1,1,2,2,4], num_res_blocks 2,
attn_resolutions [16], z_channels 256, resolution 256, embed_dim 256, n_embed 1024.

Two conventions matter for MAE-VQGAN:
* Attention placement follows the *configured* resolution, not the input size (the real model
  is configured for 256 and fed 224 crops).
* The MAE consumes ImageNet-normalised images; `tokenize` maps them back to the VQGAN's
  [-1, 1] range first, and `decode_tokens` returns images in [0, 1].

Attention runs fused (`scaled_dot_product_attention`) unless `exact_attention()` is on: then
it is written out as the released code computes it (taming's bmm/softmax here, timm 0.3.2's
`(q @ k^T) * scale` in the MAE), so evaluation reproduces the release's pixels bit for bit.
"""
from __future__ import annotations

import contextlib
import math
import threading
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_mean_std(dtype=torch.float32, device=None, shape=(3, 1, 1)):
    """ImageNet mean and std as tensors of `shape` (default: broadcast over [B,]3,H,W)."""
    return (torch.tensor(IMAGENET_MEAN, dtype=dtype, device=device).view(shape),
            torch.tensor(IMAGENET_STD, dtype=dtype, device=device).view(shape))


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:  # taming's default 1x1 "network-in-network" shortcut
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class _Exact(threading.local):
    on = False


EXACT = _Exact()


@contextlib.contextmanager
def exact_attention(on: bool = True):
    """Within the block (this thread), attention is computed op for op as released."""
    saved, EXACT.on = EXACT.on, on
    try:
        yield
    finally:
        EXACT.on = saved


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with 1x1-conv projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        if EXACT.on:     # taming's own ops, in its order
            q, k, v = self.q(y).reshape(b, c, h * w).permute(0, 2, 1), self.k(y).reshape(b, c, h * w), \
                self.v(y).reshape(b, c, h * w)
            weights = F.softmax(torch.bmm(q, k) * (int(c) ** (-0.5)), dim=2)
            y = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, h, w)
            return x + self.proj_out(y)
        # [B, C, H, W] -> [B, 1 head, HW, C]; SDPA scales by C**-0.5 like taming does.
        q, k, v = (t(y).reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as taming


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, *, ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution,
                 z_channels, double_z=False, dropout=0.0, **ignored):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_ch_mult = (1,) + tuple(ch_mult)
        res = resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            down = nn.Module()
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[level], ch * mult
            for _ in range(num_res_blocks):
                down.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    down.attn.append(AttnBlock(block_in))
            if level != len(ch_mult) - 1:
                down.downsample = Downsample(block_in)
                res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for down in self.down:
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn) > 0:
                    h = down.attn[i](h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, *, ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, resolution,
                 z_channels, dropout=0.0, **ignored):
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)
        ups = []  # built from the lowest resolution up; stored indexed by level like taming
        for level in reversed(range(len(ch_mult))):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                up.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    up.attn.append(AttnBlock(block_in))
            if level != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for up in reversed(self.up):
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn) > 0:
                    h = up.attn[i](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """taming's VectorQuantizer2(beta=0.25, legacy=True, remap=None): nearest code by L2."""

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.embedding = nn.Embedding(n_e, e_dim)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] latents -> [B*h*w] code ids, positions row-major."""
        z = z.permute(0, 2, 3, 1).reshape(-1, self.e_dim).float()
        e = self.embedding.weight.float()
        # In fp32 even under autocast (a bf16 distance would flip many near ties), with the same
        # expansion and evaluation order as taming, so ties break identically.
        with torch.autocast(z.device.type, enabled=False):
            d = z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * z @ e.t()
        return d.argmin(1)

    def forward(self, z):
        idx = self.indices(z)
        z_q = self.get_codebook_entry(idx, (z.shape[0], z.shape[2], z.shape[3], self.e_dim))
        loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()  # straight-through
        return z_q, loss, (None, None, idx)

    def get_codebook_entry(self, indices, shape=None):
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q


class VQModel(nn.Module):
    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int):
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.downsample_factor = 2 ** (len(ddconfig["ch_mult"]) - 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # taming semantics --------------------------------------------------------------------
    def encode(self, x):
        """[-1,1] images -> (z_q, vq loss, (_, _, ids))."""
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, z_q):
        """Quantised latents -> images, unclamped, nominally in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x):
        z_q, qloss, _ = self.encode(x)
        return self.decode(z_q), qloss

    # MAE-VQGAN convenience ---------------------------------------------------------------
    def map_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised -> [-1, 1]; in float64 like the reference's numpy constants."""
        # The constants are float64 from the start (a float32 buffer widened afterwards differs
        # in the last bits, which flips near-tie tokens of the real VQGAN).
        mean, std = imagenet_mean_std(torch.float64, x.device)
        return (2 * (x.double() * std + mean) - 1).to(x.dtype)

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised images [B,3,H,W] -> token ids [B, (H/16)*(W/16)], raster order."""
        z = self.quant_conv(self.encoder(self.map_pixels(x)))
        return self.quantize.indices(z).view(x.shape[0], -1)

    get_codebook_indices = tokenize  # the name the reference uses

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Token ids [B, h*w] (square grid unless `grid` is given) -> images [B,3,H,W] in [0, 1]."""
        b, n = tokens.shape
        h, w = grid if grid is not None else (math.isqrt(n), math.isqrt(n))
        if h * w != n:
            raise ValueError(f"{n} tokens do not form a {h}x{w} grid; pass grid=(h, w)")
        z_q = self.quantize.get_codebook_entry(tokens, (b, h, w, self.quantize.e_dim))
        return (self.decode(z_q).clamp(-1, 1) + 1) / 2


def vqgan_params(config) -> dict:
    """taming's `model.yaml` (path) or its content (dict) -> VQModel kwargs."""
    if isinstance(config, (str, Path)):
        import yaml

        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(
                f"VQGAN config not found: {path}. Put taming-transformers' vqgan_imagenet_f16_1024 "
                "`model.yaml` (configs/model.yaml of the released download) there.")
        try:
            config = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"VQGAN config {path} is not valid YAML: "
                             f"{' '.join(str(e).split())}") from None
    try:
        params = config["model"]["params"] if "model" in config else config
        return {"ddconfig": dict(params["ddconfig"]), "n_embed": int(params["n_embed"]),
                "embed_dim": int(params["embed_dim"])}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"VQGAN config is not taming's model.yaml (model: params: ddconfig, "
                         f"n_embed, embed_dim): {'it is empty' if not config else repr(e)}") from None


def vqgan_state_dict(state: dict) -> dict:
    """Keep the VQModel weights of a taming checkpoint's state_dict (drop `loss.*`)."""
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def load_vqgan(config, ckpt=None) -> VQModel:
    """Build the VQGAN from taming's `model.yaml` (or dict) and load `last.ckpt` if given.

    The model is returned frozen and in eval mode: MAE-VQGAN never trains it.
    """
    from model.checkpoint import load_lightning_checkpoint, mismatches

    vqgan = VQModel(**vqgan_params(config))
    if ckpt is not None:
        ckpt = Path(ckpt)
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"VQGAN weights not found: {ckpt}. Put taming-transformers' vqgan_imagenet_f16_1024 "
                "`last.ckpt` (checkpoints/last.ckpt of the released download) there.")
        state = vqgan_state_dict(load_lightning_checkpoint(ckpt))
        wrong = mismatches(vqgan, state)
        if wrong:
            given = config if isinstance(config, (str, Path)) else "(the given dict)"
            raise ValueError(f"{ckpt} does not fit the VQGAN config {given} ({len(wrong)} keys "
                             f"differ, e.g. {'; '.join(list(wrong.values())[:3])}); pass the "
                             "model.yaml that came with it")
        vqgan.load_state_dict(state, strict=True)
    return vqgan.eval().requires_grad_(False)
