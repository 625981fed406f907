"""Polite HTTP downloads from arXiv (or the replay), and telling file kinds apart by their bytes.

arXiv asks for one connection at a time and a pause between requests. Every worker that talks
to a host (threads, processes, Prefect workers on this machine) shares ONE budget through a
lock file per host under `<data root>/.politeness/`: the file holds the earliest time the next
request may start, and the lock is held for the whole request, so two workers never overlap and
the next request starts at least `delay` seconds after the previous one ended. A 429/503 with
`Retry-After` pushes that time forward for everyone.

Downloads keep the bytes exactly as served: arXiv sends a gzip'd e-print with
`Content-Encoding: x-gzip`, which HTTP clients would silently unpack (a single gzip'd .tex would
arrive as bare TeX), so `get(url, raw=True)` asks for `identity` and does not decode.

    fetcher = PoliteFetcher(delay=3, lock_dir=root / ".politeness")
    row = download_file(fetcher, "https://export.arxiv.org/e-print/2101.00001", dest, root)
"""
from __future__ import annotations

import email.utils
import os
import random
import time
import zlib
from datetime import timezone
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from pipeline import config, store
from pipeline.archive import ArchiveError, OverLimit, check_blob, gunzip_head, sniff

RETRY_STATUSES = {429, 500, 502, 503, 504}
MAX_REDIRECTS = 10  # hops followed per GET, each one a polite request of its own
SOURCE_KINDS = ("tar.gz", "tar", "gz-tex", "gz", "pdf", "zip")


def user_agent(contact: str | None = None) -> str:
    contact = contact or config.contact()
    return f"cvf-crawler/0.1 (Computer Vision Figures corpus rebuild; contact: {contact or 'unset, set CVF_CONTACT'})"


# --- what is this file? -----------------------------------------------------------------------

def _is_tar(head: bytes) -> bool:
    # POSIX/GNU tar: "ustar" magic at offset 257 of the first header block.
    return len(head) >= 262 and head[257:262] == b"ustar"


def sniff_kind(data: bytes) -> str:
    """The kind of an e-print or PDF, from its bytes alone (never the URL or the header)."""
    if not data:
        return "empty"
    if data[:2] == b"\x1f\x8b":
        try:  # peek at the decompressed head: a tarball, or a single gzip'd .tex?
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], 1024)
        except zlib.error:
            return "gz"
        if _is_tar(head):
            return "tar.gz"
        text = head.lstrip()[:200]
        # a gzip'd PDF or PostScript file, not TeX (but `%!TEX program = ...` is a TeX magic comment)
        if text.startswith((b"%PDF-", b"%!PS")):
            return "gz"
        if text.startswith((b"\\", b"%")) or b"\\document" in head or b"\\begin" in head:
            return "gz-tex"
        return "gz"
    if data[:5] == b"%PDF-":
        return "pdf"
    if data[:4] == b"PK\x03\x04":
        return "zip"
    if _is_tar(data[:512]):
        return "tar"
    head = data[:1024].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml")) or b"<html" in head or b"<body" in head:
        return "html"
    return "unknown"


def verify(data: bytes, kind: str) -> str:
    """Return '' when `data` is a complete file of `kind`, else what is wrong with it.

    Archives are read through in a stream under the archive reader's caps (`pipeline.archive
    .Limits`), never unpacked whole in memory: a gzip bomb is reported as `over a limit: ...`
    (see `over_limit`), not decompressed to the end."""
    try:
        if kind in ("tar.gz", "tar", "gz-tex", "gz"):
            # a `gz` may still hold an old (pre-POSIX) tar, which read_eprint reads as one
            tar = kind in ("tar.gz", "tar") or (kind == "gz" and sniff(gunzip_head(data)) == "tar")
            check_blob(data, compressed=kind != "tar", tar=tar)
        elif kind == "pdf":
            if b"%%EOF" not in data[-2048:]:
                return "pdf without %%EOF trailer (truncated?)"
    except OverLimit as e:
        return f"{OVER_LIMIT}{e}"
    except ArchiveError as e:
        return f"corrupt {kind}: {e}"
    return ""


OVER_LIMIT = "over a limit: "


