"""`pipeline.rebuild` finds the arXiv version the CVF index was made from, over the replay:
real e-prints served as several versions, the latest of which renamed a listed figure."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import tarfile
from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest

from pipeline.rebuild import main, rebuild
from pipeline.replay.server import Replay, ReplayServer
from pipeline.versions import CVF_CUTOFF, read_snapshot, try_order

ORIGINAL = "add.png"  # listed by the CVF index for 1801.04461 (with demos.pdf)


def renamed(data: bytes, old: str, new: str) -> bytes:
    """The e-print repacked with member `old` renamed `new` (a revision that renamed a figure)."""
    src, out = tarfile.open(fileobj=io.BytesIO(data)), io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for m in src.getmembers():
            body = src.extractfile(m).read() if m.isfile() else None
            if m.name == old:
                m.name = new
            tar.addfile(m, io.BytesIO(body) if body is not None else None)
    return gzip.compress(out.getvalue(), mtime=0)


def paper(arxiv_id: str, versions: list[tuple[str, str]]) -> dict:
    """A replay paper record whose versions are (ISO date, e-print file)."""
    return {"arxiv_id": arxiv_id, "version": len(versions), "title": f"Paper {arxiv_id}",
            "authors": ["A. Author"], "summary": "s", "published": versions[0][0],
            "updated": versions[-1][0], "primary_category": "cs.CV", "categories": ["cs.CV"],
            "comment": "", "journal_ref": "", "doi": "", "license": "", "withdrawn": False,
            "eprint_file": versions[-1][1],
            "versions": [{"version": n, "created": d, "eprint_file": f}
                         for n, (d, f) in enumerate(versions, 1)]}


@pytest.fixture
def versioned(testdata, tmp_path, monkeypatch):
    """1801.04461: v1 (2018) as CVF saw it, v2 (2023) renamed add.png. 1904.03249: v1 (2019)
    as CVF saw it, v2 (2021, current on 2022-03-01) and v3 (2023) without figures/vis.pdf."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    a = (testdata / "eprints" / "1801.04461.tar.gz").read_bytes()
    b = (testdata / "eprints" / "1904.03249.tar.gz").read_bytes()
    files = {"a1": a, "a2": renamed(a, ORIGINAL, "add_v2.png"), "b1": b,
             "b2": renamed(b, "figures/vis.pdf", "figures/vis2.pdf"),
             "b3": renamed(b, "figures/vis.pdf", "figures/vis3.pdf")}
    for name, data in files.items():
        (corpus / name).write_bytes(data)
    papers = [paper("1801.04461", [("2018-01-14T10:00:00+00:00", str(corpus / "a1")),
                                   ("2023-05-02T10:00:00+00:00", str(corpus / "a2"))]),
              paper("1904.03249", [("2019-04-06T10:00:00+00:00", str(corpus / "b1")),
                                   ("2021-06-01T10:00:00+00:00", str(corpus / "b2")),
                                   ("2023-01-01T10:00:00+00:00", str(corpus / "b3"))])]
    (corpus / "papers.jsonl").write_text("".join(json.dumps(p) + "\n" for p in papers))
    with ReplayServer(Replay(corpus)) as server:
        for k, v in server.endpoints().items():
            monkeypatch.setenv(k, v)
        yield server


def write_index(path, testdata):
    rows = [r for r in csv.DictReader(open(testdata / "cvf_index" / "df_train.csv"))
            if r["paper_id"] in ("1801.04461", "1904.03249")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "paper_id", "img_name"])
        w.writerows([i, r["paper_id"], r["img_name"]] for i, r in enumerate(rows))
    return {(r["paper_id"], r["img_name"]) for r in rows}


def test_replay_serves_versions_and_their_dates(versioned):
    import requests

    e = versioned.url + "/e-print/1801.04461"
    assert requests.get(e + "v1").content == requests.get(e + "v1").content != requests.get(e).content
    assert requests.get(e + "v2").content == requests.get(e).content
    assert requests.get(e + "v3").status_code == 404
    feed = requests.get(versioned.url + "/api/query?id_list=1904.03249,1904.03249v2").text
    assert "<id>http://arxiv.org/abs/1904.03249v3</id><updated>2023-01-01T10:00:00Z" in feed
    assert "<id>http://arxiv.org/abs/1904.03249v2</id><updated>2021-06-01T10:00:00Z" in feed


