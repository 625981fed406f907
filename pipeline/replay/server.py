"""An HTTP imitation of arXiv on 127.0.0.1: the Atom API, e-prints, PDFs, a little OAI-PMH, faults.

Endpoints (the same paths as export.arxiv.org, so only the host changes):

    GET /api/query?search_query=cat:cs.CV AND submittedDate:[202101010000 TO 202101312359]&start=0&max_results=100
    GET /api/query?id_list=<id>,<id>v1     the latest version's entry, or that version's (its date)
    GET /e-print/<id>      the e-print bytes as arXiv serves them (gzip'd tar, gzip'd .tex, or a PDF)
    GET /e-print/<id>v<n>  that version's e-print (404 for a version the corpus holds no file of)
    GET /pdf/<id>          the paper PDF
    GET /oai?verb=GetRecord&identifier=oai:arXiv.org:<id>&metadataPrefix=arXiv   (licence)
    GET /oai?verb=ListRecords&metadataPrefix=arXiv&set=cs&from=YYYY-MM-DD&until=YYYY-MM-DD
    GET /oai?verb=ListRecords&resumptionToken=<token>      the next page (`oai_page_size` records)
    GET /_replay/log       JSON list of [time, path, user agent] of every request served
    POST /_replay/faults   JSON list of fault rules, replacing the current ones

A fault rule is `{"match": <regex searched in the request path+query>, "fault": <kind>,
"times": <how many requests it hits; absent = all>, "retry_after": s, "seconds": s}` with kind
one of: 503, 429, 500 (with `Retry-After` when given), 404, slow (sleep `seconds`, then answer),
truncate (announce the full length, send half, close), html (an HTML error page with status
200), empty (an API page with `totalResults` but no entries), malformed (broken Atom or OAI XML),
block (arXiv's "access denied" HTML page, with HTTP `status`, 403 unless given: 200 is a block
page served in place of the file). A rule with `"ids": [first, last]` hits only requests for the
arXiv ids in that range (inclusive): a block for a stretch of papers. Faults are lifted by
replacing the rules (`Replay.set_faults([])`, or POST `[]` to /_replay/faults).
Withdrawn papers answer 404 on both download endpoints, as on arXiv.

Versions: a paper's `version` is its latest; a paper may list `versions` as
`[{"version": n, "created": iso date, "eprint_file": path}]` (the file optional: else
`eprint/<id>v<n>` of the corpus, else the paper's e-print for the latest version only). Without
`versions`, version 1 is dated `published`, the latest `updated`, and any between evenly.

OAI-PMH ListRecords pages as the protocol says: records in datestamp order, `set` an archive
(`cs` holds every paper with a cs.* category), each incomplete page ending in an opaque
`<resumptionToken completeListSize=".." cursor="..">`, the last one in an empty token; a token
the replay does not know (`Replay.oai_tokens.clear()` expires them all) is `badResumptionToken`.
`deleted_records` ({id: datestamp}) are listed with `<header status="deleted">`.
"""
from __future__ import annotations

import json
import re
import secrets
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

from pipeline.fetch import sniff_kind
from pipeline.replay.corpus import load_papers

MAX_PAGE = 2000  # the real API's cap on max_results
_TERM = re.compile(r"(\w+):(\[[^\]]*\]|\"[^\"]*\"|\S+)")
_ID = re.compile(r"^(\d{4}\.\d{4,5})(v\d+)?$")
_ID_IN_PATH = re.compile(r"/(\d{4}\.\d{4,5})(?:v\d+)?(?:$|[/?&])")


# --- the corpus as the API sees it --------------------------------------------------------

