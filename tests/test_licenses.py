"""Bulk licences over OAI-PMH ListRecords: paging, resuming, expired tokens, flow control, errors,
and the crawl taking licences from the harvested table instead of one GetRecord per paper."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.parquet as pq
import pytest

from pipeline import store
from pipeline.crawl import crawl_shard
from pipeline.fetch import PoliteFetcher, TransientError
from pipeline.licenses import (LICENSE_SCHEMA, HarvestError, fill_paper_licenses, harvest, licenses_for, main, merge,
                               parts_dir, read_checkpoint, table_path, write_checkpoint)
from pipeline.replay.corpus import load_papers
from pipeline.replay.server import Replay, ReplayServer
from replay_fixtures import corpus  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parent.parent
PAGE = 3  # records per ListRecords page in these tests
GONE = {"2101.99999": "2021-01-20"}  # an item the repository removed: listed with a deleted header


@pytest.fixture
def server(corpus):
    with ReplayServer(Replay(corpus, oai_page_size=PAGE, deleted_records=GONE)) as s:
        yield s


def _fetcher(root, **kw) -> PoliteFetcher:
    return PoliteFetcher(**{"delay": 0, "lock_dir": root / ".politeness", "timeout": 2, "max_retries": 0,
                            "backoff": 0.01, **kw})


def _truth(corpus) -> dict[str, str]:
    """Licence of every paper in set cs: the papers with at least one cs.* category."""
    return {p["arxiv_id"]: p["license"] for p in load_papers(corpus) if any(c.startswith("cs.") for c in p["categories"])}


def _harvested(root) -> dict[str, str]:
    rows, _ = read_checkpoint(table_path(root, "cs"))
    return {i: r["license"] for i, r in rows.items()}


def _oai_requests(server, since: int = 0) -> list[dict]:
    return [{k: v[0] for k, v in parse_qs(urlsplit(p).query).items()}
            for _, p, _ in server.replay.log[since:] if p.startswith("/oai")]


def _pages(n_records: int) -> int:
    return -(-n_records // PAGE)


def _stop_after_two_pages(server) -> None:
    """Serve the first page and one token page, then fail every further page with HTTP 500."""
    server.replay.set_faults([{"match": "resumptionToken", "fault": "slow", "seconds": 0, "times": 1},
                              {"match": "resumptionToken", "fault": "500"}])


def test_harvest_pages_through_the_set_to_the_truth(server, corpus, data_root):
    truth = _truth(corpus)
    url = server.endpoints()["CVF_ARXIV_OAI_URL"]
    stats = harvest(url, data_root, _fetcher(data_root))

    table = pq.read_table(data_root / "licenses" / "cs.parquet")
    assert table.schema.remove_metadata().equals(LICENSE_SCHEMA)
    assert _harvested(data_root) == truth and len(truth) > 2 * PAGE
    assert "2101.99999" not in _harvested(data_root)  # the deleted record is skipped
    created = {r["arxiv_id"]: r["created"] for r in table.to_pylist()}
    assert all(created[p["arxiv_id"]] == p["published"][:10] for p in load_papers(corpus) if p["arxiv_id"] in truth)

    requests = _oai_requests(server)
    listed = len(truth) + len(GONE)
    assert len(requests) == _pages(listed) > 2
    assert requests[0] == {"verb": "ListRecords", "metadataPrefix": "arXiv", "set": "cs"}
    assert all(set(q) == {"verb", "resumptionToken"} for q in requests[1:])  # the token is exclusive
    assert stats == store.read_stats(data_root / "licenses", "cs")
    assert (stats["records"], stats["pages"], stats["requests"], stats["deleted"], stats["complete_list_size"]) == \
        (len(truth), _pages(listed), _pages(listed), 1, listed)

    n = len(server.replay.log)  # done: a rerun asks nothing
    assert harvest(url, data_root, _fetcher(data_root)) == stats and len(server.replay.log) == n


def test_a_stopped_harvest_goes_on_from_its_token(server, corpus, data_root):
    url = server.endpoints()["CVF_ARXIV_OAI_URL"]
    _stop_after_two_pages(server)
    with pytest.raises(TransientError, match="HTTP 500"):
        harvest(url, data_root, _fetcher(data_root))
    assert not store.shard_done(data_root / "licenses", "cs")
    rows, state = read_checkpoint(table_path(data_root, "cs"))
    assert state["pages"] == 2 and state["token"] and 0 < len(rows) <= 2 * PAGE

    server.replay.set_faults([])
    n = len(server.replay.log)
    stats = harvest(url, data_root, _fetcher(data_root))
    requests = _oai_requests(server, n)
    assert requests[0] == {"verb": "ListRecords", "resumptionToken": state["token"]}  # no fresh start
    listed = len(_truth(corpus)) + len(GONE)
    assert len(requests) == _pages(listed) - 2, "only the pages not stored yet are asked for"
    assert _harvested(data_root) == _truth(corpus)
    assert stats["pages"] == _pages(listed) and stats["restarts"] == 0


def test_a_harvest_stopped_after_its_last_page_asks_nothing_again(server, corpus, data_root):
    url = server.endpoints()["CVF_ARXIV_OAI_URL"]
    stats = harvest(url, data_root, _fetcher(data_root))
    store.stats_path(data_root / "licenses", "cs").unlink()  # killed between the last page and the stats

    n = len(server.replay.log)
    again = harvest(url, data_root, _fetcher(data_root))
    assert len(server.replay.log) == n, "the whole list was stored: no page is asked for again"
    assert again["pages"] == stats["pages"] and again["records"] == stats["records"]
    assert store.shard_done(data_root / "licenses", "cs") and _harvested(data_root) == _truth(corpus)


def test_sigkill_mid_harvest_then_rerun_resumes(server, corpus, tmp_path):
    root = tmp_path / "data"
    url = server.endpoints()["CVF_ARXIV_OAI_URL"]
    args = ["--oai-url", url, "--data", str(root), "--retries", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.licenses", *args, "--delay", "0.3"], cwd=REPO, env=dict(os.environ, CVF_DATA=str(root)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(server.replay.log) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, state = read_checkpoint(table_path(root, "cs"))
    assert state and state["token"], "killed before its first checkpoint or after the end"

    n = len(server.replay.log)
    assert main([*args, "--delay", "0"]) == 0
    requests = _oai_requests(server, n)
    assert requests[0]["resumptionToken"] == state["token"]
    assert len(requests) == _pages(len(_truth(corpus)) + len(GONE)) - state["pages"]
    assert _harvested(root) == _truth(corpus)
    assert not list(root.rglob("*.tmp"))


def test_an_expired_token_restarts_the_list_and_keeps_the_newest_record(server, corpus, data_root):
    url = server.endpoints()["CVF_ARXIV_OAI_URL"]
    _stop_after_two_pages(server)
    with pytest.raises(TransientError):
        harvest(url, data_root, _fetcher(data_root))
    server.replay.set_faults([])
    # meanwhile the repository forgot its tokens, and one stored record's metadata changed
    server.replay.oai_tokens.clear()
    changed = sorted(_harvested(data_root))[0]
    paper = server.replay.papers[changed]
    paper.update(license="http://creativecommons.org/publicdomain/zero/1.0/", datestamp="2030-01-01")

    n = len(server.replay.log)
    stats = harvest(url, data_root, _fetcher(data_root))
    requests = _oai_requests(server, n)
    assert "resumptionToken" in requests[0] and requests[1] == {"verb": "ListRecords", "metadataPrefix": "arXiv",
                                                                "set": "cs"}
    assert stats["restarts"] == 1
    assert _harvested(data_root) == dict(_truth(corpus), **{changed: paper["license"]})


def test_merge_keeps_the_newest_datestamp_and_drops_deleted_ids():
    rows = {}
    merge(rows, {"records": [{"arxiv_id": "a", "license": "new", "datestamp": "2022-05-01", "created": ""},
                             {"arxiv_id": "b", "license": "x", "datestamp": "2021-01-01", "created": ""}],
                 "deleted": []})
    merge(rows, {"records": [{"arxiv_id": "a", "license": "old", "datestamp": "2021-01-01", "created": ""}],
                 "deleted": [{"arxiv_id": "b", "datestamp": "2021-02-01"}]})
    assert {i: r["license"] for i, r in rows.items()} == {"a": "new"}


def test_a_503_with_retry_after_on_a_page_is_waited_out(server, corpus, data_root):
    server.replay.set_faults([{"match": "resumptionToken", "fault": "503", "retry_after": 1, "times": 1}])
    harvest(server.endpoints()["CVF_ARXIV_OAI_URL"], data_root, _fetcher(data_root, max_retries=2))
    assert _harvested(data_root) == _truth(corpus)
    log = [(t, p) for t, p, _ in server.replay.log]
    second, again = log[1], log[2]
    assert second[1] == again[1] and again[0] - second[0] >= 0.99  # the same page, asked again after Retry-After


def test_no_records_is_an_empty_harvest_and_errors_are_clear(server, data_root, capsys):
    url = server.endpoints()["CVF_ARXIV_OAI_URL"]
    stats = harvest(url, data_root, _fetcher(data_root), from_date="2099-01-01")  # noRecordsMatch
    assert stats["done"] and stats["records"] == 0 and _harvested(data_root) == {}

    server.replay.set_faults([{"match": "/oai", "fault": "malformed"}])
    with pytest.raises(HarvestError, match="malformed OAI-PMH XML"):
        harvest(url, data_root, _fetcher(data_root), set_spec="math")
    server.replay.set_faults([{"match": "/oai", "fault": "html"}])
    with pytest.raises(HarvestError, match="not an OAI-PMH response"):
        harvest(url, data_root, _fetcher(data_root), set_spec="math")
    server.replay.set_faults([])
    with pytest.raises(HarvestError, match="HTTP 404"):
        harvest(server.url + "/no-oai-here", data_root, _fetcher(data_root), set_spec="math")
    assert main(["--oai-url", server.url + "/no-oai-here", "--data", str(data_root), "--delay", "0",
                 "--set", "math"]) == 1
    assert "error: OAI-PMH answered HTTP 404" in capsys.readouterr().err


def test_crawl_takes_licences_from_the_table_and_asks_only_for_the_rest(server, corpus, data_root):
    endpoints = server.endpoints()
    urls = {"api_url": endpoints["CVF_ARXIV_API_URL"], "eprint_url": endpoints["CVF_ARXIV_EPRINT_URL"],
            "pdf_url": endpoints["CVF_ARXIV_PDF_URL"]}
    harvest(endpoints["CVF_ARXIV_OAI_URL"], data_root, _fetcher(data_root))
    truth = _truth(corpus)
    # one paper of the shard is missing from the table (say, submitted after the harvest)
    rows, state = read_checkpoint(table_path(data_root, "cs"))
    jan = sorted(i for i, p in server.replay.papers.items()
                 if p["published"].startswith("2021-01") and "cs.CV" in p["categories"])
    missing = jan[0]
    del rows[missing]
    write_checkpoint(table_path(data_root, "cs"), rows, state)

    n = len(server.replay.log)
    stats = crawl_shard("2021-01", data_root, _fetcher(data_root), include_cross_lists=True, downloads=(),
                        oai_url=endpoints["CVF_ARXIV_OAI_URL"], **urls)
    assert stats["done"]
    get_records = [q["identifier"] for q in _oai_requests(server, n) if q.get("verb") == "GetRecord"]
    assert get_records == [f"oai:arXiv.org:{missing}"]  # one request, for the paper the table lacks
    crawled = {r["arxiv_id"]: r["license"] for r in store.read_rows(data_root / "papers" / "2021-01.parquet")}
    assert crawled == {i: truth[i] for i in crawled} and set(jan) <= set(crawled)

    # without an OAI URL the table alone fills the licences: no OAI request at all
    (data_root / "papers" / "2021-02_stats.json").unlink(missing_ok=True)
    n = len(server.replay.log)
    crawl_shard("2021-02", data_root, _fetcher(data_root), downloads=(), **urls)
    assert _oai_requests(server, n) == []
    crawled = {r["arxiv_id"]: r["license"] for r in store.read_rows(data_root / "papers" / "2021-02.parquet")}
    assert crawled and crawled == {i: truth[i] for i in crawled}
    assert licenses_for(data_root, [missing, "2101.00000"]) == {}


def test_fill_papers_writes_licences_into_done_shards_only(server, corpus, data_root):
    endpoints = server.endpoints()
    urls = {"api_url": endpoints["CVF_ARXIV_API_URL"], "eprint_url": endpoints["CVF_ARXIV_EPRINT_URL"],
            "pdf_url": endpoints["CVF_ARXIV_PDF_URL"]}
    for month in ("2021-01", "2021-02"):  # crawled before any licence was harvested
        assert crawl_shard(month, data_root, _fetcher(data_root), downloads=(), **urls)["done"]
    (data_root / "papers" / "2021-02_stats.json").unlink()  # as if a crawl were still at work on it
    before = {m: pq.read_table(data_root / "papers" / f"{m}.parquet") for m in ("2021-01", "2021-02")}
    assert set(before["2021-01"].column("license").to_pylist()) == {""}

    assert main(["--oai-url", endpoints["CVF_ARXIV_OAI_URL"], "--data", str(data_root), "--delay", "0",
                 "--fill-papers"]) == 0
    after = pq.read_table(data_root / "papers" / "2021-01.parquet")
    assert after.schema.equals(before["2021-01"].schema)
    assert after.drop_columns(["license"]).equals(before["2021-01"].drop_columns(["license"]))
    truth = _truth(corpus)
    assert after.column("license").to_pylist() == [truth[i] for i in after.column("arxiv_id").to_pylist()]
    assert pq.read_table(data_root / "papers" / "2021-02.parquet").equals(before["2021-02"])  # open: untouched
    assert fill_paper_licenses(data_root) == {}  # nothing left to change


# --- an independent imitation, written from arXiv's OAI-PMH documents, not our replay -----------------

_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
 xsi:schemaLocation="http://www.openarchives.org/OAI/2.0/ http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd">
<responseDate>2024-05-02T10:11:12Z</responseDate>
<request verb="ListRecords" metadataPrefix="arXiv" set="cs">http://export.arxiv.org/oai2</request>
"""


