"""BEiT: a ViT that sees every patch, hidden ones replaced by a learned mask token, and predicts
the visual token of each (Bao et al., "BEiT: BERT Pre-Training of Image Transformers").

This is unilm's `VisionTransformerForMaskedImageModeling` (microsoft/unilm, beit/) with its
state_dict keys, so its pre-training checkpoints load with `strict=True`:

* Patch embedding; the embeddings of hidden patches are replaced by `mask_token`; cls token.
* Positions: absolute (`pos_embed`), a relative position bias shared by all blocks
  (`rel_pos_bias`, the public checkpoints), or one per block (`blocks.i.attn.relative_*`).
* Blocks with layer scale (`gamma_1`, `gamma_2`) when trained with it; q and v biases, no k bias.
* `lm_head` gives logits over the visual vocabulary for every patch.

Tokenizers: trained by cvf, BEiT predicts the VQGAN codes MAE-VQGAN predicts (the frozen VQGAN
is the submodule `vae`, as in MAE-VQGAN). unilm's public ImageNet checkpoints predict the codes
of OpenAI's DALL-E dVAE (8192 codes, a 112-px input, factor 8, so one code per 16-px patch of a
224 image): `DallE` below re-implements it and `load_dall_e` reads OpenAI's `encoder.pkl` /
`decoder.pkl` without executing them.

Inputs: `forward` takes images normalised as the model was trained (`input_norm`: "inception",
i.e. [-1, 1], for unilm's checkpoints; "imagenet" for cvf's); `predict_logits`, what the
visual-prompting code calls, takes ImageNet-normalised canvases like every cvf model.

Attention is unilm's op for op on the CPU (its logits to the last bit) and under
`model.vqgan.exact_attention()`; fused (`scaled_dot_product_attention`) on a GPU otherwise.
"""
from __future__ import annotations

import math
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.mae_vqgan import Mlp, PatchEmbed  # the same layers and keys as timm's (fc1/fc2, proj)
from model.vqgan import EXACT, IMAGENET_MEAN, IMAGENET_STD, VQModel, load_vqgan, vqgan_params

ARCHS = {  # unilm's registered pre-training models (modeling_pretrain.py)
    "beit_base_patch16_224_8k_vocab": dict(img_size=224, patch_size=16, embed_dim=768, depth=12,
                                           num_heads=12, vocab_size=8192),
    "beit_large_patch16_224_8k_vocab": dict(img_size=224, patch_size=16, embed_dim=1024, depth=24,
                                            num_heads=16, vocab_size=8192),
}
SIZE_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "vocab_size", "mlp_ratio")
INPUT_NORMS = {"inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


# ----------------------------------------------------------------------------- model

def relative_position_index(grid: tuple[int, int]) -> torch.Tensor:
    """[1+N, 1+N] indices into a table of (2h-1)(2w-1) patch offsets + 3 cls entries
    (cls->patch, patch->cls, cls->cls), N = h*w, as unilm builds it."""
    h, w = grid
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += h - 1
    rel[:, :, 1] += w - 1
    rel[:, :, 0] *= 2 * w - 1
    n, num_distances = h * w, (2 * h - 1) * (2 * w - 1) + 3
    index = torch.zeros(n + 1, n + 1, dtype=rel.dtype)
    index[1:, 1:] = rel.sum(-1)
    index[0, 0:] = num_distances - 3
    index[0:, 0] = num_distances - 2
    index[0, 0] = num_distances - 1
    return index


class RelativePositionBias(nn.Module):
    """A learned bias per head for every (query, key) offset: [heads, 1+N, 1+N]."""

    def __init__(self, grid: tuple[int, int], num_heads: int):
        super().__init__()
        self.grid = grid
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * grid[0] - 1) * (2 * grid[1] - 1) + 3, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(grid))

    def forward(self):
        n = self.grid[0] * self.grid[1] + 1
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous()


