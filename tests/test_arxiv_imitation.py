"""The crawl against a second, independent imitation of arXiv written here from arXiv's documents
(API user manual: Atom with its namespaces, opensearch paging, errors as an Atom entry; the
e-print endpoint: gzip'd files sent with `Content-Encoding: x-gzip`), not against our replay."""
from __future__ import annotations

import gzip
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import fitz
import pytest

from pipeline import store
from pipeline.crawl import crawl_shard, main
from pipeline.fetch import PoliteFetcher, TransientError, download_file
from pipeline.replay.corpus import tar_gz

PAGE_CAP = 2  # this server hands out at most 2 entries a page, whatever max_results says
QUERY = "cat:cs.CV AND submittedDate:[202101010000 TO 202101312359]"


def _entry(vid: str, primary: str, cats: list[str], extra: str = "") -> str:
    # Shaped like a real export.arxiv.org entry: inline arxiv namespace on each extension element.
    return f"""
  <entry>
    <id>http://arxiv.org/abs/{vid}</id>
    <updated>2021-01-05T17:59:46Z</updated>
    <published>2021-01-04T10:00:00Z</published>
    <title>A Paper
      Titled {vid}</title>
    <summary>  We study things.
</summary>
    <author>
      <name>Ada Lovelace</name>
      <arxiv:affiliation xmlns:arxiv="http://arxiv.org/schemas/atom">Analytical Engines</arxiv:affiliation>
    </author>
    <author>
      <name>Alan Turing</name>
    </author>{extra}
    <link href="http://arxiv.org/abs/{vid}" rel="alternate" type="text/html"/>
    <link title="pdf" href="http://arxiv.org/pdf/{vid}" rel="related" type="application/pdf"/>
    <arxiv:primary_category xmlns:arxiv="http://arxiv.org/schemas/atom" term="{primary}" scheme="http://arxiv.org/schemas/atom"/>
    {"".join(f'<category term="{c}" scheme="http://arxiv.org/schemas/atom"/>' for c in cats)}
  </entry>"""


ENTRIES = [
    _entry("2101.00001v2", "cs.CV", ["cs.CV", "cs.LG"], """
    <arxiv:doi xmlns:arxiv="http://arxiv.org/schemas/atom">10.1000/xyz123</arxiv:doi>
    <link title="doi" href="http://dx.doi.org/10.1000/xyz123" rel="related"/>
    <arxiv:comment xmlns:arxiv="http://arxiv.org/schemas/atom">12 pages, 5 figures</arxiv:comment>
    <arxiv:journal_ref xmlns:arxiv="http://arxiv.org/schemas/atom">CVPR 2021</arxiv:journal_ref>"""),
    _entry("2101.00002v1", "cs.LG", ["cs.LG", "cs.CV"]),  # cross-listed to cs.CV
    _entry("2101.00003v1", "cs.CV", ["cs.CV"]),
    _entry("2101.00004v3", "cs.CV", ["cs.CV", "eess.IV"]),
]


