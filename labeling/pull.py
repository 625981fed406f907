"""Export the project's annotations into the labels table.

    python -m labeling.pull

Writes, atomically, under the dataset root:
  labels/history.parquet  every annotation ever pulled, one row per (annotation, its last edit);
                          rows from earlier pulls are kept even when the annotation was since
                          changed or deleted in Label Studio
  labels/labels.parquet   the current label per figure: its latest annotation in the project

Pulling again without new work in Label Studio writes the same tables. Cancelled (skipped)
annotations are not labels and are left out; "unsure" is kept, with a null label.
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path

from label_studio_sdk import LabelStudio

from model import cli
from labeling import interface
from labeling.client import LabelStudioError, api_errors, connect, export_tasks, find_project
from labeling.push import PROJECT_TITLE
from labeling.sample import latest_scores
from pipeline.config import data_root
from pipeline.contract import ANNOTATION_SCHEMA
from pipeline.store import read_rows, write_rows

LABELS_SCHEMA = ANNOTATION_SCHEMA  # the contract's name for Label Studio's answers
HISTORY_SCHEMA = LABELS_SCHEMA


def labels_path(root: Path) -> Path:
    return root / "labels" / "labels.parquet"


def history_path(root: Path) -> Path:
    return root / "labels" / "history.parquet"


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def shown_probability(data: dict, shown: dict, scores: dict) -> float | None:
    """The classifier's p(positive) behind the prediction the annotator saw.

    Label Studio attaches the prediction shown to the annotation, but a prediction holds only
    max(p, 1-p). The task's data holds p for the model of its first upload; a later round may
    have given the task a newer model's prediction, whose p is in that model's scores.
    """
    model = shown.get("model_version")
    if not model or model == data.get("model_version"):
        return data.get("prediction_score")
    row = scores.get((data["paper_id"], data["img_name"]))
    if row and row.get("model_version") == model and row.get("sha256") == data.get("sha256"):
        return row["score"]
    return None  # scored since by yet another model: the probability shown is not known


def annotation_rows(tasks: list[dict], project_id: int, annotators: dict[int, str],
                    scores: dict | None = None) -> list[dict]:
    """One row per submitted annotation that holds one of our choices.

    `scores` (`labeling.sample.latest_scores`) give the probability behind predictions that a
    later round attached to older tasks.
    """
    rows = []
    for t in tasks:
        data = t["data"]
        for a in t.get("annotations", []):
            choice = interface.choice_of(a.get("result"))
            if a.get("was_cancelled") or choice is None:
                continue
            label, choice_name = interface.CHOICES[choice]
            shown_prediction = a.get("prediction") or {}
            shown = interface.choice_of(shown_prediction.get("result"))
            agreed = None
            if shown is not None and label is not None:
                agreed = interface.CHOICES[shown][0] == label
            user = a.get("completed_by")
            user = user.get("id") if isinstance(user, dict) else user
            rows.append({
                "paper_id": data["paper_id"], "img_name": data["img_name"],
                "sha256": data.get("sha256"), "label": label, "choice": choice_name,
                "annotator": annotators.get(user, str(user)),
                "created_at": _time(a.get("created_at")), "lead_time": a.get("lead_time"),
                "task_id": t["id"], "project_id": project_id,
                "prediction_score": shown_probability(data, shown_prediction, scores or {}),
                "agreed_with_prediction": agreed,
                "round": data.get("round"), "rule": data.get("rule"),
                "source": source_of(a["result"]),
                "annotation_id": a["id"], "updated_at": _time(a.get("updated_at")),
            })
    return rows


def source_of(result: list[dict]) -> str:
    """"replay-truth" for the demo's simulated answers, else "label-studio" (a person)."""
    return "replay-truth" if interface.origin_of(result) == "replay-truth" else "label-studio"


def _history_key(row: dict) -> tuple:
    return row["project_id"], row["annotation_id"], row["updated_at"]


def merge_history(old: list[dict], new: list[dict]) -> list[dict]:
    """Union of two histories; the same annotation edit pulled twice is one row."""
    merged = {_history_key(r): r for r in old}
    merged.update({_history_key(r): r for r in new})
    return sorted(merged.values(), key=lambda r: (r["paper_id"], r["img_name"], r["updated_at"],
                                                   r["project_id"], r["annotation_id"]))


def latest_per_figure(rows: list[dict]) -> list[dict]:
    """The most recently edited annotation of each figure (ties: the later annotation id)."""
    latest = {}
    for r in sorted(rows, key=lambda r: (r["updated_at"], r["annotation_id"])):
        latest[r["paper_id"], r["img_name"]] = r
    return sorted(latest.values(), key=lambda r: (r["paper_id"], r["img_name"]))


def annotator_names(client: LabelStudio) -> dict[int, str]:
    with api_errors("listing users"):
        return {u.id: u.email or u.username for u in client.users.list()}


def pull(client: LabelStudio, root: str | os.PathLike | None = None,
         title: str = PROJECT_TITLE) -> dict:
    """Export the project and write labels + history; return counts."""
    root = data_root(root)
    project = find_project(client, title)
    if project is None:
        raise LabelStudioError(f"no project titled {title!r}; run `python -m labeling.push` first")
    tasks = export_tasks(client, project.id)
    current = annotation_rows(tasks, project.id, annotator_names(client), latest_scores(root))
    annotations = [a for t in tasks for a in t.get("annotations", [])]
    skipped = sum(bool(a.get("was_cancelled")) for a in annotations)
    old = read_rows(history_path(root)) if history_path(root).exists() else []
    history = merge_history(old, current)
    labels = latest_per_figure(current)
    # History first: a crash between the two writes leaves labels that history covers.
    write_rows(history_path(root), history, HISTORY_SCHEMA)
    write_rows(labels_path(root), labels, LABELS_SCHEMA)
    return {"project_id": project.id, "tasks": len(tasks), "labels": len(labels),
            "positive": sum(r["label"] == 1 for r in labels),
            "negative": sum(r["label"] == 0 for r in labels),
            "unsure": sum(r["label"] is None for r in labels),
            "history": len(history), "new_history": len(history) - len(old),
            "skipped": skipped,
            # submitted, yet holding none of our choices: made with another labeling interface
            "unreadable": len(annotations) - skipped - len(current)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labeling.pull",
        description="Export the annotations of the Label Studio project into "
                    "<root>/labels/labels.parquet (current label per figure) and "
                    "<root>/labels/history.parquet (every annotation ever pulled).")
    parser.add_argument("--root", type=cli.writable_dir, help="dataset root (default: $CVF_DATA or ./data)")
    parser.add_argument("--url", help="Label Studio URL (default: $CVF_LABEL_STUDIO_URL or the local server)")
    parser.add_argument("--project", default=PROJECT_TITLE, help="project title")
    args = parser.parse_args(argv)
    try:
        done = pull(connect(args.url, root=args.root), args.root, args.project)
    except LabelStudioError as e:
        print(f"error: {e}; nothing written", file=sys.stderr)
        return 2
    print(f"project {done['project_id']}: {done['labels']} labelled figures of {done['tasks']} tasks "
          f"({done['positive']} positive, {done['negative']} negative, {done['unsure']} unsure); "
          f"history {done['history']} rows, {done['new_history']} new -> {labels_path(data_root(args.root))}")
    if done["unreadable"]:
        print(f"warning: {done['unreadable']} annotations hold none of the interface's choices "
              "(was the labeling interface changed?); they are not labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
