"""The bulk S3 route against moto's S3 server (a real S3 API on 127.0.0.1) holding a bucket in
arXiv's layout (`src/arXiv_src_<yymm>_<nnn>.tar` + `src/arXiv_src_manifest.xml`) built from the
real e-prints in ../shared/testdata/eprints, plus a few made-up papers of other categories."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pymupdf
import pytest

from pipeline import bulk, bulk_records, bulk_s3, bulk_selection, shards, store
from pipeline.bulk_selection import SourceTar, item_key, item_name
from pipeline.extract import extract_shard

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

REPO = Path(__file__).resolve().parent.parent
REAL = ["1710.10473", "1801.04461", "1904.03249", "1906.11713", "2002.06483", "2202.04200"]


def gz_tex(text: str) -> bytes:
    return gzip.compress(f"\\documentclass{{article}}\\begin{{document}}{text}\\end{{document}}\n".encode(), mtime=0)


def one_page_pdf() -> bytes:
    doc = pymupdf.open()
    doc.new_page(width=200, height=100).insert_text((20, 50), "a PDF-only submission")
    return doc.tobytes()


def snapshot_line(arxiv_id: str, categories: str, versions=("Mon, 2 Apr 2018 19:18:42 GMT",)) -> str:
    return json.dumps({
        "id": arxiv_id, "submitter": "A. Person", "authors": "Ada Lovelace and Alan Turing",
        "title": f"Paper {arxiv_id}\n  on two lines", "comments": "9 pages", "journal-ref": None, "doi": None,
        "report-no": None, "categories": categories, "license": "http://creativecommons.org/licenses/by/4.0/",
        "abstract": "  We study figures.\n", "versions": [{"version": f"v{i}", "created": c} for i, c in enumerate(versions, 1)],
        "update_date": "2020-01-01", "authors_parsed": [["Lovelace", "Ada", ""], ["Turing", "Alan", ""]]})


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_500_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def manifest_xml(entries: list[dict]) -> bytes:
    files = "".join(
        "<file>" + "".join(f"<{k}>{v}</{k}>" for k, v in e.items()) + "</file>\n" for e in entries)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<arXivSRC>\n{files}</arXivSRC>\n'.encode()


def build_layout(eprints: Path) -> tuple[dict[str, bytes], dict[str, bytes], list[str]]:
    """(objects by key, e-print bytes by id, snapshot lines): arXiv's bucket layout in miniature."""
    content = {i: (eprints / f"{i}.tar.gz").read_bytes() for i in REAL}
    content |= {"1904.00001": gz_tex("cross-listed"), "1904.00002": gz_tex("algebra"),
                "1906.00005": one_page_pdf(), "2002.00003": gz_tex("a single gzip'd tex"),
                "1512.00042": gz_tex("first month"), "1511.00001": gz_tex("before the range")}
    # tar name -> (first_item, last_item, members); 1906 has two tars, 2002.09999 is wanted but absent
    layout = {
        "1511_001": ("1511.00001", "1511.09999", ["1511.00001"]),
        "1512_001": ("1512.00001", "1512.09999", ["1512.00042"]),
        "1710_001": ("1710.00001", "1710.11999", ["1710.10473"]),
        "1801_001": ("1801.00001", "1801.09999", ["1801.04461"]),
        "1904_001": ("1904.00001", "1904.09999", ["1904.00001", "1904.00002", "1904.03249"]),
        "1906_001": ("1906.00001", "1906.05000", ["1906.00005"]),
        "1906_002": ("1906.05001", "1906.11713", ["1906.11713"]),
        "2002_001": ("2002.00001", "2002.09999", ["2002.00003", "2002.06483"]),
        "2202_001": ("2202.00001", "2202.09999", ["2202.04200"]),
    }
    objects, entries = {}, []
    for name, (first, last, ids) in layout.items():
        yymm = name[:4]
        data = tar_bytes({f"{yymm}/{i}{'.pdf' if content[i][:5] == b'%PDF-' else '.gz'}": content[i] for i in ids})
        key = f"src/arXiv_src_{name}.tar"
        objects[key] = data
        entries.append({"content_md5sum": "0" * 32, "filename": key, "first_item": first, "last_item": last,
                        "md5sum": hashlib.md5(data).hexdigest(), "num_items": len(ids), "seq_num": int(name[-3:]),
                        "size": len(data), "timestamp": "2022-03-01 00:00:00", "yymm": yymm})
    objects[bulk_s3.MANIFEST_KEY] = manifest_xml(entries)
    lines = [snapshot_line(i, "cs.CV cs.LG") for i in REAL + ["1906.00005", "2002.00003", "1512.00042", "1511.00001",
                                                                "2002.09999"]]
    lines += [snapshot_line("1904.00001", "cs.LG cs.CV"), snapshot_line("1904.00002", "math.AG")]
    # a revision after the tars were made: the stored e-print is v1, and the record says so
    lines[REAL.index("1801.04461")] = snapshot_line("1801.04461", "cs.CV", ("Mon, 15 Jan 2018 10:00:00 GMT",
                                                                            "Tue, 1 Nov 2022 10:00:00 GMT"))
    return objects, content, lines


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a free port) with test credentials; stopped after the module."""
    mp = pytest.MonkeyPatch()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
        mp.setenv(k, v)
    mp.delenv("AWS_ENDPOINT_URL", raising=False)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    mp.undo()


def make_bucket(endpoint: str, name: str, objects: dict[str, bytes]):
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    for key, data in objects.items():
        s3.put_object(Bucket=name, Key=key, Body=data)
    return s3


@pytest.fixture(scope="module")
def layout(testdata, tmp_path_factory):
    objects, content, lines = build_layout(testdata / "eprints")
    snapshot = tmp_path_factory.mktemp("meta") / "snapshot.json"
    snapshot.write_text("\n".join(lines) + "\n")
    return objects, content, snapshot


def files_under(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): store.sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


EXPECTED = {"1710.10473", "1801.04461", "1904.03249", "1906.11713", "2002.06483", "1906.00005", "2002.00003",
            "1512.00042"}  # primary cs.CV, 2015-12..2020-04, in a tar


def test_the_bulk_route_stores_exactly_the_primary_cs_cv_papers(s3_server, layout, testdata, tmp_path, capsys):
    objects, content, snapshot = layout
    s3 = make_bucket(s3_server, "arxiv", objects)
    root = tmp_path / "data"
    argv = ["--metadata", str(snapshot), "--from", "2015-12", "--to", "2020-04", "--endpoint-url", s3_server,
            "--data", str(root)]

    assert bulk.main(argv) == 0
    out = capsys.readouterr().out
    assert "7/7 tars done" in out  # 1511 and 2202 are out of range
    stored = {p.name[: -len(".eprint")]: p for p in (root / "raw").rglob("*.eprint")}
    assert set(stored) == EXPECTED
    for arxiv_id, path in stored.items():  # byte for byte, in the crawl's place for it
        assert path.read_bytes() == content[arxiv_id], arxiv_id
        assert path.parent.name == shards.shard_of_id(arxiv_id)
    records = {r["arxiv_id"]: r for p in (root / "papers").glob("*.parquet") for r in store.read_rows(p)}
    assert set(records) == EXPECTED | {"2002.09999"}
    assert records["2002.09999"]["eprint_status"] == "missing"
    assert "not in src/arXiv_src_2002_001.tar" in records["2002.09999"]["eprint_error"]
    kinds = {i: records[i]["eprint_kind"] for i in EXPECTED}
    assert kinds["1906.00005"] == "pdf" and kinds["2002.00003"] == "gz-tex" and kinds["1904.03249"] == "tar.gz"
    for i in EXPECTED:
        r = records[i]
        assert r["eprint_status"] == "ok" and r["pdf_status"] == "skipped"
        assert r["eprint_sha256"] == hashlib.sha256(content[i]).hexdigest() and r["eprint_bytes"] == len(content[i])
        assert r["eprint_path"] == f"raw/{shards.shard_of_id(i)}/{i}.eprint"
        assert r["primary_category"] == "cs.CV" and r["authors"] == ["Ada Lovelace", "Alan Turing"]
        assert r["title"] == f"Paper {i} on two lines" and r["crawled_at"] is not None
    assert records["1801.04461"]["version"] == 1  # v2 came after the tar was made
    for month in {shards.shard_of_id(i) for i in EXPECTED}:
        stats = store.read_stats(root / "papers", month)
        assert stats["done"] and stats["params"]["source"] == "s3"
    assert not list((root / "bulk" / "tars").glob("*.tar*"))  # done tars are not kept

    # pipeline.extract runs unchanged on what the bulk route stored
    fig = extract_shard("2019-04", root, progress=False)
    assert fig["done"] and fig["papers"] == 1
    rows = {r["img_name"]: r for r in store.read_rows(root / "figures" / "2019-04.parquet")}
    candidates = csv.DictReader(open(testdata / "eprints" / "CANDIDATES.tsv"), delimiter="\t")
    listed = {c["cvf_style_name"] for c in candidates if c["arxiv_id"] == "1904.03249" and c["in_cvf"] == "1"}
    assert listed and all(rows[name]["status"] == "ok" for name in listed)

    # the done tars gone from the bucket: a rerun reads the manifest only, and changes nothing
    before = files_under(root)
    for key in objects:
        if key != bulk_s3.MANIFEST_KEY:
            s3.delete_object(Bucket="arxiv", Key=key)
    rerun = subprocess.run([sys.executable, "-m", "pipeline.bulk", *argv], capture_output=True, text=True,
                           cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "7/7 tars done" in rerun.stdout and "to fetch: 0 tars" in rerun.stdout
    assert files_under(root) == before


def test_cross_lists_are_taken_when_asked_and_requests_pay(s3_server, layout, tmp_path):
    objects, content, snapshot = layout
    make_bucket(s3_server, "arxiv-cross", objects)
    client = bulk_s3.s3_client(s3_server)
    sent = []
    client.meta.events.register("before-send.s3.*", lambda request, **kw: sent.append(request))
    root = tmp_path / "data"
    result = bulk.run(snapshot, "2019-04", "2019-04", root, bucket="arxiv-cross", include_cross_lists=True, s3=client)
    assert [t["tar"] for t in result["tars"]] == ["arXiv_src_1904_001"]
    assert {p.name for p in (root / "raw").rglob("*.eprint")} == {"1904.03249.eprint", "1904.00001.eprint"}
    assert (root / "raw" / "2019-04" / "1904.00001.eprint").read_bytes() == content["1904.00001"]
    assert sent and all(r.headers.get("x-amz-request-payer") == b"requester" for r in sent)


def test_the_projects_oai_harvest_serves_as_metadata(s3_server, layout, tmp_path):
    from pipeline.licenses import merge, parse_page, table_path, write_checkpoint

    objects, content, _ = layout
    key = "src/arXiv_src_1904_001.tar"
    make_bucket(s3_server, "arxiv-oai", {bulk_s3.MANIFEST_KEY: objects[bulk_s3.MANIFEST_KEY], key: objects[key]})
    root = tmp_path / "data"
    records = "".join(
        f"<record><header><identifier>oai:arXiv.org:{i}</identifier><datestamp>2022-01-01</datestamp>"
        f'<setSpec>cs</setSpec></header><metadata><arXiv xmlns="http://arxiv.org/OAI/arXiv/"><id>{i}</id>'
        "<created>2019-04-07</created><updated>2019-05-01</updated><authors><author><keyname>Lovelace</keyname>"
        f"<forenames>Ada</forenames></author></authors><title>Paper {i}</title><categories>{cats}</categories>"
        "<license>http://creativecommons.org/licenses/by/4.0/</license><abstract> x </abstract></arXiv></metadata>"
        "</record>" for i, cats in [("1904.03249", "cs.CV cs.LG"), ("1904.00001", "cs.LG cs.CV"),
                                    ("1904.00002", "math.AG")])
    page = parse_page(('<?xml version="1.0"?><OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/">'
                       f"<ListRecords>{records}</ListRecords></OAI-PMH>").encode())
    rows: dict = {}
    merge(rows, page)
    write_checkpoint(table_path(root, "cs"), rows, {})
    bulk.run(table_path(root, "cs"), "2019-04", "2019-04", root, bucket="arxiv-oai", endpoint_url=s3_server)
    (record,) = store.read_rows(root / "papers" / "2019-04.parquet")
    assert record["arxiv_id"] == "1904.03249" and record["eprint_status"] == "ok"
    assert (root / record["eprint_path"]).read_bytes() == content["1904.03249"]
    assert (record["title"], record["authors"], record["version"]) == ("Paper 1904.03249", ["Ada Lovelace"], None)
    assert record["license"] == "http://creativecommons.org/licenses/by/4.0/"

    rows["1904.09000"] = {"arxiv_id": "1904.09000", "license": "", "datestamp": "2015-01-01", "created": "2019-04-02"}
    write_checkpoint(table_path(root, "cs"), rows, {})  # a record kept before categories were
    with pytest.raises(bulk_selection.BulkError, match="1 of 4 records have no categories"):
        bulk_selection.read_metadata(table_path(root, "cs"), "2019-04", "2019-04")


def test_plan_prints_tars_bytes_cost_and_time_and_downloads_nothing(s3_server, layout, tmp_path, capsys, monkeypatch):
    objects, _, snapshot = layout
    make_bucket(s3_server, "arxiv-plan", objects)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # boto3's own variable, no flag
    root = tmp_path / "data"
    assert bulk.main(["--metadata", str(snapshot), "--from", "2015-12", "--to", "2020-04", "--bucket", "arxiv-plan",
                      "--data", str(root), "--plan", "--bandwidth", "0.001"]) == 0
    out = capsys.readouterr().out
    picked = ["1512_001", "1710_001", "1801_001", "1904_001", "1906_001", "1906_002", "2002_001"]
    for name in picked:
        assert f"fetch src/arXiv_src_{name}.tar" in out
    assert "1511_001" not in out and "2202_001" not in out
    size = sum(len(objects[f"src/arXiv_src_{n}.tar"]) for n in picked)
    assert f"to fetch: 7 tars, {size / 1e9:.2f} GB" in out
    assert f"cost out of AWS ~${size / 1e9 * 0.09:.2f}" in out
    assert f"~{size / 1e3 / 3600:.1f} h at 0.001 MB/s" in out
    assert not (root / "raw").exists() and not list((root / "bulk").glob("*.parquet"))


def test_corrupt_tar_is_refused_and_fetched_again_on_rerun(s3_server, layout, tmp_path, capsys):
    objects, content, snapshot = layout
    key = "src/arXiv_src_1904_001.tar"
    broken = bytearray(objects[key])
    broken[-2000] ^= 0xFF  # same size, other bytes: only the md5 can tell
    s3 = make_bucket(s3_server, "arxiv-corrupt", {bulk_s3.MANIFEST_KEY: objects[bulk_s3.MANIFEST_KEY], key: bytes(broken)})
    root = tmp_path / "data"
    argv = ["--metadata", str(snapshot), "--from", "2019-04", "--to", "2019-04", "--endpoint-url", s3_server,
            "--bucket", "arxiv-corrupt", "--data", str(root)]
    assert bulk.main(argv) == 1
    err = capsys.readouterr().err
    assert "arXiv_src_1904_001.tar: md5" in err and "differs from the manifest's" in err
    failed = json.loads((root / "bulk" / "arXiv_src_1904_001_failed.json").read_text())
    assert "md5" in failed["error"] and failed["attempts"] == 1
    record = store.read_rows(root / "papers" / "2019-04.parquet")[0]
    assert record["eprint_status"] == "pending" and "md5" in record["eprint_error"]
    assert not (root / "raw").exists() and not store.shard_done(root / "papers", "2019-04")
    assert not list((root / "bulk" / "tars").glob("*.tar*"))  # the bad download is gone

    s3.put_object(Bucket="arxiv-corrupt", Key=key, Body=objects[key])  # arXiv fixed it
    assert bulk.main(argv) == 0
    assert (root / "raw" / "2019-04" / "1904.03249.eprint").read_bytes() == content["1904.03249"]
    assert not (root / "bulk" / "arXiv_src_1904_001_failed.json").exists()
    assert store.shard_done(root / "papers", "2019-04")


def test_an_interrupted_download_resumes_with_a_ranged_get(s3_server, layout, tmp_path):
    objects, content, snapshot = layout
    key = "src/arXiv_src_1710_001.tar"  # ~26 MB
    make_bucket(s3_server, "arxiv-resume", {bulk_s3.MANIFEST_KEY: objects[bulk_s3.MANIFEST_KEY], key: objects[key]})
    root = tmp_path / "data"
    half = len(objects[key]) // 2
    part = root / "bulk" / "tars" / f"arXiv_src_1710_001.tar.{hashlib.md5(objects[key]).hexdigest()}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(objects[key][:half])  # what a run killed midway leaves
    client = bulk_s3.s3_client(s3_server)
    ranges = []
    client.meta.events.register("before-send.s3.GetObject",
                                lambda request, **kw: ranges.append(request.headers.get("Range")))
    result = bulk.run(snapshot, "2017-10", "2017-10", root, bucket="arxiv-resume", s3=client)
    (stats,) = result["tars"]
    assert ranges[-1] == f"bytes={half}-{len(objects[key]) - 1}".encode()
    assert (stats["resumed_from"], stats["bytes_downloaded"]) == (half, len(objects[key]) - half)
    assert (root / "raw" / "2017-10" / "1710.10473.eprint").read_bytes() == content["1710.10473"]


def test_manifest_items_old_style_and_four_or_five_digit_numbers():
    assert item_name("cs/0112017") == "cs0112017" and item_name("math.AG/0101001") == "math0101001"
    assert item_name("1501.00001") == "1501.00001"
    assert item_key("1412.9999") < item_key("1501.00001") and item_key("1501.00002") < item_key("1501.10000")
    tar = SourceTar("src/arXiv_src_1501_001.tar", "1501", 1, "1501.00001", "1501.00999", 999, 1, "x", "")
    assert tar.can_hold("1501.00999") and not tar.can_hold("1501.01000") and not tar.can_hold("1501.0999")
    old = SourceTar("src/arXiv_src_0112_001.tar", "0112", 1, "astro-ph0112001", "math0112500", 5, 1, "x", "")
    assert old.month == "2001-12" and old.can_hold("cs0112017") and not old.can_hold("physics0112001")
    assert SourceTar("src/arXiv_src_9108_001.tar", "9108", 1, "a", "b", 1, 1, "x", "").month == "1991-08"
    # pick_tars (bisection over sorted keys) agrees: 4-digit numbers up to 1412, 5-digit after
    tars = [SourceTar("src/arXiv_src_1412_001.tar", "1412", 1, "1412.0001", "1412.5000", 1, 1, "x", ""),
            SourceTar("src/arXiv_src_1412_002.tar", "1412", 2, "1412.5001", "1412.9999", 1, 1, "x", ""),
            SourceTar("src/arXiv_src_1501_001.tar", "1501", 1, "1501.00001", "1501.00999", 1, 1, "x", ""), old]
    papers = [bulk_selection.Paper({"arxiv_id": i}, [], shards.shard_of_id(i), item_name(i))
              for i in ("1412.0999", "1412.7000", "1501.00998", "1501.01000", "cs/0112017")]
    picked = {name: [p.record["arxiv_id"] for p in ps] for name, ps in bulk_selection.pick_tars(tars, papers).items()}
    assert picked == {"arXiv_src_1412_001": ["1412.0999"], "arXiv_src_1412_002": ["1412.7000"],
                      "arXiv_src_1501_001": ["1501.00998"], "arXiv_src_0112_001": ["cs/0112017"]}


def test_bad_input_is_one_error_line(s3_server, layout, tmp_path, capsys):
    objects, _, snapshot = layout
    bad = tmp_path / "bad.json"
    bad.write_text(snapshot.read_text().splitlines()[0] + "\n{not json\n")
    base = ["--from", "2019-04", "--to", "2019-04", "--endpoint-url", s3_server, "--data", str(tmp_path / "d")]
    assert bulk.main(["--metadata", str(bad), *base]) == 1
    assert capsys.readouterr().err.strip().startswith(f"error: {bad} line 2: not JSON")
    with pytest.raises(SystemExit) as exit_:  # a bad value: refused before any work, exit 2
        bulk.main(["--metadata", str(tmp_path / "absent.json"), *base])
    assert exit_.value.code == 2 and "absent.json: no such file" in capsys.readouterr().err
    assert bulk.main(["--metadata", str(snapshot), *base, "--bucket", "no-such-bucket"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot read s3://no-such-bucket/src/arXiv_src_manifest.xml")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_prefect_flow_runs_tars_in_parallel_on_dask(s3_server, layout, tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.bulk import bulk_arxiv

    objects, content, snapshot = layout
    make_bucket(s3_server, "arxiv-flow", objects)
    single, parallel = tmp_path / "single", tmp_path / "dask"
    bulk.run(snapshot, "2019-04", "2020-04", single, bucket="arxiv-flow", endpoint_url=s3_server)
    with prefect_test_harness(server_startup_timeout=120):
        result = bulk_arxiv(str(snapshot), "2019-04", "2020-04", bucket="arxiv-flow", endpoint_url=s3_server,
                            data_root=str(parallel), workers=2)
    assert sorted(t["tar"] for t in result["tars"]) == [
        "arXiv_src_1904_001", "arXiv_src_1906_001", "arXiv_src_1906_002", "arXiv_src_2002_001"]
    for month in ("2019-04", "2019-06", "2020-02"):
        a, b = (store.read_rows(r / "papers" / f"{month}.parquet") for r in (single, parallel))
        strip = lambda rows: [{k: v for k, v in r.items() if k != "crawled_at"} for r in rows]  # noqa: E731
        assert strip(a) == strip(b) and store.shard_done(parallel / "papers", month)
    raw = lambda r: {p.relative_to(r).as_posix(): p.read_bytes() for p in (r / "raw").rglob("*.eprint")}  # noqa: E731
    assert raw(parallel) == raw(single) and len(raw(single)) == 5


def test_members_are_read_confined_and_capped(tmp_path):
    """Straight from a tar on disk: only wanted members are stored; a broken one or one over the
    cap is an `error` record; a path that climbs out of the tar is never taken."""
    good, broken = gz_tex("fine"), b"\x1f\x8b" + b"\x00" * 40
    big = gzip.compress(b"%" + bytes(range(256)) * 20 + os.urandom(3000))  # ~3 KB even compressed
    path = tmp_path / "t.tar"
    path.write_bytes(tar_bytes({"2101/2101.00001.gz": good, "2101/2101.00002.gz": broken, "2101/2101.00003.gz": big,
                                "../2101/2101.00004.gz": good, "2101/2101.00005.gz": good}))
    papers = {i: bulk_selection.Paper({"arxiv_id": i}, [], "2021-01", i)
              for i in ("2101.00001", "2101.00002", "2101.00003", "2101.00004")}
    tar = SourceTar("src/arXiv_src_2101_001.tar", "2101", 1, "2101.00001", "2101.00005", 5, 1, "x", "")
    root = tmp_path / "data"
    rows = {r["arxiv_id"]: r for r in bulk_records.read_members(path, papers, root, tar, member_cap=1000)}
    assert set(rows) == {"2101.00001", "2101.00002", "2101.00003"}
    assert rows["2101.00001"]["eprint_status"] == "ok" and rows["2101.00001"]["eprint_kind"] == "gz-tex"
    assert rows["2101.00002"]["eprint_status"] == "error" and "corrupt" in rows["2101.00002"]["eprint_error"]
    assert rows["2101.00003"]["eprint_status"] == "error" and "over the" in rows["2101.00003"]["eprint_error"]
    assert [p.name for p in (root / "raw" / "2021-01").iterdir()] == ["2101.00001.eprint"]
