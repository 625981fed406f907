"""Published manifests: formats users' tools read, Croissant validation, overwrite guard, verify."""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import fsspec
from fsspec.implementations.memory import MemoryFileSystem
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import classify, filter as flt, publish, store, verify
from pipeline.naming import output_name
from test_features import make_corpus

NAME = "cvf-2026.11"


def scored_selection(root, n_papers: int = 20, figures_per_paper: int = 4, seed: int = 2,
                     folds: int = 3) -> dict:
    """A corpus under `root` (with captions) trained on replay truth, scored and filtered: ready
    to publish."""
    make_corpus(root, n_papers=n_papers, figures_per_paper=figures_per_paper, seed=seed)
    add_captions(root)
    classify.train(root, folds=folds, version="clf-pub")
    classify.score(root)
    return flt.run(root, threshold=0.3)[1]


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    root = tmp_path_factory.mktemp("pub") / "data"
    report = scored_selection(root)
    assert report["kept"] > 10 and report["per_split"]["val"]["figures"] > 0
    return root, report


def caption_of(paper_id: str, img_name: str) -> dict:
    """Caption columns as extraction writes them: every third figure has none, sub-figures of two."""
    n = sum(map(ord, paper_id + img_name))
    if n % 3 == 0:
        return {"caption": "", "caption_latex": "", "subcaption": "", "figure_label": "", "n_panels": None,
                "panel_index": None, "caption_error": "the figure has no \\caption"}
    sub = n % 2 == 0
    return {"caption": f"Qualitative results on {img_name}: ours vs. $x^2$ baselines.",
            "caption_latex": f"\\textbf{{Qualitative}} results on {img_name}: ours vs. $x^2$ baselines.",
            "subcaption": "Input" if sub else "", "figure_label": f"fig:{n}", "n_panels": 2 if sub else 1,
            "panel_index": 0, "caption_error": ""}


def add_captions(root):
    """Give make_corpus's figure records the caption columns of pipeline.latex."""
    for path in sorted((root / "figures").glob("*.parquet")):
        rows = store.read_rows(path)
        for r in rows:
            r.update(caption_of(r["paper_id"], r["img_name"]))
        schema = pa.Table.from_pylist(rows).schema
        schema = schema.set(schema.get_field_index("n_panels"), pa.field("n_panels", pa.int32()))
        schema = schema.set(schema.get_field_index("panel_index"), pa.field("panel_index", pa.int32()))
        store.write_rows(path, rows, schema)


@pytest.fixture
def published(selected, tmp_path):
    root, report = selected
    target, files = publish.publish(root, NAME, out=str(tmp_path / "manifests"))
    return root, report, tmp_path / "manifests" / NAME, files


def test_manifest_files_and_row_contents(published):
    root, report, out, _ = published
    from pipeline.licenses import allows_redistribution

    train = pq.read_table(out / "train.parquet").to_pylist()
    val = pq.read_table(out / "val.parquet").to_pylist()
    # a contact sheet for each split that has figures whose licence allows showing them
    sheets = {f"contact_{s}.png" for s, rows in (("train", train), ("val", val))
              if any(allows_redistribution(r["license"]) for r in rows)}
    assert "contact_train.png" in sheets
    expected = {"train.parquet", "val.parquet", "train.jsonl", "val.jsonl", "df_train.csv", "df_val.csv",
                "croissant.json", "README.md", "index.html", "year_histogram.png"} | sheets
    assert {p.name for p in out.iterdir()} == expected
    assert len(train) + len(val) == report["kept"]
    assert not {r["paper_id"] for r in train} & {r["paper_id"] for r in val}
    assert {r["split"] for r in train} == {"train"}
    row = train[0]
    assert set(publish.MANIFEST_COLUMNS) <= set(row)
    assert row["source_url"].startswith(f"https://arxiv.org/e-print/{row['paper_id']}v")
    assert row["crawl_date"] and row["version"] in (1, 2) and row["score"] >= 0.3
    assert (root / "images" / row["image_path"]).exists()
    jsonl = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert jsonl == train
    for sheet in sorted(sheets) + ["year_histogram.png"]:
        assert Image.open(out / sheet).size[0] > 100