def over_limit(problem: str) -> bool:
    """Whether a `verify` problem is a cap the e-print exceeds (final), not a cut body (retry)."""
    return problem.startswith(OVER_LIMIT)


# --- polite fetching ----------------------------------------------------------------------------

class TransientError(Exception):
    """The request failed in a way a later retry might fix (timeouts, 5xx, 429, cut bodies)."""


class BadResponse(Exception):
    """Every try was answered, but with a response the caller's `check` found unusable."""


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)  # the HTTP-date form
    except (TypeError, ValueError):
        return None  # unreadable: back off as if none was given
    if when.tzinfo is None:  # "-0000": UTC, says RFC 5322
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - time.time())


class PoliteFetcher:
    """GET with one shared politeness budget per host, timeouts, Retry-After and backoff."""

    def __init__(self, delay: float = 3.0, lock_dir: str | os.PathLike | None = None, *,
                 timeout: float = 60.0, max_retries: int = 4, backoff: float | None = None,
                 max_retry_after: float = 900.0, contact: str | None = None, max_seconds: float | None = None):
        self.delay = delay
        self.timeout = timeout  # connect / between two reads
        # a whole response must arrive within this (a server dripping bytes never trips `timeout`)
        self.max_seconds = max_seconds if max_seconds is not None else 10 * timeout
        self.max_retries = max_retries
        # Backoff starts from the delay; with delay 0 (tests, benchmarks) a small floor remains.
        self.backoff = backoff if backoff is not None else max(delay, 1.0)
        self.max_retry_after = max_retry_after
        self.lock_dir = Path(lock_dir) if lock_dir else config.data_root() / ".politeness"
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent(contact)
        self.requests_made = 0

    def _lock_path(self, url: str) -> Path:
        host = urlsplit(url).netloc.replace(":", "_") or "local"
        return self.lock_dir / f"{host}.lock"

    def _polite_get(self, url: str, raw: bool) -> requests.Response:
        """One request, holding the host's lock, started no earlier than the shared next-slot time."""
        with store.Lock(self._lock_path(url)) as f:  # the file holds the host's next slot
            f.seek(0)
            text = f.read().strip()
            not_before = float(text) if text else 0.0
            if (wait := not_before - time.time()) > 0:
                time.sleep(wait)
            self.requests_made += 1
            try:
                # the body is read inside the lock: one connection at a time
                resp = self._get_whole(url, raw)
            finally:  # the pause counts from the end of this request, so it holds even for slow ones
                self._set_not_before(f, time.time() + self.delay)
            if resp.status_code in (429, 503):
                ra = _retry_after_seconds(resp.headers.get("Retry-After"))
                if ra is not None:  # everyone waits what the server said
                    self._set_not_before(f, time.time() + max(ra, self.delay))
            return resp

    def _get_whole(self, url: str, raw: bool) -> requests.Response:
        """GET and read the whole body within `max_seconds`; `raw`: the bytes as served, undecoded."""
        deadline = time.monotonic() + self.max_seconds
        headers = {"Accept-Encoding": "identity"} if raw else {}
        resp = self.session.get(url, timeout=self.timeout, stream=True, headers=headers, allow_redirects=False)
        chunks = []
        try:
            # read1: whatever has arrived (a fixed-size read would wait out a dripping server)
            while chunk := resp.raw.read1(1 << 16, decode_content=not raw):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise requests.Timeout(f"body not complete after {self.max_seconds:.0f}s")
        except urllib3.exceptions.ReadTimeoutError as e:
            raise requests.Timeout(str(e)) from e
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError) as e:  # cut or broken body
            raise requests.exceptions.ChunkedEncodingError(str(e)) from e
        finally:
            resp.close()
        resp._content, resp._content_consumed = b"".join(chunks), True
        return resp

    @staticmethod
    def _set_not_before(f, t: float) -> None:
        f.seek(0)
        f.truncate()
        f.write(f"{t:.6f}")
        f.flush()

    def get(self, url: str, raw: bool = False, check=None) -> requests.Response:
        """GET `url`; retry transient failures, then raise TransientError. Returns any other response.

        Redirects are followed here, not inside `requests`, so that every hop waits its turn in
        the target host's politeness budget; more than MAX_REDIRECTS raise TooManyRedirects.
        `raw`: keep the body as served (no Content-Encoding decoding), for files we store.
        `check(response)`: why an answer is unusable ('' when it is fine), e.g. a broken page a
        glitching server sends; such an answer is tried again within the same budget of
        `max_retries` (this is the one retry layer: callers do not loop around it), and
        BadResponse is raised when the last try was one.
        """
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._get_retrying(url, raw, check)
            if not resp.is_redirect:
                return resp
            url = urljoin(url, resp.headers["Location"])
        raise requests.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects ({url})")

    def _get_retrying(self, url: str, raw: bool, check=None) -> requests.Response:
        last, unusable = "", False
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._polite_get(url, raw)
            except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                last, unusable = f"{type(e).__name__}: {e}", False
            else:
                if resp.status_code not in RETRY_STATUSES:
                    if check is None or resp.is_redirect or not (problem := check(resp)):
                        return resp
                    last, unusable = problem, True
                    if attempt < self.max_retries:
                        time.sleep(self.backoff * (2 ** attempt) * random.uniform(0.5, 1.5))
                    continue
                last, unusable = f"HTTP {resp.status_code}", False
                ra = _retry_after_seconds(resp.headers.get("Retry-After"))
                if ra is not None:
                    if ra > self.max_retry_after:
                        raise TransientError(f"{last}, Retry-After {ra:.0f}s is too long")
                    continue  # the shared next-slot time already holds the wait
            if attempt < self.max_retries:  # exponential backoff with jitter
                time.sleep(self.backoff * (2 ** attempt) * random.uniform(0.5, 1.5))
        raise (BadResponse if unusable else TransientError)(f"{last} after {self.max_retries + 1} tries")


