"""Paper metadata from the arXiv API through the `arxiv` package, made robust for a long crawl.

`arxiv` 4.x has no request timeout (a stalled server hangs it forever), does not retry read
timeouts, and takes an empty first page (a known arXiv glitch) or a broken feed for "no
results", so a whole month can silently go missing. `ArxivAPI` keeps the package's paging and
Atom parsing but sends every request through our `PoliteFetcher` (timeouts, retries,
Retry-After, the politeness budget shared with the downloads) and refuses any page that is
empty while `opensearch:totalResults` says results remain, or that is not well-formed Atom.

OAI-PMH (`fetch_license`) adds what the Atom API lacks: the paper's licence.
"""
from __future__ import annotations

import calendar
from datetime import datetime, timedelta

import arxiv
from arxiv import _feed  # the package's own Atom parser (private, stable across 4.x)
from lxml import etree

from pipeline.fetch import BadResponse, PoliteFetcher
from pipeline.shards import parse_month


class MetadataError(Exception):
    """The API kept failing or kept serving bad pages for a query; retry the shard later."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status when the API refused the query (403: we are blocked)


class ArxivAPI(arxiv.Client):
    """An `arxiv.Client` that talks to `api_url` (arXiv or the replay) through a PoliteFetcher."""

    def __init__(self, fetcher: PoliteFetcher, api_url: str, page_size: int = 2000):
        # The fetcher enforces the delay and is the one retry layer (its `max_retries`); the
        # package's own (per-instance, per-process) sleep and retries are off.
        super().__init__(page_size=min(page_size, 2000), delay_seconds=0, num_retries=0)
        self.query_url_format = api_url + "?{}"
        self.fetcher = fetcher
        self.last_total: int | None = None  # totalResults of the last first page

    def _parse_feed(self, url: str, first_page: bool = True, _try_index: int = 0) -> _feed.ParsedFeed:
        parsed: dict[str, _feed.ParsedFeed] = {}

        def problem(resp) -> str:
            """Why a 200 answer is no usable page ('' when it is one; other statuses are answers)."""
            if resp.status_code != 200:
                return ""
            try:  # strict parse first: the package's parser recovers silently from broken XML
                root = strict_xml(resp.content)
            except etree.XMLSyntaxError as e:
                return f"malformed Atom: {e}"
            if _api_error(root):  # a wrong query: asking again will not help
                return ""
            if why := _not_a_usable_feed(root):
                return why
            try:
                feed = _feed.parse(resp.content)
            except (ValueError, TypeError) as e:  # well-formed, but a value the package cannot read (a date)
                return f"malformed Atom: {e}"
            # the package drops an entry without its id or dates, and paging on what it kept would
            # re-fetch a neighbour in its place: the paper would vanish while the count adds up
            if (entries := len(root.findall(f"{_ATOM}entry"))) != len(feed.results):
                return f"malformed Atom: {entries - len(feed.results)} of {entries} entries lack an id or a date"
            if not feed.results and (not first_page or feed.header.total_results > feed.header.start_index):
                return f"empty page at start={feed.header.start_index} while totalResults={feed.header.total_results}"
            parsed["feed"] = feed
            return ""

        try:
            resp = self.fetcher.get(url, check=problem)  # TransientError when the server kept failing
        except BadResponse as e:
            raise MetadataError(f"{e} ({url})") from None
        if "feed" not in parsed:
            # arXiv reports a wrong query as an Atom entry (with HTTP 400)
            try:
                error = _api_error(strict_xml(resp.content))
            except etree.XMLSyntaxError:
                error = ""
            raise MetadataError(f"API answered HTTP {resp.status_code}{': ' + error if error else ''} ({url})",
                                resp.status_code)
        if first_page:
            self.last_total = parsed["feed"].header.total_results
        return parsed["feed"]


_ATOM = "{http://www.w3.org/2005/Atom}"
_OPENSEARCH = "{http://a9.com/-/spec/opensearch/1.1/}"


def strict_xml(content: bytes) -> etree._Element:
    return etree.fromstring(content, etree.XMLParser(resolve_entities=False, no_network=True))


def _not_a_usable_feed(root: etree._Element) -> str:
    """Why a well-formed document is no API page ('' when it is one). Without `totalResults` the
    package stops after one page, and any other document reads as "no results"."""
    if root.tag != f"{_ATOM}feed":
        return f"not an Atom feed: the document is <{etree.QName(root).localname}>"
    if root.find(f"{_OPENSEARCH}totalResults") is None:
        return "malformed Atom: no opensearch:totalResults"
    return ""


def _api_error(root: etree._Element) -> str:
    """The message of an arXiv API error feed (an entry whose id is under /api/errors), else ''."""
    for entry in root.iter(f"{_ATOM}entry"):
        if "/api/errors" in (entry.findtext(f"{_ATOM}id") or ""):
            return (entry.findtext(f"{_ATOM}summary") or "unspecified").strip()
    return ""


MAX_DEPTH = 30000  # the API serves no result of one query past this many ("refine the query")


def window_query(category: str, first: datetime, last: datetime) -> str:
    """`cat:cs.CV AND submittedDate:[202101010000 TO 202101312359]`: both ends inclusive, to the minute (UTC)."""
    return f"cat:{category} AND submittedDate:[{first:%Y%m%d%H%M} TO {last:%Y%m%d%H%M}]"


def month_window(month: str) -> tuple[datetime, datetime]:
    """The first and the last minute of a month shard."""
    year, mon = parse_month(month)
    return datetime(year, mon, 1), datetime(year, mon, calendar.monthrange(year, mon)[1], 23, 59)


def month_query(category: str, month: str) -> str:
    return window_query(category, *month_window(month))


def search_window(api: ArxivAPI, category: str, first: datetime, last: datetime,
                  max_depth: int = MAX_DEPTH) -> list[arxiv.Result]:
    """Every paper listed in `category` submitted from `first` to `last` (minutes, inclusive).

    A window holding more than the API's depth cap is listed as two halves instead.
    """
    search = arxiv.Search(query=window_query(category, first, last), max_results=None,
                          sort_by=arxiv.SortCriterion.SubmittedDate, sort_order=arxiv.SortOrder.Ascending)
    api.last_total = None
    results = api.results(search)
    head = next(results, None)  # fetches the first page, which says how many there are
    total = api.last_total or 0
    if total > max_depth and last > first:
        middle = first + (last - first) // 2
        middle -= timedelta(seconds=middle.second, microseconds=middle.microsecond)
        return (search_window(api, category, first, middle, max_depth)
                + search_window(api, category, middle + timedelta(minutes=1), last, max_depth))
    listed = ([head] if head is not None else []) + list(results)
    if len(listed) < total:
        raise MetadataError(f"{window_query(category, first, last)}: got {len(listed)} of {total} results")
    return listed


def search_month(api: ArxivAPI, category: str, month: str, max_depth: int = MAX_DEPTH) -> list[arxiv.Result]:
    """Every paper listed in `category` (primary or cross-listed) submitted in `month`."""
    return search_window(api, category, *month_window(month), max_depth=max_depth)


def split_id(short_id: str) -> tuple[str, int]:
    """'2101.00001v2' -> ('2101.00001', 2)."""
    base, _, version = short_id.rpartition("v")
    return (base, int(version)) if base and version.isdigit() else (short_id, 1)


def paper_record(result: arxiv.Result) -> dict:
    """The metadata columns of the contract's paper record."""
    arxiv_id, version = split_id(result.get_short_id())
    return {
        "arxiv_id": arxiv_id,
        "version": version,
        "title": result.title,
        "authors": [a.name for a in result.authors],
        "summary": result.summary,
        "published": result.published,
        "updated": result.updated,
        "primary_category": result.primary_category,
        "categories": list(result.categories),
        "license": "",
        "doi": result.doi or "",
        "journal_ref": result.journal_ref or "",
        "comment": result.comment or "",
    }


OAI_NS = {"oai": "http://www.openarchives.org/OAI/2.0/", "arXiv": "http://arxiv.org/OAI/arXiv/"}


def fetch_license(fetcher: PoliteFetcher, oai_url: str, arxiv_id: str) -> str:
    """The licence URL arXiv's OAI-PMH interface gives for `arxiv_id` ('' when none is stated)."""
    resp = fetcher.get(f"{oai_url}?verb=GetRecord&identifier=oai:arXiv.org:{arxiv_id}&metadataPrefix=arXiv")
    if resp.status_code != 200:
        raise MetadataError(f"OAI-PMH answered HTTP {resp.status_code} for {arxiv_id}")
    try:
        root = strict_xml(resp.content)
    except etree.XMLSyntaxError as e:
        raise MetadataError(f"OAI-PMH answer for {arxiv_id} is not XML: {e}") from e
    lic = root.find(".//arXiv:license", OAI_NS)
    return (lic.text or "").strip() if lic is not None else ""