def test_manifest_says_how_each_png_was_made_and_its_perceptual_hash(published):
    """`render` and `phash` come from the figure records (this corpus predates `render`: empty),
    in Parquet, JSONL, Croissant (typed, described) and the card; the official CSV keeps its 3 columns."""
    root, _, out, _ = published
    figures = {(r["paper_id"], r["img_name"]): r for p in (root / "figures").glob("*.parquet")
               for r in pq.read_table(p).to_pylist()}
    for split in ("train", "val"):
        for row in pq.read_table(out / f"{split}.parquet").to_pylist():
            assert row["phash"] == figures[(row["paper_id"], row["img_name"])]["phash"] and row["render"] == ""
        assert (out / f"df_{split}.csv").read_text().splitlines()[0] == ",paper_id,img_name"
    assert {"render", "phash"} <= set(json.loads((out / "val.jsonl").read_text().splitlines()[0]))
    fields = {f["name"]: f for f in json.loads((out / "croissant.json").read_text())["recordSet"][0]["field"]}
    assert fields["render"]["dataType"] == fields["phash"]["dataType"] == "sc:Text"
    assert "official" in fields["render"]["description"] and "verify" in fields["phash"]["description"]
    assert "`render`, `phash`" in (out / "README.md").read_text()


def test_manifest_carries_the_pdf_region_columns(published):
    """`page` and `bbox` (PDF-fallback figures' region, for the rebuild) are in Parquet, JSONL,
    Croissant (typed, described) and the card's column list; null and '' for figures rendered
    from e-print files, and for records written before extraction kept them (this corpus)."""
    _, _, out, _ = published
    table = pq.read_table(out / "val.parquet")
    assert str(table.schema.field("page").type) == "int64" and str(table.schema.field("bbox").type) == "string"
    assert {(r["page"], r["bbox"]) for r in table.to_pylist()} == {(None, "")}
    first = json.loads((out / "val.jsonl").read_text().splitlines()[0])
    assert first["page"] is None and first["bbox"] == ""
    fields = {f["name"]: f for f in json.loads((out / "croissant.json").read_text())["recordSet"][0]["field"]}
    assert fields["page"]["dataType"] == "sc:Integer" and fields["bbox"]["dataType"] == "sc:Text"
    assert "0-based" in fields["page"]["description"] and "x0,y0,x1,y1" in fields["bbox"]["description"]
    assert "`phash`, `page`, `bbox`" in (out / "README.md").read_text()
    assert (out / "df_val.csv").read_text().splitlines()[0] == ",paper_id,img_name"


def test_manifests_carry_the_caption_columns(published):
    root, report, out, files = published
    for split in ("train", "val"):
        rows = pq.read_table(out / f"{split}.parquet").to_pylist()
        jsonl = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert jsonl == rows
        for r in rows:
            expected = caption_of(r["paper_id"], r["img_name"])
            for col in ("caption", "caption_latex", "subcaption", "figure_label", "n_panels", "panel_index"):
                assert r[col] == expected[col], (col, r)
    selection = pq.read_table(root / "selection" / "selection.parquet").column_names
    assert {"caption", "caption_latex", "subcaption", "figure_label", "n_panels", "panel_index"} <= set(selection)
    croissant = json.loads((out / "croissant.json").read_text())
    fields = {f["name"]: f for f in croissant["recordSet"][0]["field"]}
    assert fields["caption"]["dataType"] == "sc:Text" and "caption" in fields["caption"]["description"]
    assert fields["n_panels"]["dataType"] == "sc:Integer" and fields["panel_index"]["description"]
    # the card: share with a caption, length distribution, examples
    captioned = [r for s in ("train", "val") for r in pq.read_table(out / f"{s}.parquet").to_pylist()]
    share = sum(bool(r["caption"]) for r in captioned) / len(captioned)
    card = (out / "README.md").read_text()
    assert "## Captions" in card and f"{share:.1%} of the figures have a caption" in card
    assert "| caption words | figures |" in card and "Qualitative results on" in card