def feed(entries: list[str], total: int, start: int, per_page: int) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <link href="http://arxiv.org/api/query?search_query%3D{start}" rel="self" type="application/atom+xml"/>
  <title type="html">ArXiv Query: search_query=...</title>
  <id>http://arxiv.org/api/cHxbiOdZaP56ODnBPIenZhzg5f8</id>
  <updated>2021-02-01T00:00:00-05:00</updated>
  <opensearch:totalResults xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">{total}</opensearch:totalResults>
  <opensearch:startIndex xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">{start}</opensearch:startIndex>
  <opensearch:itemsPerPage xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">{per_page}</opensearch:itemsPerPage>
{"".join(entries)}
</feed>
""".encode()


ERROR_FEED = feed(["""
  <entry>
    <id>http://arxiv.org/api/errors#incorrect_id_format_for_1234.1234v</id>
    <title>Error</title>
    <summary>incorrect id format for 1234.1234v</summary>
    <updated>2021-02-01T00:00:00-05:00</updated>
    <link href="http://arxiv.org/api/errors#incorrect_id_format_for_1234.1234v" rel="alternate" type="text/html"/>
    <author><name>arXiv api core</name></author>
  </entry>"""], 1, 0, 1)


def _pdf(text: str) -> bytes:
    doc = fitz.open()
    doc.new_page().insert_text((72, 72), text)
    return doc.tobytes()


TEX = b"\\documentclass{article}\\begin{document}Hi\\end{document}\n"
# what each paper's e-print is, as arXiv serves it: body, Content-Type, Content-Encoding
EPRINTS = {
    "2101.00001": (tar_gz({"main.tex": TEX, "fig/a.png": b"\x89PNG..."}), "application/x-eprint-tar", "x-gzip"),
    "2101.00002": (tar_gz({"main.tex": TEX}), "application/x-eprint-tar", "x-gzip"),
    "2101.00003": (gzip.compress(TEX), "application/x-eprint", "x-gzip"),  # a single .tex
    "2101.00004": (_pdf("pdf-only submission"), "application/pdf", None),
}


class Imitation(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    queries: list[dict] = []
    error_feed = False
    mangle = None  # when set: bytes -> bytes applied to every API page (a feed that is wrong inside)
    first_eprint_503 = True
    seen: list[tuple[float, str]] = []  # (arrival time, path) of every request

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, ctype: str, **headers):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            if v:
                self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        type(self).seen.append((time.monotonic(), url.path))
        if url.path == "/api/query":
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            type(self).queries.append(q)
            if type(self).error_feed:
                return self._send(200, ERROR_FEED, "application/atom+xml; charset=utf-8")
            if q.get("search_query") != QUERY:  # the only query this imitation knows
                return self._send(200, feed([], 0, 0, 0), "application/atom+xml; charset=utf-8")
            start, per_page = int(q["start"]), min(int(q["max_results"]), PAGE_CAP)
            page = feed(ENTRIES[start:start + per_page], len(ENTRIES), start, per_page)
            return self._send(200, (type(self).mangle or bytes)(page), "application/atom+xml; charset=utf-8")
        if url.path == "/drip":  # headers at once, then one byte every 0.2 s: no read ever times out
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
            return
        if url.path.startswith("/hop/"):  # one relative redirect, as arXiv's mirrors may send
            return self._send(302, b"", "text/plain", Location=url.path.removeprefix("/hop"))
        if url.path.startswith("/loop"):  # a redirect to itself, forever
            return self._send(302, b"", "text/plain", Location=url.path)
        if url.path == "/busy":  # a 503 whose Retry-After is not a number nor an HTTP date
            return self._send(503, b"busy", "text/plain", Retry_After=parse_qs(url.query)["ra"][0])
        m = re.fullmatch(r"/(e-print|pdf)/(\d{4}\.\d{5})(v\d+)?", url.path)
        if not m or m.group(2) not in EPRINTS:
            return self._send(404, b"<html><body>not found</body></html>", "text/html")
        if m.group(1) == "pdf":
            return self._send(200, _pdf(m.group(2)), "application/pdf")
        if type(self).first_eprint_503:
            type(self).first_eprint_503 = False
            return self._send(503, b"<html><body>busy</body></html>", "text/html", Retry_After="1")
        body, ctype, encoding = EPRINTS[m.group(2)]
        self._send(200, body, ctype, Content_Encoding=encoding,
                   Content_Disposition=f'attachment; filename="arXiv-{m.group(2)}.tar.gz"')


@pytest.fixture
def imitation():
    Imitation.queries, Imitation.error_feed, Imitation.first_eprint_503, Imitation.mangle = [], False, True, None
    Imitation.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Imitation)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield ["--api-url", f"{base}/api/query", "--eprint-url", f"{base}/e-print/{{id}}", "--pdf-url", f"{base}/pdf/{{id}}"]
    server.shutdown()
    server.server_close()


def _crawl(data_root, urls, *extra) -> int:
    return main(["--from", "2021-01", "--to", "2021-01", "--data", str(data_root), "--delay", "0",
                 "--timeout", "5", *urls, *extra])


def test_crawls_a_documentation_faithful_imitation(imitation, data_root):
    assert _crawl(data_root, imitation) == 0
    q = Imitation.queries[0]
    assert (q["search_query"], q["sortBy"], q["sortOrder"], q["start"]) == (QUERY, "submittedDate", "ascending", "0")
    assert int(q["max_results"]) == 2000  # the API's largest page
    assert [int(q["start"]) for q in Imitation.queries] == [0, 2]  # paged on what the server actually gave

    rows = {r["arxiv_id"]: r for r in store.read_rows(data_root / "papers" / "2021-01.parquet")}
    assert sorted(rows) == ["2101.00001", "2101.00003", "2101.00004"]  # primary cs.CV only by default
    r = rows["2101.00001"]
    assert (r["version"], r["title"], r["authors"]) == (2, "A Paper Titled 2101.00001v2", ["Ada Lovelace", "Alan Turing"])
    assert (r["primary_category"], r["categories"]) == ("cs.CV", ["cs.CV", "cs.LG"])
    assert (r["doi"], r["journal_ref"], r["comment"]) == ("10.1000/xyz123", "CVPR 2021", "12 pages, 5 figures")
    assert r["published"].isoformat() == "2021-01-04T10:00:00+00:00"
    assert rows["2101.00004"]["version"] == 3 and rows["2101.00003"]["doi"] == ""
    # e-prints stored byte for byte as served, the kind read from those bytes
    for arxiv_id, kind in (("2101.00001", "tar.gz"), ("2101.00003", "gz-tex"), ("2101.00004", "pdf")):
        row = rows[arxiv_id]
        assert (row["eprint_status"], row["eprint_kind"]) == ("ok", kind), row["eprint_error"]
        assert (data_root / row["eprint_path"]).read_bytes() == EPRINTS[arxiv_id][0]
        # --pdfs auto: the PDF only beside an e-print that is no LaTeX source
        assert (row["pdf_status"], row["pdf_kind"]) == (("ok", "pdf") if kind == "pdf" else ("skipped", ""))
    assert store.read_stats(data_root / "papers", "2021-01")["done"]


def test_cross_lists_come_in_when_asked(imitation, data_root):
    assert _crawl(data_root, imitation, "--include-cross-lists", "--downloads") == 0
    rows = {r["arxiv_id"]: r for r in store.read_rows(data_root / "papers" / "2021-01.parquet")}
    assert sorted(rows) == ["2101.00001", "2101.00002", "2101.00003", "2101.00004"]
    assert rows["2101.00002"]["primary_category"] == "cs.LG"


def test_an_api_error_entry_is_reported_not_taken_for_a_paper(imitation, data_root):
    Imitation.error_feed = True  # arXiv's way of saying a query is wrong: one Atom entry "Error"
    urls = dict(zip(("api_url", "eprint_url", "pdf_url"), imitation[1::2]))
    stats = crawl_shard("2021-01", data_root, PoliteFetcher(0, data_root / ".politeness", timeout=5),
                        include_cross_lists=True, **urls)
    assert not stats["done"] and "incorrect id format for 1234.1234v" in stats["error"]
    assert len(Imitation.queries) == 1, "a query error is not retried"
    assert not store.shard_done(data_root / "papers", "2021-01")


def test_a_dripping_body_hits_the_whole_response_deadline(imitation, tmp_path):
    base = imitation[1].removesuffix("/api/query")
    fetcher = PoliteFetcher(0, tmp_path, timeout=1, max_retries=0, max_seconds=1)
    t0 = time.monotonic()
    with pytest.raises(TransientError, match="not complete after 1s"):
        fetcher.get(f"{base}/drip", raw=True)
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("retry_after", ["soon", "Wed, 21 Oct 2015 07:28:00 -0000"])
def test_an_odd_retry_after_is_a_transient_failure_not_a_crash(imitation, tmp_path, retry_after):
    base = imitation[1].removesuffix("/api/query")
    fetcher = PoliteFetcher(0, tmp_path, timeout=2, max_retries=1, backoff=0.01)
    row = download_file(fetcher, f"{base}/busy?ra={retry_after}", tmp_path / "x.eprint", tmp_path)
    assert row["status"] == "pending" and "HTTP 503" in row["error"]


# Well-formed XML that is still not a usable feed. The `arxiv` package skips an entry without its
# dates (paging on what it kept re-fetches a neighbour, so the count still adds up), crashes on a
# date it cannot read, and takes any other XML document for "no results": a paper or a whole month
# would vanish, or the crawl would stop. Each must leave the shard open with a clear error instead.
BROKEN_FEEDS = {
    "entry without <published>": lambda page: re.sub(
        rb"(<id>http://arxiv.org/abs/2101.00002v1</id>\s*<updated>[^<]*</updated>)\s*<published>[^<]*</published>",
        rb"\1", page),
    "unreadable date": lambda page: page.replace(b"<updated>2021-01-05T17:59:46Z</updated>", b"<updated>soon</updated>"),
    "XHTML page instead of a feed": lambda page: (
        b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><body>Back soon</body></html>'),
    "feed without totalResults": lambda page: re.sub(rb"<opensearch:totalResults[^>]*>\d+</opensearch:totalResults>",
                                                     b"", page),
}


@pytest.mark.parametrize("breakage", BROKEN_FEEDS)
def test_a_well_formed_but_broken_feed_leaves_the_shard_open(imitation, data_root, breakage):
    Imitation.mangle = BROKEN_FEEDS[breakage]
    urls = dict(zip(("api_url", "eprint_url", "pdf_url"), imitation[1::2]))
    fetcher = PoliteFetcher(0, data_root / ".politeness", timeout=5, backoff=0.01)
    stats = crawl_shard("2021-01", data_root, fetcher, include_cross_lists=True, downloads=(), **urls)
    assert not stats["done"] and "Atom" in stats["error"], stats
    assert not store.shard_done(data_root / "papers", "2021-01")

    Imitation.mangle = None  # arXiv answers properly again: the rerun finishes the shard with every paper
    stats = crawl_shard("2021-01", data_root, fetcher, include_cross_lists=True, downloads=(), **urls)
    assert stats["done"] and stats["papers"] == len(ENTRIES)


def test_a_redirect_loop_is_a_per_paper_error_and_the_crawl_goes_on(imitation, data_root):
    base = imitation[1].removesuffix("/api/query")
    urls = dict(zip(("api_url", "eprint_url", "pdf_url"), imitation[1::2]), pdf_url=f"{base}/loop/{{id}}")
    fetcher = PoliteFetcher(0, data_root / ".politeness", timeout=5, backoff=0.01)
    stats = crawl_shard("2021-01", data_root, fetcher, pdfs="all", **urls)
    assert stats["done"]  # a final error: asking again will not help
    rows = store.read_rows(data_root / "papers" / "2021-01.parquet")
    assert all(r["eprint_status"] == "ok" for r in rows)
    assert all(r["pdf_status"] == "error" and "redirects" in r["pdf_error"] for r in rows)

    # the API behind a redirect loop: the shard stays open with the reason, no crash
    stats = crawl_shard("2021-02", data_root, fetcher, **dict(urls, api_url=f"{base}/loop/api"))
    assert not stats["done"] and "redirects" in stats["error"]


def test_each_redirect_hop_waits_its_turn(imitation, data_root):
    """A redirect is a second request to the host: it keeps the delay like any other."""
    base = imitation[1].removesuffix("/api/query")
    arxiv_id = next(iter(EPRINTS))
    fetcher = PoliteFetcher(0.4, data_root / ".politeness", timeout=5, backoff=0.01)
    row = download_file(fetcher, f"{base}/hop/pdf/{arxiv_id}", data_root / "raw" / f"{arxiv_id}.pdf", data_root)
    assert row["status"] == "ok" and row["kind"] == "pdf"
    (t_hop, first), (t_final, second) = Imitation.seen[-2:]
    assert (first, second) == (f"/hop/pdf/{arxiv_id}", f"/pdf/{arxiv_id}")
    assert t_final - t_hop >= 0.4 and fetcher.requests_made == 2
