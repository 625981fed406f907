"""`model.files.atomic_write`: the one way `model/` writes a file (checkpoints, token caches,
data shards, evaluation results)."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import save_atomically
from model.files import atomic_write
from model.train import save_npy_atomically

MODEL = Path(__file__).resolve().parent.parent / "model"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half of the new")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_checkpoints_and_token_caches_go_through_it_with_the_usual_mode(tmp_path):
    saved = os.umask(0o022)
    try:
        save_atomically({"w": torch.ones(2)}, tmp_path / "ckpt" / "checkpoint-1.pth")
        save_npy_atomically(np.arange(4, dtype=np.uint16), tmp_path / "tokens.npy")
    finally:
        os.umask(saved)
    assert torch.load(tmp_path / "ckpt" / "checkpoint-1.pth", weights_only=True)["w"].tolist() == [1.0, 1.0]
    assert np.load(tmp_path / "tokens.npy").tolist() == [0, 1, 2, 3]
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ckpt" / "checkpoint-1.pth", tmp_path / "tokens.npy")}
    assert modes == {0o644}  # as any new file, not mkstemp's 0600


def test_model_has_one_atomic_write():
    """Only model/files.py renames a temporary file into place."""
    renaming = sorted(p.name for p in MODEL.glob("*.py") if re.search(r"os\.(replace|rename)\(", p.read_text()))
    assert renaming == ["files.py"]
