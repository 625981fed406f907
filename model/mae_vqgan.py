"""MAE-VQGAN: a masked autoencoder ViT that predicts the VQGAN token of each hidden patch.

This is MAE's `MaskedAutoencoderViT` as released with "Visual Prompting via Image Inpainting"
(Bar et al., 2022), with identical state_dict keys (the frozen VQGAN is the submodule `vae`,
so its weights are `vae.*`), written with `F.scaled_dot_product_attention` and no timm.

* Encoder: ViT over the *visible* patches only (+ cls token), fixed 2-D sin-cos positions.
* Decoder: visible tokens + mask tokens restored to raster order, then `decoder_pred` gives
  logits over the VQGAN codebook (`vqgan.quantize.n_e` entries) for every patch.
* Loss: cross-entropy against the VQGAN tokens of the same image, mean over hidden patches.
  Patch i is token i because the patch size equals the VQGAN's downsampling factor (16).

`target="pixels"` turns it into the plain MAE baseline (pixel regression, no VQGAN).
`load_checkpoint` loads either kind (told apart by the checkpoint's own shapes), and
`model.prompting.inpaint` inpaints canvases with either.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.vqgan import EXACT, VQModel, load_vqgan, vqgan_params

ARCHS = {
    # 12 heads as released (models_mae.py line 221), not the 6 of DeiT-S.
    "mae_vit_small_patch16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=12,
                                  decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "mae_vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12,
                                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "mae_vit_large_patch16": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                                  decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "mae_vit_huge_patch14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16,
                                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}


def sincos_pos_embed(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table [(1+)grid^2, dim]: half the channels encode the row, half
    the column; the cls row is zeros."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    # The reference's meshgrid(w, h) puts the column coordinate first.
    table = torch.cat([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table])
    return table.float()


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if EXACT.on:     # timm 0.3.2's Attention, as released
            weights = ((q @ k.transpose(-2, -1)) * (c // self.num_heads) ** -0.5).softmax(dim=-1)
            x = weights @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm `Block` with qkv_bias, no dropout, no drop-path)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        self.grid_size = img_size // patch_size
        self.patch_shape = (self.grid_size, self.grid_size)
        self.num_patches = self.grid_size ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected {self.img_size}x{self.img_size} images, got {tuple(x.shape[-2:])}")
        return self.proj(x).flatten(2).transpose(1, 2)


class MaeVqgan(nn.Module):
    def __init__(self, vqgan: VQModel | None, img_size: int = 224, patch_size: int = 16,
                 embed_dim: int = 1024, depth: int = 24, num_heads: int = 16,
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 mlp_ratio: float = 4.0, in_chans: int = 3, target: str = "tokens",
                 norm_pix_loss: bool = False):
        super().__init__()
        if target not in ("tokens", "pixels"):
            raise ValueError(f"target must be 'tokens' or 'pixels', not {target!r}")
        if target == "tokens":
            if vqgan is None:
                raise ValueError("target='tokens' needs the VQGAN tokenizer")
        self.target, self.norm_pix_loss = target, norm_pix_loss

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(embed_dim, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if target == "tokens":  # frozen; registered here to keep the reference's key order
            self.vae = vqgan.eval().requires_grad_(False)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(decoder_embed_dim, grid)[None],
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        out_dim = vqgan.quantize.n_e if target == "tokens" else patch_size ** 2 * in_chans
        self.decoder_pred = nn.Linear(decoder_embed_dim, out_dim)
        self.initialize_weights()

    def initialize_weights(self):
        """MAE's init: xavier-uniform Linear and patch-embed weights, zero biases, N(0, .02) tokens."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "vae"):
            self.vae.eval()  # frozen tokenizer, always in eval mode
        return self

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    # masking -----------------------------------------------------------------------------
    def masking_order(self, n: int, mask_ratio: float, noise=None, mask=None, device=None):
        """-> (ids_shuffle [N, L], len_keep): visible patch ids first, then hidden ones.

        `noise` ([N, L], small = keep) reproduces the reference's random masking; `mask`
        ([N, L], 1 = hidden) fixes the hidden patches, visible and hidden each in raster order.
        """
        L = self.num_patches
        if mask is not None:
            hidden = mask.bool()
            counts = hidden.sum(1)
            if (counts != counts[0]).any():
                raise ValueError("every sample of a batch must hide the same number of patches")
            ids_shuffle = torch.argsort(hidden.to(torch.uint8), dim=1, stable=True)
            return ids_shuffle, L - int(counts[0])
        if noise is None:
            noise = torch.rand(n, L, device=device)
        return torch.argsort(noise, dim=1), int(L * (1 - mask_ratio))

    # encoder / decoder -------------------------------------------------------------------
    def forward_encoder(self, imgs, ids_shuffle, len_keep):
        """Encode only the visible patches (the first `len_keep` of `ids_shuffle`)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        ids_keep = ids_shuffle[:, :len_keep]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_decoder(self, latent, ids_restore):
        x = self.decoder_embed(latent)
        n, L = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, L + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def predict(self, imgs, mask_ratio=0.75, noise=None, mask=None):
        """-> (pred [N, L, V or p*p*3], mask [N, L] float, 1 = hidden). No loss, no targets."""
        ids_shuffle, len_keep = self.masking_order(imgs.shape[0], mask_ratio, noise, mask, imgs.device)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        hidden = torch.ones(ids_shuffle.shape, device=imgs.device)
        hidden[:, :len_keep] = 0
        hidden = torch.gather(hidden, 1, ids_restore)
        pred = self.forward_decoder(self.forward_encoder(imgs, ids_shuffle, len_keep), ids_restore)
        return pred, hidden

    def predict_logits(self, imgs, mask):
        """Inference on a fixed mask ([N, L], 1 = hidden): codebook logits for ALL positions."""
        return self.predict(imgs, mask=mask)[0]

    def patchify(self, imgs):
        """[N, C, H, W] -> [N, L, p*p*C] patch values, raster order (MAE's patchify)."""
        p = self.patch_embed.patch_size
        n, c, h, w = imgs.shape
        return imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(n, -1, p * p * c)

    def unpatchify(self, x):
        """[N, L, p*p*C] patch values -> [N, C, H, W] (MAE's unpatchify)."""
        p, g = self.patch_embed.patch_size, self.patch_embed.grid_size
        n = x.shape[0]
        x = x.reshape(n, g, g, p, p, -1).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, -1, g * p, g * p)

    # loss --------------------------------------------------------------------------------
    def targets(self, imgs):
        """What the model regresses: VQGAN tokens [N, L], or (normalised) pixel patches."""
        if self.target == "tokens":
            return self.vae.tokenize(imgs)
        x = self.patchify(imgs)
        if self.norm_pix_loss:
            x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + 1e-6) ** 0.5
        return x

    def forward_loss(self, pred, target, mask):
        if target.shape[1] != pred.shape[1]:
            raise ValueError(f"{target.shape[1]} targets for {pred.shape[1]} patches: the patch size "
                             "must equal the VQGAN's downsampling factor (patch i = token i)")
        if self.target == "tokens":
            per_patch = F.cross_entropy(pred.float().transpose(1, 2), target, reduction="none")
        else:
            per_patch = ((pred.float() - target.float()) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs, mask_ratio: float = 0.75, noise=None, mask=None, targets=None):
        """-> (loss, pred [N, L, V], mask [N, L]); `targets` may be precomputed (cached) tokens."""
        pred, hidden = self.predict(imgs, mask_ratio, noise, mask)
        if targets is None:
            targets = self.targets(imgs)
        return self.forward_loss(pred, targets, hidden), pred, hidden