# --- downloads ------------------------------------------------------------------------------

def download_row(root: Path, dest: Path, status: str, data: bytes | None = None, kind: str = "", error: str = "") -> dict:
    """The download columns of a paper record (crawl and bulk alike) for a file stored at `dest`."""
    return {
        "status": status,
        "path": str(dest.relative_to(root)) if status == "ok" else "",
        "sha256": store.sha256_bytes(data) if data is not None else "",
        "bytes": len(data) if data is not None else 0,
        "kind": kind,
        "error": error,
    }


def download_file(fetcher: PoliteFetcher, url: str, dest: Path, root: Path) -> dict:
    """Fetch `url` to `dest` (atomically) and describe it with the contract's download fields.

    No request is made when `dest` already holds a complete, valid file. Statuses: `ok`;
    `missing` (404/410) and `error` (not a source archive or PDF, other 4xx, a redirect loop) are final;
    `pending` means a transient failure a later run should retry.
    """
    dest, root = Path(dest), Path(root)
    if dest.exists():
        data = dest.read_bytes()
        kind = sniff_kind(data)
        if kind in SOURCE_KINDS and not verify(data, kind):
            return download_row(root, dest, "ok", data, kind)
    try:
        resp = fetcher.get(url, raw=True)
    except TransientError as e:
        return download_row(root, dest, "pending", error=str(e))
    except requests.RequestException as e:  # a redirect loop, a malformed URL: asking again will not help
        return download_row(root, dest, "error", error=f"{type(e).__name__}: {e}")
    if resp.status_code in (404, 410):
        return download_row(root, dest, "missing", error=f"HTTP {resp.status_code}")
    if resp.status_code != 200:
        return download_row(root, dest, "error", error=f"HTTP {resp.status_code}")
    data = resp.content
    kind = sniff_kind(data)
    if kind in ("html", "unknown"):
        return download_row(root, dest, "error", data, kind, f"not a source archive or PDF: got {kind}")
    if kind == "empty":
        return download_row(root, dest, "pending", data, kind, "empty body")
    if problem := verify(data, kind):  # a body cut short is worth another try later; a bomb not
        return download_row(root, dest, "error" if over_limit(problem) else "pending", data, kind, problem)
    store.atomic_write_bytes(dest, data)
    return download_row(root, dest, "ok", data, kind)