def test_official_csv_format_reads_like_the_published_index(published, testdata):
    _, _, out, _ = published
    ours = (out / "df_val.csv").read_text().splitlines()
    official_header = (testdata / "cvf_index" / "df_val.csv").read_text().splitlines()[0]
    assert ours[0] == official_header == ",paper_id,img_name"
    rows = list(csv.DictReader(io.StringIO("\n".join(ours))))
    val = pq.read_table(out / "val.parquet").to_pylist()
    assert [(r[""], r["paper_id"], r["img_name"]) for r in rows] == \
           [(str(i), v["paper_id"], v["img_name"]) for i, v in enumerate(val)]


def test_official_csv_reads_with_pandas_like_the_published_index(published, testdata):
    """The authors' tools read the index with pandas: ours must parse to the same shape and values."""
    import pandas as pd

    _, _, out, _ = published
    official = pd.read_csv(testdata / "cvf_index" / "df_val.csv")
    ours = pd.read_csv(out / "df_val.csv")
    assert list(ours.columns) == list(official.columns) == ["Unnamed: 0", "paper_id", "img_name"]
    assert ours.dtypes.to_dict() == official.dtypes.to_dict()
    val = pq.read_table(out / "val.parquet").to_pandas()
    as_text = pd.read_csv(out / "df_val.csv", index_col=0, dtype=str)
    assert list(as_text.index) == [str(i) for i in range(len(val))]
    assert as_text.to_dict("list") == {"paper_id": list(val["paper_id"]), "img_name": list(val["img_name"])}


def test_official_csv_quotes_awkward_names_and_keeps_ids_as_written():
    import pandas as pd
    import pyarrow as pa

    rows = {"paper_id": ["2001.01160", "cs/0501001", "1912.02913"],
            "img_name": ["figs_a-eps-converted-to.pdf", "ünï code.png", 'Mehrfard, 2019_"heat".pdf']}
    data = publish.official_csv(pa.table(rows))
    assert data.startswith(b",paper_id,img_name\n0,2001.01160,figs_a-eps-converted-to.pdf\n") and b"\r" not in data
    back = pd.read_csv(io.BytesIO(data), index_col=0, dtype=str)
    assert back.to_dict("list") == rows


def test_croissant_validates_and_loads_with_mlcroissant(published):
    mlc = pytest.importorskip("mlcroissant")
    _, _, out, _ = published
    meta = json.loads((out / "croissant.json").read_text())
    assert meta["conformsTo"] == "http://mlcommons.org/croissant/1.0"
    assert {d["@type"] for d in meta["distribution"]} == {"cr:FileObject", "cr:FileSet"}
    dataset = mlc.Dataset(jsonld=str(out / "croissant.json"))  # raises on validation errors
    records = list(dataset.records("figures"))  # both splits, through the parquet FileSet
    for split in ("train", "val"):
        table = pq.read_table(out / f"{split}.parquet")
        mine = [r for r in records if r["figures/split"].decode() == split]
        assert len(mine) == table.num_rows
        assert {r["figures/paper_id"].decode() for r in mine} == set(table["paper_id"].to_pylist())
        by_key = {(r["paper_id"], r["img_name"]): r for r in table.to_pylist()}
        for r in mine:  # the caption columns come through mlcroissant as published
            row = by_key[(r["figures/paper_id"].decode(), r["figures/img_name"].decode())]
            assert (r["figures/caption"] or b"").decode() == row["caption"]
            assert (r["figures/subcaption"] or b"").decode() == row["subcaption"]


