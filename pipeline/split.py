"""The 90/10 split by paper: a pure function of the paper id and a seed.

Hashing (rather than shuffling a list) means adding papers never moves a paper from one split
to the other, and every figure of a paper lands in the same split.
"""
from __future__ import annotations

import hashlib

VAL_FRACTION = 0.1


def split_of(paper_id: str, seed: int = 0, val_fraction: float = VAL_FRACTION) -> str:
    """'val' for about `val_fraction` of paper ids, 'train' for the rest, stable forever."""
    digest = hashlib.sha256(f"cvf-split:{seed}:{paper_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "val" if u < val_fraction else "train"
