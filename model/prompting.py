"""Visual prompts: build the canvas, hide the answer, let MAE-VQGAN inpaint it.

A visual prompt is one image (the "canvas") holding example input/output pairs and a query
whose output is hidden. The released protocol (Bar et al. 2022), which is the default here:

    +---------+-+---------+     size 224: four 111x111 cells, a 2-pixel white cross at
    | support | | support |     rows/columns 111-112, white background. Every cell size is
    |  image  | |  target |     derived from the canvas size: cell = (size - 2) // 2.
    +---------+-+---------+
    +---------+-+---------+     The bottom-right quadrant of patches is hidden; the model
    |  query  | | (hidden |     predicts a VQGAN token at every position, the VQGAN decodes
    |  image  | |  answer)|     the whole token grid, and only the hidden patches are pasted
    +---------+-+---------+     back into the original canvas.

Canvases are built in [0,1] and ImageNet-normalised for the model. The released code
normalises and de-normalises in float64 and truncates `x * 255` to integers; we do the same,
or about 1% of white pixels come out one level off (1.0 -> 254 is part of the protocol).

`model/` never imports `pipeline/`; this module takes any of the four inpainting models
(model/inpainters.py): MAE-VQGAN, pixel MAE, BEiT, the VQGAN transformer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from model.vqgan import imagenet_mean_std


# ----------------------------------------------------------------------------- geometry

def cell_size(size: int) -> int:
    """Side of one cell of the 2x2 canvas: two cells and a 2-pixel cross fill the canvas."""
    return (size - 2) // 2


def rows_figure_size(size: int, rows: int, padding: int = 1) -> int:
    """Side of one figure in the rows layout (3 rows at 224 -> 74, as the synthetic tasks)."""
    return (size - padding * (rows - 1)) // rows


def quadrant_mask(size: int, patch: int) -> torch.Tensor:
    """Bool [L] over the (size/patch)^2 patches, row-major: True = hidden.

    Hidden is the bottom-right quadrant: patch rows >= g/2 and columns >= g/2 (at 224/16:
    147 visible, 49 hidden, as the released `generate_mask_for_evaluation`). An odd grid g
    follows the reference vectors' generalisation of that rule (g/2 exactly, so rows >= (g+1)/2).
    """
    g = size // patch
    rows = torch.arange(g).view(g, 1)
    cols = torch.arange(g).view(1, g)
    return ((2 * rows >= g) & (2 * cols >= g)).flatten()


def box_mask(size: int, patch: int, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    """Bool [L]: True for every patch that overlaps the pixel box [top:bottom, left:right]."""
    g = size // patch
    r0, r1 = top // patch, min(g, math.ceil(bottom / patch))
    c0, c1 = left // patch, min(g, math.ceil(right / patch))
    grid = torch.zeros(g, g, dtype=torch.bool)
    grid[r0:r1, c0:c1] = True
    return grid.flatten()


def rows_answer_box(size: int, rows: int, padding: int = 1) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the last row's output figure in the rows layout."""
    fig = rows_figure_size(size, rows, padding)
    top = (rows - 1) * (fig + padding)
    left = size // 2 + 1
    return top, left, top + fig, left + fig


def rows_mask(size: int, patch: int, rows: int = 3, padding: int = 1) -> torch.Tensor:
    """Hidden patches of the rows layout: those touching the last output figure.

    For the released synthetic tasks (224, 3 rows, patch 16): patch rows 9-13, columns 7-11.
    """
    top, left, bottom, right = rows_answer_box(size, rows, padding)
    # The released mask ends one patch row below the figure, i.e. always at the last row.
    return box_mask(size, patch, top, left, size, right)


def patch_mask_to_pixels(mask: torch.Tensor, size: int, patch: int) -> torch.Tensor:
    """[..., L] patch mask -> [..., size, size] pixel mask."""
    g = size // patch
    grid = mask.reshape(*mask.shape[:-1], g, g)
    return grid.repeat_interleave(patch, dim=-2).repeat_interleave(patch, dim=-1)


# ----------------------------------------------------------------------------- canvases

def _rgb(x: torch.Tensor) -> torch.Tensor:
    """CHW with 1 or 3 channels -> 3 channels (masks are broadcast, as the release does)."""
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected a CHW tensor with 1 or 3 channels, got shape {tuple(x.shape)}")
    return x.expand(3, -1, -1)


