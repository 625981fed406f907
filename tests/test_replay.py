"""The arXiv replay: a deterministic corpus with known ground truth, served faithfully, with faults."""
from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import time
from urllib.parse import parse_qs, urlsplit

import arxiv
import fitz
import pyarrow.parquet as pq
import pytest
import requests

from pipeline.arxiv_api import ArxivAPI, MetadataError, fetch_license, month_query, search_month
from pipeline.fetch import PoliteFetcher, TransientError, download_file, sniff_kind, verify
from pipeline.replay.corpus import generate_corpus, load_papers
from pipeline.replay.server import Replay, ReplayServer
from replay_fixtures import MONTHS, corpus, server  # noqa: F401 (fixtures)



@pytest.fixture
def fetcher(tmp_path):
    return PoliteFetcher(delay=0, lock_dir=tmp_path / "locks", timeout=2, max_retries=2, backoff=0.01)


def _tree(eprint: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(eprint), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


# --- the corpus -------------------------------------------------------------------------------

def test_corpus_is_deterministic(tmp_path):
    a = generate_corpus(tmp_path / "a", n_papers=4, months=["2020-05"], seed=3)
    b = generate_corpus(tmp_path / "b", n_papers=4, months=["2020-05"], seed=3)
    c = generate_corpus(tmp_path / "c", n_papers=4, months=["2020-05"], seed=4)

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_corpus_covers_what_arxiv_serves(corpus):
    papers = load_papers(corpus)
    kinds = {p["arxiv_id"]: sniff_kind((corpus / "eprint" / p["arxiv_id"]).read_bytes()) for p in papers}
    assert set(kinds.values()) == {"tar.gz", "gz-tex", "pdf"}
    assert any(p["withdrawn"] for p in papers)
    assert any(p["primary_category"] != "cs.CV" and "cs.CV" in p["categories"] for p in papers)
    assert any("cs.CV" not in p["categories"] for p in papers)
    assert {p["published"][:7] for p in papers} == set(MONTHS)

    extensions, spaced, converted, unreferenced = set(), False, False, False
    for arxiv_id, kind in kinds.items():
        if kind != "tar.gz":
            continue
        tree = _tree((corpus / "eprint" / arxiv_id).read_bytes())
        tex = b"".join(v for k, v in tree.items() if k.endswith(".tex")).decode()
        for name in tree:
            extensions.add(name.rsplit(".", 1)[-1])
            spaced |= " " in name
            converted |= name.endswith("-eps-converted-to.pdf")
            if not name.endswith(".tex") and name.rsplit(".", 1)[0] not in tex:
                unreferenced = True
            if name.endswith(".pdf"):
                assert tree[name][:5] == b"%PDF-"
    assert {"png", "jpg", "pdf", "eps", "tex"} <= extensions
    assert spaced and converted and unreferenced
    assert any(fitz.open("pdf", (corpus / "eprint" / a).read_bytes()).page_count for a, k in kinds.items()
               if k == "pdf")
    multipage = [n for a, k in kinds.items() if k == "tar.gz"
                 for n, data in _tree((corpus / "eprint" / a).read_bytes()).items()
                 if n.endswith(".pdf") and fitz.open("pdf", data).page_count > 1]
    assert multipage, "no multi-page PDF figure in the corpus"


def test_truth_names_every_figure_file_by_its_cvf_name(corpus):
    truth = pq.read_table(corpus / "truth.parquet").to_pylist()
    assert truth and any(t["is_grid_with_photo"] for t in truth) and not all(t["is_grid_with_photo"] for t in truth)
    for t in truth:
        tree = _tree((corpus / "eprint" / t["paper_id"]).read_bytes())
        assert t["source_path"] in tree
        expected = t["source_path"].replace("/", "_")
        if expected.endswith(".eps"):
            expected = expected[:-4] + "-eps-converted-to.pdf"
        assert t["img_name"] == expected
        assert t["is_grid_with_photo"] == (t["kind"] == "photo_grid")
    pairs = [(t["paper_id"], t["img_name"]) for t in truth]
    assert len(pairs) == len(set(pairs)), "an EPS and its converted PDF must be one CVF image"


def test_paper_pdf_places_figures_above_captions(corpus):
    truth = pq.read_table(corpus / "truth.parquet").to_pylist()
    paper = truth[0]["paper_id"]
    with fitz.open(corpus / "pdf" / f"{paper}.pdf") as doc:
        text = "".join(page.get_text() for page in doc)
        drawn = sum(len(page.get_images()) + len(page.get_drawings()) for page in doc)
    assert "Figure 1:" in text
    assert drawn > 0


# --- the API ----------------------------------------------------------------------------------

def test_api_pages_a_month_like_arxiv(server, fetcher, corpus):
    papers = load_papers(corpus)
    expected = sorted(p["arxiv_id"] for p in papers if p["published"].startswith("2021-01") and "cs.CV" in p["categories"])
    api = ArxivAPI(fetcher, server.endpoints()["CVF_ARXIV_API_URL"], page_size=3)
    results = search_month(api, "cs.CV", "2021-01")
    assert sorted(r.get_short_id().split("v")[0] for r in results) == expected
    assert api.last_total == len(expected) and len(expected) > 3  # several pages were walked
    pages = [path for _, path, _ in server.replay.log if path.startswith("/api/query")]
    assert len(pages) == -(-len(expected) // 3)
    r = results[0]
    assert r.primary_category and "cs.CV" in r.categories and r.pdf_url.startswith("http://arxiv.org/pdf/")

    raw = requests.get(f"{server.url}/api/query", params={"search_query": month_query("cs.CV", "2021-01"),
                                                           "start": 2, "max_results": 2}).text
    assert f"<opensearch:totalResults>{len(expected)}</opensearch:totalResults>" in raw
    assert "<opensearch:startIndex>2</opensearch:startIndex>" in raw
    assert "<opensearch:itemsPerPage>2</opensearch:itemsPerPage>" in raw


def test_a_window_deeper_than_the_api_serves_is_listed_in_halves(server, fetcher, corpus):
    expected = sorted(p["arxiv_id"] for p in load_papers(corpus)
                      if p["published"].startswith("2021-01") and "cs.CV" in p["categories"])
    api = ArxivAPI(fetcher, server.endpoints()["CVF_ARXIV_API_URL"], page_size=2)
    results = search_month(api, "cs.CV", "2021-01", max_depth=2)
    assert sorted(r.get_short_id().split("v")[0] for r in results) == expected
    windows = {parse_qs(urlsplit(path).query)["search_query"][0] for _, path, _ in server.replay.log}
    assert len(windows) > 2 and month_query("cs.CV", "2021-01") in windows


def test_api_empty_first_page_glitch_is_retried(server, fetcher):
    server.replay.set_faults([{"match": "/api/query", "fault": "empty", "times": 2}])
    api = ArxivAPI(fetcher, server.endpoints()["CVF_ARXIV_API_URL"])  # the fetcher tries 3 times
    results = search_month(api, "cs.CV", "2021-01")
    assert len(results) == api.last_total > 0
    # the stock client takes the same glitch for "no results": the month silently vanishes
    server.replay.set_faults([{"match": "/api/query", "fault": "empty", "times": 1}])
    stock = arxiv.Client(delay_seconds=0, num_retries=0)
    stock.query_url_format = server.endpoints()["CVF_ARXIV_API_URL"] + "?{}"
    assert list(stock.results(arxiv.Search(month_query("cs.CV", "2021-01"), max_results=None))) == []


def test_api_malformed_atom_is_retried_then_reported(server, fetcher):
    server.replay.set_faults([{"match": "/api/query", "fault": "malformed", "times": 1}])
    api = ArxivAPI(fetcher, server.endpoints()["CVF_ARXIV_API_URL"])
    assert len(search_month(api, "cs.CV", "2021-02")) > 0
    server.replay.set_faults([{"match": "/api/query", "fault": "malformed"}])
    with pytest.raises(MetadataError, match="malformed Atom"):
        search_month(api, "cs.CV", "2021-02")


@pytest.mark.parametrize("faults", [["malformed"], ["empty"], ["503"], ["503"] * 4 + ["malformed"]])
def test_one_retry_layer_for_an_api_page(server, tmp_path, faults):
    """A page that keeps failing (server errors, broken or empty pages, or server errors then a
    broken page) is asked for max_retries + 1 times in all: the fetcher's budget, not one
    multiplied by another."""
    fetcher = PoliteFetcher(delay=0, lock_dir=tmp_path / "locks", timeout=2, max_retries=4, backoff=0.001)
    server.replay.set_faults([{"match": "/api/query", "fault": fault, "times": 1} for fault in faults[:-1]]
                             + [{"match": "/api/query", "fault": faults[-1]}])
    api = ArxivAPI(fetcher, server.endpoints()["CVF_ARXIV_API_URL"])
    with pytest.raises(TransientError if faults[-1] == "503" else MetadataError, match="after 5 tries"):
        search_month(api, "cs.CV", "2021-02")
    gets = [path for _, path, _ in server.replay.log if path.startswith("/api/query")]
    assert len(gets) == 5


def test_oai_pmh_gives_the_licence(server, fetcher, corpus):
    paper = load_papers(corpus)[0]
    assert fetch_license(fetcher, server.endpoints()["CVF_ARXIV_OAI_URL"], paper["arxiv_id"]) == paper["license"]
    listing = requests.get(f"{server.url}/oai", params={"verb": "ListRecords", "metadataPrefix": "arXiv",
                                                         "from": "2021-01-01", "until": "2030-01-01"}).text
    assert listing.count("<record>") == len(load_papers(corpus))


# --- downloads and faults ------------------------------------------------------------------------

def test_eprint_and_pdf_endpoints_serve_the_bytes(server, fetcher, corpus, tmp_path):
    for p in load_papers(corpus):
        row = download_file(fetcher, f"{server.url}/e-print/{p['arxiv_id']}v{p['version']}",
                            tmp_path / f"{p['arxiv_id']}.eprint", tmp_path)
        if p["withdrawn"]:
            assert row["status"] == "missing" and row["error"] == "HTTP 404"
            continue
        served = (corpus / "eprint" / p["arxiv_id"]).read_bytes()
        assert row["status"] == "ok" and row["sha256"] == hashlib.sha256(served).hexdigest()
        assert row["kind"] == sniff_kind(served) and row["path"] == f"{p['arxiv_id']}.eprint"
    n = len(server.replay.log)
    again = download_file(fetcher, f"{server.url}/e-print/{p['arxiv_id']}", tmp_path / f"{p['arxiv_id']}.eprint",
                          tmp_path)
    assert len(server.replay.log) == n + (1 if p["withdrawn"] else 0), "a stored, verified file is not refetched"
    assert again["status"] == ("missing" if p["withdrawn"] else "ok")


def _first_tarball(corpus) -> str:
    return next(p["arxiv_id"] for p in load_papers(corpus)
                if not p["withdrawn"] and sniff_kind((corpus / "eprint" / p["arxiv_id"]).read_bytes()) == "tar.gz")


@pytest.mark.parametrize("code", ["503", "429"])
def test_retry_after_is_honoured(server, corpus, tmp_path, code):
    arxiv_id = _first_tarball(corpus)
    server.replay.set_faults([{"match": f"/e-print/{arxiv_id}", "fault": code, "retry_after": 1, "times": 1}])
    fetcher = PoliteFetcher(delay=0, lock_dir=tmp_path / "locks", timeout=5, max_retries=2, backoff=10)
    row = download_file(fetcher, f"{server.url}/e-print/{arxiv_id}", tmp_path / "x.eprint", tmp_path)
    assert row["status"] == "ok"
    (t1, _, _), (t2, _, _) = server.replay.log
    assert 1.0 <= t2 - t1 < 2.0, "waits what Retry-After says, not the (10 s) backoff, not much more"


def test_503_storm_leaves_the_download_pending(server, corpus, fetcher, tmp_path):
    arxiv_id = _first_tarball(corpus)
    server.replay.set_faults([{"match": "/e-print/", "fault": "503"}])
    row = download_file(fetcher, f"{server.url}/e-print/{arxiv_id}", tmp_path / "x.eprint", tmp_path)
    assert row["status"] == "pending" and "HTTP 503" in row["error"]
    assert len(server.replay.log) == fetcher.max_retries + 1
    assert not (tmp_path / "x.eprint").exists()


def test_requests_name_the_project_and_the_contact(server, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("CVF_CONTACT", "someone@example.org")
    PoliteFetcher(delay=0, lock_dir=tmp_path).get(f"{server.url}/pdf/{_first_tarball(corpus)}")
    (_, _, agent), = server.replay.log
    assert agent.startswith("cvf-crawler/") and "someone@example.org" in agent


def test_slow_response_times_out(server, corpus, tmp_path):
    arxiv_id = _first_tarball(corpus)
    server.replay.set_faults([{"match": "/e-print/", "fault": "slow", "seconds": 3}])
    fetcher = PoliteFetcher(delay=0, lock_dir=tmp_path / "locks", timeout=0.3, max_retries=1, backoff=0.01)
    t0 = time.time()
    row = download_file(fetcher, f"{server.url}/e-print/{arxiv_id}", tmp_path / "x.eprint", tmp_path)
    assert row["status"] == "pending" and "Timeout" in row["error"]
    assert time.time() - t0 < 2.5


def test_truncated_body_is_not_stored(server, corpus, fetcher, tmp_path):
    arxiv_id = _first_tarball(corpus)
    server.replay.set_faults([{"match": "/e-print/", "fault": "truncate", "times": 1}])
    with pytest.raises(TransientError):
        PoliteFetcher(delay=0, lock_dir=tmp_path / "l", max_retries=0).get(f"{server.url}/e-print/{arxiv_id}")
    server.replay.set_faults([{"match": "/e-print/", "fault": "truncate", "times": 1}])
    row = download_file(fetcher, f"{server.url}/e-print/{arxiv_id}", tmp_path / "x.eprint", tmp_path)
    assert row["status"] == "ok", "the fetcher retried the cut-short body"
    data = (corpus / "eprint" / arxiv_id).read_bytes()
    assert verify(data[: len(data) // 2], "tar.gz").startswith("corrupt")  # what a cut gzip looks like


def test_html_instead_of_tarball_is_a_final_error(server, corpus, fetcher, tmp_path):
    arxiv_id = _first_tarball(corpus)
    server.replay.set_faults([{"match": "/e-print/", "fault": "html"}])
    row = download_file(fetcher, f"{server.url}/e-print/{arxiv_id}", tmp_path / "x.eprint", tmp_path)
    assert row["status"] == "error" and row["kind"] == "html" and "not a source archive" in row["error"]
    assert not (tmp_path / "x.eprint").exists()


def test_block_fault_refuses_a_stretch_of_papers_until_lifted(server, corpus, fetcher):
    ids = sorted(p["arxiv_id"] for p in load_papers(corpus) if not p["withdrawn"])
    server.replay.set_faults([{"match": "/(e-print|pdf)/", "fault": "block", "ids": [ids[1], ids[2]]},
                              {"match": f"/pdf/{ids[3]}", "fault": "block", "status": 200}])
    answers = {(what, i): fetcher.get(f"{server.url}/{what}/{i}", raw=True) for what in ("e-print", "pdf")
               for i in ids[:4]}
    assert [answers["e-print", i].status_code for i in ids[:4]] == [200, 403, 403, 200]
    assert [answers["pdf", i].status_code for i in ids[:4]] == [200, 403, 403, 200]
    assert b"Access Denied" in answers["e-print", ids[1]].content
    assert sniff_kind(answers["pdf", ids[3]].content) == "html"  # a block page served in place of the file
    assert requests.post(f"{server.url}/_replay/faults", data=b"[]", timeout=5).ok  # lifted
    assert fetcher.get(f"{server.url}/e-print/{ids[1]}", raw=True).content == (corpus / "eprint" / ids[1]).read_bytes()


def test_sniff_kind_reads_bytes_not_names():
    tex = gzip.compress(b"\\documentclass{article}\n\\begin{document}x\\end{document}\n")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("main.tex")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert sniff_kind(tex) == "gz-tex"
    assert sniff_kind(raw.getvalue()) == "tar"
    assert sniff_kind(gzip.compress(raw.getvalue())) == "tar.gz"
    assert sniff_kind(gzip.compress(b"\x00\x01binary")) == "gz"
    # a single gzip'd file that starts with `%` like TeX comments but is PostScript or a PDF
    assert sniff_kind(gzip.compress(b"%!PS-Adobe-2.0\n%%Title: paper.dvi\n")) == "gz"
    assert sniff_kind(gzip.compress(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")) == "gz"
    assert sniff_kind(gzip.compress(b"%% a comment first\n\\documentclass{article}\n")) == "gz-tex"
    assert sniff_kind(gzip.compress(b"%!TEX program = pdflatex\n\\documentclass{article}\n")) == "gz-tex"
    assert sniff_kind(b"%PDF-1.5\n...") == "pdf"
    assert sniff_kind(b"PK\x03\x04rest") == "zip"
    assert sniff_kind(b"  <!DOCTYPE html><html></html>") == "html"
    assert sniff_kind(b"") == "empty"
    assert sniff_kind(b"\x00garbage") == "unknown"


def test_serves_real_eprints_from_a_folder(testdata, fetcher, tmp_path):
    folder = testdata / "eprints"
    with ReplayServer(Replay(extra_eprints=folder)) as s:
        api = ArxivAPI(fetcher, s.endpoints()["CVF_ARXIV_API_URL"])
        (result,) = search_month(api, "cs.CV", "2019-04")
        assert result.get_short_id() == "1904.03249v1"
        row = download_file(fetcher, f"{s.url}/e-print/1904.03249", tmp_path / "e", tmp_path)
    assert row["status"] == "ok" and row["kind"] == "tar.gz"
    assert row["sha256"] == hashlib.sha256((folder / "1904.03249.tar.gz").read_bytes()).hexdigest()


def test_serve_refuses_bad_fault_rules_before_generating_anything(tmp_path, capsys):
    from pipeline.replay.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--corpus", str(tmp_path / "corpus"), "--faults", "{not json"])
    assert exit_.value.code == 2 and "--faults is neither a JSON file nor JSON text" in capsys.readouterr().err
    assert not (tmp_path / "corpus").exists()
