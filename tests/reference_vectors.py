"""The released model's reference test vectors (../shared/testdata/vectors, see its VECTORS.md):
one place that finds a set, reads its config and weights, and rebuilds its checkpoint shapes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

VECTORS = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "vectors"
# set_a ships, set_b is named by VECTORS.md; any other set_* folder present is tested too.
SETS = sorted({"set_a", "set_b"} | {p.name for p in VECTORS.glob("set_*") if p.is_dir()})

MAE_SIZE_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
                 "decoder_depth", "decoder_num_heads", "mlp_ratio")


def set_dir(testdata: Path, name: str) -> Path:
    """The folder of reference set `name` (set_a ships; set_b and others may not), or skip."""
    d = testdata / "vectors" / name
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    return d


def config(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())


def load(d: Path, name: str) -> dict:
    """One of the set's `.pt` files (plain dicts of tensors)."""
    return torch.load(d / f"{name}.pt", weights_only=True)


def vqgan_params(cfg: dict) -> dict:
    """`model.params` of taming's model.yaml for the set's VQGAN."""
    return {k: cfg["vqgan"][k] for k in ("ddconfig", "n_embed", "embed_dim")}


def mae_sizes(cfg: dict) -> dict:
    return {k: cfg["mae"][k] for k in MAE_SIZE_KEYS}


def full_state(d: Path) -> dict:
    """The released model's state_dict: MAE weights plus the VQGAN's under `vae.`."""
    return {**load(d, "mae_state_dict"), **{"vae." + k: v for k, v in load(d, "vqgan_state_dict").items()}}
