"""Evaluation images inside figures: transformed copies in grids are found (crawled e-prints, extracted,
then `python -m pipeline.contamination`), clean grids of other photos, masks of the same images and
plots are not; the multi-index lookup equals an exhaustive one; reruns skip; bad input is reported;
the filter leaves the figures out and the card counts them."""
from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.contamination_quality import (distractors, evaluation_photos, masks_of, other_photos,  # noqa: E402
                                              plot, transform)
from pipeline import contamination, store  # noqa: E402
from pipeline.contamination import CONTAMINATION_SCHEMA, HashIndex, main  # noqa: E402
from pipeline.extract import extract_shard  # noqa: E402
from pipeline.replay.corpus import tar_gz  # noqa: E402
from test_extract import write_papers  # noqa: E402

pytest.importorskip("skimage.data")
KINDS = ("resize", "crop", "jpeg", "boxes", "colour", "flip")


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def grid(panels: list[np.ndarray], columns: int = 3, cell: int = 200, gutter: int = 12) -> np.ndarray:
    """Panels scaled to one height, in rows of `columns`, white gutters between."""
    rows = []
    for i in range(0, len(panels), columns):
        row = [np.asarray(Image.fromarray(p).resize((max(8, round(p.shape[1] * cell / p.shape[0])), cell)))
               for p in panels[i:i + columns]]
        rows.append(row)
    width = max(sum(p.shape[1] for p in r) + gutter * (len(r) + 1) for r in rows)
    canvas = np.full((len(rows) * (cell + gutter) + gutter, width, 3), 255, np.uint8)
    for j, row in enumerate(rows):
        x, y = gutter, gutter + j * (cell + gutter)
        for p in row:
            canvas[y:y + cell, x:x + p.shape[1]] = p
            x += p.shape[1] + gutter
    return canvas


