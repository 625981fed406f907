"""Which version of an arXiv paper to rebuild from: version dates and the order to try them in.

The official CVF index names files as they were in the papers' sources in early 2022 (its ids
go up to 2202.x); a paper revised since may have renamed or dropped a figure. So a rebuild
tries the version that was current on a cutoff date (2022-03-01 for CVF) first, then the
others, nearest in time first.

Version dates come from the arXiv metadata snapshot (Kaggle's `arxiv-metadata-oai-snapshot.json`,
JSON lines with `id` and `versions: [{"version": "v1", "created": "Mon, 2 Apr 2007 19:18:42 GMT"}]`)
or from the Atom API: `id_list=<id>` names the latest version and its date (`updated`), and
`id_list=<id>v1,<id>v2` gives each version's own date; ids are asked for in batches.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

from lxml import etree

from pipeline.arxiv_api import _ATOM, MetadataError, split_id, strict_xml

CVF_CUTOFF = datetime(2022, 3, 1, tzinfo=timezone.utc)  # the CVF index's sources: early 2022
API_BATCH = 100  # ids per API request (arXiv answers id_list queries of this size in one page)

# {paper_id: [(version number, created), ...]} sorted by version
VersionDates = dict[str, list[tuple[int, datetime]]]


def parse_cutoff(value: str) -> datetime | None:
    """`--version`: `cvf` (2022-03-01), `latest` (None: no search), or a date YYYY-MM-DD."""
    if value == "latest":
        return None
    if value == "cvf":
        return CVF_CUTOFF
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"--version {value!r}: want cvf, latest or a date YYYY-MM-DD") from None


def _snapshot_dates(versions, where: str) -> list[tuple[int, datetime]]:
    if not isinstance(versions, list) or not versions:
        raise ValueError(f"{where}: no `versions` list")
    out = []
    for v in versions:
        try:
            number = int(str(v["version"]).lstrip("v"))
            created = parsedate_to_datetime(v["created"])
        except (TypeError, KeyError, ValueError, IndexError):
            raise ValueError(f"{where}: bad version entry {v!r}") from None
        out.append((number, created if created.tzinfo else created.replace(tzinfo=timezone.utc)))
    return sorted(out)


_SNAPSHOT_ID = re.compile(r'"id"\s*:\s*"([^"]+)"')


def read_snapshot(path: str | Path, wanted: set[str]) -> VersionDates:
    """Version dates of the `wanted` papers from a metadata snapshot (JSON lines). The file is
    streamed (the real one is ~4 GB) and only the wanted papers' lines are parsed; a malformed
    line of a wanted paper is a ValueError naming the line."""
    found: VersionDates = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            m = _SNAPSHOT_ID.search(line[:200])
            if not line.strip() or (m and m.group(1) not in wanted):
                continue
            where = f"{path}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not a JSON line ({e.msg})") from None
            if not isinstance(record, dict) or "id" not in record:
                raise ValueError(f"{where}: not a snapshot record (no `id`)")
            if record["id"] in wanted:
                found[record["id"]] = _snapshot_dates(record.get("versions"), where)
    return found


def _entries(content: bytes) -> list[tuple[str, int, datetime]]:
    """(paper_id, version, updated) of every entry of an Atom page."""
    try:
        root = strict_xml(content)
    except etree.XMLSyntaxError as e:
        raise MetadataError(f"malformed Atom: {e}") from None
    out = []
    for entry in root.iter(f"{_ATOM}entry"):
        url, updated = entry.findtext(f"{_ATOM}id") or "", entry.findtext(f"{_ATOM}updated") or ""
        if "/api/errors" in url:
            raise MetadataError(f"API error: {(entry.findtext(f'{_ATOM}summary') or '').strip()}")
        paper_id, version = split_id(url.rsplit("/abs/", 1)[-1])
        try:
            when = datetime.fromisoformat(updated.replace("Z", "+00:00"))
        except ValueError:
            raise MetadataError(f"malformed Atom: entry {url!r} has no date") from None
        out.append((paper_id, version, when))
    return out


def _ask(fetcher, api_url: str, ids: list[str]) -> list[tuple[str, int, datetime]]:
    resp = fetcher.get(f"{api_url}?id_list={','.join(ids)}&max_results={len(ids)}")
    if resp.status_code != 200:
        raise MetadataError(f"API answered HTTP {resp.status_code} for id_list of {len(ids)} ids")
    return _entries(resp.content)


def api_dates(fetcher, api_url: str, paper_ids: list[str], cutoff: datetime) -> VersionDates:
    """Version dates from the Atom API. The dates of a paper's earlier versions are asked for
    only when its latest version is newer than `cutoff` (else the latest is the one wanted).
    Raises MetadataError or pipeline.fetch.TransientError when the API cannot answer."""
    latest: dict[str, tuple[int, datetime]] = {}
    for i in range(0, len(paper_ids), API_BATCH):
        for paper_id, version, when in _ask(fetcher, api_url, paper_ids[i:i + API_BATCH]):
            latest[paper_id] = (version, when)
    dates: VersionDates = {p: [v] for p, v in latest.items()}
    older = [f"{p}v{n}" for p, (last, when) in latest.items() if when > cutoff for n in range(1, last)]
    for i in range(0, len(older), API_BATCH):
        for paper_id, version, when in _ask(fetcher, api_url, older[i:i + API_BATCH]):
            if paper_id in dates and version != dates[paper_id][-1][0]:
                dates[paper_id].append((version, when))
    return {p: sorted(v) for p, v in dates.items()}


def try_order(dates: list[tuple[int, datetime]], cutoff: datetime) -> list[int]:
    """Version numbers in the order to try: the one current on `cutoff` (the newest created by
    then; the first version if none was), then the others, nearest to `cutoff` in time first."""
    if not dates:
        return []
    current = max((d for d in dates if d[1] <= cutoff), default=dates[0])
    return [n for n, _ in sorted(dates, key=lambda d: (d != current, abs((d[1] - cutoff).total_seconds())))]