def test_rebuild_finds_the_version_cvf_used(versioned, testdata, tmp_path, data_root):
    index = tmp_path / "df_part.csv"
    listed = write_index(index, testdata)
    assert ("1801.04461", ORIGINAL) in listed and ("1904.03249", "figures_vis.pdf") in listed
    report = rebuild(index, "train", tmp_path / "cvf", delay=0, progress=False)
    assert report["images_missing"] == 0 and report["images_written"] == len(listed)
    # 1801.04461: v1 was current on 2022-03-01. 1904.03249: v2 was, but lacks vis.pdf, and so
    # does v3 (tried next, nearer that date); v1 holds every listed name.
    assert report["paper_versions"] == {"1801.04461": 1, "1904.03249": 1}
    assert report["papers_not_on_first_version_tried"] == ["1904.03249"]
    rows = pq.read_table(data_root / "rebuild" / "train" / "figures.parquet").to_pylist()
    assert {r["version"] for r in rows} == {1}
    v1 = {"1801.04461": "a1", "1904.03249": "b1"}  # the e-print each figure was read from
    assert all(r["eprint_sha256"] == hashlib.sha256((versioned.replay.corpus_dir / v1[r["paper_id"]])
                                                    .read_bytes()).hexdigest() for r in rows)
    assert (data_root / "raw" / "2019-04" / "1904.03249v3.eprint").exists()
    # the API was asked twice: every paper's latest, then the older versions of the revised
    api = [path for _, path, _ in versioned.replay.log if path.startswith("/api/")]
    assert len(api) == 2 and "1904.03249v1" in api[1] and "1904.03249v2" in api[1]


def test_latest_misses_the_renamed_figure_and_exits_1(versioned, testdata, tmp_path, data_root,
                                                      capsys):
    index = tmp_path / "df_part.csv"
    write_index(index, testdata)
    argv = ["--index", str(index), "--split", "train", "--out", str(tmp_path / "cvf"),
            "--delay", "0", "--version", "latest"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code not in (0, None)
    assert "listed images are missing" in capsys.readouterr().err
    missing = list(csv.DictReader(open(data_root / "rebuild" / "train" / "missing.csv")))
    assert {(m["paper_id"], m["img_name"]) for m in missing} == {
        ("1801.04461", ORIGINAL), ("1904.03249", "figures_vis.pdf")}
    assert all(m["version"] == "" for m in missing)  # the unversioned e-print
    main(argv + ["--allow-missing"])  # accepted: returns, exit 0


def test_snapshot_gives_the_dates_without_the_api(versioned, testdata, tmp_path, data_root,
                                                  monkeypatch):
    def created(iso):
        return datetime.fromisoformat(iso).strftime("%a, %d %b %Y %H:%M:%S GMT")

    snapshot = tmp_path / "arxiv-metadata-oai-snapshot.json"
    lines = [{"id": "0704.0001", "versions": [{"version": "v1", "created": "Mon, 2 Apr 2007 19:18:42 GMT"}]}]
    for p in versioned.replay.papers.values():
        lines.append({"id": p["arxiv_id"], "categories": "cs.CV", "versions": [
            {"version": f"v{v['version']}", "created": created(v["created"])} for v in p["versions"]]})
    snapshot.write_text("".join(json.dumps(x) + "\n" for x in lines))
    monkeypatch.setenv("CVF_ARXIV_API_URL", "http://127.0.0.1:9/api/query")  # nothing listens
    index = tmp_path / "df_part.csv"
    write_index(index, testdata)
    report = rebuild(index, "train", tmp_path / "cvf", delay=0, progress=False, metadata=snapshot)
    assert report["paper_versions"] == {"1801.04461": 1, "1904.03249": 1}
    assert report["images_missing"] == 0


def test_snapshot_reading_and_version_order(tmp_path):
    snapshot = tmp_path / "s.json"
    snapshot.write_text(json.dumps({"id": "2101.00001", "versions": [
        {"version": "v1", "created": "Fri, 1 Jan 2021 10:00:00 GMT"},
        {"version": "v2", "created": "Tue, 1 Feb 2022 10:00:00 GMT"},
        {"version": "v3", "created": "Wed, 1 Jun 2022 10:00:00 GMT"}]}) + '\n{"id": "2101.00002", broken\n')
    with pytest.raises(ValueError, match="s.json:2"):
        read_snapshot(snapshot, {"2101.00001", "2101.00002"})
    dates = read_snapshot(snapshot, {"2101.00001"})["2101.00001"]  # the broken line is not wanted
    assert try_order(dates, CVF_CUTOFF) == [2, 3, 1]
    assert try_order(dates, datetime(2020, 1, 1, tzinfo=timezone.utc)) == [1, 2, 3]


def test_index_row_without_a_field_is_one_error_line(tmp_path, capsys):
    index = tmp_path / "df.csv"
    index.write_text(",paper_id,img_name\n0,2101.00001,a.png\n1,2101.00002\n")
    with pytest.raises(SystemExit) as e:
        main(["--index", str(index), "--split", "val", "--out", str(tmp_path / "cvf"),
              "--root", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "df.csv line 3: no img_name" in err
    assert not (tmp_path / "data" / "raw").exists()  # nothing fetched before the check
