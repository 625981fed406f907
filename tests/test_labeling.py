"""Labeling against a real Label Studio server (started once per run on a free loopback port).

Annotations are created through the API as stand-ins for people; the labels table that
`labeling.pull` writes is then checked row by row.
"""
from __future__ import annotations

import io
import shutil
import socket
import sqlite3
import stat
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from PIL import Image

from labeling import demo, interface, pull, push, sample, serve, simulate
from labeling.client import LabelStudioError, connect, export_tasks, find_project
from pipeline.store import read_rows, sha256_bytes, write_rows

# The columns of the figure records (docs/contract.md) this stage reads.
FIGURE_SCHEMA = pa.schema([
    ("paper_id", pa.string()), ("img_name", pa.string()), ("source_path", pa.string()),
    ("source_kind", pa.string()), ("format", pa.string()), ("image_path", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("sha256", pa.string()),
    ("phash", pa.string()), ("bytes", pa.int64()), ("status", pa.string()),
    ("error", pa.string()), ("included", pa.bool_()), ("name_filter", pa.bool_()),
    ("dup_of", pa.string()), ("near_dup_of", pa.string()),
])
SCORE_SCHEMA = pa.schema([("paper_id", pa.string()), ("img_name", pa.string()),
                          ("sha256", pa.string()), ("score", pa.float64()),
                          ("model_version", pa.string())])


def make_figures(root: Path, spec: dict[str, list[tuple[str, str, str]]]) -> list[dict]:
    """Write figure records and real PNGs: spec = {shard: [(paper_id, img_name, source_kind)]}."""
    records = []
    for shard, figures in spec.items():
        rows = []
        for i, (paper, name, kind) in enumerate(figures):
            image = Image.new("RGB", (48 + i, 32), (40 * i % 256, 90, 160))
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            data = buf.getvalue()
            image_path = f"images/{shard}/{paper}/{Path(name).stem}.png"
            (root / image_path).parent.mkdir(parents=True, exist_ok=True)
            (root / image_path).write_bytes(data)
            rows.append({"paper_id": paper, "img_name": name, "source_path": name.replace("_", "/"),
                         "source_kind": kind, "format": "png", "image_path": image_path,
                         "width": image.width, "height": image.height, "sha256": sha256_bytes(data),
                         "phash": "0" * 16, "bytes": len(data), "status": "ok", "error": "",
                         "included": True, "name_filter": False, "dup_of": "", "near_dup_of": ""})
        write_rows(root / "figures" / f"{shard}.parquet", rows, FIGURE_SCHEMA)
        records += rows
    return records


def small_corpus(root: Path) -> list[dict]:
    return make_figures(root, {
        "2012-03": [("1203.0001", "fig_a.png", "eprint"), ("1203.0001", "fig_b.png", "eprint"),
                    ("1203.0002", "page-3", "pdf")],
        "2019-07": [("1907.00011", "figs_grid.png", "eprint"), ("1907.00011", "figs_plot.png", "eprint"),
                    ("1907.00012", "teaser.jpg", "eprint"), ("1907.00013", "page-1", "pdf")],
    })


# --- the server -----------------------------------------------------------------------------

@pytest.fixture
def ls(label_studio, request, monkeypatch):
    """(client, dataset root, project title) for one test."""
    root = label_studio["docroot"] / request.node.name
    root.mkdir()
    monkeypatch.setenv("CVF_LABEL_STUDIO_DOCUMENT_ROOT", str(label_studio["docroot"]))
    client = connect(label_studio["url"], label_studio["token"])
    return client, root, f"cvf {request.node.name}"[:50]  # Label Studio allows 50 characters


def annotate(client, task_id: int, choice: str, lead_time: float = 4.0):
    return client.annotations.create(id=task_id, result=interface.choice_result(choice),
                                     lead_time=lead_time)


def tasks_by_key(client, project_id):
    return {(t["data"]["paper_id"], t["data"]["img_name"]): t for t in export_tasks(client, project_id)}


# --- sampling (no server) ---------------------------------------------------------------------

def fig(year, kind, paper, name, sha="x"):
    return {"paper_id": paper, "img_name": name, "source_kind": kind, "year": year,
            "shard": f"{year}-01", "sha256": sha}


def test_stratified_sample_is_equal_per_stratum_and_spreads_over_papers():
    figures = ([fig(2012, "pdf", "p1", f"n{i}") for i in range(2)]                  # small stratum
               + [fig(2015, "eprint", f"q{i % 5}", f"n{i}") for i in range(40)]
               + [fig(2022, "eprint", f"r{i % 20}", f"n{i}") for i in range(400)])
    chosen = sample.stratified(figures, 20, round_=0, seed=1)
    by_stratum = {}
    for f in chosen:
        by_stratum[f["rule"]] = by_stratum.get(f["rule"], 0) + 1
    # The 2-figure stratum is exhausted; the other two share the rest equally.
    assert by_stratum == {"stratified year=2012 source=pdf": 2,
                          "stratified year=2015 source=eprint": 9,
                          "stratified year=2022 source=eprint": 9}
    assert len({f["paper_id"] for f in chosen if f["year"] == 2015}) == 5  # all 5 papers used
    assert len({f["paper_id"] for f in chosen if f["year"] == 2022}) == 9  # 9 papers, one each
    assert all(f["round"] == 0 for f in chosen)
    assert chosen == sample.stratified(figures, 20, round_=0, seed=1)     # deterministic
    assert chosen != sample.stratified(figures, 20, round_=0, seed=2)


def test_uncertainty_takes_scores_nearest_threshold_and_ignores_stale_ones():
    figures = [fig(2020, "eprint", "p", f"n{i}", sha=f"s{i}") for i in range(5)]
    scores = {("p", f"n{i}"): {"score": s, "sha256": f"s{i}", "model_version": "v1"}
              for i, s in enumerate([0.05, 0.45, 0.9, 0.58, 0.5])}
    scores["p", "n4"]["sha256"] = "another image"  # scored before the figure changed
    scores["p", "n0"]["score"] = None                # the scorer could not read it
    chosen = sample.choose(figures, scores, 2, round_=3, already={("p", "n1")})
    assert [f["img_name"] for f in chosen] == ["n3", "n2"]
    assert chosen[0]["rule"] == "uncertainty |p-0.5|=0.080 model=v1"
    assert {f["round"] for f in chosen} == {3}
    with pytest.raises(ValueError, match="needs classifier scores"):
        sample.choose(figures, {}, 2, 0, set(), rule="uncertainty")


def test_a_negative_count_is_refused_not_read_as_a_slice():
    figures = [fig(2020, "eprint", "p", f"n{i}") for i in range(10)]
    scores = {("p", f"n{i}"): {"score": i / 10, "sha256": "x", "model_version": "v1"} for i in range(10)}
    for rule in ("stratified", "uncertainty"):
        with pytest.raises(ValueError, match="count"):
            sample.choose(figures, scores, -3, 0, set(), rule=rule)
    assert sample.choose(figures, scores, 0, 0, set()) == []
    with pytest.raises(SystemExit) as exit_:
        push.main(["--count", "-3"])
    assert exit_.value.code == 2


def test_interface_has_hotkeys_large_figure_context_and_keeps_unsure():
    import re
    import xml.etree.ElementTree as ET

    view = ET.fromstring(interface.LABEL_CONFIG)
    choices = view.find(".//Choices")
    assert (choices.get("name"), choices.get("toName")) == (interface.FROM_NAME, interface.TO_NAME)
    assert choices.get("choice") == "single-radio" and choices.get("required") == "true"
    hotkeys = {c.get("value"): c.get("hotkey") for c in choices.findall("Choice")}
    assert hotkeys == {"Grid with a photo": "1", "Not a photo grid": "2", "Unsure": "3"}
    assert set(hotkeys) == set(interface.CHOICES)
    image = view.find(".//Image")
    assert image.get("name") == interface.TO_NAME and image.get("maxWidth") == "100%"
    assert image.get("zoom") == "true"
    shown = {t.get("value") for t in view.iter("Text")}
    assert shown == {"$paper_id", "$img_name", "$source_path", "$caption", "$subcaption"}
    # the caption sits under the figure, in the image's column
    column = next(v for v in view.iter("View") if v.find("Image") is not None)
    assert [c.tag for c in column] == ["Image", "Text", "Text"] and column[1].get("value") == "$caption"
    # Every variable the interface shows is a field push uploads with each task.
    variables = set(re.findall(r'value="\$(\w+)"', interface.LABEL_CONFIG))
    data = push.task({"image_path": "images/2012-01/p/a.png", "paper_id": "p", "img_name": "a.png",
                      "source_path": "figs/a.png", "sha256": "x", "shard": "2012-01", "round": 0, "rule": "r"},
                     Path("/d"), Path("/d"), None, 0.5)["data"]
    assert variables == {"image", "paper_id", "img_name", "source_path", "caption", "subcaption"} <= set(data)
    assert data["caption"] == "(no caption found)" and data["subcaption"] == ""
    captioned = push.task({"image_path": "images/2012-01/p/a.png", "paper_id": "p", "img_name": "a.png",
                           "sha256": "x", "shard": "2012-01", "round": 0, "rule": "r",
                           "caption": "Qualitative results.", "figure_label": "Figure 3", "subcaption": "Input"},
                          Path("/d"), Path("/d"), None, 0.5)["data"]
    assert (captioned["caption"], captioned["subcaption"]) == ("Figure 3: Qualitative results.", "Sub-caption: Input")
    # The instruction names positive and negative examples; unsure stays unsure (null label).
    text = interface.INSTRUCTION.lower()
    for example in ["image grids of photos", "qualitative result grids", "segmentation", "depth",
                    "plots", "charts", "diagrams", "tables", "icons", "pure text"]:
        assert example in text, example
    assert interface.CHOICES["Unsure"] == (None, "unsure")
    assert interface.choice_of(interface.choice_result("Unsure")) == "Unsure"


def test_probability_shown_follows_the_prediction_label_studio_attached():
    data = {"paper_id": "p", "img_name": "a.png", "sha256": "s", "prediction_score": 0.3, "model_version": "m1"}
    scores = {("p", "a.png"): {"sha256": "s", "score": 0.8, "model_version": "m2"}}
    assert pull.shown_probability(data, {}, scores) == 0.3                          # as uploaded
    assert pull.shown_probability(data, {"model_version": "m1"}, scores) == 0.3
    assert pull.shown_probability(data, {"model_version": "m2"}, scores) == 0.8     # a later round's
    assert pull.shown_probability(data, {"model_version": "m3"}, scores) is None    # not known
    changed = {("p", "a.png"): {**scores["p", "a.png"], "sha256": "other image"}}
    assert pull.shown_probability(data, {"model_version": "m2"}, changed) is None


# --- against the server -----------------------------------------------------------------------

def test_push_annotate_pull_gives_the_labels_row_by_row(ls, label_studio):
    client, root, title = ls
    with pytest.raises(ValueError, match="run the extract stage first"):
        push.push(client, root, count=4, title=title)
    assert find_project(client, title) is None
    figures = small_corpus(root)
    done = push.push(client, root, count=4, title=title)
    assert (done["round"], done["tasks_created"], done["predictions_created"]) == (0, 4, 0)
    project = find_project(client, title)
    assert project.sampling == "Uncertainty sampling"
    tasks = tasks_by_key(client, project.id)
    # one per (year, source kind) stratum
    assert sorted(t["data"]["rule"] for t in tasks.values()) == [
        "stratified year=2012 source=eprint", "stratified year=2012 source=pdf",
        "stratified year=2019 source=eprint", "stratified year=2019 source=pdf"]

    # The labeling page loads each image through local-files storage.
    for t in tasks.values():
        got = httpx.get(label_studio["url"] + t["data"]["image"],
                        headers={"Authorization": f"Token {label_studio['token']}"})
        assert got.status_code == 200
        assert sha256_bytes(got.content) == t["data"]["sha256"]

    keys = sorted(tasks)
    answers = dict(zip(keys, ["Grid with a photo", "Not a photo grid", "Unsure"]))
    for key, choice in answers.items():
        annotate(client, tasks[key]["id"], choice, lead_time=2.5)
    client.annotations.create(id=tasks[keys[3]]["id"], result=[], was_cancelled=True)  # skipped

    pulled = pull.pull(client, root, title)
    assert (pulled["labels"], pulled["positive"], pulled["negative"], pulled["unsure"]) == (3, 1, 1, 1)
    assert (pulled["skipped"], pulled["unreadable"]) == (1, 0)
    rows = read_rows(root / "labels" / "labels.parquet")
    by_figure = {(f["paper_id"], f["img_name"]): f for f in figures}
    assert [(r["paper_id"], r["img_name"]) for r in rows] == keys[:3]
    for r in rows:
        key = (r["paper_id"], r["img_name"])
        expected_label, expected_choice = interface.CHOICES[answers[key]]
        assert (r["label"], r["choice"]) == (expected_label, expected_choice)
        assert r["sha256"] == by_figure[key]["sha256"]
        assert r["annotator"] == serve.USER_EMAIL
        assert r["task_id"] == tasks[key]["id"] and r["project_id"] == project.id
        assert r["lead_time"] == 2.5
        assert (r["round"], r["rule"]) == (0, tasks[key]["data"]["rule"])
        assert r["source"] == "label-studio"
        assert r["prediction_score"] is None and r["agreed_with_prediction"] is None
        assert r["created_at"] is not None

    # The next round never repeats a figure, and leaves out one whose PNG is gone.
    gone = next(f for f in figures if (f["paper_id"], f["img_name"]) not in tasks)
    (root / gone["image_path"]).unlink()
    again = push.push(client, root, count=10, title=title)
    assert (again["round"], again["tasks_created"], again["missing_images"]) == (1, len(figures) - 5, 1)
    assert len(tasks_by_key(client, project.id)) == len(figures) - 1


def test_relabel_takes_the_latest_annotation_and_keeps_history(ls):
    client, root, title = ls
    small_corpus(root)
    project_id = push.push(client, root, count=2, title=title)["project_id"]
    first, second = sorted(tasks_by_key(client, project_id).values(), key=lambda t: t["id"])
    edited = annotate(client, first["id"], "Not a photo grid")
    annotate(client, second["id"], "Grid with a photo")
    pull.pull(client, root, title)

    client.annotations.update(edited.id, result=interface.choice_result("Grid with a photo"))
    annotate(client, second["id"], "Unsure")  # a second opinion on the other task
    pull.pull(client, root, title)
    labels = {r["task_id"]: r for r in read_rows(root / "labels" / "labels.parquet")}
    assert {t: (r["choice"], r["label"]) for t, r in labels.items()} == {
        first["id"]: ("positive", 1), second["id"]: ("unsure", None)}
    history = read_rows(root / "labels" / "history.parquet")
    assert sorted((r["task_id"], r["choice"]) for r in history) == sorted([
        (first["id"], "negative"), (first["id"], "positive"),
        (second["id"], "positive"), (second["id"], "unsure")])

    # Pulling again with nothing new changes nothing.
    before = [(root / "labels" / n).read_bytes() for n in ("labels.parquet", "history.parquet")]
    pull.pull(client, root, title)
    assert [read_rows(root / "labels" / n) for n in ("labels.parquet", "history.parquet")] == [
        read_rows(io.BytesIO(b)) for b in before]


def test_uncertainty_round_uploads_predictions_and_records_agreement(ls):
    client, root, title = ls
    figures = small_corpus(root)
    push.push(client, root, count=2, title=title)  # round 0, before any classifier
    scores = [{"paper_id": f["paper_id"], "img_name": f["img_name"], "sha256": f["sha256"],
               "score": s, "model_version": "clf-1"}
              for f, s in zip(figures, [0.9, 0.1, 0.52, 0.3, 0.45, 0.99, 0.7])]
    write_rows(root / "scores" / "2012-03.parquet", scores, SCORE_SCHEMA)
    done = push.push(client, root, count=2, title=title)
    project = client.projects.get(done["project_id"])
    assert done["round"] == 1 and done["rules"] == ["uncertainty"]
    assert project.model_version == "clf-1"
    tasks = tasks_by_key(client, project.id)
    new = sorted((t for t in tasks.values() if t["data"]["round"] == 1), key=lambda t: t["id"])
    # Nearest 0.5 among the not-yet-pushed figures: 0.52 then 0.45.
    assert [t["data"]["prediction_score"] for t in new] == [0.52, 0.45]
    # Every task, old and new, now shows the classifier's guess, scored by its certainty.
    assert done["predictions_created"] == len(tasks)
    predictions = {p.task: p for p in client.predictions.list(project=project.id)}
    for t in tasks.values():
        p = scores[figures.index(next(f for f in figures if f["img_name"] == t["data"]["img_name"]
                                      and f["paper_id"] == t["data"]["paper_id"]))]["score"]
        shown = predictions[t["id"]]
        assert shown.model_version == "clf-1"
        assert shown.score == pytest.approx(max(p, 1 - p))
        assert interface.choice_of(shown.result) == interface.CHOICE_OF_LABEL[int(p >= 0.5)]
    # A rerun of the round's bookkeeping uploads no duplicate predictions.
    assert push.refresh_predictions(client, project.id, export_tasks(client, project.id),
                                    sample.labelable_figures(root), sample.latest_scores(root), 0.5) == 0

    annotate(client, new[0]["id"], "Grid with a photo")   # 0.52 predicted positive: agrees
    annotate(client, new[1]["id"], "Grid with a photo")   # 0.45 predicted negative: disagrees
    # A round-0 task, pushed before any classifier, now shows clf-1's prediction: its label
    # records that prediction's probability, not the "none" of its first upload.
    old = next(t for t in tasks.values() if t["data"]["round"] == 0)
    p_old = next(s["score"] for s in scores if (s["paper_id"], s["img_name"]) ==
                 (old["data"]["paper_id"], old["data"]["img_name"]))
    annotate(client, old["id"], "Not a photo grid")
    pull.pull(client, root, title)
    rows = {r["task_id"]: r for r in read_rows(root / "labels" / "labels.parquet")}
    assert (rows[old["id"]]["prediction_score"], rows[old["id"]]["agreed_with_prediction"]) == (p_old, p_old < 0.5)
    assert (rows[new[0]["id"]]["prediction_score"], rows[new[0]["id"]]["agreed_with_prediction"]) == (0.52, True)
    assert (rows[new[1]["id"]]["prediction_score"], rows[new[1]["id"]]["agreed_with_prediction"]) == (0.45, False)
    assert rows[new[0]["id"]]["rule"].startswith("uncertainty |p-0.5|=0.020 model=clf-1")


def test_label_studio_serves_the_least_certain_task_first(ls, label_studio):
    client, root, title = ls
    figures = small_corpus(root)
    p = [0.9, 0.1, 0.52, 0.3, 0.45, 0.99, 0.7]
    write_rows(root / "scores" / "2012-03.parquet",
               [{"paper_id": f["paper_id"], "img_name": f["img_name"], "sha256": f["sha256"],
                 "score": s, "model_version": "clf-1"} for f, s in zip(figures, p)], SCORE_SCHEMA)
    project_id = push.push(client, root, count=len(figures), title=title, rule="stratified")["project_id"]
    served = []
    for _ in figures:  # what the labeling page asks for: the project's next task
        task = httpx.get(f"{label_studio['url']}/api/projects/{project_id}/next",
                         headers={"Authorization": f"Token {label_studio['token']}"}).json()
        served.append(task["data"]["prediction_score"])
        annotate(client, task["id"], "Unsure")
    certainty = [max(s, 1 - s) for s in served]
    assert sorted(served) == sorted(p) and certainty == sorted(certainty)
    assert served[0] == 0.52


def test_a_personal_access_token_works_and_is_never_written(ls, label_studio, monkeypatch, capsys,
                                                             tmp_path):
    client, root, title = ls
    small_corpus(root)
    pat = client.tokens.create().token  # Label Studio gives a user one: only this test makes it
    token_path = tmp_path / "pat"
    token_path.write_text(pat)
    token_path.chmod(0o600)
    monkeypatch.delenv("CVF_LABEL_STUDIO_TOKEN", raising=False)
    monkeypatch.setenv("CVF_LABEL_STUDIO_TOKEN_FILE", str(token_path))
    common = ["--root", str(root), "--url", label_studio["url"], "--project", title]
    assert push.main(common + ["--count", "2"]) == 0
    project = find_project(client, title)
    for t in export_tasks(client, project.id):
        annotate(client, t["id"], "Not a photo grid")
    assert pull.main(common) == 0
    assert [r["label"] for r in read_rows(root / "labels" / "labels.parquet")] == [0, 0]
    # A token pasted with its line end (export X=$(cat file), a .env file) still works.
    monkeypatch.delenv("CVF_LABEL_STUDIO_TOKEN_FILE")
    monkeypatch.setenv("CVF_LABEL_STUDIO_TOKEN", label_studio["token"] + "\n")
    assert pull.main(common) == 0
    out = capsys.readouterr()
    for written in [out.out, out.err, *(p.read_bytes().decode("latin-1") for p in root.rglob("*")
                                        if p.is_file())]:
        assert pat not in written and label_studio["token"] not in written


def test_simulated_answers_come_from_truth_and_are_marked(ls):
    client, root, title = ls
    figures = small_corpus(root)
    project_id = push.push(client, root, count=len(figures), title=title)["project_id"]
    truth = {(f["paper_id"], f["img_name"]): "grid" in f["img_name"] for f in figures}
    answered = simulate.answer_from_truth(client, project_id, truth, share=0.6, seed=0)
    assert 0 < answered < len(figures)
    assert simulate.answer_from_truth(client, project_id, truth, share=0.6, seed=0) == 0  # done
    pull.pull(client, root, title)
    rows = read_rows(root / "labels" / "labels.parquet")
    assert len(rows) == answered
    for r in rows:
        assert r["label"] == int(truth[r["paper_id"], r["img_name"]])
        assert r["source"] == "replay-truth"


def test_server_down_or_wrong_token_is_a_clear_error_and_writes_nothing(ls, label_studio, capsys,
                                                                        monkeypatch):
    client, root, title = ls
    small_corpus(root)
    with pytest.raises(LabelStudioError, match="refused the API token"):
        connect(label_studio["url"], "0" * 40)
    closed = f"http://127.0.0.1:{serve.free_port()}"
    with pytest.raises(LabelStudioError, match="cannot reach Label Studio"):
        connect(closed, label_studio["token"])

    monkeypatch.setenv("CVF_LABEL_STUDIO_TOKEN", label_studio["token"])
    assert pull.main(["--root", str(root), "--url", closed]) == 2
    assert push.main(["--root", str(root), "--url", closed]) == 2
    monkeypatch.setenv("CVF_LABEL_STUDIO_TOKEN", "f" * 40)
    assert pull.main(["--root", str(root), "--url", label_studio["url"]]) == 2
    err = capsys.readouterr().err
    assert "cannot reach Label Studio" in err and "refused the API token" in err
    assert label_studio["token"] not in err
    assert not (root / "labels").exists()


def test_token_file_must_be_private_and_token_is_never_printed(ls, label_studio, capsys,
                                                               monkeypatch, tmp_path):
    client, root, title = ls
    small_corpus(root)
    token_path = tmp_path / "token"
    token_path.write_text(label_studio["token"] + "\n")
    token_path.chmod(0o644)
    monkeypatch.delenv("CVF_LABEL_STUDIO_TOKEN", raising=False)
    monkeypatch.setenv("CVF_LABEL_STUDIO_TOKEN_FILE", str(token_path))
    assert push.main(["--root", str(root), "--url", label_studio["url"], "--project", title]) == 2
    assert "chmod 600" in capsys.readouterr().err
    token_path.chmod(0o600)
    assert push.main(["--root", str(root), "--url", label_studio["url"], "--project", title,
                      "--count", "3"]) == 0
    assert pull.main(["--root", str(root), "--url", label_studio["url"], "--project", title]) == 0
    out = capsys.readouterr()
    assert "3 tasks" in out.out
    for written in [out.out, out.err, *(p.read_bytes().decode("latin-1") for p in root.rglob("*")
                                        if p.is_file())]:
        assert label_studio["token"] not in written


def replay_dataset(root: Path, corpus: Path) -> Path:
    """A dataset root made by the real pipeline from a small replay corpus: paper records
    pointing at its e-prints and PDFs, then `pipeline.extract`. Returns the truth.parquet."""
    from pipeline import extract
    from pipeline.replay.corpus import generate_corpus, load_papers

    months = ["2020-05", "2021-02"]
    generate_corpus(corpus, n_papers=4, months=months, seed=4)  # a draw with file names holding spaces
    paper_schema = pa.schema([(k, pa.string()) for k in
                              ["arxiv_id", "eprint_path", "eprint_status", "pdf_path", "pdf_status"]])
    for month in months:
        rows = []
        for paper in load_papers(corpus):
            if paper["arxiv_id"][:4] != month[2:4] + month[5:7]:
                continue
            eprint, pdf = f"raw/{month}/{paper['arxiv_id']}.eprint", f"raw/{month}/{paper['arxiv_id']}.pdf"
            (root / eprint).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(corpus / "eprint" / paper["arxiv_id"], root / eprint)
            shutil.copy(corpus / "pdf" / f"{paper['arxiv_id']}.pdf", root / pdf)
            rows.append({"arxiv_id": paper["arxiv_id"], "eprint_path": eprint, "eprint_status": "ok",
                         "pdf_path": pdf, "pdf_status": "ok"})
        write_rows(root / "papers" / f"{month}.parquet", rows, paper_schema)
        extract.extract_shard(month, root, progress=False)
    return corpus / "truth.parquet"


def test_replay_figures_are_served_and_their_truth_comes_back_as_labels(ls, label_studio, tmp_path):
    client, root, title = ls
    truth = simulate.read_truth(replay_dataset(root, tmp_path / "replay"))
    figures = sample.labelable_figures(root)
    assert len(figures) >= 6 and any(" " in f["image_path"] for f in figures)  # names with spaces
    project_id = push.push(client, root, count=len(figures), title=title)["project_id"]
    tasks = export_tasks(client, project_id)
    assert len(tasks) == len(figures)
    for t in tasks:  # what the labeling page shows is the extracted PNG
        got = httpx.get(label_studio["url"] + t["data"]["image"],
                        headers={"Authorization": f"Token {label_studio['token']}"})
        assert got.status_code == 200 and sha256_bytes(got.content) == t["data"]["sha256"]

    assert simulate.answer_from_truth(client, project_id, truth, share=1.0) == len(figures)
    pull.pull(client, root, title)
    rows = read_rows(root / "labels" / "labels.parquet")
    assert sorted((r["paper_id"], r["img_name"]) for r in rows) == sorted(sample.figure_key(f) for f in figures)
    for r in rows:
        assert r["label"] == int(truth[r["paper_id"], r["img_name"]]), r
    assert {r["label"] for r in rows} == {0, 1}


# --- the server's start-up and the demo ---------------------------------------------------------

def test_server_environment_is_quiet_local_and_ignores_stray_settings(tmp_path, monkeypatch):
    for name in ("HOST", "PORT", "USERNAME", "PASSWORD", "DEBUG", "LOG_LEVEL"):
        monkeypatch.setenv(name, "stray")
    monkeypatch.setenv("LABEL_STUDIO_COLLECT_ANALYTICS", "true")
    env = serve.server_env(tmp_path / "ls", tmp_path)
    assert not {"HOST", "PORT", "USERNAME", "PASSWORD", "DEBUG", "LOG_LEVEL"} & set(env)
    assert env["LABEL_STUDIO_COLLECT_ANALYTICS"] == "false"
    assert env["LABEL_STUDIO_LATEST_VERSION_CHECK"] == "false"
    assert env["SENTRY_DSN"] == env["FRONTEND_SENTRY_DSN"] == ""
    assert env["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path)
    for secret in ("token", "password"):
        assert stat.S_IMODE((tmp_path / "ls" / secret).stat().st_mode) == 0o600
    # The credentials are made once and kept.
    assert serve.server_env(tmp_path / "ls", tmp_path)["LABEL_STUDIO_USER_TOKEN"] == env["LABEL_STUDIO_USER_TOKEN"]


def test_serve_refuses_a_taken_port(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main(["--root", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "in use" in err or "not installed" in err


def copy_server_data(src: Path, dst: Path) -> None:
    """A migrated server's data for a second server: starts in seconds instead of ~40 s."""
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.suffix == ".sqlite3":
            with sqlite3.connect(path) as live, sqlite3.connect(dst / path.name) as copy:
                live.backup(copy)  # consistent even while the first server writes
        elif path.is_file() and path.name != "server.log":
            shutil.copy2(path, dst / path.name)


def test_demo_serves_pushes_answers_pulls_and_stops(label_studio, tmp_path, capsys, monkeypatch):
    root = tmp_path / "data"
    figures = small_corpus(root)
    truth_path = tmp_path / "replay" / "truth.parquet"
    write_rows(truth_path, [{"paper_id": f["paper_id"], "img_name": f["img_name"],
                             "is_grid_with_photo": "grid" in f["img_name"]} for f in figures],
               pa.schema([("paper_id", pa.string()), ("img_name", pa.string()),
                          ("is_grid_with_photo", pa.bool_())]))
    copy_server_data(label_studio["server_dir"], root / "labelstudio")
    monkeypatch.delenv("CVF_LABEL_STUDIO_DOCUMENT_ROOT", raising=False)
    try:
        assert demo.main(["--root", str(root), "--truth", str(truth_path), "--count", "5",
                          "--share", "1", "--port", "0"]) == 0
        out = capsys.readouterr().out
        info = serve.running_server(root)
        assert info is not None and f"{info['url']}/projects/" in out
        assert "answered 5 from the replay truth" in out
        rows = read_rows(root / "labels" / "labels.parquet")
        assert len(rows) == 5 and {r["source"] for r in rows} == {"replay-truth"}
        assert label_studio["token"] not in out
        # Local files are served from the dataset root, which holds the server's secrets too:
        # only images/ (the storage's path) may be served.
        auth = {"Authorization": f"Token {label_studio['token']}"}
        image = httpx.get(f"{info['url']}/data/local-files/?d={figures[0]['image_path']}", headers=auth)
        assert image.status_code == 200
        for secret in ("labelstudio/token", "labelstudio/password", "images/../labelstudio/token"):
            got = httpx.get(f"{info['url']}/data/local-files/?d={secret}", headers=auth)
            assert got.status_code != 200 and label_studio["token"] not in got.text, secret
    finally:
        assert serve.main(["--root", str(root), "--stop"]) == 0
    assert serve.running_server(root) is None