class Attention(nn.Module):
    """Multi-head attention with q and v biases (k has none), optionally its own relative bias."""

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int] | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        if grid is not None:  # per-block relative bias, keys as unilm's Attention
            self.window_size = grid
            bias = RelativePositionBias(grid, num_heads)
            self.relative_position_bias_table = bias.relative_position_bias_table
            self.register_buffer("relative_position_index", bias.relative_position_index)
        else:
            self.window_size = None

    def own_bias(self):
        n = self.window_size[0] * self.window_size[1] + 1
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1)

    def forward(self, x, rel_pos_bias=None):
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn_bias = None
        if self.window_size is not None:
            attn_bias = self.own_bias()[None]
        if rel_pos_bias is not None:
            attn_bias = rel_pos_bias[None] if attn_bias is None else attn_bias + rel_pos_bias[None]
        if EXACT.on or not x.is_cuda:     # unilm's ops in its order (on the CPU: its logits exactly)
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if attn_bias is not None:
                attn = attn + attn_bias
            x = attn.softmax(dim=-1) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=None if attn_bias is None
                                               else attn_bias.to(q.dtype))
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm block; with `layer_scale` the two branches are scaled per channel (gamma_1/2)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, layer_scale: float | None = None,
                 grid: tuple[int, int] | None = None, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path
        if layer_scale:
            self.gamma_1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layer_scale * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def branch(self, y, gamma):
        y = y if gamma is None else gamma * y
        if self.training and self.drop_path > 0:   # stochastic depth, per sample
            keep = torch.empty(y.shape[0], 1, 1, device=y.device, dtype=y.dtype).bernoulli_(1 - self.drop_path)
            y = y * keep / (1 - self.drop_path)
        return y

    def forward(self, x, rel_pos_bias=None):
        x = x + self.branch(self.attn(self.norm1(x), rel_pos_bias), self.gamma_1)
        return x + self.branch(self.mlp(self.norm2(x)), self.gamma_2)