def _arxiv_record(arxiv_id: str, datestamp: str, license_el: str) -> str:
    return f"""<record>
<header>
 <identifier>oai:arXiv.org:{arxiv_id}</identifier>
 <datestamp>{datestamp}</datestamp>
 <setSpec>cs</setSpec>
 <setSpec>physics:math-ph</setSpec>
</header>
<metadata>
 <arXiv xmlns="http://arxiv.org/OAI/arXiv/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://arxiv.org/OAI/arXiv/ http://arxiv.org/OAI/arXiv.xsd">
 <id>{arxiv_id}</id><created>2010-03-04</created><updated>2011-05-06</updated>
 <authors><author><keyname>Lovelace</keyname><forenames>Ada</forenames></author></authors>
 <title>A paper &amp; its figures</title><categories>cs.CV math-ph</categories>
 <comments>9 pages</comments>{license_el}
 <abstract>  We study things.
</abstract>
 </arXiv>
</metadata>
</record>
"""


TOKEN = "6960524|1001"  # arXiv's tokens carry a '|': it must travel URL-encoded
IMITATION_PAGES = {
    None: _HEAD + "<ListRecords>\n"
    + _arxiv_record("1003.01234", "2011-05-06", "\n <license>http://arxiv.org/licenses/nonexclusive-distrib/1.0/</license>")
    + _arxiv_record("cs/0112017", "2009-01-01", "")  # an old-style id, no licence stated
    + f'<resumptionToken cursor="0" completeListSize="3" expirationDate="2024-05-03T10:11:12Z">{TOKEN}'
      "</resumptionToken>\n</ListRecords>\n</OAI-PMH>\n",
    TOKEN: _HEAD + "<ListRecords>\n"
    + '<record><header status="deleted"><identifier>oai:arXiv.org:1003.09999</identifier>'
      "<datestamp>2012-01-01</datestamp><setSpec>cs</setSpec></header></record>\n"
    + '<resumptionToken cursor="2" completeListSize="3"/>\n</ListRecords>\n</OAI-PMH>\n',
}
ARGUMENT_ERROR = (_HEAD + '<error code="badArgument">Illegal argument: froms</error>\n</OAI-PMH>\n')


