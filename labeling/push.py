"""Create (or reuse) the labeling project and upload the next round of figures as tasks.

    python -m labeling.push --count 2000

Each run is one round: round 0 is a stratified sample; once the classifier has written
`scores/`, the next rounds take the figures nearest the threshold and carry the classifier's
prediction as a pre-annotation, so that annotators confirm rather than start from nothing.
The project uses Label Studio's uncertainty sampling, which serves first the tasks whose
prediction of the project's model version has the lowest score: we upload max(p, 1 - p) as
that score, so the least certain figure comes first.

Figures that are already tasks are never uploaded again, so a rerun after a crash never
duplicates a task (what it uploads is recorded as the next round).
"""
from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from collections import Counter
from pathlib import Path

from label_studio_sdk import LabelStudio
from tqdm import tqdm

from model import cli
from labeling import interface
from labeling.client import LabelStudioError, api_errors, connect, export_tasks, find_project
from labeling.sample import Key, choose, figure_key, labelable_figures, latest_scores, score_of
from pipeline.config import data_root

PROJECT_TITLE = "CVF figures: grid with a natural image?"
BATCH = 500  # tasks per import request


def document_root(root: Path, given: str | os.PathLike | None = None) -> Path:
    """The server's local-files document root: the dataset root unless told otherwise
    (a server the user runs may be rooted elsewhere: $CVF_LABEL_STUDIO_DOCUMENT_ROOT)."""
    given = given or os.environ.get("CVF_LABEL_STUDIO_DOCUMENT_ROOT")
    return Path(given).resolve() if given else root


def image_url(root: Path, docroot: Path, image_path: str) -> str:
    """The URL under which Label Studio's local-files storage serves a figure's PNG."""
    path = (root / image_path).resolve()
    if not path.is_relative_to(docroot):
        raise LabelStudioError(f"{path} is outside the server's local-files document root "
                               f"{docroot}; set CVF_LABEL_STUDIO_DOCUMENT_ROOT to the root the "
                               "server was started with")
    relative = path.relative_to(docroot)
    return "/data/local-files/?d=" + urllib.parse.quote(relative.as_posix())


def prediction(score: dict, threshold: float) -> dict:
    """A pre-annotation: the classifier's choice, scored by its certainty max(p, 1 - p)."""
    p = score["score"]
    return {"model_version": score["model_version"],
            "score": max(p, 1.0 - p),
            "result": interface.choice_result(interface.CHOICE_OF_LABEL[int(p >= threshold)])}


def caption_shown(figure: dict) -> str:
    """The caption line under the figure: label and caption, or why there is none."""
    caption = figure.get("caption") or ""
    if not caption:
        return "(no caption found" + (f": {figure['caption_error']})" if figure.get("caption_error") else ")")
    label = figure.get("figure_label") or ""  # a printed "Figure 3" helps a person; "fig:x" does not
    return f"{label}: {caption}" if label.startswith(("Figure ", "Table ")) else caption


def task(figure: dict, root: Path, docroot: Path, score: dict | None, threshold: float) -> dict:
    data = {
        "image": image_url(root, docroot, figure["image_path"]),
        "paper_id": figure["paper_id"],
        "img_name": figure["img_name"],
        "source_path": figure.get("source_path") or "",
        # the paper's words for the figure, shown under it (pipeline.latex; the PDF fallback's caption)
        "caption": caption_shown(figure),
        "subcaption": f"Sub-caption: {figure['subcaption']}" if figure.get("subcaption") else "",
        "source_kind": figure.get("source_kind") or "",
        "sha256": figure["sha256"],
        "shard": figure["shard"],
        "round": figure["round"],
        "rule": figure["rule"],
        "prediction_score": score["score"] if score else None,
        "model_version": score["model_version"] if score else None,  # whose prediction_score it is
        "threshold": threshold,
    }
    out = {"data": data}
    if score:
        out["predictions"] = [prediction(score, threshold)]
    return out


def ensure_project(client: LabelStudio, title: str, images_dir: Path):
    """The project with the labeling interface and a local-files storage over the images."""
    project = find_project(client, title)
    if project is None:
        with api_errors("creating the project"):
            project = client.projects.create(
                title=title, label_config=interface.LABEL_CONFIG,
                expert_instruction=interface.INSTRUCTION, show_instruction=True,
                sampling="Uncertainty sampling", show_skip_button=True,
                description="Is the figure grid-like with at least one natural image? "
                            "Made by cvf's labeling.push.")
    with api_errors("setting up local-files storage"):
        storages = client.import_storage.local.list(project=project.id)
        if not any(Path(s.path) == images_dir for s in storages):
            # Only grants the server leave to serve files under images/; it is never synced
            # (a sync would make a task of every file), the tasks come from `push`.
            client.import_storage.local.create(
                project=project.id, path=str(images_dir), title="cvf figures",
                use_blob_urls=True, regex_filter=r"^$")
    return project


