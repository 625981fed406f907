"""Stand-in annotators for the demo: answer tasks from the replay corpus's ground truth.

The answers go through Label Studio's API like a person's, marked with origin "replay-truth"
so that `labeling.pull` records them with source "replay-truth", never as human labels.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from label_studio_sdk import LabelStudio
from tqdm import tqdm

from labeling import interface
from labeling.client import api_errors, export_tasks
from labeling.sample import Key
from pipeline.store import read_table


def read_truth(path: str | os.PathLike) -> dict[Key, bool]:
    """`is_grid_with_photo` per figure from a truth.parquet, or from every one under a folder."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("truth.parquet"))
    if not files:
        raise FileNotFoundError(f"no truth.parquet at {path} (the replay corpus writes it)")
    table = read_table(files).select(["paper_id", "img_name", "is_grid_with_photo"])
    return {(r["paper_id"], r["img_name"]): bool(r["is_grid_with_photo"]) for r in table.to_pylist()}


def _fraction(seed: int, *parts) -> float:
    """A stable number in [0, 1) per item: which tasks get answered, and how slowly."""
    digest = hashlib.sha256("\x1f".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def answer_from_truth(client: LabelStudio, project_id: int, truth: dict[Key, bool],
                      share: float = 0.5, seed: int = 0) -> int:
    """Answer about `share` of the project's unanswered tasks from the truth; return how many."""
    todo = [t for t in export_tasks(client, project_id)
            if not t.get("annotations") and (key := (t["data"]["paper_id"], t["data"]["img_name"])) in truth
            and _fraction(seed, *key) < share]
    answered = 0
    for t in tqdm(todo, desc="answering from the replay truth", unit="task"):
        key = (t["data"]["paper_id"], t["data"]["img_name"])
        choice = interface.CHOICE_OF_LABEL[int(truth[key])]
        with api_errors(f"annotating task {t['id']}"):
            client.annotations.create(
                id=t["id"], result=interface.choice_result(choice, origin="replay-truth"),
                lead_time=round(2.0 + 8.0 * _fraction(seed, "lead", *key), 2))
        answered += 1
    return answered