SIZE_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
             "decoder_depth", "decoder_num_heads", "mlp_ratio", "in_chans")


def arch_sizes(arch) -> dict:
    """A released arch name, or a dict of MaeVqgan sizes -> the constructor's size kwargs.

    A dict may carry descriptive extras (e.g. a vectors `config.json`'s "mae" section with
    `qkv_bias`, `vocab_size`): only the size keys are taken.
    """
    if isinstance(arch, dict):
        return {k: arch[k] for k in SIZE_KEYS if k in arch}
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)} or pass a dict of sizes")
    return dict(ARCHS[arch])


def arch_from_args(args) -> dict | None:
    """The sizes a checkpoint's `args` Namespace records: our trainer's `--arch` and size flags,
    or MAE's `--model` (`mae_vit_large_patch16[_dec512d8b]`), with `--input-size`. A dict of
    the same fields works too."""
    args = args if isinstance(args, dict) else vars(args) if args is not None else {}
    name = args.get("arch") or args.get("model")
    name = name.split("_dec")[0] if isinstance(name, str) else None
    if name not in ARCHS:
        return None
    sizes = dict(ARCHS[name]) | {k: args[k] for k in SIZE_KEYS if args.get(k) is not None}
    if args.get("input_size"):
        sizes["img_size"] = int(args["input_size"])
    return sizes


