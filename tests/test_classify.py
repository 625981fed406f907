"""The classifier end to end on a small synthetic corpus of real images, and label gathering."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision

from pipeline import classify, labels, store
from test_features import make_corpus


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A corpus of 16 papers trained on with replay truth, layout features only."""
    root = tmp_path_factory.mktemp("clf") / "data"
    truth = make_corpus(root, n_papers=16, figures_per_paper=5, seed=1)
    out = classify.train(root, weights="", folds=4, version="clf-test")
    return root, truth, out


def test_train_writes_model_card_and_pr_curve_with_honest_grouped_metrics(trained):
    root, truth, out = trained
    for name in ["model.skops", "card.json", "card.md", "pr_curve.png"]:
        assert (out / name).stat().st_size > 0, name
    card = json.loads((out / "card.json").read_text())
    assert card["backbone"] is None
    assert card["labels"]["by_source"] == {"replay-truth": len(truth)}
    assert card["cv"]["folds"] == 4 and card["cv"]["papers"] == 16
    m = card["cv"]["at_threshold"]
    # Photo grids vs plots/diagrams/single photos are separable by layout features alone.
    assert m["roc_auc"] > 0.85 and m["balanced_accuracy"] > 0.75, m
    assert 0 < m["threshold"] < 1
    c = m["confusion"]
    assert c["tp"] + c["fn"] == sum(t["is_grid_with_photo"] for t in truth) and sum(c.values()) == len(truth)
    assert card["cv"]["by_source"]["replay-truth"]["roc_auc"] == m["roc_auc"]
    assert "balanced accuracy" in (out / "card.md").read_text()
    assert (root / "classifier" / "LATEST").read_text().strip() == "clf-test"


def test_score_writes_calibrated_scores_per_shard_and_resumes(trained):
    root, truth, _ = trained
    summary = classify.score(root)
    assert summary == {"shards": 2, "skipped_shards": 0, "scored": len(truth), "errors": 0, "failed_shards": {}}
    scores = pa.concat_tables([pq.read_table(root / "scores" / f"{s}.parquet") for s in ("2019-03", "2020-07")]).to_pylist()
    assert {(r["paper_id"], r["img_name"]) for r in scores} == {(t["paper_id"], t["img_name"]) for t in truth}
    assert all(0 <= r["score"] <= 1 and r["model_version"] == "clf-test" for r in scores)
    positive = {(t["paper_id"], t["img_name"]) for t in truth if t["is_grid_with_photo"]}
    pos = [r["score"] for r in scores if (r["paper_id"], r["img_name"]) in positive]
    neg = [r["score"] for r in scores if (r["paper_id"], r["img_name"]) not in positive]
    assert np.mean(pos) > np.mean(neg) + 0.3
    assert store.read_stats(root / "scores", "2019-03")["figures"] == len(scores) // 2

    again = classify.score(root)
    assert again["skipped_shards"] == 2 and again["shards"] == 0

    # Re-extraction changed one shard: only that shard is scored again.
    figures = store.read_rows(root / "figures" / "2020-07.parquet")
    store.write_rows(root / "figures" / "2020-07.parquet", figures[1:], pq.read_schema(root / "figures" / "2020-07.parquet"))
    third = classify.score(root)
    assert third["skipped_shards"] == 1 and third["scored"] == len(figures) - 1


