"""The VQGAN transformer: an autoregressive GPT over VQGAN codes in raster order (Esser et al.,
"Taming Transformers for High-Resolution Image Synthesis"), as the paper's sequential baseline.

This is taming-transformers' `Net2NetTransformer` with its minGPT (`GPT`), state_dict keys
included (`transformer.*`, `first_stage_model.*`), so taming's `last.ckpt` loads with its
`model.yaml`:

* The sequence is a condition token then the image's codes: the SOS token (`sos_token`) for an
  unconditional model, the class index for a class-conditional one (ImageNet `cin_transformer`).
  Logits at sequence position i predict code i.
* `inpaint_tokens` fills the hidden codes of a grid greedily in raster order; every earlier code
  (given or already decoded) is context. A key-value cache makes it one transformer step per
  hidden code, visible runs between hidden codes fed in one step.

Attention is written out as minGPT computes it on the CPU (taming's logits to the last bit) and
under `model.vqgan.exact_attention()`; fused (`scaled_dot_product_attention`) on a GPU otherwise.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.vqgan import EXACT, VQModel, vqgan_params


# ----------------------------------------------------------------------------- minGPT

class KVCache:
    """One block's keys and values for `capacity` positions, allocated at the first write in the
    dtype the keys come in (bf16 under autocast)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.k = self.v = None

    def write(self, k, v, start: int):
        """Store positions start..start+T-1; -> keys and values of positions 0..start+T-1."""
        t = k.shape[2]
        if start + t > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions, not {start + t}")
        if self.k is None:
            shape = (*k.shape[:2], self.capacity, k.shape[3])
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        self.k[:, :, start:start + t] = k
        self.v[:, :, start:start + t] = v
        return self.k[:, :, :start + t], self.v[:, :, :start + t]


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, attn_pdrop: float = 0.0,
                 resid_pdrop: float = 0.0, n_unmasked: int = 0):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
        self.key = nn.Linear(n_embd, n_embd)
        self.query = nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(n_embd, n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.attn_pdrop, self.resid_pdrop = n_head, attn_pdrop, resid_pdrop
        self.plain_causal = n_unmasked <= 1
        mask = torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
        mask[:n_unmasked, :n_unmasked] = True     # minGPT's bidirectional prefix, if any
        self.register_buffer("allowed", mask, persistent=False)   # taming saves it as `mask`

    def forward(self, x, cache=None, start: int = 0):
        """x [B, T, C] at sequence positions start..start+T-1. `cache` (a KVCache) holds the keys
        and values of positions < start; this chunk's are written into it."""
        b, t, c = x.shape
        k, q, v = (lin(x).view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for lin in (self.key, self.query, self.value))
        if cache is not None:
            k, v = cache.write(k, v, start)
        allowed = self.allowed[start:start + t, :start + t]
        dropout = self.attn_pdrop if self.training else 0.0
        if EXACT.on or not x.is_cuda:    # minGPT's ops (on the CPU: its logits exactly)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = F.dropout(att.masked_fill(~allowed, float("-inf")).softmax(dim=-1), dropout, self.training)
            y = att @ v
        elif cache is None and start == 0 and self.plain_causal:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(b, t, c)
        return F.dropout(self.proj(y), self.resid_pdrop, self.training)


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, attn_pdrop=0.0, resid_pdrop=0.0,
                 n_unmasked: int = 0):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, attn_pdrop, resid_pdrop, n_unmasked)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(resid_pdrop))

    def forward(self, x, cache=None, start: int = 0):
        x = x + self.attn(self.ln1(x), cache, start)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """minGPT as taming uses it: token + learned position embeddings, blocks, ln_f, bias-free head."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 12, n_head: int = 8,
                 n_embd: int = 256, embd_pdrop: float = 0.0, resid_pdrop: float = 0.0,
                 attn_pdrop: float = 0.0, n_unmasked: int = 0):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                                      n_head=n_head, n_embd=n_embd, embd_pdrop=embd_pdrop,
                                      resid_pdrop=resid_pdrop, attn_pdrop=attn_pdrop, n_unmasked=n_unmasked)
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, block_size, n_embd))
        self.drop = nn.Dropout(embd_pdrop)
        self.blocks = nn.ModuleList([Block(n_embd, n_head, block_size, attn_pdrop, resid_pdrop, n_unmasked)
                                     for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.zeros_(module.bias)
            nn.init.ones_(module.weight)

    def get_block_size(self) -> int:
        return self.block_size

    def forward(self, idx, cache=None, start: int = 0, last_only: bool = False):
        """Codes [B, T] (at positions start.., with a cache) -> logits [B, T, vocab] (`last_only`:
        of the last position only, [B, 1, vocab], what decoding needs)."""
        t = idx.shape[1]
        if start + t > self.block_size:
            raise ValueError(f"{start + t} positions exceed the transformer's block size {self.block_size}")
        x = self.drop(self.tok_emb(idx) + self.pos_emb[:, start:start + t])
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i], start)
        return self.head(self.ln_f(x[:, -1:] if last_only else x))

    def new_cache(self, capacity: int) -> list[KVCache]:
        """An empty key-value cache for `capacity` positions, one per block."""
        return [KVCache(capacity) for _ in range(self.config.n_layer)]


# ----------------------------------------------------------------------------- Net2NetTransformer

class VqganTransformer(nn.Module):
    """taming's Net2NetTransformer for inpainting: `first_stage_model` (the frozen VQGAN) and
    `transformer` (GPT). `unconditional`: the condition is `sos_token`; otherwise a class index.
    `img_size`: the canvas side the model is used at (default: the largest square grid the
    block size holds, times the VQGAN's factor: 256 for taming's f16 models)."""

    def __init__(self, first_stage: VQModel, transformer: GPT, sos_token: int = 0,
                 unconditional: bool = True, img_size: int | None = None):
        super().__init__()
        self.first_stage_model = first_stage.eval().requires_grad_(False)
        self.transformer = transformer
        self.sos_token, self.be_unconditional = int(sos_token), bool(unconditional)
        self.class_label: int | None = None   # a class-conditional model's default condition
        self.target = "tokens"
        f = first_stage.downsample_factor
        img_size = img_size or f * math.isqrt(transformer.block_size)
        grid = img_size // f
        if grid * grid > transformer.block_size:
            raise ValueError(f"a {img_size}-px canvas has {grid * grid} codes; the transformer's block "
                             f"size {transformer.block_size} holds at most {math.isqrt(transformer.block_size) * f} px")
        # what the visual-prompting code reads off a model (not a module: no weights)
        self.patch_embed = SimpleNamespace(img_size=img_size, patch_size=f, grid_size=grid,
                                           num_patches=grid * grid)

    @property
    def vae(self) -> VQModel:
        """The VQGAN under the name the visual-prompting code uses for every token model."""
        return self.first_stage_model

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def train(self, mode: bool = True):
        super().train(mode)
        self.first_stage_model.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        return {"transformer.tok_emb.weight", "transformer.pos_emb"}   # taming decays Linear weights only

    def condition(self, batch: int, cond=None, device=None) -> torch.Tensor:
        """The first sequence token [B, 1]: the SOS token, or class indices (int or [B];
        default `class_label`)."""
        if cond is None and not self.be_unconditional:
            cond = self.class_label
        if cond is None:
            if not self.be_unconditional:
                raise ValueError("this transformer is class-conditional: pass the class index (cond=, "
                                 "--class-label)")
            cond = self.sos_token
        cond = torch.as_tensor(cond, dtype=torch.long, device=device)
        return cond.expand(batch).reshape(batch, 1) if cond.dim() == 0 else cond.reshape(batch, 1)

    def targets(self, imgs):
        return self.first_stage_model.tokenize(imgs)

    def training_loss(self, imgs, targets=None, cond=None):
        """Next-code cross-entropy over the whole raster sequence (taming's `forward` + loss)."""
        z = self.targets(imgs) if targets is None else targets
        cz = torch.cat([self.condition(z.shape[0], cond, z.device), z], dim=1)
        logits = self.transformer(cz[:, :-1])
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), z.reshape(-1))

    @torch.no_grad()
    def inpaint_tokens(self, tokens, mask, cond=None, use_cache: bool = True, group: int = 1, *, c=None):
        """Fill the hidden codes greedily in raster order: tokens [B, L], mask [L] or [B, L]
        (True = hidden) -> [B, L], visible codes unchanged. Hidden position j takes the argmax
        of the logits given the condition and every code before j (given, or decoded).

        `cond` (or `c`, taming's name): class indices (int, [B] or [B, 1]) of a class-conditional
        model (default `class_label`); an unconditional one takes its SOS token.
        `use_cache=False` runs the full prefix at every step (the plain loop, for comparison).
        `group` K > 1: consecutive runs of K rows are prompts of one query; at each step their
        next-code probabilities are averaged and all K take the same code (an ensemble)."""
        cond = c if cond is None else cond
        if tokens.dim() == 3:       # a [B, h, w] grid of codes: raster order, same shape back
            return self.inpaint_tokens(tokens.flatten(1), mask.flatten(-2) if mask.dim() >= 2 and
                                       mask.shape[-2:] == tokens.shape[-2:] else mask, cond, use_cache,
                                       group).view_as(tokens)
        b, length = tokens.shape
        mask = mask.to(tokens.device).bool()
        if mask.numel() == length:  # one mask for all ([L], or an [h, w] grid)
            mask = mask.reshape(length)
        if mask.dim() == 2 and not (mask == mask[:1]).all():   # masks differ: one query (group) at a time
            step = group
            return torch.cat([self.inpaint_tokens(tokens[i:i + step], mask[i], cond if cond is None or
                                                  torch.as_tensor(cond).dim() == 0 else cond[i:i + step],
                                                  use_cache, group) for i in range(0, b, step)])
        mask = mask.reshape(-1, length)[0]
        if b % group:
            raise ValueError(f"{b} rows are not groups of {group}")
        hidden = mask.nonzero().flatten().tolist()
        out = tokens.clone()
        if not hidden:
            return out
        if length > self.transformer.block_size:
            raise ValueError(f"{length} codes exceed the transformer's block size {self.transformer.block_size}")
        seq = torch.cat([self.condition(b, cond, tokens.device), tokens], dim=1)   # seq[j+1] = code j
        cache = self.transformer.new_cache(hidden[-1] + 1) if use_cache else None
        fed = 0
        for j in hidden:
            if use_cache:
                logits = self.transformer(seq[:, fed:j + 1], cache, fed, last_only=True)[:, -1]
            else:
                logits = self.transformer(seq[:, :j + 1])[:, -1]
            if group > 1:
                code = logits.float().softmax(-1).view(b // group, group, -1).mean(1).argmax(-1)
                code = code.repeat_interleave(group)
            else:
                code = logits.argmax(-1)
            out[:, j] = seq[:, j + 1] = code
            fed = j + 1
        return out


# ----------------------------------------------------------------------------- checkpoints

def read_config(config) -> dict:
    """taming's Net2NetTransformer `model.yaml` (path) or its content -> its `params`."""
    if isinstance(config, (str, Path)):
        import yaml

        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"transformer config not found: {path} (taming's configs/*-project.yaml "
                                    "or model.yaml of the released download)")
        try:
            config = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    params = config.get("model", config).get("params", config) if isinstance(config, dict) else None
    if not isinstance(params, dict) or "transformer_config" not in params or "first_stage_config" not in params:
        raise ValueError("not a taming Net2NetTransformer config: it needs model.params.transformer_config "
                         "and first_stage_config")
    return params