def _stamp(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def real_eprint_papers(folder: Path) -> list[dict]:
    """Metadata for real e-prints named `<arxiv id>.tar.gz` (or `<id>`) in `folder`."""
    papers = []
    for f in sorted(folder.iterdir()):
        arxiv_id = f.name.removesuffix(".tar.gz")
        if not _ID.match(arxiv_id):
            continue
        published = f"20{arxiv_id[:2]}-{arxiv_id[2:4]}-15T12:00:00+00:00"
        papers.append({
            "arxiv_id": arxiv_id, "version": 1, "title": f"Real e-print {arxiv_id}", "authors": ["Unknown"],
            "summary": f"Served from {folder}.", "published": published, "updated": published,
            "primary_category": "cs.CV", "categories": ["cs.CV"], "comment": "", "journal_ref": "", "doi": "",
            "license": "", "withdrawn": False, "eprint_file": str(f),
            "pdf_file": str(folder / f"{arxiv_id}.pdf"),
        })
    return papers


def _matches(paper: dict, query: str) -> bool:
    """The subset of arXiv's query language the crawl uses: terms joined by AND / ANDNOT / OR."""
    tokens = re.split(r"\s+(AND|OR|ANDNOT)\s+", query.strip().strip("()"))
    result, op = None, "AND"
    for tok in tokens:
        if tok in ("AND", "OR", "ANDNOT"):
            op = tok
            continue
        m = _TERM.fullmatch(tok.strip().strip("()"))
        if not m:
            raise ValueError(f"unsupported query term: {tok!r}")
        field, value = m.group(1), m.group(2).strip('"')
        if field == "cat":
            hit = value in paper["categories"]
        elif field == "submittedDate":
            lo, hi = re.fullmatch(r"\[(\d{8,14})\s+TO\s+(\d{8,14})\]", value).groups()
            stamp = datetime.fromisoformat(paper["published"]).astimezone(timezone.utc).strftime("%Y%m%d%H%M%S")
            hit = lo.ljust(14, "0") <= stamp <= hi.ljust(14, "9")
        elif field in ("ti", "all"):
            hit = value.lower() in paper["title"].lower()
        elif field == "id":
            hit = paper["arxiv_id"] == value
        else:
            raise ValueError(f"unsupported query field: {field!r}")
        result = hit if result is None else (result and hit if op == "AND" else result or hit if op == "OR"
                                             else result and not hit)
    return bool(result)


def version_dates(p: dict) -> dict[int, str]:
    """{version number: ISO date} of a paper (see the module's doc)."""
    if p.get("versions"):
        return {int(v["version"]): v["created"] for v in p["versions"]}
    last = int(p["version"])
    if last == 1:
        return {1: p["updated"]}
    first, end = datetime.fromisoformat(p["published"]), datetime.fromisoformat(p["updated"])
    return {n: (first + (end - first) * (n - 1) / (last - 1)).isoformat() for n in range(1, last + 1)}


def _entry(p: dict, version: int | None = None) -> str:
    """The Atom entry of the paper's latest version, or of `version` (its date as `updated`)."""
    updated = p["updated"] if version is None else version_dates(p)[version]
    vid = f"{p['arxiv_id']}v{version or p['version']}"
    parts = [f"<entry><id>http://arxiv.org/abs/{vid}</id>",
             f"<updated>{_stamp(updated)}</updated><published>{_stamp(p['published'])}</published>",
             f"<title>{escape(p['title'])}</title><summary>{escape(p['summary'])}</summary>"]
    parts += [f"<author><name>{escape(a)}</name></author>" for a in p["authors"]]
    if p["doi"]:
        parts.append(f"<arxiv:doi>{escape(p['doi'])}</arxiv:doi>"
                     f'<link title="doi" href="http://dx.doi.org/{escape(p["doi"])}" rel="related"/>')
    if p["comment"]:
        parts.append(f"<arxiv:comment>{escape(p['comment'])}</arxiv:comment>")
    if p["journal_ref"]:
        parts.append(f"<arxiv:journal_ref>{escape(p['journal_ref'])}</arxiv:journal_ref>")
    parts.append(f'<link href="http://arxiv.org/abs/{vid}" rel="alternate" type="text/html"/>'
                 f'<link title="pdf" href="http://arxiv.org/pdf/{vid}" rel="related" type="application/pdf"/>'
                 f'<arxiv:primary_category xmlns:arxiv="http://arxiv.org/schemas/atom" term="{p["primary_category"]}" '
                 'scheme="http://arxiv.org/schemas/atom"/>')
    parts += [f'<category term="{c}" scheme="http://arxiv.org/schemas/atom"/>' for c in p["categories"]]
    return "".join(parts) + "</entry>\n"


def atom_feed(papers: list, query: str, total: int, start: int, per_page: int) -> bytes:
    """An API page; `papers` holds paper dicts, or (paper, version) pairs for versioned ids."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<feed xmlns="http://www.w3.org/2005/Atom" xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/" '
            'xmlns:arxiv="http://arxiv.org/schemas/atom">\n'
            f'<link href="http://arxiv.org/api/query?search_query={escape(query)}" rel="self" type="application/atom+xml"/>'
            f"<title type=\"html\">ArXiv Query: search_query={escape(query)}</title>"
            f"<id>http://arxiv.org/api/replay</id><updated>{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}</updated>\n"
            f"<opensearch:totalResults>{total}</opensearch:totalResults>"
            f"<opensearch:startIndex>{start}</opensearch:startIndex>"
            f"<opensearch:itemsPerPage>{per_page}</opensearch:itemsPerPage>\n"
            + "".join(_entry(*p) if isinstance(p, tuple) else _entry(p) for p in papers)
            + "</feed>\n").encode()


def _archives(p: dict) -> list[str]:
    """The OAI sets of a paper: the archives of its categories (`cs.CV` -> `cs`)."""
    return sorted({c.split(".")[0] for c in p["categories"]})


def _datestamp(p: dict) -> str:
    """The OAI datestamp (day granularity, as arXiv's): the last metadata change, here `updated`."""
    return p.get("datestamp") or _stamp(p["updated"])[:10]


def _oai_record(p: dict) -> str:
    sets = "".join(f"<setSpec>{s}</setSpec>" for s in _archives(p))
    if p.get("deleted"):  # the item is gone: a header and no metadata
        return (f'<record><header status="deleted"><identifier>oai:arXiv.org:{p["arxiv_id"]}</identifier>'
                f"<datestamp>{_datestamp(p)}</datestamp>{sets}</header></record>")
    return (f"<record><header><identifier>oai:arXiv.org:{p['arxiv_id']}</identifier>"
            f"<datestamp>{_datestamp(p)}</datestamp>{sets}</header>"
            f'<metadata><arXiv xmlns="http://arxiv.org/OAI/arXiv/"><id>{p["arxiv_id"]}</id>'
            f"<created>{_stamp(p['published'])[:10]}</created><title>{escape(p['title'])}</title>"
            f"<categories>{' '.join(p['categories'])}</categories>"
            + (f"<license>{escape(p['license'])}</license>" if p.get("license") else "")
            + "</arXiv></metadata></record>")


def oai_response(verb: str, body: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/">'
            f"<responseDate>{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}</responseDate>"
            f'<request verb="{verb}">http://export.arxiv.org/oai2</request>{body}</OAI-PMH>\n').encode()


def download_headers(body: bytes) -> tuple[str, dict]:
    """Content type and headers as arXiv sends them: a gzip'd e-print goes out with
    `Content-Encoding: x-gzip` (the file itself, not a transfer compression), typed
    `application/x-eprint-tar` (a tarball inside) or `application/x-eprint` (one file)."""
    kind = sniff_kind(body)
    if kind == "pdf":
        return "application/pdf", {}
    if kind in ("tar.gz", "gz-tex", "gz"):
        return ("application/x-eprint-tar" if kind == "tar.gz" else "application/x-eprint"), {"Content-Encoding": "x-gzip"}
    return "application/octet-stream", {}


HTML_ERROR = (b"<!DOCTYPE html><html><head><title>arXiv - Error</title></head><body>"
              b"<h1>Sorry, something went wrong</h1><p>Please try again later.</p></body></html>")
HTML_BLOCKED = (b"<!DOCTYPE html><html><head><title>Access Denied</title></head><body><h1>Access Denied</h1>"
                b"<p>Sadly, you do not currently appear to have permission to access this resource. Your "
                b"requests have been rate limited or blocked; see https://info.arxiv.org/help/robots.html</p>"
                b"</body></html>")


# --- the server -----------------------------------------------------------------------------

class Replay:
    """The replay's state: papers, fault rules, and a log of requests served."""

    def __init__(self, corpus_dir: str | Path | None = None, extra_eprints: str | Path | None = None,
                 faults: list[dict] | None = None, oai_page_size: int = 1000,
                 deleted_records: dict[str, str] | None = None):
        self.corpus_dir = Path(corpus_dir) if corpus_dir else None
        papers = load_papers(self.corpus_dir) if self.corpus_dir else []
        if extra_eprints:
            papers += real_eprint_papers(Path(extra_eprints))
        self.papers = {p["arxiv_id"]: p for p in papers}
        self.ordered = sorted(papers, key=lambda p: p["published"])
        self.lock = threading.Lock()
        self.faults: list[dict] = []
        self.set_faults(faults or [])
        self.log: list[tuple[float, str, str]] = []
        self.oai_page_size = oai_page_size  # arXiv's pages hold about 1,000 records
        # OAI-PMH items that were removed: listed with a deleted header, datestamp given
        self.oai_deleted = [{"arxiv_id": i, "datestamp": d, "categories": ["cs.CV"], "deleted": True}
                            for i, d in (deleted_records or {}).items()]
        self.oai_tokens: dict[str, tuple[list[dict], int]] = {}  # token -> (the whole list, next cursor)

    def set_faults(self, faults: list[dict]) -> None:
        with self.lock:
            self.faults = [dict(f, _left=f.get("times")) for f in faults]

    def take_fault(self, target: str) -> dict | None:
        """The first rule matching `target` that has hits left (and spend one)."""
        m = _ID_IN_PATH.search(target)
        arxiv_id = m.group(1) if m else None
        with self.lock:
            for f in self.faults:
                if "ids" in f and not (arxiv_id and f["ids"][0] <= arxiv_id <= f["ids"][-1]):
                    continue
                if re.search(f.get("match", ""), target) and (f["_left"] is None or f["_left"] > 0):
                    if f["_left"] is not None:
                        f["_left"] -= 1
                    return f
        return None

    def file_for(self, endpoint: str, arxiv_id: str, version: int | None = None) -> Path | None:
        p = self.papers.get(arxiv_id)
        if p is None or p.get("withdrawn"):
            return None
        if endpoint == "e-print" and version not in (None, int(p.get("version", 1))):
            listed = {int(v["version"]): v for v in p.get("versions", ())}
            path = (Path(listed[version]["eprint_file"]) if listed.get(version, {}).get("eprint_file")
                    else self.corpus_dir / "eprint" / f"{arxiv_id}v{version}" if self.corpus_dir else None)
            return path if path is not None and path.exists() else None
        if endpoint == "e-print":
            path = Path(p["eprint_file"]) if "eprint_file" in p else self.corpus_dir / "eprint" / arxiv_id
        else:
            path = Path(p["pdf_file"]) if "pdf_file" in p else self.corpus_dir / "pdf" / f"{arxiv_id}.pdf"
        return path if path.exists() else None


class _Handler(BaseHTTPRequestHandler):
    server: "ReplayServer"
    protocol_version = "HTTP/1.0"  # one request per connection, like a simple CDN edge

    def log_message(self, fmt, *args):  # quiet; the replay keeps its own log
        pass

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None, truncate: bool = False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if truncate else body)
        if truncate:
            self.close_connection = True

    def do_POST(self):
        replay = self.server.replay
        if self.path.startswith("/_replay/faults"):
            replay.set_faults(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"[]"))
            return self._send(200, b"ok\n", "text/plain")
        self._send(404, b"not found\n", "text/plain")

    def do_GET(self):
        replay = self.server.replay
        url = urlsplit(self.path)
        if url.path == "/_replay/log":
            with replay.lock:
                return self._send(200, json.dumps(replay.log).encode(), "application/json")
        with replay.lock:
            replay.log.append((time.time(), self.path, self.headers.get("User-Agent", "")))
        fault = replay.take_fault(self.path)
        kind = str(fault["fault"]) if fault else ""
        if kind == "slow":
            time.sleep(float(fault.get("seconds", 5)))
        elif kind in ("503", "429", "500"):
            headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
            return self._send(int(kind), HTML_ERROR, "text/html", headers)
        elif kind == "404":
            return self._send(404, b"not found\n", "text/plain")
        elif kind == "html":
            return self._send(200, HTML_ERROR, "text/html")
        elif kind == "block":
            return self._send(int(fault.get("status", 403)), HTML_BLOCKED, "text/html")
        try:
            status, body, ctype, *headers = self._route(url.path, parse_qs(url.query), kind)
        except (ValueError, KeyError) as e:
            status, body, ctype, headers = 400, f"bad request: {e}\n".encode(), "text/plain", []
        self._send(status, body, ctype, headers[0] if headers else None, truncate=kind == "truncate")

    def _route(self, path: str, q: dict, fault: str) -> tuple:
        """(status, body, content type[, other headers])."""
        replay = self.server.replay
        if path == "/api/query":
            return 200, self._api(q, fault), "application/atom+xml; charset=utf-8"
        m = re.fullmatch(r"/(e-print|pdf)/(\d{4}\.\d{4,5})(v\d+)?", path)
        if m:
            f = replay.file_for(m.group(1), m.group(2), int(m.group(3)[1:]) if m.group(3) else None)
            if f is None:
                return 404, b"not found\n", "text/plain"
            body = f.read_bytes()
            return (200, body, *download_headers(body))
        if path in ("/oai", "/oai2"):
            if fault == "malformed":
                return 200, b'<?xml version="1.0"?><OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/"><ListRec', "text/xml"
            return 200, self._oai(q), "text/xml"
        return 404, b"not found\n", "text/plain"

    def _api(self, q: dict, fault: str) -> bytes:
        replay = self.server.replay
        query = q.get("search_query", [""])[0]
        ids = [i for i in q.get("id_list", [""])[0].split(",") if i]
        start = int(q.get("start", ["0"])[0])
        per_page = min(int(q.get("max_results", ["10"])[0]), MAX_PAGE)
        if ids:  # id_list: in the order asked, a versioned id giving that version's entry
            hits = []
            for i in ids:
                m = _ID.match(i)
                p = replay.papers.get(m.group(1)) if m else None
                version = int(m.group(2)[1:]) if m and m.group(2) else None
                if p is not None and (not query or _matches(p, query)) and (
                        version is None or version in version_dates(p)):
                    hits.append(p if version is None else (p, version))
        else:
            hits = [p for p in replay.ordered if not query or _matches(p, query)]
        if not ids and q.get("sortOrder", ["descending"])[0] == "descending":
            hits = hits[::-1]
        if fault == "malformed":
            return b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><entry><id>http://arxiv'
        page = [] if fault == "empty" else hits[start:start + per_page]
        return atom_feed(page, query, len(hits), start, per_page)

    def _oai(self, q: dict) -> bytes:
        replay = self.server.replay
        verb = q.get("verb", [""])[0]
        if verb == "GetRecord":
            arxiv_id = q["identifier"][0].removeprefix("oai:arXiv.org:")
            p = replay.papers.get(arxiv_id)
            if p is None:
                return oai_response(verb, '<error code="idDoesNotExist">unknown identifier</error>')
            return oai_response(verb, f"<GetRecord>{_oai_record(p)}</GetRecord>")
        if verb == "ListRecords":
            return oai_response(verb, self._list_records(q))
        return oai_response(verb, '<error code="badVerb">unsupported verb</error>')

    def _list_records(self, q: dict) -> str:
        """One page of ListRecords: the first (from the arguments) or the next (from a token)."""
        replay = self.server.replay
        if "resumptionToken" in q:
            if set(q) != {"verb", "resumptionToken"}:  # the token is an exclusive argument
                return '<error code="badArgument">resumptionToken is exclusive</error>'
            with replay.lock:
                # reissuing a valid token gives the same page again (the protocol's idempotency)
                listed, cursor = replay.oai_tokens.get(q["resumptionToken"][0], (None, 0))
            if listed is None:
                return '<error code="badResumptionToken">unknown or expired resumptionToken</error>'
        else:
            if q.get("metadataPrefix", [""])[0] != "arXiv":
                return '<error code="cannotDisseminateFormat">only metadataPrefix=arXiv here</error>'
            lo, hi, spec = q.get("from", ["0000"])[0], q.get("until", ["9999"])[0], q.get("set", [""])[0]
            listed = sorted((p for p in replay.ordered + replay.oai_deleted if lo <= _datestamp(p) <= hi
                             and (not spec or spec in _archives(p))), key=lambda p: (_datestamp(p), p["arxiv_id"]))
            cursor = 0
            if not listed:
                return '<error code="noRecordsMatch">no records</error>'
        page = listed[cursor:cursor + replay.oai_page_size]
        body = "".join(map(_oai_record, page))
        after = cursor + len(page)
        if after < len(listed):
            token = secrets.token_urlsafe(12)
            with replay.lock:
                replay.oai_tokens[token] = (listed, after)
            body += f'<resumptionToken completeListSize="{len(listed)}" cursor="{cursor}">{token}</resumptionToken>'
        elif cursor:  # the last page of a list split in pages: an empty token
            body += f'<resumptionToken completeListSize="{len(listed)}" cursor="{cursor}"/>'
        return f"<ListRecords>{body}</ListRecords>"


class ReplayServer(ThreadingHTTPServer):
    """The replay on 127.0.0.1 (port 0 = a free one). `with ReplayServer(replay) as s: s.url`."""

    daemon_threads = True

    def __init__(self, replay: Replay, host: str = "127.0.0.1", port: int = 0):
        super().__init__((host, port), _Handler)
        self.replay = replay
        self._thread: threading.Thread | None = None

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # clients that gave up
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def endpoints(self) -> dict[str, str]:
        """The environment that points the crawl at this replay."""
        return {"CVF_ARXIV_API_URL": f"{self.url}/api/query", "CVF_ARXIV_EPRINT_URL": f"{self.url}/e-print/{{id}}",
                "CVF_ARXIV_PDF_URL": f"{self.url}/pdf/{{id}}", "CVF_ARXIV_OAI_URL": f"{self.url}/oai"}

    def start(self) -> "ReplayServer":
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> "ReplayServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
