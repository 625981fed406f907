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
import pickle
import re
import zipfile
from pathlib import Path

import torch

from model.files import atomic_write

_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_NOT_A_CONTAINER = re.compile(r"(SETITEMS?|append).* but got <class 'opaque\.([\w.]+)'>")
# What a Lightning `.ckpt` may reference besides tensors: Lightning's own classes (callbacks keyed
# by class, AttributeDict hyper-parameters) and numpy scalars in callback states.
_OPAQUE_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "numpy.")


class OpaqueGlobal:
    """Stands in for a class a checkpoint references outside its weights. Inert: instances only
    keep the arguments and state the pickle hands them; no code of the real class runs."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


def load_safely(path, map_location="cpu", allow_namespace: bool = True):
    """`torch.load(weights_only=True)`, allowing exactly `argparse.Namespace` if asked.

    Zip-format files (torch >= 1.6) are memory-mapped: a released ViT-L checkpoint carries ~2.7 GB
    of optimizer state that loading the model never reads, so it is never paged in.
    """
    allowed = [argparse.Namespace] if allow_namespace else []
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True,
                              mmap=zipfile.is_zipfile(path))
    except (FileNotFoundError, MemoryError):
        raise
    except Exception as e:  # torch raises many kinds for a file that is no checkpoint
        raise refused(path, e) from None


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class UnreadableCheckpoint(ValueError, pickle.UnpicklingError):
    """A checkpoint refused (it references code) or not a checkpoint at all. A ValueError for
    CLIs' one-line errors, an UnpicklingError for callers that catch those."""


def refused(path, e: Exception) -> UnreadableCheckpoint:
    """What a failed weights-only load means, in one line: a checkpoint that references code
    (refused; torch's own message would advise the unsafe `weights_only=False`), or a file that
    is not a PyTorch checkpoint at all."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and (name := _GLOBAL.search(text)):
        return UnreadableCheckpoint(f"{path}: refused: the checkpoint references {name.group(1)}, which "
                          f"could run code when loaded; only tensors and plain containers "
                          f"(and argparse.Namespace) are loaded")
    detail = next((line.strip() for line in reversed(text.splitlines())
                   if line.strip() and not line.startswith("Check the documentation")), "")
    return UnreadableCheckpoint(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}"
                      f"{': ' + detail[:200] if detail else ''})")


def _opaque(name: str, kind=None):
    """A placeholder for `name`; a dict or list subclass stands in as a plain dict / list."""
    if kind is not None:
        return (kind, name)
    cls = type(name.rsplit(".", 1)[-1], (OpaqueGlobal,), {"__module__": "opaque", "__qualname__": name})
    return (cls, name)


def load_with_placeholders(path, prefixes=_OPAQUE_PREFIXES, map_location="cpu"):
    """`torch.load(weights_only=True)` of a file that names classes outside its tensors: each
    global whose dotted name starts with one of `prefixes` is replaced by an inert placeholder
    (found one at a time from the unpickler's refusals), so no code of it runs and its package
    need not be installed; `argparse.Namespace` (training args) is allowed. Any other global (a function to call, a foreign class) is refused."""
    opaque: dict[str, tuple] = {}
    for _ in range(256):  # a file references at most a few dozen such globals
        try:
            with torch.serialization.safe_globals([argparse.Namespace, *opaque.values()]):
                return torch.load(path, map_location=map_location, weights_only=True,
                                  mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as e:
            unknown, container = _UNSUPPORTED.search(str(e)), _NOT_A_CONTAINER.search(str(e))
            if unknown and unknown.group(1).startswith(tuple(prefixes)):
                opaque[unknown.group(1)] = _opaque(unknown.group(1))
            elif container and container.group(2) in opaque:   # a dict / list subclass
                kind = dict if container.group(1).startswith("SETITEM") else list
                opaque[container.group(2)] = _opaque(container.group(2), kind)
            else:
                raise refused(path, e) from None
        except (FileNotFoundError, MemoryError):
            raise
        except Exception as e:  # torch raises many kinds for a file that is no checkpoint
            raise refused(path, e) from None
    raise UnreadableCheckpoint(f"{path}: too many unknown globals")


def load_lightning_checkpoint(path, map_location="cpu") -> dict:
    """The `state_dict` of a (taming / PyTorch Lightning) `.ckpt`, or of a plain state_dict file.

    Loads with `weights_only=True`; each Lightning (or numpy) global the file names is replaced
    by an inert placeholder (`load_with_placeholders`), so Lightning need not be installed. Any
    other global (a function to call, a foreign class) is refused.
    """
    obj = load_with_placeholders(path, _OPAQUE_PREFIXES, map_location)
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj["state_dict"]
    return obj


def mismatches(model: torch.nn.Module, state: dict) -> dict[str, str]:
    """key -> why `state` does not load into `model`: missing, unexpected, or another shape."""
    expected = model.state_dict()
    out = {k: f"{k} is {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
           for k, v in expected.items() if k in state and state[k].shape != v.shape}
    out |= {k: f"{k} missing" for k in expected if k not in state}
    return out | {k: f"{k} unexpected" for k in state if k not in expected}


def save_atomically(obj, path) -> None:
    """`torch.save`, never a torn checkpoint (`model.files.atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))