class Beit(nn.Module):
    """`positions`: "shared" (one relative bias for all blocks, the public checkpoints),
    "abs" (learned absolute positions) or "block" (a relative bias per block).
    `layer_scale`: initial gamma (unilm's 0.1), or None for blocks without layer scale.
    `vae`: the frozen tokenizer whose codes the model predicts and whose decoder paints them
    (a VQModel or a DallE), or None (a bare model, e.g. for logits only)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, vocab_size: int = 8192, mlp_ratio: float = 4.0, in_chans: int = 3,
                 positions: str = "shared", layer_scale: float | None = 0.1, vae=None,
                 input_norm: str = "imagenet", drop_path: float = 0.0):
        super().__init__()
        if positions not in ("shared", "abs", "block"):
            raise ValueError(f"positions must be shared, abs or block, not {positions!r}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {sorted(INPUT_NORMS)}, not {input_norm!r}")
        self.positions, self.input_norm = positions, input_norm
        self.target = "tokens"
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid = self.patch_embed.patch_shape
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = (nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
                          if positions == "abs" else None)
        self.rel_pos_bias = RelativePositionBias(grid, num_heads) if positions == "shared" else None
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, layer_scale,
                                           grid if positions == "block" else None, rates[i])
                                     for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.lm_head = nn.Linear(embed_dim, vocab_size)
        self.initialize_weights()
        if vae is not None:
            if vae_vocab(vae) != vocab_size:
                raise ValueError(f"the tokenizer has {vae_vocab(vae)} codes, the model predicts {vocab_size}")
            self.vae = vae.eval().requires_grad_(False)

    def initialize_weights(self, std: float = 0.02):
        """unilm's init: truncated normal (+-std) weights, zero biases, the residual outputs of
        block i scaled down by sqrt(2 i)."""
        def trunc(t):
            nn.init.trunc_normal_(t, std=std, a=-std, b=std)

        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                trunc(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for t in (self.cls_token, self.mask_token) + ((self.pos_embed,) if self.pos_embed is not None else ()):
            trunc(t)
        with torch.no_grad():
            for i, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * i))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * i))

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "vae"):
            self.vae.eval()   # frozen tokenizer
        return self

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}     # unilm's, besides biases and 1-D parameters

    def forward_features(self, x, bool_masked_pos):
        x = self.patch_embed(x)
        w = bool_masked_pos.unsqueeze(-1).type_as(x)
        x = x * (1 - w) + self.mask_token.type_as(x) * w   # hidden patches -> the mask token
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).type_as(x), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        rel_pos_bias = self.rel_pos_bias() if self.rel_pos_bias is not None else None
        for block in self.blocks:
            x = block(x, rel_pos_bias)
        return self.norm(x)

    def forward(self, x, bool_masked_pos, return_all_tokens: bool = False):
        """unilm's call: logits [N, L, V] of every patch, or [M, V] of the hidden ones only."""
        x = self.forward_features(x, bool_masked_pos)[:, 1:]
        return self.lm_head(x if return_all_tokens else x[bool_masked_pos.bool()])

    # cvf's inference and training API ---------------------------------------------------
    def from_imagenet_norm(self, imgs):
        """ImageNet-normalised images -> the normalisation the model was trained with."""
        if self.input_norm == "imagenet":
            return imgs
        mean, std = (torch.tensor(v, dtype=imgs.dtype, device=imgs.device).view(3, 1, 1)
                     for v in INPUT_NORMS["imagenet"])
        new_mean, new_std = (torch.tensor(v, dtype=imgs.dtype, device=imgs.device).view(3, 1, 1)
                             for v in INPUT_NORMS[self.input_norm])
        return ((imgs * std + mean) - new_mean) / new_std

    def predict_logits(self, imgs, mask):
        """ImageNet-normalised images, mask [N, L] (1 = hidden) -> logits [N, L, V]."""
        return self(self.from_imagenet_norm(imgs), mask.bool(), return_all_tokens=True)

    def encoder_features(self, imgs):
        """Unmasked features, mean over patches, L2-normalised [N, D] (nearest supports)."""
        hidden = torch.zeros(imgs.shape[0], self.num_patches, dtype=torch.bool, device=imgs.device)
        x = self.forward_features(self.from_imagenet_norm(imgs), hidden)
        return F.normalize(x[:, 1:].float().mean(1), dim=-1)

    def targets(self, imgs):
        """The codes the model predicts, of ImageNet-normalised images: [N, L]."""
        return self.vae.tokenize(imgs)

    def training_loss(self, imgs, bool_masked_pos, targets=None):
        """unilm's loss: cross-entropy over the hidden patches' codes (mean over them)."""
        if targets is None:
            targets = self.targets(imgs)
        mask = bool_masked_pos.bool()
        logits = self(self.from_imagenet_norm(imgs), mask, return_all_tokens=False)
        return F.cross_entropy(logits.float(), targets[mask])


def vae_vocab(vae) -> int:
    return vae.quantize.n_e if isinstance(vae, VQModel) else vae.vocab_size


# ----------------------------------------------------------------------------- block masking

class BlockMasking:
    """unilm's block-wise masking (masking_generator.py): rectangles of at least `min_patches`
    patches and aspect ratio in [min_aspect, 1/min_aspect] are added at random until
    `num_masking_patches` patches are hidden (or no rectangle fits). Draws come from `rng`
    (a `random.Random`), so a mask is a pure function of its seed."""

    def __init__(self, grid: int, num_masking_patches: int, min_patches: int = 16,
                 max_patches: int | None = None, min_aspect: float = 0.3, max_aspect: float | None = None):
        self.height = self.width = grid
        self.num_masking_patches = num_masking_patches
        self.min_patches = min_patches
        self.max_patches = num_masking_patches if max_patches is None else max_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def _add_block(self, mask, max_patches, rng):
        delta = 0
        for _ in range(10):
            area = rng.uniform(self.min_patches, max_patches)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w < self.width and h < self.height:
                top, left = rng.randint(0, self.height - h), rng.randint(0, self.width - w)
                already = mask[top:top + h, left:left + w].sum()
                if 0 < h * w - already <= max_patches:
                    delta += int(h * w - already)
                    mask[top:top + h, left:left + w] = 1
                if delta > 0:
                    break
        return delta

    def __call__(self, rng: random.Random) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=np.int64)
        count = 0
        while count < self.num_masking_patches:
            delta = self._add_block(mask, min(self.num_masking_patches - count, self.max_patches), rng)
            if delta == 0:
                break
            count += delta
        return mask