@pytest.fixture(scope="module")
def case(tmp_path_factory, request):
    """An evaluation folder (photos among distractors) and a crawled-and-extracted shard of 12 papers:
    6 with a figure holding one transformed evaluation photo (one transform each) beside clean panels,
    6 with clean figures (other photos, VOC colour masks of the evaluation photos, plots). Half of each
    are grids of photos edge to edge, with no gutter."""
    testdata = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"
    testdata = testdata if testdata.is_dir() else None
    base = tmp_path_factory.mktemp("contamination")
    eval_dir, root = base / "evalset", base / "data"
    rng = np.random.default_rng(5)
    photos = evaluation_photos(testdata)
    photos.pop("voc513/0_image.png", None)  # the same photo as voc/2007_000033.jpg, re-rendered
    for name, a in photos.items():
        (eval_dir / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(eval_dir / name)
    (eval_dir / "distractors").mkdir()
    for i, a in enumerate(distractors(150, rng)):
        Image.fromarray(a).save(eval_dir / "distractors" / f"{i:04d}.jpg")
    others, masks = other_photos(), masks_of(testdata)
    clean = [others[0], others[1], plot(rng), others[2], others[3]] + masks[:3]
    names = sorted(photos)
    picks = [names[i * len(names) // 6] for i in range(6)]
    eprints, truth = {}, {}
    for i, (kind, target) in enumerate(zip(KINDS, picks)):
        panels = [transform(clean[(i + j) % len(clean)], (), rng) for j in range(3)]
        panels.insert(i % 4, transform(photos[target], (kind,), rng))
        eprints[f"2101.{i:05d}"] = tar_gz({"figs/results.png": png_bytes(grid(panels, gutter=12 * (i % 2)))})
        truth[f"2101.{i:05d}"] = (target, kind)
    for i in range(6):
        panels = [transform(clean[(i + j) % len(clean)], ("crop",) if j % 2 else (), rng) for j in range(4)]
        if masks:
            panels[1] = transform(masks[i % len(masks)], (), rng)
        eprints[f"2101.{i + 6:05d}"] = tar_gz({"figs/results.png": png_bytes(grid(panels, columns=2, gutter=12 * (i % 2)))})
    write_papers(root, "2021-01", eprints)
    extract_shard("2021-01", root, progress=False)
    return eval_dir, root, truth


def matches(root: Path, name: str = "evalset") -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in pq.read_table(root / "contamination" / f"{name}.parquet").to_pylist():
        out.setdefault(r["paper_id"], []).append(r)
    return out


def test_copies_in_grids_are_found_and_clean_figures_are_not(case, capsys):
    eval_dir, root, truth = case
    assert main(["--against", str(eval_dir), "--root", str(root), "--workers", "1"]) == 0
    found = matches(root)
    assert set(found) == set(truth), f"flagged {sorted(found)}, expected {sorted(truth.items())}"
    assert "6 of 12 figures" in capsys.readouterr().out
    for paper, (target, kind) in truth.items():
        assert [r["eval_image"] for r in found[paper]] == [target], (kind, found[paper])
        row = found[paper][0]
        assert row["kind"] == ("flipped" if kind == "flip" else row["kind"]) and row["kind"] in ("exact", "near", "flipped")
        if kind != "flip":
            assert row["kind"] != "flipped", row
        x0, y0, x1, y1 = row["panel_bbox"]
        with Image.open(root / row["image_path"]) as fig:
            assert 0 <= x0 < x1 <= fig.width and 0 <= y0 < y1 <= fig.height
            assert (x1 - x0) * (y1 - y0) < 0.5 * fig.width * fig.height  # the panel, not the figure
    assert pq.read_schema(root / "contamination" / "evalset.parquet").names == CONTAMINATION_SCHEMA.names


def test_rerun_skips_and_a_changed_set_is_recomputed(case, tmp_path):
    eval_dir, root, truth = case
    first = contamination.run([eval_dir], root, workers=1, progress=False)["evalset"]
    parquet = root / "contamination" / "evalset.parquet"
    written = parquet.stat().st_mtime_ns
    again = contamination.run([eval_dir], root, workers=1, progress=False)["evalset"]
    assert again.get("skipped") and parquet.stat().st_mtime_ns == written
    # the same folder restricted by a list naming one of the found images: recomputed, one paper left
    target = truth["2101.00000"][0]
    listed = tmp_path / "val.txt"
    listed.write_text(f"{Path(target).stem}__01\nnot_there\n")
    report = contamination.run([eval_dir], root, lists=[listed], workers=1, progress=False)["evalset"]
    assert not report.get("skipped") and report["eval_images"] == 1 and report["listed_not_found"] == 1
    assert set(matches(root)) == {"2101.00000"}
    assert first["fingerprint"] != report["fingerprint"]
    contamination.run([eval_dir], root, workers=1, progress=False)  # leave the full result for other tests


def test_a_photo_cut_along_its_own_edges_is_also_compared_whole(tmp_path):
    """A rocket beside a colour mask, edge to edge: the sharp-seam cut also cuts the rocket along its
    launch towers; the union of those pieces is compared too, and the default cut's panels are kept."""
    import skimage.data as sk

    rocket = np.asarray(Image.fromarray(sk.rocket()).resize((300, 200)))
    mask = np.full((200, 333, 3), (60, 70, 110), np.uint8)  # the rocket's night sky: no fixed-step seam
    mask[40:190, 60:280] = (0, 128, 128)
    figure = np.concatenate([mask, rocket], axis=1)
    Image.fromarray(figure).save(tmp_path / "fig.png")
    assert len(contamination.find_panels(figure)) == 1
    assert not any(abs(b[0] - 333) <= 3 and b[2] >= 630 for b in contamination.find_panels(figure, peak_seams=True))
    boxes, hashes, status = contamination.figure_queries(tmp_path / "fig.png")
    assert status == "ok" and hashes.shape == (len(boxes), contamination.QUERIES_PER_REGION)
    assert len(set(boxes)) == len(boxes)
    assert any(abs(b[0] - 333) <= 3 and b[1] <= 3 and b[2] >= 630 and b[3] >= 197 for b in boxes), boxes
    assert (0, 0, 633, 200) in boxes  # the whole figure


def test_merged_runs_join_neighbours_of_one_row_or_column():
    row = [(0, 0, 100, 50), (102, 0, 150, 50), (150, 0, 300, 50), (0, 52, 120, 90)]
    assert sorted(contamination.merged_runs(row)) == [(0, 0, 150, 50), (0, 0, 300, 50), (102, 0, 300, 50)]
    assert contamination.merged_runs([(0, 0, 10, 50), (0, 52, 10, 90), (30, 0, 40, 50)]) == [(0, 0, 10, 90)]
    assert contamination.merged_runs([(0, 0, 10, 50), (20, 0, 30, 50)]) == []  # too far apart


def test_lookup_equals_exhaustive_search():
    rng = random.Random(3)
    stored = [rng.getrandbits(64) for _ in range(3000)]
    queries = [h ^ sum(1 << b for b in rng.sample(range(64), rng.randint(0, 10))) for h in stored[:400]]
    queries += [rng.getrandbits(64) for _ in range(200)]
    index = HashIndex(np.array(stored, np.uint64), radius=8)
    q, s, d = index.search(np.array(queries, np.uint64))
    got = sorted(zip(q.tolist(), s.tolist(), d.tolist()))
    want = sorted((i, j, bin(a ^ b).count("1")) for i, a in enumerate(queries) for j, b in enumerate(stored)
                  if bin(a ^ b).count("1") <= 8)
    assert got == want and len(want) > 300


def test_bad_input_is_reported(case, tmp_path, capsys):
    _, root, _ = case
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--against", str(empty), "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no images" in err[0]
    assert main(["--against", str(tmp_path / "absent"), "--root", str(root)]) == 2
    # an unreadable file and a decompression bomb among readable images: per-image statuses, the run goes on
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    Image.new("1", (14000, 12000)).save(mixed / "huge.png")  # 168 Mpx in a few kB
    Image.fromarray(transform(np.asarray(Image.open(root / next(iter(
        (root / "images").rglob("*.png"))))), (), np.random.default_rng(0))).save(mixed / "fine.png")
    assert main(["--against", str(mixed), "--root", str(root), "--workers", "1"]) == 0
    report = json.loads((root / "contamination" / "mixed.json").read_text())
    assert report["eval_images"] == 3 and report["eval_images_unreadable"] == 2
    assert any("over the" in e for e in report["eval_unreadable_examples"])
    assert any("unreadable" in e for e in report["eval_unreadable_examples"])
    assert "2 evaluation images unreadable" in capsys.readouterr().out
    (root / "contamination" / "mixed.parquet").unlink()
    (root / "contamination" / "mixed.json").unlink()


def write_scores(root: Path) -> list[dict]:
    """Every rendered figure scored 0.9 by a classifier `m1`; returns the figure records."""
    from pipeline.classify import SCORE_SCHEMA

    figures = [r for r in store.read_rows(root / "figures" / "2021-01.parquet") if r["status"] == "ok"]
    scores = [{"paper_id": r["paper_id"], "img_name": r["img_name"], "sha256": r["sha256"], "score": 0.9,
               "model_version": "m1", "status": "ok", "error": ""} for r in figures]
    store.write_rows(root / "scores" / "2021-01.parquet", scores, SCORE_SCHEMA)
    store.write_stats(root / "scores", "2021-01", {"model_version": "m1"})
    return figures


def test_filter_leaves_out_found_figures_and_the_card_counts_them(case, tmp_path):
    import pyarrow as pa

    from pipeline import filter as flt, publish

    eval_dir, root, truth = case
    contamination.run([eval_dir], root, workers=1, progress=False)
    figures = write_scores(root)
    papers = store.read_rows(root / "papers" / "2021-01.parquet")
    for p in papers:  # one contaminated paper openly licensed: its figure may be shown
        p["license"] = ("http://creativecommons.org/licenses/by/4.0/" if p["arxiv_id"] == "2101.00001"
                        else "http://arxiv.org/licenses/nonexclusive-distrib/1.0/")
    store.write_rows(root / "papers" / "2021-01.parquet", papers, pa.Table.from_pylist(papers).schema)

    _, report = flt.run(root, threshold=0.5)
    kept = set(pq.read_table(root / "selection" / "selection.parquet")["paper_id"].to_pylist())
    assert report["contaminated_left_out"] == {"evalset": 6} and not kept & set(truth) and len(kept) == 6
    files = publish.build(root, "cvf-test")
    card = files["README.md"].decode()
    assert "## Evaluation images" in card and "| evalset |" in card and "left out" in card
    # the contact sheet shows the CC BY paper's figure, and only it
    from pipeline.contact_sheet import contact_sheet

    (shown,) = [r for r in figures if r["paper_id"] == "2101.00001"]
    expected = contact_sheet([root / shown["image_path"]], tmp_path / "one.png", captions=["2101.00001"])
    assert files[contamination.CONTACT_SHEET] == expected.read_bytes()

    _, report = flt.run(root, threshold=0.5, keep_contaminated=True)
    kept = set(pq.read_table(root / "selection" / "selection.parquet")["paper_id"].to_pylist())
    assert report["contaminated_left_out"] == {} and kept >= set(truth)


@pytest.mark.server
def test_flow_checks_the_evaluation_sets_before_filtering(case, tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.classify import filter_and_publish

    eval_dir, root, truth = case
    write_scores(root)
    (root / "contamination" / "evalset.json").unlink(missing_ok=True)  # the flow must compute it
    with prefect_test_harness(server_startup_timeout=120):
        summary = filter_and_publish("cvf-flow", str(root), threshold=0.5, out=str(tmp_path / "manifests"),
                                     evaluation_sets=[str(eval_dir)])
    assert summary["train"] + summary["val"] == 6  # 12 figures, the 6 showing evaluation images left out
    assert set(matches(root)) == set(truth)
    card = (tmp_path / "manifests" / "cvf-flow" / "README.md").read_text()
    assert "| evalset |" in card
