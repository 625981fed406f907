"""The released code (github.com/amirbar/visual_prompting at 6351e0d), imported unmodified for
side-by-side benchmarks, with the shims a current stack needs (`apply_shims`).

Where it is read from, first found: $CVF_RELEASED_CODE (a clone of that repository at that
commit), <repo>/.reference/visual_prompting (an ignored copy beside the code, for a machine that
gets the working tree alone), ../shared/reference/visual_prompting (the test material's copy).
Benchmark and test material only: the package code never imports it.
"""
from __future__ import annotations

import importlib
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


RELEASED_CODE_ENV = "CVF_RELEASED_CODE"
RELEASED_CODE_URL = "https://github.com/amirbar/visual_prompting (commit 6351e0d)"


def reference_dir() -> Path | None:
    """The released code's folder (the one holding models_mae.py), or None. A setting that
    points elsewhere is not overruled by a copy found beside the checkout."""
    if os.environ.get(RELEASED_CODE_ENV):
        candidates = [Path(os.environ[RELEASED_CODE_ENV])]
    else:
        candidates = [REPO / ".reference" / "visual_prompting",
                      REPO.parent / "shared" / "reference" / "visual_prompting"]
    for c in candidates:
        if (c / "models_mae.py").is_file():
            return c
    return None


def missing_reason() -> str | None:
    """None when the released code can be imported, else why not (one line)."""
    if reference_dir() is None:
        given = os.environ.get(RELEASED_CODE_ENV)
        if given:
            return f"{RELEASED_CODE_ENV}={given} holds no models_mae.py: point it at a clone of {RELEASED_CODE_URL}"
        return f"released code not found: clone {RELEASED_CODE_URL} and set {RELEASED_CODE_ENV} to it"
    for module, why in (("timm", "models_mae.py builds its blocks from timm"),
                        ("einops", "vqgan.py imports einops")):
        try:
            importlib.import_module(module)
        except ImportError:
            return f"the released code needs {module} ({why}): `pip install {module}`"
    return None


def _stub(name: str, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def apply_shims() -> None:
    """What the released code needs on a current stack: numpy's removed np.float, torch._six, and
    stubs for modules it imports but the compared paths never call."""
    np.float = float  # util/pos_embed.py uses np.float, removed in numpy 1.24
    # vqgan.py only subclasses LightningModule and imports OmegaConf for get_vq_model (replaced).
    sys.modules.setdefault("pytorch_lightning", _stub("pytorch_lightning", LightningModule=torch.nn.Module))
    sys.modules.setdefault("omegaconf", _stub("omegaconf", OmegaConf=None))
    # util/misc.py (engine_pretrain's loss scaler) imports `inf` from torch._six, gone in torch 2
    sys.modules.setdefault("torch._six", _stub("torch._six", inf=math.inf))
    for mod in ("matplotlib", "scipy", "cv2"):  # plotting, loadmat, shape drawing: never called here
        try:
            importlib.import_module(mod)
        except ImportError:
            sys.modules[mod] = _stub(mod)
            if mod == "matplotlib":
                sys.modules["matplotlib.patches"] = _stub("matplotlib.patches")
                sys.modules["matplotlib.pyplot"] = _stub("matplotlib.pyplot")
            else:
                sys.modules["scipy.io"] = _stub("scipy.io", loadmat=None)
    import torchvision.transforms.functional as tvf  # the detection loader's functional_tensor

    sys.modules.setdefault("torchvision.transforms.functional_tensor", tvf)


def import_released(vqgan_kwargs: dict):
    """-> the released modules {"models_mae", "vqgan", "mae_utils", "pascal_dataloader",
    "segmentation_utils", "reasoning_dataloader"}; `vqgan.get_vq_model` builds a VQModel of
    `vqgan_kwargs` (weights are loaded afterwards, from the same state_dict as cvf's model)."""
    root = reference_dir()
    if root is None or missing_reason():
        raise RuntimeError(missing_reason())
    apply_shims()
    for p in (root, root / "evaluate"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    vqgan = importlib.import_module("vqgan")
    vqgan.get_vq_model = lambda *a, **k: vqgan.VQModel(lossconfig=None, **vqgan_kwargs).eval()
    models_mae = importlib.import_module("models_mae")
    return {"models_mae": models_mae, "vqgan": vqgan,
            "mae_utils": importlib.import_module("mae_utils"),
            "pascal_dataloader": importlib.import_module("pascal_dataloader"),
            "segmentation_utils": importlib.import_module("segmentation_utils"),
            "reasoning_dataloader": importlib.import_module("reasoning_dataloader")}


def released_model(modules: dict, sizes: dict, img_size: int, state_dict: dict):
    """The released MaskedAutoencoderViT of `sizes`, holding `state_dict` (cvf's key names are
    the released ones, so a cvf model's weights load strictly)."""
    from functools import partial

    model = modules["models_mae"].MaskedAutoencoderViT(
        img_size=img_size, patch_size=sizes["patch_size"], embed_dim=sizes["embed_dim"],
        depth=sizes["depth"], num_heads=sizes["num_heads"],
        decoder_embed_dim=sizes["decoder_embed_dim"], decoder_depth=sizes["decoder_depth"],
        decoder_num_heads=sizes["decoder_num_heads"], mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    # mae_utils.generate_raw_prediction unrolls timm's Block and calls `blk.drop_path`, which
    # timm >= 0.6 split into drop_path1/drop_path2 (both Identity at drop rate 0, no weights).
    for blk in [*model.blocks, *model.decoder_blocks]:
        if not hasattr(blk, "drop_path"):
            blk.drop_path = blk.drop_path1
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"released and cvf state_dicts differ: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return model