def test_parquet_loads_with_datasets_offline(published, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # read at import: no network, ever
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    datasets = pytest.importorskip("datasets", reason="`datasets` (the dev extra) is not installed")
    _, report, out, _ = published
    ds = datasets.load_dataset("parquet", data_files={s: str(out / f"{s}.parquet") for s in ("train", "val")},
                               cache_dir=str(tmp_path / "cache"))
    assert ds["train"].num_rows + ds["val"].num_rows == report["kept"]
    assert set(publish.MANIFEST_COLUMNS) == set(ds["val"].column_names)
    assert set(ds["val"]["split"]) == {"val"} and ds["train"][0]["source_url"].startswith("https://arxiv.org/")
    assert any(ds["train"]["caption"]) and ds["train"].features["n_panels"].dtype == "int64"
    # The folder itself (or a hub repo made from it): the card's header says which file is which
    # split, so the JSONL and official CSV beside the Parquet files are not read as data.
    folder = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert {s: folder[s].num_rows for s in folder} == {"train": ds["train"].num_rows, "validation": ds["val"].num_rows}


def test_card_and_html_report_counts_threshold_metrics_and_licences(published):
    _, report, out, _ = published
    card = (out / "README.md").read_text()
    assert f"{report['threshold']:.4f}" in card and "balanced accuracy" in card and "clf-pub" in card
    assert "do not redistribute" in card and "creativecommons.org/licenses/by/4.0" in card
    # The crawl records no crawl time: the card says where crawl_date comes from instead.
    assert report["crawl_date_from"] == {"papers file modified": report["kept"]}
    assert "modification date of `papers/<month>.parquet`" in card
    assert f"| train | {report['per_split']['train']['figures']} |" in card
    html = (out / "index.html").read_text()
    assert "<table>" in html and 'src="contact_train.png"' in html
    assert "licence allows redistribution" in card
    assert card.startswith("---\n") and "config_name" not in html  # the hub header is not shown


def test_existing_name_is_not_overwritten_without_the_flag(published, tmp_path):
    root, _, out, _ = published
    before = (out / "croissant.json").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        publish.publish(root, NAME, out=str(out.parent))
    assert (out / "croissant.json").read_bytes() == before
    (out / "stray.txt").write_text("old")
    publish.publish(root, NAME, out=str(out.parent), overwrite=True)
    assert not (out / "stray.txt").exists() and (out / "train.parquet").exists()
    assert not list(out.parent.glob(".*"))  # no temporary folders left behind


def test_bad_name_and_empty_selection_publish_nothing(selected, tmp_path):
    root, _ = selected
    with pytest.raises(ValueError, match="bad manifest name"):
        publish.publish(root, "../escape", out=str(tmp_path))
    empty = tmp_path / "empty"
    (empty / "selection").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="run `python -m pipeline.filter`"):
        publish.publish(empty, NAME, out=str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_a_report_of_another_selection_is_refused(selected, tmp_path):
    """A filter run stopped between writing selection.parquet and report.json leaves the old
    report beside a new selection: publish must not combine them."""
    import shutil

    root, _ = selected
    copy = tmp_path / "data"
    shutil.copytree(root / "selection", copy / "selection")
    sel = copy / "selection" / "selection.parquet"
    table = pq.read_table(sel)
    pq.write_table(table.slice(0, table.num_rows - 1), sel)  # the new selection, report not yet written
    with pytest.raises(ValueError, match="not the report of selection.parquet"):
        publish.publish(copy, NAME, out=str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_fsspec_url_output(selected):
    root, report = selected
    target, _ = publish.publish(root, NAME, out="memory://cvf-test/manifests", overwrite=True)
    fs = fsspec.filesystem("memory")
    with fs.open("/cvf-test/manifests/cvf-2026.11/train.parquet", "rb") as f:
        assert pq.read_table(f).num_rows == report["per_split"]["train"]["figures"]
    assert verify.verify(target)["ok_overall"]


def test_verify_accepts_a_fresh_manifest_and_its_images(published):
    root, report, out, _ = published
    result = verify.verify(str(out), root / "images")
    assert result["ok_overall"] and result["figures"] == result["ok"] == report["kept"]


def test_verify_reports_missing_and_altered_manifest_files(published):
    _, _, out, _ = published
    (out / "df_val.csv").write_text(",paper_id,img_name\n0,2001.00001,x.png\n")
    (out / "val.jsonl").unlink()
    with open(out / "train.jsonl", "a") as f:
        f.write("{}\n")
    (out / "train.parquet").unlink()
    problems = {p["file"]: p["problem"] for p in verify.verify(str(out))["manifest_problems"]}
    altered = "altered (sha256 differs from croissant.json)"
    assert problems == {"df_val.csv": altered, "train.jsonl": altered, "val.jsonl": "missing", "train.parquet": "missing"}


def test_verify_reports_missing_altered_and_resized_images(published, tmp_path):
    root, _, out, _ = published
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    rows = verify.read_manifest_rows(str(out))
    (images / rows[0]["image_path"]).unlink()
    Image.open(images / rows[1]["image_path"]).resize((7, 5)).save(images / rows[1]["image_path"])
    p2 = images / rows[2]["image_path"]
    im = Image.open(p2).convert("RGB")
    im.putpixel((0, 0), (1, 2, 3))
    im.save(p2)
    result = verify.verify(str(out), images)
    problems = {p["figure"]: p["problem"] for p in result["image_problems"]}
    key = [f"{r['paper_id']}/{r['img_name']}" for r in rows[:3]]
    assert problems.pop(key[2]).startswith("sha256 differs")  # the fixture's phash is no real hash
    assert problems == {key[0]: "missing", key[1]: f"size 7x5, listed {rows[1]['width']}x{rows[1]['height']}"}
    assert not result["ok_overall"] and result["ok"] == len(rows) - 3


def test_verify_finds_images_by_paper_and_official_output_name(published, tmp_path):
    root, _, out, _ = published
    for p in (root / "images").rglob("*.png"):  # <paper_id>/<output name>, no month shard
        (tmp_path / "by_paper" / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, tmp_path / "by_paper" / p.parent.name / p.name)
    assert verify.verify(str(out), tmp_path / "by_paper")["ok_overall"]


def test_verify_reads_the_split_layout_that_rebuild_writes(published, tmp_path):
    """`pipeline.rebuild --index df_val.csv --split val --out DIR` writes DIR/val/<paper_id>/<output name>."""
    root, report, out, _ = published
    rebuilt = tmp_path / "rebuilt"
    for r in verify.read_manifest_rows(str(out), ("val",)):
        dest = rebuilt / "val" / r["paper_id"] / output_name(r["paper_id"], r["img_name"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "images" / r["image_path"], dest)
    val_only = verify.verify(str(out), rebuilt, splits=("val",))
    assert val_only["ok_overall"] and val_only["figures"] == report["per_split"]["val"]["figures"]
    both = verify.verify(str(out), rebuilt)  # the train images were not rebuilt
    assert not both["ok_overall"] and len(both["image_problems"]) == report["per_split"]["train"]["figures"]
    cli = subprocess.run([sys.executable, "-m", "pipeline.verify", str(out), "--images", str(rebuilt), "--split", "val"],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and "OK" in cli.stdout, cli.stdout + cli.stderr


def test_cli_publish_and_verify(selected, tmp_path):
    root, report = selected
    cmd = [sys.executable, "-m", "pipeline.publish", "--name", NAME, "--root", str(root), "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"{report['per_split']['train']['figures']} train" in out.stdout
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    ok = subprocess.run([sys.executable, "-m", "pipeline.verify", str(tmp_path / NAME), "--images", str(root / "images")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    gone = subprocess.run([sys.executable, "-m", "pipeline.verify", str(tmp_path / "cvf-typo")], capture_output=True, text=True)
    assert gone.returncode == 2 and "manifest folder not found" in gone.stderr


@pytest.mark.server
def test_prefect_flows_run_the_chain(tmp_path):
    """train-classifier -> score-figures -> filter-and-publish on a temporary Prefect server."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.classify import filter_and_publish, score_figures, train_classifier

    root = tmp_path / "data"
    make_corpus(root, n_papers=6, figures_per_paper=3, shards=("2021-01",))
    with prefect_test_harness(server_startup_timeout=120):
        assert train_classifier(str(root), version="flow").endswith("classifier/flow")
        assert score_figures(str(root))["scored"] == 18
        summary = filter_and_publish(NAME, str(root), threshold=0.0, out=str(tmp_path / "manifests"))
    assert summary["train"] + summary["val"] == 18
    assert verify.verify(summary["manifest"], root / "images")["ok_overall"]


def with_licences(selected, tmp_path, licence_of) -> "Path":
    """A copy of the selected root whose selection's `license` column is `licence_of(paper_id)`."""
    import pyarrow as pa

    root = tmp_path / "relicensed"
    shutil.copytree(selected[0], root, symlinks=True)
    sel = root / "selection" / "selection.parquet"
    table = pq.read_table(sel)
    column = pa.array([licence_of(p) for p in table["paper_id"].to_pylist()], pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("license"), "license", column), sel)
    report = json.loads((root / "selection" / "report.json").read_text())
    report["selection_sha256"] = store.sha256_file(sel)
    (root / "selection" / "report.json").write_text(json.dumps(report))
    return root


def test_contact_sheets_show_only_openly_licensed_figures(selected, tmp_path):
    from pipeline.contact_sheet import contact_sheet

    closed = with_licences(selected, tmp_path / "a", lambda p: "http://arxiv.org/licenses/nonexclusive-distrib/1.0/")
    files = publish.build(closed, NAME)
    assert not [f for f in files if f.startswith("contact_")]
    card = files["README.md"].decode()
    assert "licence allows redistribution" in card and "no openly licensed figure" in card
    # One paper under CC BY: each sheet shows that paper's figures, and nothing else.
    table = pq.read_table(selected[0] / "selection" / "selection.parquet").to_pylist()
    chosen = next(r["paper_id"] for r in table if r["split"] == "train")
    one = with_licences(selected, tmp_path / "b", lambda p: "http://creativecommons.org/licenses/by/4.0/"
                        if p == chosen else "http://creativecommons.org/licenses/by-nc-nd/4.0/")
    files = publish.build(one, NAME)
    assert "contact_val.png" not in files
    rows = [r for r in pq.read_table(io.BytesIO(files["train.parquet"])).to_pylist() if r["paper_id"] == chosen]
    expected = tmp_path / "expected.png"
    contact_sheet([one / "images" / r["image_path"] for r in rows], expected, captions=[chosen] * len(rows))
    assert files["contact_train.png"] == expected.read_bytes()


def test_licence_allowlist():
    from pipeline.licenses import allows_redistribution

    for ok in ("http://creativecommons.org/licenses/by/4.0/", "https://creativecommons.org/licenses/by-sa/4.0/",
               "http://creativecommons.org/publicdomain/zero/1.0/", "http://creativecommons.org/licenses/by/3.0"):
        assert allows_redistribution(ok), ok
    for no in ("http://arxiv.org/licenses/nonexclusive-distrib/1.0/", "http://creativecommons.org/licenses/by-nc/4.0/",
               "http://creativecommons.org/licenses/by-nc-sa/4.0/", "http://creativecommons.org/licenses/by-nd/4.0/",
               "", None, "http://example.com/licenses/by/4.0/"):
        assert not allows_redistribution(no), no


def test_publish_refuses_a_croissant_mlcroissant_rejects(selected, tmp_path, monkeypatch):
    root, _ = selected
    files = publish.build(root, NAME)
    publish.validate_croissant(files)  # ours passes
    meta = json.loads(files["croissant.json"])
    meta["recordSet"][0]["field"][0]["source"]["fileSet"]["@id"] = "no-such-fileset"
    with pytest.raises(ValueError, match="does not validate with mlcroissant"):
        publish.validate_croissant({**files, "croissant.json": json.dumps(meta).encode()})
    # publish checks before it writes or reports: a bad croissant.json publishes nothing
    built = publish.build
    monkeypatch.setattr(publish, "build", lambda *a, **k: {**built(*a, **k), "croissant.json": b"[]"})
    assert publish.main(["--name", NAME, "--root", str(root), "--out", str(tmp_path / "m")]) == 2
    assert not (tmp_path / "m" / NAME).exists()


# --- remote writes: a Hugging Face Hub and an object store that fail -------------------------------

class FakeHub:
    """The Hub's side of a push, on 127.0.0.1: creates repositories, answers which upload mode
    each file takes, and takes or refuses (`fail_commit`) the commit; every request is logged."""

    def __init__(self, fail_commit: bool):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hub = self
        self.requests: list[tuple[str, str, bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                hub.requests.append(("GET", self.path, b""))
                self.answer(404, {"error": "not here"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path, body))
                if self.path == "/api/repos/create":
                    return self.answer(200, {"url": f"{hub.url}/datasets/nobody/cvf-test"})
                if self.path == "/api/validate-yaml":  # the card's header
                    return self.answer(200, {"errors": [], "warnings": []})
                if "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    return self.answer(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if "/commit/" in self.path:
                    if fail_commit:
                        return self.answer(403, {"error": "You don't have the rights to create a commit"})
                    return self.answer(200, {"commitUrl": f"{hub.url}/datasets/nobody/cvf-test/commit/abc",
                                             "commitOid": "a" * 40, "pullRequestUrl": None})
                self.answer(404, {"error": "not here"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def commits(self) -> list[list[str]]:
        """The paths each commit request carried (its NDJSON lines of kind `file`)."""
        out = []
        for method, path, body in self.requests:
            if method == "POST" and "/commit/" in path:
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                out.append([x["value"]["path"] for x in lines if x["key"] == "file"])
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(monkeypatch, request):
    hub = FakeHub(fail_commit=request.param)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from huggingface_hub import constants  # read once, at import: another test may have set it offline

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield hub
    hub.close()


@pytest.mark.parametrize("fake_hub", [False], indirect=True)
def test_a_hub_push_is_one_commit_of_every_file(selected, tmp_path, fake_hub, capsys):
    root, _ = selected
    code = publish.main(["--name", NAME, "--root", str(root), "--out", str(tmp_path / "m"),
                         "--hf-repo", "nobody/cvf-test"])
    assert code == 0, capsys.readouterr().err
    [paths] = fake_hub.commits()
    assert sorted(paths) == sorted(f for f in publish.HUB_FILES if (tmp_path / "m" / NAME / f).exists())
    assert "pushed" in capsys.readouterr().out


@pytest.mark.parametrize("fake_hub", [True], indirect=True)
def test_a_failing_hub_push_is_one_error_line_and_a_non_zero_exit(selected, tmp_path, fake_hub, capsys):
    root, _ = selected
    code = publish.main(["--name", NAME, "--root", str(root), "--out", str(tmp_path / "m"),
                         "--hf-repo", "nobody/cvf-test"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("error: ") and "nobody/cvf-test" in err[0], err
    assert len(fake_hub.commits()) == 1  # one commit asked for, not one per file


class FailingMemoryFS(MemoryFileSystem):
    """An object store (in memory) whose writes fail once `fail_writes` is set."""
    protocol = "failmem"
    fail_writes = False

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("failmem://"))

    def pipe_file(self, path, value, *args, **kwargs):
        if FailingMemoryFS.fail_writes and "croissant" in path:
            raise OSError("connection reset by the store")
        return super().pipe_file(path, value, *args, **kwargs)


def test_a_remote_overwrite_never_deletes_the_published_manifest_first(selected, monkeypatch, capsys):
    root, _ = selected
    fsspec.register_implementation("failmem", FailingMemoryFS, clobber=True)
    out = "failmem://bucket/manifests"
    publish.publish(root, NAME, out=out)
    fs = fsspec.filesystem("failmem")
    before = {p: fs.cat_file(p) for p in fs.find(f"/bucket/manifests/{NAME}")}
    monkeypatch.setattr(FailingMemoryFS, "fail_writes", True)
    code = publish.main(["--name", NAME, "--root", str(root), "--out", out, "--overwrite", "--samples", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error: writing ")
    assert {p: fs.cat_file(p) for p in fs.find(f"/bucket/manifests/{NAME}")} == before  # untouched
    assert fs.find("/bucket/manifests") == sorted(before)  # no half-written folder beside it
    monkeypatch.setattr(FailingMemoryFS, "fail_writes", False)
    assert publish.main(["--name", NAME, "--root", str(root), "--out", out, "--overwrite", "--samples", "2"]) == 0
    after = {p: fs.cat_file(p) for p in fs.find(f"/bucket/manifests/{NAME}")}
    assert after.keys() == before.keys() and after != before  # replaced (smaller contact sheets)
    assert fs.find("/bucket/manifests") == sorted(before)  # the old one moved aside, then removed