class OaiImitation(BaseHTTPRequestHandler):
    requests: list[dict] = []
    error = False

    def log_message(self, *args):
        pass

    def do_GET(self):
        q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        type(self).requests.append(q)
        body = ARGUMENT_ERROR if type(self).error else IMITATION_PAGES.get(q.get("resumptionToken"))
        body = (body or "").encode()
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def imitation():
    OaiImitation.requests, OaiImitation.error = [], False
    srv = ThreadingHTTPServer(("127.0.0.1", 0), OaiImitation)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/oai2"
    srv.shutdown()
    srv.server_close()


def test_harvests_a_documentation_faithful_imitation(imitation, data_root):
    stats = harvest(imitation, data_root, _fetcher(data_root))
    assert [q.get("resumptionToken") for q in OaiImitation.requests] == [None, TOKEN]
    rows, _ = read_checkpoint(table_path(data_root, "cs"))
    metadata = {"updated": "2011-05-06", "categories": "cs.CV math-ph", "title": "A paper & its figures",
                "authors": ["Ada Lovelace"], "abstract": "We study things.", "comments": "9 pages", "journal_ref": "",
                "doi": ""}  # the rest of the record, for python -m pipeline.bulk
    assert rows == {
        "1003.01234": {"arxiv_id": "1003.01234", "license": "http://arxiv.org/licenses/nonexclusive-distrib/1.0/",
                       "datestamp": "2011-05-06", "created": "2010-03-04", **metadata},
        "cs/0112017": {"arxiv_id": "cs/0112017", "license": "", "datestamp": "2009-01-01", "created": "2010-03-04",
                       **metadata}}
    assert (stats["pages"], stats["deleted"], stats["complete_list_size"]) == (2, 1, 3)

    OaiImitation.error = True
    with pytest.raises(HarvestError, match="OAI-PMH error badArgument: Illegal argument: froms"):
        harvest(imitation, data_root, _fetcher(data_root), from_date="2024-01-01")


def test_each_page_is_stored_as_a_part_and_merged_once(server, corpus, data_root):
    """Storing a page writes that page alone (the table is not rewritten after every page: that
    grows with the square of the pages); the parts are merged into the table once, at the end."""
    url = server.endpoints()["CVF_ARXIV_OAI_URL"]
    _stop_after_two_pages(server)
    with pytest.raises(TransientError):
        harvest(url, data_root, _fetcher(data_root))
    path = table_path(data_root, "cs")
    parts = sorted(parts_dir(path).glob("*.parquet"))
    assert not path.exists() and len(parts) == 2
    assert all(pq.read_metadata(p).num_rows <= PAGE for p in parts)

    server.replay.set_faults([])
    harvest(url, data_root, _fetcher(data_root))
    assert not list(parts_dir(path).glob("*.parquet")) and _harvested(data_root) == _truth(corpus)
    assert pq.read_table(path).schema.remove_metadata().equals(LICENSE_SCHEMA)
