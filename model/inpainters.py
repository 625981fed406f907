"""The four inpainting models of the paper's comparison, behind one loader.

    mae-vqgan  MAE whose decoder predicts VQGAN codes (model/mae_vqgan.py), the paper's model
    mae        the same MAE predicting pixels (model/mae_vqgan.py, target "pixels")
    beit       BEiT: mask tokens inside the encoder, codes predicted (model/beit.py)
    vqgan-gpt  taming's VQGAN transformer, codes decoded one at a time (model/vqgan_gpt.py)

`checkpoint_kind` tells them apart from a checkpoint's own keys, so evaluation, the demo and
the prompt study take any of them with the same options; `load_inpainter` builds the model.
Every model then offers what `model.prompting.inpaint` needs: `patch_embed` (img_size,
patch_size, grid_size), `target`, and `predict_logits` + `vae` (mask-predicting models) or
`inpaint_tokens` + `vae` (the sequential transformer).
"""
from __future__ import annotations

from pathlib import Path

KINDS = ("mae-vqgan", "mae", "beit", "vqgan-gpt")
LABELS = {"mae-vqgan": "MAE-VQGAN", "mae": "MAE", "beit": "BEiT", "vqgan-gpt": "VQGAN"}


def read_state(path) -> tuple[dict, object]:
    """(state_dict, the whole loaded object) of any of the checkpoint layouts: cvf's and the
    released `{"model": ...}`, unilm's, taming's Lightning `last.ckpt`, a bare state_dict.
    Weights-only; Lightning classes read as inert placeholders."""
    from model.checkpoint import load_with_placeholders

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = load_with_placeholders(path)
    state = obj
    if isinstance(obj, dict):
        state = obj.get("model", obj.get("state_dict", obj.get("module", obj)))
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} holds no state_dict")
    for wrapper in ("module.", "_orig_mod."):
        if all(k.startswith(wrapper) for k in state):
            state = {k[len(wrapper):]: v for k, v in state.items()}
    return state, obj


def kind_of_state(state: dict, path="checkpoint", vqgan_config=None, vqgan_ckpt=None) -> str:
    from model import beit, vqgan_gpt
    from model.mae_vqgan import checkpoint_kind as mae_kind

    if vqgan_gpt.is_gpt_state(state):
        return "vqgan-gpt"
    if beit.is_beit_state(state):
        return "beit"
    return "mae-vqgan" if mae_kind(state, path, vqgan_config, vqgan_ckpt) == "tokens" else "mae"


def checkpoint_kind(path, vqgan_config=None, vqgan_ckpt=None) -> str:
    """Which of KINDS a checkpoint holds, from its keys (and, for an MAE, its head's shape)."""
    state, _ = read_state(path)
    return kind_of_state(state, path, vqgan_config, vqgan_ckpt)


def kind_of(model) -> str:
    """Which of KINDS a loaded model is."""
    from model.beit import Beit
    from model.vqgan_gpt import VqganTransformer

    if isinstance(model, VqganTransformer):
        return "vqgan-gpt"
    if isinstance(model, Beit):
        return "beit"
    return "mae" if getattr(model, "target", "tokens") == "pixels" else "mae-vqgan"


def describe(model) -> str:
    """One line for result files: the kind and what sets it apart."""
    kind = kind_of(model)
    if kind == "mae":
        return f"pixel MAE (norm_pix_loss {bool(model.norm_pix_loss)})"
    if kind == "mae-vqgan":
        return "MAE-VQGAN (tokens)"
    if kind == "beit":
        tokenizer = type(getattr(model, "vae", None)).__name__
        return f"BEiT ({model.positions} positions, codes of {tokenizer})"
    cond = "unconditional" if model.be_unconditional else f"class-conditional, class {model.class_label}"
    return f"VQGAN transformer ({cond}, greedy raster-order decoding)"


def load_inpainter(checkpoint, vqgan_config=None, arch=None, size: int | None = None, vqgan_ckpt=None,
                   dall_e=None, class_label: int | None = None):
    """Any of the four from its checkpoint, in eval mode on the CPU.

    mae-vqgan / mae: `model.mae_vqgan.load_checkpoint` (vqgan_config for the token head).
    beit: `model.beit.load_checkpoint`; its tokenizer from the checkpoint's `vae.*` with
    vqgan_config, from vqgan_config + vqgan_ckpt, or from `dall_e` (OpenAI's encoder.pkl /
    decoder.pkl folder) for unilm's public checkpoints.
    vqgan-gpt: `model.vqgan_gpt.load_checkpoint(vqgan_config, checkpoint)` with taming's
    Net2NetTransformer model.yaml (a cvf checkpoint records its own); `class_label` for a
    class-conditional transformer."""
    state, obj = read_state(checkpoint)
    kind = kind_of_state(state, checkpoint, vqgan_config, vqgan_ckpt)
    if kind == "vqgan-gpt":
        from model.vqgan_gpt import load_checkpoint, read_config

        config = vqgan_config
        if config is not None:
            try:
                read_config(config)
            except ValueError:
                if isinstance(obj, dict) and obj.get("config"):   # cvf's records its own config
                    config = None
                else:
                    raise ValueError(f"{checkpoint} is a VQGAN transformer: --vqgan-config must be taming's "
                                 "Net2NetTransformer model.yaml (transformer_config, first_stage_config), "
                                     "not the VQGAN's own") from None
        model = load_checkpoint(config, checkpoint, img_size=size)
        if class_label is not None:
            vocab = model.transformer.config.vocab_size
            if model.be_unconditional:
                raise ValueError(f"{checkpoint} is an unconditional transformer (SOS token): no --class-label")
            if not 0 <= int(class_label) < vocab:
                raise ValueError(f"--class-label {class_label} is not a class index of this transformer "
                                 f"(0..{vocab - 1})")
            model.class_label = int(class_label)
        elif not model.be_unconditional:
            raise ValueError(f"{checkpoint} is a class-conditional transformer: pass the class index "
                             "it is prompted with (--class-label)")
        return model
    if kind == "beit":
        from model.beit import load_checkpoint

        if not any(k.startswith("vae.") for k in state) and dall_e is None and (
                vqgan_config is None or vqgan_ckpt is None):
            raise ValueError(f"{checkpoint} is a BEiT without its tokenizer: pass --dall-e DIR (OpenAI's "
                             "encoder.pkl/decoder.pkl, for unilm's checkpoints) or --vqgan-config and "
                             "--vqgan-ckpt (the VQGAN whose codes it predicts)")
        return load_checkpoint(checkpoint, arch=arch, vqgan_config=vqgan_config, vqgan_ckpt=vqgan_ckpt,
                               dall_e=dall_e)
    from model.mae_vqgan import load_checkpoint

    return load_checkpoint(checkpoint, vqgan_config, arch=arch, vqgan_ckpt=vqgan_ckpt, img_size=size)