def test_unreadable_image_gets_an_error_row_not_a_crash(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(classify.WEIGHTS_ENV, raising=False)
    root = tmp_path / "data"
    make_corpus(root, n_papers=4, figures_per_paper=3, shards=("2021-01",))
    classify.train(root, folds=2, version="v1", head="hgb")  # the gradient-boosting head, too
    assert f"training on the {len(classify.FEATURE_NAMES)} layout features alone" in capsys.readouterr().err  # says so
    rows = store.read_rows(root / "figures" / "2021-01.parquet")
    (root / rows[0]["image_path"]).write_bytes(b"not a png")
    (root / rows[1]["image_path"]).unlink()
    classify.score(root)
    scores = {r["img_name"] + r["paper_id"]: r for r in store.read_rows(root / "scores" / "2021-01.parquet")}
    bad = [scores[rows[i]["img_name"] + rows[i]["paper_id"]] for i in (0, 1)]
    assert all(b["status"] == "error" and b["score"] is None and b["error"] for b in bad)
    assert sum(r["status"] == "ok" for r in scores.values()) == len(rows) - 2


def test_backbone_path_with_a_local_weights_file(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_corpus(root, n_papers=4, figures_per_paper=3, shards=("2021-01",))
    weights = tmp_path / "resnet18-random.pth"  # standard naming: the architecture comes from the name
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    out = classify.train(root, weights=weights, folds=2, version="bb", batch_size=8)
    card = json.loads((out / "card.json").read_text())
    assert card["backbone"]["arch"] == "resnet18"
    assert card["features"] == len(card["layout_features"]) + 512  # resnet18's pooled embedding

    with pytest.raises(FileNotFoundError, match="needs backbone weights resnet18-random.pth"):
        classify.score(root)
    monkeypatch.setenv(classify.WEIGHTS_ENV, str(weights))
    assert classify.score(root)["scored"] == 12

    other = tmp_path / "resnet18-other.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(ValueError, match="sha256 differs"):
        classify.score(root, version="bb", weights=other, shards=["2021-01"])


def test_backbone_drops_the_classification_head_and_refuses_unreadable_weights(tmp_path):
    weights = tmp_path / "swin_t-random.pth"  # swin names its last layer `head`
    torch.save(torchvision.models.swin_t(weights=None).state_dict(), weights)
    backbone = classify.Backbone(weights, device="cpu")
    assert backbone.arch == "swin_t"
    assert backbone.embed(torch.zeros(2, 3, 224, 224)).shape == (2, 768)  # pooled features, not 1000 logits
    truncated = tmp_path / "resnet18-truncated.pth"
    truncated.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable torchvision weights file"):
        classify.Backbone(truncated)


def test_missing_weights_file_names_the_file_and_where_it_goes(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        classify.resolve_weights(tmp_path / "resnet50-11ad3fa6.pth")
    assert "resnet50-11ad3fa6.pth" in str(e.value) and "download.pytorch.org" in str(e.value)


def test_train_without_labels_or_figures_is_a_clear_error(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(ValueError, match="no figure records"):
        classify.train(root)
    make_corpus(root, n_papers=2, figures_per_paper=2, shards=("2021-01",))
    (root / "truth.parquet").unlink()
    with pytest.raises(ValueError, match="no labels"):
        classify.train(root)


def test_labels_most_trusted_source_wins_and_missing_figures_are_reported(tmp_path):
    figures = [{"paper_id": "2101.00001", "img_name": n, "source_kind": "eprint", "name_filter": False}
               for n in ["a.png", "b.png", "c.png"]]
    ls = tmp_path / "labels.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"paper_id": "2101.00001", "img_name": "a.png", "label": 0},
        {"paper_id": "2101.00001", "img_name": "b.png", "label": None},  # unsure: no label
        {"paper_id": "2101.00009", "img_name": "gone.png", "label": 1},  # figure no longer exists
    ], schema=pa.schema([("paper_id", pa.string()), ("img_name", pa.string()), ("label", pa.int8())])), ls)
    simulated = tmp_path / "simulated.parquet"  # the demo's answers from the truth keep their source
    pq.write_table(pa.Table.from_pylist([{"paper_id": "p", "img_name": "x", "label": 1, "source": "replay-truth"},
                                         {"paper_id": "p", "img_name": "y", "label": 0, "source": "label-studio"}]), simulated)
    assert [r["source"] for r in labels.from_label_studio(simulated)] == ["replay-truth", "label-studio"]
    truth = tmp_path / "truth.parquet"
    pq.write_table(pa.Table.from_pylist([{"paper_id": "2101.00001", "img_name": n, "is_grid_with_photo": True}
                                         for n in ["a.png", "b.png"]]), truth)
    index = tmp_path / "df_train.csv"
    index.write_text(",paper_id,img_name\n0,2101.00001,c.png\n")
    got, report = labels.gather(figures, ls, truth, [index])
    by_name = {r["img_name"]: (r["label"], r["source"]) for r in got}
    assert by_name == {"a.png": (0, "label-studio"), "b.png": (1, "replay-truth"), "c.png": (1, "cvf-index")}
    assert report["labels_for_missing_figures"] == 1 and report["missing_examples"] == ["2101.00009/gone.png"]
    assert report["overridden_by_more_trusted_source"] == 3  # a by truth + a, b by the index


def test_distant_supervision_skips_a_listed_paper_none_of_whose_names_we_found(tmp_path):
    """Another version of the paper, or names that do not line up: its candidates are no known negatives."""
    figures = [{"paper_id": pid, "img_name": n, "source_kind": "eprint", "name_filter": False}
               for pid in ("2101.00001", "2101.00002") for n in ("a.png", "b.png")]
    index = tmp_path / "df_train.csv"
    index.write_text(",paper_id,img_name\n0,2101.00001,a.png\n1,2101.00002,renamed.png\n")
    got, report = labels.gather(figures, cvf_index=[index])
    assert {(r["paper_id"], r["img_name"], r["label"]) for r in got} == {("2101.00001", "a.png", 1), ("2101.00001", "b.png", 0)}
    assert report["cvf_index_papers_without_a_listed_name"] == 1
    assert report["cvf_index_unmatched_examples"] == ["2101.00002"]


def test_distant_supervision_from_the_official_index_on_real_papers(testdata):
    """CANDIDATES.tsv lists real papers' candidate files and whether CVF kept them (in_cvf)."""
    with open(testdata / "eprints" / "CANDIDATES.tsv", newline="") as f:
        candidates = list(csv.DictReader(f, delimiter="\t"))
    figures = [{"paper_id": c["arxiv_id"], "img_name": c["cvf_style_name"], "source_kind": "eprint"} for c in candidates]
    listed = labels.read_cvf_index(sorted((testdata / "cvf_index").glob("df_*.csv")))
    got = labels.from_cvf_index(listed, figures)
    assert len(got) == len(candidates)
    assert [r["label"] for r in got] == [int(c["in_cvf"]) for c in candidates]
    assert sum(r["label"] for r in got) >= 10 and sum(1 - r["label"] for r in got) >= 10


def test_cli_help_and_bad_root_exit_cleanly(tmp_path, capsys):
    out = subprocess.run([sys.executable, "-m", "pipeline.classify", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--weights" in out.stdout and "--cvf-index" in out.stdout
    assert classify.main(["score", "--root", str(tmp_path)]) == 2
    assert "no trained classifier" in capsys.readouterr().err


def test_label_studio_labels_table_flows_into_training(tmp_path):
    """labels/labels.parquet as labeling.pull writes it -> gather -> train, without a server."""
    import datetime as dt

    from labeling.pull import LABELS_SCHEMA, labels_path

    root = tmp_path / "data"
    truth = make_corpus(root, n_papers=8, figures_per_paper=4, seed=3)
    (root / "truth.parquet").unlink()  # people's labels only
    sha = {(f["paper_id"], f["img_name"]): f["sha256"] for s in ("2019-03", "2020-07")
           for f in store.read_rows(root / "figures" / f"{s}.parquet")}
    when = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    rows = []
    for i, t in enumerate(truth):
        label = None if i % 7 == 6 else int(t["is_grid_with_photo"])  # every 7th answer is "unsure"
        key = (t["paper_id"], t["img_name"])
        rows.append({"paper_id": key[0], "img_name": key[1], "sha256": sha[key] if i != 4 else "0" * 64,
                     "label": label, "choice": {1: "positive", 0: "negative", None: "unsure"}[label],
                     "annotator": "a@x",
                     "created_at": when, "lead_time": 3.0, "task_id": i, "project_id": 1, "round": 0,
                     "rule": "stratified", "source": "label-studio", "annotation_id": i, "updated_at": when})
    rows.append({**rows[0], "paper_id": "1901.99999", "img_name": "gone.png", "task_id": 99, "annotation_id": 99})
    store.write_rows(labels_path(root), rows, LABELS_SCHEMA)

    out = classify.train(root, weights="", folds=3, version="from-ls")
    card = json.loads((out / "card.json").read_text())
    # Used: decided answers about the images as they are now. Not: unsure, a figure that is gone,
    # and figure 4, whose image changed since it was labelled (the label's sha256 is stale).
    decided = [r for i, r in enumerate(rows[:-1]) if r["label"] is not None and i != 4]
    assert card["labels"]["by_source"] == {"label-studio": len(decided)}
    assert card["labels"]["positives"] == sum(r["label"] for r in decided)
    assert card["labels"]["labels_for_missing_figures"] == 1
    assert card["labels"]["labels_for_changed_images"] == 1
    assert card["cv"]["papers"] == 8 and card["cv"]["at_threshold"]["roc_auc"] > 0.8
    assert classify.score(root)["scored"] == len(truth)


@pytest.mark.slow
def test_caption_features_measured_with_and_without_in_grouped_cv(tmp_path):
    """Captions that carry the cue words: the card reports grouped CV with and without them,
    auto mode uses them when they help, and scoring reads them from the figure records."""
    root = tmp_path / "data"
    truth = make_corpus(root, n_papers=16, figures_per_paper=5, seed=4)
    kind_of = {(t["paper_id"], t["img_name"]): t["kind"] for t in truth}
    rng = np.random.default_rng(0)
    words = {"photo_grid": "Qualitative comparison: examples of our results beside the input and ground truth.",
             "photo": "A photo of the scene.", "plot": "Accuracy curve during training.",
             "plot_grid": "Performance plots per dataset.", "diagram": "Overview of the architecture."}
    for path in sorted((root / "figures").glob("*.parquet")):
        rows = store.read_rows(path)
        for r in rows:  # a caption for 80% of the figures, a wrong kind's words for 10% of those
            kind = kind_of[(r["paper_id"], r["img_name"])]
            if rng.random() < 0.1:
                kind = str(rng.choice(list(words)))
            r["caption"] = words[kind] if rng.random() < 0.8 else ""
            r["subcaption"], r["n_panels"] = "", 1
        store.write_rows(path, rows, pa.Table.from_pylist(rows).schema)
    out = classify.train(root, weights="", folds=4, version="clf-captions")
    card = json.loads((out / "card.json").read_text())
    c = card["caption_features"]
    assert c["mode"] == "auto" and c["labelled_with_caption"] > 0.6 * len(truth)
    # both measured on the same folds; auto follows the measurement (layout features alone are
    # already near perfect on this synthetic corpus, so the captions may or may not add)
    assert 0.8 < c["cv_with"]["roc_auc"] <= 1 and 0.8 < c["cv_without"]["roc_auc"] <= 1
    assert c["helps"] == (c["cv_with"]["pr_auc"] > c["cv_without"]["pr_auc"]) and c["used"] == c["helps"]
    assert card["features"] == len(classify.FEATURE_NAMES) + c["used"] * len(classify.CAPTION_FEATURE_NAMES)
    assert "with captions" in (out / "card.md").read_text()
    # on: the model reads the captions, and scoring takes them from the figure records
    on = classify.train(root, weights="", folds=4, version="clf-on", captions="on")
    assert json.loads((on / "card.json").read_text())["features"] == \
        len(classify.FEATURE_NAMES) + len(classify.CAPTION_FEATURE_NAMES)
    summary = classify.score(root, version="clf-on")
    assert summary["scored"] == len(truth) and summary["errors"] == 0
    # off: not measured, not used
    used, report = classify.caption_ablation(np.zeros((4, 2)), np.ones((4, 3)), np.array([0, 1, 0, 1]),
                                             np.array(list("abcd")), "logreg", 2, 0, "off")
    assert not used and "off" in report["reason"]


def test_no_captions_means_caption_features_are_not_measured(trained):
    _, _, out = trained
    c = json.loads((out / "card.json").read_text())["caption_features"]
    assert c["used"] is False and "not measured" in c["reason"]


def test_unnamed_copies_get_the_offset_the_labels_say_and_the_head_learns_from_named_figures():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    named = np.ones(40, bool)
    assert classify.unnamed_offset(y, named) == 0.0  # nothing unnamed: nothing learnt
    named[:10] = False
    y[:10] = 0  # CVF kept none of the unnamed copies, whatever they look like
    offset = classify.unnamed_offset(y, named)
    assert offset > 1.0
    head, got = classify.fit_head("logreg", 0, x, y, named)
    assert got == offset
    d = classify.decide(head, offset, x, named)
    assert np.allclose(d[10:], head.decision_function(x[10:])) and np.allclose(d[:10], head.decision_function(x[:10]) - offset)


def test_score_refuses_a_classifier_trained_on_other_features(trained):
    root, _, out = trained
    card = classify.load_classifier(root)["card"]
    classify.check_features(card)  # as trained: fine
    with pytest.raises(ValueError, match="other image features"):
        classify.check_features({**card, "layout_features": card["layout_features"][:17]})
    with pytest.raises(ValueError, match="another photo model"):
        classify.check_features({**card, "photo_model_sha256": "0" * 64})