def fit(x: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """Resize a [0,1] CHW tensor to height x width (bicubic, like the release); no-op if it fits.

    The data loaders resize PIL images themselves (bit-exact with the release); this is for
    callers that hand in tensors of another size.
    """
    width = height if width is None else width
    x = _rgb(x)
    if x.shape[-2:] == (height, width):
        return x
    y = F.interpolate(x[None].float(), size=(height, width), mode="bicubic", antialias=True,
                      align_corners=False)
    return y[0].clamp(0, 1)


def make_canvas(support_img: torch.Tensor, support_target: torch.Tensor, query_img: torch.Tensor,
                query_target: torch.Tensor | None = None, size: int = 224,
                flip: bool = False) -> torch.Tensor:
    """The released 2x2 visual prompt, in [0,1], 3 x size x size.

    Default layout: support image top-left, support target top-right, query image bottom-left,
    query target bottom-right (left white when not given). `flip=True` is the release's other
    order: query image top-right, support target bottom-left (the answer stays bottom-right).
    """
    cell = cell_size(size)
    canvas = torch.ones(3, size, size)
    canvas[:, :cell, :cell] = fit(support_img, cell)
    top_right, bottom_left = (query_img, support_target) if flip else (support_target, query_img)
    canvas[:, :cell, -cell:] = fit(top_right, cell)
    canvas[:, -cell:, :cell] = fit(bottom_left, cell)
    if query_target is not None:
        canvas[:, -cell:, -cell:] = fit(query_target, cell)
    return canvas


def make_rows_canvas(pairs: list[tuple[torch.Tensor, torch.Tensor | None]], size: int = 224,
                     background: float = 0.0, padding: int = 1) -> torch.Tensor:
    """One (input, output) pair per row, the last row being the query; [0,1], 3 x size x size.

    With 3 rows at 224 on black this is the released synthetic-task canvas: 74x74 figures,
    rows at y = 0, 75, 150, inputs at x in [37, 111), outputs at x in [113, 187). With more rows
    it is an n-shot prompt (n = rows - 1 examples). A None output leaves the cell background.
    """
    rows = len(pairs)
    fig = rows_figure_size(size, rows, padding)
    canvas = torch.full((3, size, size), float(background))
    left_in, left_out = size // 2 - fig - 1, size // 2 + 1
    for i, (inp, out) in enumerate(pairs):
        top = i * (fig + padding)
        canvas[:, top:top + fig, left_in:left_in + fig] = fit(inp, fig)
        if out is not None:
            canvas[:, top:top + fig, left_out:left_out + fig] = fit(out, fig)
    return canvas


def make_grid_canvas(supports: list[tuple[torch.Tensor, torch.Tensor]], query_img: torch.Tensor,
                     query_target: torch.Tensor | None = None, size: int = 224) -> torch.Tensor:
    """n-shot prompt on the white 2x2-style background: n example rows, then the query row."""
    return make_rows_canvas(list(supports) + [(query_img, query_target)], size=size, background=1.0)


def normalize(canvas01: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[0,1] canvas(es) -> ImageNet-normalised.

    float64 is what the released segmentation/colorization evaluation does; its synthetic
    tasks normalise in float32 (torchvision's Normalize).
    """
    mean, std = imagenet_mean_std(dtype, canvas01.device)
    return (canvas01.to(dtype) - mean) / std


def to_uint8(canvases: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised [B,3,H,W] -> uint8 [B,H,W,3]: de-normalise in float64, truncate."""
    mean, std = imagenet_mean_std(torch.float64, canvases.device)
    x = ((canvases.double() * std + mean) * 255).clamp(0, 255)
    return x.to(torch.int32).to(torch.uint8).permute(0, 2, 3, 1)


# ----------------------------------------------------------------------------- inpainting

def _patch_size(model) -> int:
    return int(model.patch_embed.patch_size)


def compile_for_inference(model):
    """Compile, in place, the two halves `inpaint` runs: the MAE's logits and the VQGAN decode,
    the VQGAN's convolutions channels-last (the layout tensor cores want). Same answers up to
    kernel rounding; the first batches of each new shape pay the compilation. (The sequential
    VQGAN transformer's steps are not compiled: one shape per step.)"""
    model.vae.to(memory_format=torch.channels_last)
    if hasattr(model, "predict_logits"):
        model.predict_logits = torch.compile(model.predict_logits)
    model.vae.decode_tokens = torch.compile(model.vae.decode_tokens)
    return model


@torch.no_grad()
def predict_logits(model, canvases: torch.Tensor, mask: torch.Tensor | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Codebook logits [B,L,V] for every patch position, the `mask` patches hidden.

    `dtype` (e.g. torch.bfloat16) runs the model under autocast on the canvases' device.
    """
    B, _, H, _ = canvases.shape
    if mask is None:
        mask = quadrant_mask(H, _patch_size(model))
    mask = mask.to(canvases.device).expand(B, -1)
    x = canvases.float()
    with torch.autocast(canvases.device.type, dtype=dtype, enabled=dtype is not None):
        logits = model.predict_logits(x, mask)
    return logits.float()


@torch.no_grad()
def paste(model, canvases: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """Decode the token grid and paste its hidden patches into the canvases: uint8 [B,H,W,3]."""
    B, _, H, W = canvases.shape
    patch = _patch_size(model)
    if mask is None:
        mask = quadrant_mask(H, patch)
    with torch.autocast(canvases.device.type, dtype=dtype, enabled=dtype is not None):
        decoded = model.vae.decode_tokens(tokens)          # [B,3,H,W] in [0,1]
    decoded = decoded.float()
    if decoded.shape[-2:] != (H, W):                       # the release resizes bilinearly
        decoded = F.interpolate(decoded, size=(H, W), mode="bilinear")
    predicted = (decoded * 255).clamp(0, 255).to(torch.int32).to(torch.uint8).permute(0, 2, 3, 1)
    hidden = patch_mask_to_pixels(mask.to(canvases.device), H, patch).expand(B, H, W)
    return torch.where(hidden[..., None], predicted, to_uint8(canvases))


@torch.no_grad()
def predict_pixels(model, canvases: torch.Tensor, mask: torch.Tensor | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """A pixel MAE's prediction for the whole canvas, ImageNet-normalised [B,3,H,W] float64.

    With `model.norm_pix_loss` the model predicts each patch standardised; the hidden patches'
    own mean and variance are the answer, so they are restored with the visible patches'
    average patch mean and variance (per canvas).
    """
    B, _, H, _ = canvases.shape
    if mask is None:
        mask = quadrant_mask(H, _patch_size(model))
    hidden = mask.to(canvases.device).expand(B, -1)
    pred = predict_logits(model, canvases, mask, dtype).double()          # [B,L,p*p*3]
    if model.norm_pix_loss:
        patches = model.patchify(canvases.double())
        visible = (~hidden.bool()).double()[..., None]
        mean = (patches.mean(-1, keepdim=True) * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True)
        var = (patches.var(-1, keepdim=True) * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    return model.unpatchify(pred)


def paste_pixels(model, canvases: torch.Tensor, predicted: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Paste the hidden patches of a normalised prediction [B,3,H,W] into the canvases, both
    de-normalised as the release de-normalises canvases: uint8 [B,H,W,3]."""
    B, _, H, W = canvases.shape
    patch = _patch_size(model)
    if mask is None:
        mask = quadrant_mask(H, patch)
    hidden = patch_mask_to_pixels(mask.to(canvases.device), H, patch).expand(B, H, W)
    return torch.where(hidden[..., None], to_uint8(predicted), to_uint8(canvases))


@torch.no_grad()
def decode_sequentially(model, canvases: torch.Tensor, mask: torch.Tensor | None = None,
                        dtype: torch.dtype | None = None, group: int = 1) -> torch.Tensor:
    """The VQGAN transformer's answer: the canvases' VQGAN codes, the `mask` ones decoded in
    raster order (`model.inpaint_tokens`, greedy, cached): codes [B, L]."""
    B, _, H, _ = canvases.shape
    if mask is None:
        mask = quadrant_mask(H, _patch_size(model))
    tokens = model.vae.tokenize(canvases.float())
    with torch.autocast(canvases.device.type, dtype=dtype, enabled=dtype is not None):
        return model.inpaint_tokens(tokens, mask.to(canvases.device), group=group)


@torch.no_grad()
def inpaint(model, canvases: torch.Tensor, mask: torch.Tensor | None = None,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """ImageNet-normalised canvases [B,3,H,W] -> the canvases with the answer painted in,
    uint8 [B,H,W,3], by either kind of model `model.mae_vqgan.load_checkpoint` loads.

    BEiT predicts codes as MAE-VQGAN does (with its own tokenizer's decoder); the VQGAN
    transformer decodes the hidden codes one at a time (`decode_sequentially`).
    MAE-VQGAN (`model.target == "tokens"`): argmax token at every position, VQGAN decode of
    the whole grid, only the hidden patches pasted, pixels truncated to uint8: the released
    `generate_image`, batched. Pixel MAE: the unpatchified prediction of the hidden patches,
    de-normalised like the canvas. Pass float64 canvases (from `normalize`) to match the
    release bit for bit.
    """
    if getattr(model, "target", "tokens") == "pixels":
        return paste_pixels(model, canvases, predict_pixels(model, canvases, mask, dtype), mask)
    if hasattr(model, "inpaint_tokens"):
        return paste(model, canvases, decode_sequentially(model, canvases, mask, dtype), mask, dtype)
    tokens = predict_logits(model, canvases, mask, dtype).argmax(-1)
    return paste(model, canvases, tokens, mask, dtype)


@torch.no_grad()
def inpaint_ensemble(model, canvases: torch.Tensor, mask: torch.Tensor | None = None,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
    """Several prompts for one query: canvases [B,K,3,H,W] -> uint8 [B,H,W,3].

    The K prompts (other supports, the flipped layout, ...) share the hidden answer cell; their
    token probabilities are averaged (the release's 'sum' ensemble) and the result is pasted
    into the first prompt. A pixel MAE's K predictions are averaged instead.
    """
    B, K = canvases.shape[:2]
    if hasattr(model, "inpaint_tokens"):      # one code per step for all K, probabilities averaged
        tokens = decode_sequentially(model, canvases.flatten(0, 1), mask, dtype, group=K)
        return paste(model, canvases[:, 0], tokens[::K], mask, dtype)
    if getattr(model, "target", "tokens") == "pixels":
        pred = predict_pixels(model, canvases.flatten(0, 1), mask, dtype)
        return paste_pixels(model, canvases[:, 0], pred.view(B, K, *pred.shape[1:]).mean(1), mask)
    logits = predict_logits(model, canvases.flatten(0, 1), mask, dtype)
    probs = logits.softmax(-1).view(B, K, *logits.shape[1:]).mean(1)
    return paste(model, canvases[:, 0], probs.argmax(-1), mask, dtype)


# ----------------------------------------------------------------------------- attention

@torch.no_grad()
def decoder_attention(model, canvases: torch.Tensor, mask: torch.Tensor | None = None,
                      layer: int = -1) -> torch.Tensor:
    """The decoder's attention in block `layer`, averaged over heads: [B, L, L] between patch
    positions (the cls token left out), row i = where patch i looks. As the release's
    `generate_decoder_attention_maps` (softmax(q k^T * scale)), in fp32."""
    B, _, H, _ = canvases.shape
    if mask is None:
        mask = quadrant_mask(H, _patch_size(model))
    ids_shuffle, len_keep = model.masking_order(B, 0.0, mask=mask.to(canvases.device).expand(B, -1))
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    latent = model.forward_encoder(canvases.float(), ids_shuffle, len_keep)
    x = model.decoder_embed(latent)
    L = ids_restore.shape[1]
    x_ = torch.cat([x[:, 1:], model.mask_token.expand(B, L + 1 - x.shape[1], -1)], 1)
    x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
    x = torch.cat([x[:, :1], x_], 1) + model.decoder_pos_embed
    blocks = list(model.decoder_blocks)
    target = blocks[layer]
    for block in blocks:
        if block is target:
            attn = block.attn
            y = block.norm1(x)
            b, n, c = y.shape
            q, k, _ = attn.qkv(y).view(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
            weights = ((q @ k.transpose(-2, -1)) * (c // attn.num_heads) ** -0.5).softmax(-1)
            return weights.mean(1)[:, 1:, 1:]
        x = block(x)
    raise AssertionError("unreachable")


def attention_overlay(canvas_uint8: torch.Tensor, weights: torch.Tensor, patch_index: int,
                      patch: int) -> torch.Tensor:
    """The canvas [H,W,3] uint8 darkened where the attention row [L] is low, red where high,
    the chosen patch outlined in green: uint8 [H,W,3]."""
    H = canvas_uint8.shape[0]
    g = H // patch
    heat = weights.float().reshape(g, g)
    heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-12)
    heat = heat.repeat_interleave(patch, 0).repeat_interleave(patch, 1)[..., None]
    img = canvas_uint8.float() * (0.35 + 0.65 * heat)
    img[..., 0] = img[..., 0] + (255 - img[..., 0]) * heat[..., 0] * 0.6
    out = img.clamp(0, 255).to(torch.uint8)
    r, c = divmod(patch_index, g)
    green = torch.tensor((0, 255, 0), dtype=torch.uint8)
    top, left = r * patch, c * patch
    out[top, left:left + patch] = out[top + patch - 1, left:left + patch] = green
    out[top:top + patch, left] = out[top:top + patch, left + patch - 1] = green
    return out
