"""Safe checkpoint loading and atomic saving.

Checkpoints are pickles; unpickling an untrusted one can run arbitrary code. Everything here
loads with `torch.load(weights_only=True)` and allows only the few extra globals the released
files are known to hold, never falling back to unrestricted unpickling:
* MAE-VQGAN `checkpoint-*.pth` (`{"model", "optimizer", "epoch", "scaler", "args"}`) pickles an
  `argparse.Namespace` for `args`: allowed, nothing else.
* taming's Lightning `last.ckpt` keys its callback states by class (e.g. Lightning's
  `ModelCheckpoint`). Those class references are replaced by an inert placeholder so that
  Lightning need not be installed; only `state_dict` is used.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import tempfile
from pathlib import Path

import torch

_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_OPAQUE_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.")


class OpaqueGlobal:
    """Stands in for a Lightning class reference found in a checkpoint; it does nothing."""


def load_safely(path, map_location="cpu", allow_namespace: bool = True):
    """`torch.load(weights_only=True)`, allowing exactly `argparse.Namespace` if asked."""
    allowed = [argparse.Namespace] if allow_namespace else []
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location=map_location, weights_only=True)


def load_lightning_checkpoint(path, map_location="cpu") -> dict:
    """The `state_dict` of a (taming / PyTorch Lightning) `.ckpt`, or of a plain state_dict file."""
    opaque: list = []
    for _ in range(32):  # a checkpoint references at most a handful of Lightning classes
        try:
            with torch.serialization.safe_globals(opaque):
                obj = torch.load(path, map_location=map_location, weights_only=True)
            break
        except pickle.UnpicklingError as e:
            m = _UNSUPPORTED.search(str(e))
            if not m or not m.group(1).startswith(_OPAQUE_PREFIXES):
                raise
            opaque.append((OpaqueGlobal, m.group(1)))
    else:
        raise pickle.UnpicklingError(f"{path}: too many unknown Lightning globals")
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj["state_dict"]
    return obj


def save_atomically(obj, path) -> None:
    """`torch.save` to a temp file in the same folder, fsync, rename: never a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