def build(arch="mae_vit_large_patch16", vqgan: VQModel | None = None, img_size: int = 224,
          **kwargs) -> MaeVqgan:
    sizes = {"img_size": img_size, **arch_sizes(arch), **kwargs}
    return MaeVqgan(vqgan, **sizes)


def arch_from_state(state: dict) -> str | None:
    """The released arch whose encoder width, depth and patch the state_dict holds, if one."""
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        return None
    shape = (state["cls_token"].shape[-1],
             len({k.split(".")[1] for k in state if k.startswith("blocks.")}),
             state["patch_embed.proj.weight"].shape[-1])
    names = [n for n, a in ARCHS.items() if (a["embed_dim"], a["depth"], a["patch_size"]) == shape]
    return names[0] if names else None


def describe_state(state: dict) -> str:
    """What encoder a state_dict holds, naming the matching released arch if any."""
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        return "no MAE encoder (no cls_token / patch_embed keys)"
    dim = state["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    patch = state["patch_embed.proj.weight"].shape[-1]
    name = arch_from_state(state)
    return (f"encoder width {dim}, depth {depth}, patch {patch}, {state_img_size(state, patch)} px"
            + (f" ({name})" if name else ""))


def state_img_size(state: dict, patch_size: int) -> int | None:
    """The image size a checkpoint was trained at, from its fixed position table (cls + g*g rows)."""
    if "pos_embed" not in state:
        return None
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    return grid * patch_size


def checkpoint_kind(state: dict, path, vqgan_config=None, vqgan_ckpt=None) -> str:
    """'tokens' (MAE-VQGAN) or 'pixels' (plain MAE), from the checkpoint's own shapes.

    `vae.*` weights mean tokens; a `decoder_pred` of patch*patch*channels outputs without a
    VQGAN checkpoint means pixels; otherwise a given VQGAN config means tokens. Anything else
    is refused with the shapes found.
    """
    if any(k.startswith("vae.") for k in state):
        return "tokens"
    pred, proj = state.get("decoder_pred.weight"), state.get("patch_embed.proj.weight")
    pixel_out = proj.shape[-1] * proj.shape[-2] * proj.shape[1] if proj is not None and proj.dim() == 4 else None
    if pred is not None and pixel_out is not None and pred.shape[0] == pixel_out and vqgan_ckpt is None:
        return "pixels"
    if vqgan_config is not None:
        return "tokens"
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in
                       (("decoder_pred.weight", pred), ("patch_embed.proj.weight", proj)) if v is not None)
    raise ValueError(
        f"cannot tell what {path} predicts: it holds {shapes or 'no decoder_pred / patch_embed weights'} "
        f"and no vae.* weights. A pixel MAE's decoder_pred has patch*patch*3 = "
        f"{pixel_out if pixel_out else 'patch*patch*3'} outputs; an MAE-VQGAN without vae.* weights "
        f"needs its VQGAN: --vqgan-config model.yaml and --vqgan-ckpt last.ckpt")