def block_masks(n: int, grid: int, num_masking_patches: int, min_patches: int, seed: int, rank: int,
                micro_step: int) -> torch.Tensor:
    """The BEiT masks of one micro-batch [n, grid*grid] bool: a pure function of (seed, rank, step)."""
    rng = random.Random(int(np.random.SeedSequence([seed, rank, micro_step, 1]).generate_state(1)[0]))
    gen = BlockMasking(grid, num_masking_patches, min_patches)
    return torch.from_numpy(np.stack([gen(rng).reshape(-1) for _ in range(n)])).bool()


# ----------------------------------------------------------------------------- DALL-E dVAE

LOGIT_LAPLACE_EPS = 0.1


class DalleConv(nn.Module):
    """DALL-E's Conv2d: parameters `w`, `b`, 'same' padding."""

    def __init__(self, n_in: int, n_out: int, kw: int):
        super().__init__()
        self.w = nn.Parameter(torch.empty(n_out, n_in, kw, kw).normal_(std=1 / math.sqrt(n_in * kw ** 2)))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return F.conv2d(x.float(), self.w, self.b, padding=(self.w.shape[-1] - 1) // 2)


class DalleBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int]):
        super().__init__()
        hid = n_out // 4
        self.post_gain = 1 / n_layers ** 2
        self.id_path = DalleConv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        sizes = [(n_in, hid), (hid, hid), (hid, hid), (hid, n_out)]
        self.res_path = nn.Sequential(OrderedDict(
            item for i, ((a, b), k) in enumerate(zip(sizes, kernels), start=1)
            for item in ((f"relu_{i}", nn.ReLU()), (f"conv_{i}", DalleConv(a, b, k)))))

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DalleEncoder(nn.Module):
    """OpenAI's dVAE encoder: 4 groups of residual blocks (3 max-pools, f=8) -> code logits."""

    def __init__(self, n_hid: int = 256, n_blk_per_group: int = 2, input_channels: int = 3,
                 vocab_size: int = 8192):
        super().__init__()
        self.vocab_size = vocab_size
        n_layers, widths = 4 * n_blk_per_group, [n_hid, n_hid, 2 * n_hid, 4 * n_hid, 8 * n_hid]
        groups = [("input", DalleConv(input_channels, n_hid, 7))]
        for g in range(4):
            items = [(f"block_{i + 1}", DalleBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                                                   n_layers, (3, 3, 3, 1))) for i in range(n_blk_per_group)]
            if g < 3:
                items.append(("pool", nn.MaxPool2d(kernel_size=2)))
            groups.append((f"group_{g + 1}", nn.Sequential(OrderedDict(items))))
        groups.append(("output", nn.Sequential(OrderedDict(
            [("relu", nn.ReLU()), ("conv", DalleConv(8 * n_hid, vocab_size, 1))]))))
        self.blocks = nn.Sequential(OrderedDict(groups))

    def forward(self, x):
        return self.blocks(x.float())


class DalleDecoder(nn.Module):
    """OpenAI's dVAE decoder: one-hot codes -> 6 channels (logit-Laplace means and scales)."""

    def __init__(self, n_init: int = 128, n_hid: int = 256, n_blk_per_group: int = 2,
                 output_channels: int = 3, vocab_size: int = 8192):
        super().__init__()
        self.vocab_size = vocab_size
        n_layers = 4 * n_blk_per_group
        widths = [n_init, 8 * n_hid, 4 * n_hid, 2 * n_hid, n_hid]
        groups = [("input", DalleConv(vocab_size, n_init, 1))]
        for g in range(4):
            items = [(f"block_{i + 1}", DalleBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                                                   n_layers, (1, 3, 3, 3))) for i in range(n_blk_per_group)]
            if g < 3:
                items.append(("upsample", nn.Upsample(scale_factor=2, mode="nearest")))
            groups.append((f"group_{g + 1}", nn.Sequential(OrderedDict(items))))
        groups.append(("output", nn.Sequential(OrderedDict(
            [("relu", nn.ReLU()), ("conv", DalleConv(n_hid, 2 * output_channels, 1))]))))
        self.blocks = nn.Sequential(OrderedDict(groups))

    def forward(self, z):
        return self.blocks(z.float())