def build_from_config(config, img_size: int | None = None) -> VqganTransformer:
    """A VqganTransformer of the sizes a taming Net2NetTransformer config gives (untrained)."""
    params = read_config(config)
    first = params["first_stage_config"]
    if not str(first.get("target", "taming.models.vqgan.VQModel")).endswith("vqgan.VQModel"):
        raise ValueError(f"first stage {first.get('target')} is not supported (only taming.models.vqgan.VQModel)")
    if (first.get("params") or {}).get("remap"):
        raise ValueError("a first stage with a code remap is not supported")
    trans = params["transformer_config"]
    if not str(trans.get("target", "mingpt.GPT")).endswith("mingpt.GPT"):
        raise ValueError(f"transformer {trans.get('target')} is not supported (only taming's mingpt.GPT)")
    permuter = (params.get("permuter_config") or {}).get("target", "permuter.Identity")
    if not str(permuter).endswith("permuter.Identity"):
        raise ValueError(f"permuter {permuter} is not supported: raster order (Identity) only")
    t = trans.get("params") or {}
    gpt = GPT(**{k: t[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "embd_pdrop",
                                   "resid_pdrop", "attn_pdrop", "n_unmasked") if k in t})
    cond = params.get("cond_stage_config")
    unconditional = bool(params.get("unconditional")) or cond == "__is_unconditional__"
    if not unconditional and not (isinstance(cond, dict) and str(cond.get("target", "")).endswith("Labelator")):
        raise ValueError(f"condition {cond!r} is not supported: unconditional (SOS token) or class "
                         "labels (Labelator) only")
    return VqganTransformer(VQModel(**vqgan_params(first.get("params") or {})), gpt, params.get("sos_token", 0),
                            unconditional, img_size or params.get("img_size"))