def load_checkpoint(path, vqgan_config=None, arch=None, vqgan_ckpt=None,
                    img_size: int | None = None, map_location="cpu") -> MaeVqgan:
    """Load a checkpoint, pixel MAE or MAE-VQGAN (token head), into an eval-mode MaeVqgan.

    Released, cvf's own (`python -m model.train`, either `--target`) and the public MAE
    checkpoints' `{'model': state_dict}` layout all load; `model.target` says which kind it is
    ('tokens' or 'pixels', see `checkpoint_kind`), and `model.norm_pix_loss` is what the
    checkpoint's `args` record (default False).

    `arch`: a name of ARCHS, a dict of the constructor's sizes, or None: the sizes the
    checkpoint's own `args` record, else the released arch its encoder shapes match, else
    mae_vit_large_patch16. `vqgan_config` (tokens only): taming's `model.yaml` (path) or its
    content (dict). The VQGAN weights come from the checkpoint's `vae.*` keys, or from
    `vqgan_ckpt` (taming's `last.ckpt`) when it has none. `img_size`: by default the arch
    dict's, else the one the checkpoint's position table was built for. Loading is
    `weights_only`, allowing only `argparse.Namespace`. A checkpoint of another architecture
    or VQGAN is a ValueError naming what does not fit.
    """
    from model.checkpoint import load_safely, mismatches

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = load_safely(path, map_location=map_location)
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} holds no state_dict (expected {{'model': state_dict}} or a state_dict)")
    # saved from a DistributedDataParallel or torch.compile wrapper by other training code
    for wrapper in ("module.", "_orig_mod."):
        if all(k.startswith(wrapper) for k in state):
            state = {k[len(wrapper):]: v for k, v in state.items()}
    recorded = ckpt.get("args") if isinstance(ckpt, dict) else None
    recorded = recorded if isinstance(recorded, dict) else vars(recorded) if recorded is not None else {}
    kind = checkpoint_kind(state, path, vqgan_config, vqgan_ckpt)
    has_vae = any(k.startswith("vae.") for k in state)
    vqgan = None
    if kind == "tokens":
        if vqgan_config is None:
            raise ValueError(f"{path} is an MAE-VQGAN (token head), so vqgan_config is needed: the "
                             "path of taming's VQGAN model.yaml it was trained with (--vqgan-config)")
        if not has_vae and vqgan_ckpt is None:
            raise ValueError(f"{path} holds no `vae.*` weights; pass vqgan_ckpt= (taming's last.ckpt, "
                             "--vqgan-ckpt)")
        vqgan = VQModel(**vqgan_params(vqgan_config)) if has_vae else load_vqgan(vqgan_config, vqgan_ckpt)
    if arch is None:
        arch = arch_from_args(recorded) or arch_from_state(state) or "mae_vit_large_patch16"
    sizes = arch_sizes(arch)
    if img_size is not None:
        sizes["img_size"] = img_size
    sizes.setdefault("img_size", state_img_size(state, sizes.get("patch_size", 16)) or 224)
    model = MaeVqgan(vqgan, **sizes, target=kind, norm_pix_loss=bool(recorded.get("norm_pix_loss")))
    if kind == "tokens" and not has_vae:
        state = {**state, **{"vae." + k: v for k, v in vqgan.state_dict().items()}}
    wrong = mismatches(model, state)
    if wrong:
        name = arch if isinstance(arch, str) else str(sizes)
        if all(k.startswith("vae.") for k in wrong):
            given = vqgan_config if isinstance(vqgan_config, (str, Path)) else "(the given dict)"
            raise ValueError(f"the VQGAN weights in {path} do not fit --vqgan-config {given} "
                             f"(e.g. {next(iter(wrong.values()))}); pass the model.yaml of the "
                             "VQGAN the checkpoint was trained with")
        raise ValueError(f"{path} does not fit --arch {name}: the checkpoint holds "
                         f"{describe_state(state)}. Pass the arch it was trained with "
                         f"({len(wrong)} keys differ, e.g. {'; '.join(list(wrong.values())[:3])})")
    model.load_state_dict(state, strict=True)
    return model.eval()