class DallE(nn.Module):
    """The dVAE as BEiT uses it: codes of the image at `token_size` px (112 for a 224 model:
    one code per 16-px patch), decoded back to [0, 1] images."""

    def __init__(self, encoder: DalleEncoder | None, decoder: DalleDecoder | None, token_size: int = 112):
        super().__init__()
        self.encoder, self.decoder, self.token_size = encoder, decoder, token_size
        self.vocab_size = (encoder or decoder).vocab_size
        self.downsample_factor = 8

    @torch.no_grad()
    def tokenize(self, imgs):
        """ImageNet-normalised images -> codes [N, (token_size/8)^2] (unilm resizes the crop to
        the second input size with Lanczos; bicubic with antialiasing here)."""
        if self.encoder is None:
            raise ValueError("tokenizing needs the DALL-E encoder (encoder.pkl)")
        mean, std = (torch.tensor(v, device=imgs.device).view(3, 1, 1) for v in INPUT_NORMS["imagenet"])
        x = (imgs.float() * std + mean).clamp(0, 1)
        if x.shape[-1] != self.token_size:
            x = F.interpolate(x, size=(self.token_size, self.token_size), mode="bicubic",
                              antialias=True, align_corners=False).clamp(0, 1)
        x = (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS     # DALL-E's map_pixels
        return self.encoder(x).argmax(1).flatten(1)

    @torch.no_grad()
    def decode_tokens(self, tokens, grid=None):
        """Codes [N, h*w] -> images [N, 3, 8h, 8w] in [0, 1] (DALL-E's unmap_pixels of the means)."""
        if self.decoder is None:
            raise ValueError("decoding needs the DALL-E decoder (decoder.pkl)")
        n, length = tokens.shape
        h, w = grid if grid is not None else (math.isqrt(length),) * 2
        z = F.one_hot(tokens.view(n, h, w), self.vocab_size).permute(0, 3, 1, 2).float()
        x = torch.sigmoid(self.decoder(z)[:, :3])
        return ((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS)).clamp(0, 1)


def _modules_state(obj, prefix: str, out: dict) -> None:
    """The parameters and buffers of a module tree unpickled as inert placeholders."""
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        return
    for key in ("_parameters", "_buffers"):
        for name, value in (state.get(key) or {}).items():
            if isinstance(value, torch.Tensor):
                out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        _modules_state(child, prefix + name + ".", out)


def read_dall_e_module(path, kind: str):
    """One of OpenAI's `encoder.pkl` / `decoder.pkl` (whole pickled modules) as cvf's own
    DalleEncoder / DalleDecoder. Nothing in the file is executed: every class it names (dall_e's,
    torch.nn's) is read as an inert placeholder; only its tensors and sizes are kept."""
    from model.checkpoint import load_with_placeholders

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DALL-E {kind} not found: {path}")
    obj = load_with_placeholders(path, prefixes=("dall_e.", "torch.nn.modules."))
    state = getattr(obj, "state", None)
    cls_name = type(obj).__qualname__
    want = "dall_e.encoder.Encoder" if kind == "encoder" else "dall_e.decoder.Decoder"
    if cls_name != want or not isinstance(state, dict):
        raise ValueError(f"{path} is not OpenAI's DALL-E {kind} (it holds {cls_name}, expected {want})")
    weights: dict = {}
    _modules_state(obj, "", weights)
    sizes = {k: int(state[k]) for k in ("n_hid", "n_blk_per_group", "vocab_size", "n_init",
                                        "input_channels", "output_channels") if k in state}
    module = DalleEncoder(**{k: v for k, v in sizes.items() if k != "n_init" and k != "output_channels"}) \
        if kind == "encoder" else DalleDecoder(**{k: v for k, v in sizes.items() if k != "input_channels"})
    from model.checkpoint import mismatches

    wrong = mismatches(module, weights)
    if wrong:
        raise ValueError(f"{path}: the DALL-E {kind}'s weights do not fit its sizes {sizes} "
                         f"({'; '.join(list(wrong.values())[:3])})")
    module.load_state_dict(weights)
    return module.eval().requires_grad_(False)


def load_dall_e(folder=None, encoder=None, decoder=None, token_size: int = 112) -> DallE:
    """The DALL-E dVAE from OpenAI's files: `folder` holding encoder.pkl and/or decoder.pkl
    (unilm's --discrete_vae_weight_path), or the two paths. Evaluation needs only the decoder,
    training only the encoder."""
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"DALL-E folder not found: {folder} (it holds OpenAI's encoder.pkl "
                                    "and decoder.pkl)")
        encoder = encoder or (folder / "encoder.pkl" if (folder / "encoder.pkl").is_file() else None)
        decoder = decoder or (folder / "decoder.pkl" if (folder / "decoder.pkl").is_file() else None)
        if encoder is None and decoder is None:
            raise FileNotFoundError(f"{folder} holds neither encoder.pkl nor decoder.pkl (OpenAI's DALL-E dVAE)")
    enc = read_dall_e_module(encoder, "encoder") if encoder is not None else None
    dec = read_dall_e_module(decoder, "decoder") if decoder is not None else None
    if enc is None and dec is None:
        raise ValueError("pass the DALL-E folder, or the encoder and/or decoder file")
    return DallE(enc, dec, token_size).eval()


