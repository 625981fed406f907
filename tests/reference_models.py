"""unilm's BEiT and taming-transformers' minGPT / Net2NetTransformer (../shared/reference, MIT),
imported for side-by-side tests on tiny random weights. Skips with the reason where absent."""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "reference"
UNILM = REFERENCE / "unilm-beit"
TAMING = REFERENCE / "taming-transformers"


def unilm():
    """unilm's beit/ folder on sys.path: (modeling_pretrain, masking_generator)."""
    if not UNILM.is_dir():
        pytest.skip(f"unilm's BEiT is not at {UNILM} (see shared/reference/README.md)")
    pytest.importorskip("timm", reason="unilm's BEiT imports timm")
    if str(UNILM) not in sys.path:
        sys.path.insert(0, str(UNILM))
    import numpy as np

    if not hasattr(np, "int"):       # masking_generator.py uses np.int, removed in numpy 1.24
        np.int = int
    return importlib.import_module("modeling_pretrain"), importlib.import_module("masking_generator")


def dall_e():
    """OpenAI's dall_e package as unilm ships it (encoder and decoder modules)."""
    unilm()
    pytest.importorskip("attr", reason="dall_e uses attrs")
    return importlib.import_module("dall_e.encoder"), importlib.import_module("dall_e.decoder")


def mingpt():
    """taming's minGPT; its module-level `from transformers import top_k_top_p_filtering` is
    stood in (never called by what the tests use)."""
    if not TAMING.is_dir():
        pytest.skip(f"taming-transformers is not at {TAMING} (see shared/reference/README.md)")
    if str(TAMING) not in sys.path:
        sys.path.insert(0, str(TAMING))
    # The stand-in lives only while minGPT imports: left in sys.modules, it would break a later
    # import of the real package (datasets probes `transformers` when it is loaded).
    saved = sys.modules.get("transformers")
    stand_in = types.ModuleType("transformers")
    stand_in.top_k_top_p_filtering = lambda *a, **k: (_ for _ in ()).throw(NotImplementedError())
    sys.modules["transformers"] = stand_in
    try:
        return importlib.import_module("taming.modules.transformer.mingpt")
    finally:
        if saved is None:
            del sys.modules["transformers"]
        else:
            sys.modules["transformers"] = saved


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    """Every parameter non-trivial: biases, gammas, tables, tokens (LayerNorm weights around 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "ln1.weight", "ln2.weight",
                              "ln_f.weight")):
                p.copy_(1 + noise)
            elif "gamma" in name:
                p.copy_(0.5 + noise)
            else:
                p.copy_(noise)


# A VQGAN small enough for CPU tests: f16 (4 downsamplings), 40 codes, 64-px images.
TINY_VQGAN = {"ddconfig": {"double_z": False, "z_channels": 32, "resolution": 64, "in_channels": 3,
                           "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1,
                           "attn_resolutions": [], "dropout": 0.0},
              "n_embed": 40, "embed_dim": 8}


def tiny_vqgan(seed: int = 0):
    from model.vqgan import VQModel

    torch.manual_seed(seed)
    vq = VQModel(**TINY_VQGAN)
    with torch.no_grad():       # spread the codebook so that tokens vary with the image
        vq.quantize.embedding.weight.normal_()
    return vq.eval()


def net2net_yaml(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=32, unconditional=True):
    """taming's Net2NetTransformer model.yaml (as its configs/*.yaml) for the tiny VQGAN."""
    params = {"transformer_config": {"target": "taming.modules.transformer.mingpt.GPT",
                                     "params": {"vocab_size": vocab_size, "block_size": block_size,
                                                "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}},
              "first_stage_config": {"target": "taming.models.vqgan.VQModel",
                                     "params": {**TINY_VQGAN, "lossconfig": {
                                         "target": "taming.modules.losses.DummyLoss"}}}}
    if unconditional:
        params |= {"cond_stage_config": "__is_unconditional__", "unconditional": True, "sos_token": 0}
    else:
        params |= {"cond_stage_config": {"target": "taming.modules.util.Labelator",
                                         "params": {"n_classes": 10}}, "cond_stage_key": "class_label"}
    return {"model": {"base_learning_rate": 4.5e-6,
                      "target": "taming.models.cond_transformer.Net2NetTransformer", "params": params}}
