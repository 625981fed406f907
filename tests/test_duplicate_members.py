"""An e-print whose tar holds the same member path twice (legal in tar): the last copy is the
figure, as tar extraction leaves it; the earlier one is a `duplicate` record without an image.
End to end through the arXiv replay: crawl -> extract -> score -> filter -> publish -> verify."""
from __future__ import annotations

import gzip

import numpy as np

from pipeline import classify, crawl, extract, publish, store, verify
from pipeline import filter as flt
from pipeline.replay.server import Replay, ReplayServer
from pipeline.split import split_of
from test_archive import tar_bytes
from test_extract import photo

TEX = rb"\documentclass{article}\begin{document}\includegraphics{fig.png}\includegraphics{other.png}\end{document}"


def tar_gz_members(members: list[tuple[str, bytes]]) -> bytes:
    """A gzip'd tar of the members in order, a name given twice stored twice."""
    return gzip.compress(tar_bytes(members))


def fit_classifier(root, version: str) -> None:
    """A real (if tiny) classifier on the features scoring computes, saved as training saves one."""
    figures = [f for s in classify.figure_shards(root) for f in classify.read_figures(root, s) if classify.scorable(f)]
    x = np.concatenate([x for x, _ in classify.featurize(root, [f["image_path"] for f in figures], None)])
    y = np.arange(len(x)) % 2
    head = classify.make_head("logreg").fit(x, y)
    calibrator = classify.fit_calibrator(head.decision_function(x), y)
    card = {"version": version, "backbone": None, "caption_features": {"used": False}, "threshold": 0.5,
            "layout_features": classify.FEATURE_NAMES}
    classify.save_classifier(classify.classifier_dir(root, version), {"head": head, "calibrator": calibrator,
                                                                      "card": card})
    store.atomic_write_text(root / "classifier" / "LATEST", version + "\n")


def test_duplicate_member_keeps_the_last_copy_and_a_fresh_publish_verifies(tmp_path, monkeypatch):
    eprints, root = tmp_path / "eprints", tmp_path / "data"
    eprints.mkdir()
    first, last = photo(1, (300, 200)), photo(2, (300, 200))
    papers = ["2101.00001", "2101.00002", "2101.00003", "2101.00004"]
    (eprints / f"{papers[0]}.tar.gz").write_bytes(tar_gz_members(
        [("main.tex", TEX), ("fig.png", first), ("other.png", photo(3, (300, 200))), ("fig.png", last)]))
    # Another paper holds the picture the tar keeps: it must be flagged as its duplicate.
    (eprints / f"{papers[1]}.tar.gz").write_bytes(tar_gz_members([("main.tex", TEX), ("copy.png", last)]))
    for i, paper in enumerate(papers[2:], 4):
        (eprints / f"{paper}.tar.gz").write_bytes(tar_gz_members([("main.tex", TEX), ("p.png", photo(i, (300, 200)))]))

    with ReplayServer(Replay(None, extra_eprints=eprints)) as server:
        e = server.endpoints()
        code = crawl.main(["--from", "2021-01", "--to", "2021-01", "--root", str(root), "--delay", "0",
                           "--api-url", e["CVF_ARXIV_API_URL"], "--eprint-url", e["CVF_ARXIV_EPRINT_URL"],
                           "--pdf-url", e["CVF_ARXIV_PDF_URL"], "--downloads", "eprint"])
    assert code == 0
    extract.extract_shards(["2021-01"], root, progress=False)

    rows = [r for r in store.read_rows(root / "figures" / "2021-01.parquet") if r["paper_id"] == papers[0]]
    figs = sorted((r for r in rows if r["img_name"] == "fig.png"), key=lambda r: r["status"])
    assert [r["status"] for r in figs] == ["duplicate", "ok"]
    dup, kept = figs
    assert "keeps the last copy" in dup["error"] and not dup["image_path"] and not dup["sha256"]
    assert kept["sha256"] == store.sha256_bytes((root / kept["image_path"]).read_bytes())
    copy = next(r for r in store.read_rows(root / "figures" / "2021-01.parquet") if r["img_name"] == "copy.png")
    # the last copy's pixels are the figure: the other paper's identical PNG is its exact duplicate
    assert copy["dup_of"] == f"{papers[0]}/fig.png" or kept["dup_of"] == f"{papers[1]}/copy.png"

    fit_classifier(root, "clf-dup")
    assert classify.score(root)["failed_shards"] == {}
    seed = next(s for s in range(100) if {split_of(p, s) for p in papers} == {"train", "val"})
    flt.run(root, threshold=0.0, seed=seed)
    manifest, _ = publish.publish(root, "cvf-dup", out=str(tmp_path / "manifests"))
    published = verify.read_manifest_rows(manifest)
    assert [r["img_name"] for r in published].count("fig.png") == 1
    assert all(r["image_path"] and r["sha256"] for r in published)
    report = verify.verify(manifest, root / "images")
    assert report["ok_overall"], report
    assert verify.main([manifest, "--images", str(root / "images")]) == 0