# ----------------------------------------------------------------------------- checkpoints

def is_beit_state(state: dict) -> bool:
    return "lm_head.weight" in state and "mask_token" in state and "decoder_pred.weight" not in state


def arch_sizes(arch) -> dict:
    if isinstance(arch, dict):
        return {k: arch[k] for k in SIZE_KEYS if k in arch}
    if arch not in ARCHS:
        raise ValueError(f"unknown BEiT arch {arch!r}; choose from {sorted(ARCHS)} or pass a dict of "
                         f"sizes ({', '.join(SIZE_KEYS[:-1])})")
    return dict(ARCHS[arch])


def sizes_from_state(state: dict, recorded: dict) -> dict:
    """The sizes the tensors hold (width, depth, patch, grid, vocabulary; heads where a relative
    bias table shows them) and the ones the checkpoint's args record (unilm's `model` name,
    `input_size`; cvf's `num_heads`), else ViT's 64 channels per head."""
    sizes = {}
    name = recorded.get("model")
    if isinstance(name, str) and name in ARCHS:
        sizes.update(ARCHS[name])
    dim = state["cls_token"].shape[-1]
    proj = state["patch_embed.proj.weight"]
    sizes.update(embed_dim=dim, patch_size=proj.shape[-1], in_chans=proj.shape[1],
                 depth=len({k.split(".")[1] for k in state if k.startswith("blocks.")}),
                 vocab_size=state["lm_head.weight"].shape[0],
                 mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim)
    table = state.get("rel_pos_bias.relative_position_bias_table",
                      state.get("blocks.0.attn.relative_position_bias_table"))
    if table is not None:
        sizes["num_heads"] = table.shape[1]
        grid = (math.isqrt(table.shape[0] - 3) + 1) // 2
    elif "pos_embed" in state:
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    else:
        grid = None
    if grid:
        sizes["img_size"] = grid * sizes["patch_size"]
    elif recorded.get("input_size"):
        sizes["img_size"] = int(recorded["input_size"])
    if "num_heads" not in sizes:
        sizes["num_heads"] = int(recorded.get("num_heads") or max(1, dim // 64))
    return sizes


def positions_of(state: dict) -> str:
    if "rel_pos_bias.relative_position_bias_table" in state:
        return "shared"
    if "blocks.0.attn.relative_position_bias_table" in state:
        return "block"
    return "abs"


def load_checkpoint(path, arch=None, vae=None, vqgan_config=None, vqgan_ckpt=None, dall_e=None,
                    map_location="cpu") -> Beit:
    """A BEiT pre-training checkpoint (unilm's `{"model": state_dict, "args", ...}` or
    `{"module": ...}`, cvf's, or a bare state_dict) -> an eval-mode Beit.

    Sizes: `arch` (a name of ARCHS or a dict of img_size, patch_size, embed_dim, depth,
    num_heads, vocab_size), else what the checkpoint's args and tensors hold. Positions
    (shared relative bias, per-block bias, absolute) and layer scale follow the keys present.
    Tokenizer (to inpaint, not needed for logits): `vae` (a module), the `vae.*` weights of a cvf
    checkpoint with `vqgan_config`, taming's `vqgan_config` + `vqgan_ckpt`, or `dall_e` (folder of
    OpenAI's encoder.pkl/decoder.pkl) for unilm's public checkpoints. Loading is weights-only
    (argparse.Namespace allowed for `args`); a checkpoint that does not fit is a ValueError
    naming what differs."""
    from model.checkpoint import load_safely, mismatches

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = load_safely(path, map_location=map_location)
    state = ckpt
    if isinstance(ckpt, dict):   # unilm reads "model", or "module" (DeepSpeed's checkpoints)
        state = ckpt.get("model", ckpt.get("module", ckpt))
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} holds no state_dict (expected {{'model': state_dict}} or a state_dict)")
    for wrapper in ("module.", "_orig_mod."):
        if all(k.startswith(wrapper) for k in state):
            state = {k[len(wrapper):]: v for k, v in state.items()}
    if not is_beit_state(state):
        raise ValueError(f"{path} is not a BEiT checkpoint (no lm_head / mask_token weights)")
    recorded = ckpt.get("args") if isinstance(ckpt, dict) else None
    recorded = recorded if isinstance(recorded, dict) else vars(recorded) if recorded is not None else {}
    sizes = sizes_from_state(state, recorded)
    if arch is not None:
        sizes.update(arch_sizes(arch))
    has_vae = any(k.startswith("vae.") for k in state)
    if vae is None and has_vae:
        if vqgan_config is None:
            raise ValueError(f"{path} holds its VQGAN tokenizer (vae.*): pass its taming model.yaml "
                             "(vqgan_config, --vqgan-config)")
        vae = VQModel(**vqgan_params(vqgan_config))
    elif vae is None and vqgan_config is not None and vqgan_ckpt is not None:
        vae = load_vqgan(vqgan_config, vqgan_ckpt)
    elif vae is None and dall_e is not None:
        vae = load_dall_e(dall_e, token_size=sizes.get("img_size", 224) // 2)
    layer_scale = 0.1 if "blocks.0.gamma_1" in state else None
    # unilm normalises inputs to [-1, 1] unless told ImageNet's; cvf's BEiT (`model.train --model
    # beit`, which holds its VQGAN as vae.*) takes ImageNet-normalised images like every cvf model
    cvf = recorded.get("model") == "beit" or has_vae
    input_norm = recorded.get("input_norm") or (
        "imagenet" if cvf or recorded.get("imagenet_default_mean_and_std") else "inception")
    model = Beit(**sizes, positions=positions_of(state), layer_scale=layer_scale, vae=None,
                 input_norm=input_norm)
    wrong = mismatches(model, {k: v for k, v in state.items() if not k.startswith("vae.")})
    if wrong:
        name = arch if isinstance(arch, str) else str(sizes)
        raise ValueError(f"{path} does not fit BEiT {name} ({len(wrong)} keys differ, e.g. "
                         f"{'; '.join(list(wrong.values())[:3])})")
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("vae.")}, strict=True)
    if vae is not None:
        if vae_vocab(vae) != sizes["vocab_size"]:
            raise ValueError(f"the tokenizer has {vae_vocab(vae)} codes, {path} predicts {sizes['vocab_size']}")
        model.vae = vae.eval().requires_grad_(False)
        if has_vae:
            vae_state = {k[4:]: v for k, v in state.items() if k.startswith("vae.")}
            wrong = mismatches(model.vae, vae_state)
            if wrong:
                raise ValueError(f"the VQGAN weights in {path} do not fit --vqgan-config "
                                 f"(e.g. {next(iter(wrong.values()))})")
            model.vae.load_state_dict(vae_state)
    return model.eval()