def push(client: LabelStudio, root: str | os.PathLike | None = None, count: int = 2000,
         title: str = PROJECT_TITLE, rule: str = "auto", threshold: float = 0.5,
         seed: int = 0, docroot: str | os.PathLike | None = None) -> dict:
    """Upload the next round of `count` figures; return what was done."""
    root = data_root(root)
    docroot = document_root(root, docroot)
    figures, scores = labelable_figures(root), latest_scores(root)
    if not figures:
        raise ValueError(f"no figures to label under {root / 'figures'}: run the extract stage first")
    # A record whose PNG is gone would show annotators a broken image: leave it out, and say so.
    on_disk = [f for f in figures if (root / f["image_path"]).is_file()]
    missing_images = len(figures) - len(on_disk)

    project = ensure_project(client, title, root / "images")
    tasks = export_tasks(client, project.id)
    already: set[Key] = {(t["data"]["paper_id"], t["data"]["img_name"]) for t in tasks}
    round_ = 1 + max((t["data"].get("round", 0) for t in tasks), default=-1)
    chosen = choose(on_disk, scores, count, round_, already, rule, threshold, seed)
    new_tasks = [task(f, root, docroot, score_of(f, scores), threshold) for f in chosen]
    expected_predictions = sum(1 for t in new_tasks if "predictions" in t)

    created = predicted = 0
    with api_errors(f"importing tasks into project {project.id}"):
        for start in tqdm(range(0, len(new_tasks), BATCH), desc="importing tasks", unit="batch",
                          disable=len(new_tasks) <= BATCH):
            batch = new_tasks[start:start + BATCH]
            answer = client.projects.import_tasks(project.id, request=batch)
            created += answer.task_count or 0
            predicted += answer.prediction_count or 0
    if created != len(new_tasks) or predicted != expected_predictions:
        # Label Studio answers 201 even when it drops predictions whose names do not match.
        raise LabelStudioError(f"Label Studio took {created}/{len(new_tasks)} tasks and "
                               f"{predicted}/{expected_predictions} predictions")

    refreshed = refresh_predictions(client, project.id, tasks, figures, scores, threshold)
    if scores:
        # Uncertainty sampling only looks at predictions of the project's model version: the
        # version that scored most figures (all of them, unless a re-scoring is half done).
        model_version = Counter(s["model_version"] for s in scores.values()).most_common(1)[0][0]
        with api_errors("setting the project's model version"):
            client.projects.update(project.id, model_version=model_version)
    return {"project_id": project.id, "round": round_, "tasks_created": created,
            "predictions_created": predicted + refreshed, "tasks_before": len(tasks),
            "missing_images": missing_images,
            "rules": sorted({f["rule"].split(" ")[0] for f in chosen})}


def refresh_predictions(client: LabelStudio, project_id: int, tasks: list[dict],
                        figures: list[dict], scores: dict, threshold: float) -> int:
    """Give unlabeled tasks of earlier rounds the current classifier's prediction."""
    if not scores or not tasks:
        return 0
    by_key = {figure_key(f): f for f in figures}
    with api_errors("listing predictions"):
        # (the JSON export lists predictions by id only)
        predicted = {(p.task, p.model_version) for p in client.predictions.list(project=project_id)}
    stale = []
    for t in tasks:
        figure = by_key.get((t["data"]["paper_id"], t["data"]["img_name"]))
        score = score_of(figure, scores) if figure else None
        if t.get("annotations") or score is None or (t["id"], score["model_version"]) in predicted:
            continue
        stale.append((t, score))
    if not stale:
        return 0
    requests = [{"task": t["id"], **prediction(score, threshold)} for t, score in stale]
    with api_errors("importing predictions"):
        answer = client.projects.import_predictions(project_id, request=requests)
    if answer.created != len(requests):
        raise LabelStudioError(f"Label Studio took {answer.created}/{len(requests)} predictions")
    return answer.created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labeling.push",
        description="Upload the next round of figures to label into the Label Studio project "
                    "(created on first use). Round 0 is stratified by year and source kind; "
                    "once scores/ exist, rounds pick the figures the classifier is least sure "
                    "of and show its prediction.")
    parser.add_argument("--count", type=cli.non_negative_int, default=2000,
                        help="figures in this round (default 2000; 0 only refreshes predictions)")
    parser.add_argument("--root", type=cli.writable_dir, help="dataset root (default: $CVF_DATA or ./data)")
    parser.add_argument("--url", help="Label Studio URL (default: $CVF_LABEL_STUDIO_URL or the local server)")
    parser.add_argument("--project", default=PROJECT_TITLE, help="project title")
    parser.add_argument("--rule", choices=["auto", "stratified", "uncertainty"], default="auto",
                        help="how to choose (auto: uncertainty once scores exist)")
    parser.add_argument("--threshold", type=cli.unit_interval, default=0.5,
                        help="classifier decision threshold, 0 to 1 (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified sample")
    parser.add_argument("--document-root", help="the server's local-files document root "
                        "(default: $CVF_LABEL_STUDIO_DOCUMENT_ROOT or the dataset root)")
    args = parser.parse_args(argv)
    try:
        client = connect(args.url, root=args.root)
        done = push(client, args.root, args.count, args.project, args.rule, args.threshold,
                    args.seed, args.document_root)
    except (LabelStudioError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"project {done['project_id']}, round {done['round']} ({', '.join(done['rules']) or 'nothing new'}): "
          f"{done['tasks_created']} tasks, {done['predictions_created']} predictions "
          f"(the project had {done['tasks_before']} tasks)")
    if done["missing_images"]:
        print(f"warning: left out {done['missing_images']} figures whose PNG is missing under images/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