def load_checkpoint(config_yaml, ckpt, img_size: int | None = None) -> VqganTransformer:
    """taming's `model.yaml` (Net2NetTransformer: transformer_config, first_stage_config) and
    `last.ckpt` (state_dict with transformer.* and first_stage_model.*), or a cvf checkpoint
    ({"model", "config", ...}; `config_yaml` may then be None) -> an eval-mode VqganTransformer.

    Loading is weights-only: Lightning's classes in a .ckpt are read as inert placeholders,
    anything else that names code is refused."""
    from model.checkpoint import load_with_placeholders, mismatches

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"transformer checkpoint not found: {ckpt}")
    obj = load_with_placeholders(ckpt)
    state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or "transformer.tok_emb.weight" not in state:
        raise ValueError(f"{ckpt} holds no taming transformer (no transformer.tok_emb.weight under state_dict)")
    if config_yaml is None:
        config_yaml = obj.get("config") if isinstance(obj, dict) else None
        if config_yaml is None:
            raise ValueError(f"{ckpt} records no config: pass taming's model.yaml")
    model = build_from_config(config_yaml, img_size)
    keep = {k: v for k, v in state.items()
            if (k.startswith("transformer.") and not k.endswith(".attn.mask"))
            or (k.startswith("first_stage_model.") and not k.startswith("first_stage_model.loss."))}
    wrong = mismatches(model, keep)
    if wrong:
        raise ValueError(f"{ckpt} does not fit {config_yaml if isinstance(config_yaml, (str, Path)) else 'the config'} "
                         f"({len(wrong)} keys differ, e.g. {'; '.join(list(wrong.values())[:3])})")
    model.load_state_dict(keep, strict=True)
    return model.eval()


def net2net_config(model: VqganTransformer, vqgan_config) -> dict:
    """The taming Net2NetTransformer model.yaml content of `model` (recorded in cvf's checkpoints,
    so that they load like taming's files). `vqgan_config`: the first stage's model.yaml or dict."""
    c = model.transformer.config
    return {"model": {"target": "taming.models.cond_transformer.Net2NetTransformer", "params": {
        "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT", "params": {
            k: getattr(c, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd",
                                       "embd_pdrop", "resid_pdrop", "attn_pdrop", "n_unmasked")}},
        "first_stage_config": {"target": "taming.models.vqgan.VQModel", "params": vqgan_params(vqgan_config)},
        "cond_stage_config": "__is_unconditional__" if model.be_unconditional else
                             {"target": "taming.modules.util.Labelator"},
        "unconditional": model.be_unconditional, "sos_token": model.sos_token,
        "img_size": model.patch_embed.img_size}}}


def is_gpt_state(state: dict) -> bool:
    return "transformer.tok_emb.weight" in state
