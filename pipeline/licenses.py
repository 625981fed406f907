"""Every paper's licence in a few hundred requests: an OAI-PMH `ListRecords` harvest of an arXiv set.

The crawl can ask OAI-PMH `GetRecord` for one paper at a time, but at arXiv's pace (one request
per 3 s) that is ~100,000 requests, ~83 hours, for cs.CV 2010-2022. `ListRecords` serves a whole
set (`cs`: every paper with a cs.* category) about 1,000 records a page, each page naming the next
by its `resumptionToken`, so the whole set takes a few hundred requests.

    python -m pipeline.licenses                                  # set cs, from arXiv ($CVF_ARXIV_OAI_URL)
    python -m pipeline.licenses --set cs --from 2024-01-01       # only records changed since then

OAI `from`/`until` select by datestamp, the last change of a record's metadata, NOT by submission
date: a month of submissions cannot be cut out by a date window. So the harvest takes the set
(optionally the changes since a date) and the crawl keeps what matches its papers.

Writes `<root>/licenses/<set>.parquet` (`arxiv_id`, `license` URL or '', `datestamp`, `created`, and
the rest of each record's arXiv metadata: `updated`, `categories` (space-separated, primary first),
`title`, `authors`, `abstract`, `comments`, `journal_ref`, `doi`; `python -m pipeline.bulk` selects
papers from them). Each page is stored as it arrives, as a part file of its own
(`<set>.parts/`, atomically, with the next resumptionToken in its metadata), and the parts are
merged into the table once, at the end: a killed harvest run again merges them and goes on from
its last page. A token the server no longer knows
(`badResumptionToken`: tokens expire) restarts the list from the beginning, keeping the rows; a
record seen twice keeps its newest datestamp; deleted records drop the id. Last,
`<root>/licenses/<set>_stats.json` marks the harvest done (pages, records, seconds, requests);
a rerun with the same arguments then does nothing, another `--from` harvests again over the rows.

The crawl takes each paper's licence from these tables without a request (its `--oai-url` asks
`GetRecord` only for papers no table holds). Shards crawled before the harvest are done and not
crawled again: `--fill-papers` writes the harvested licences into their paper records.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import pyarrow as pa
import pyarrow.parquet as pq
from lxml import etree
from tqdm import tqdm

from model import cli
from pipeline import config, store
from pipeline.contract import LICENSE_SCHEMA
from pipeline.arxiv_api import OAI_NS, strict_xml
from pipeline.fetch import PoliteFetcher, TransientError

log = logging.getLogger("cvf.licenses")

DEFAULT_OAI_URL = "https://oaipmh.arxiv.org/oai"
_TEXT_FIELDS = {"updated": "updated", "categories": "categories", "title": "title", "abstract": "abstract",
                "comments": "comments", "journal_ref": "journal-ref", "doi": "doi"}
_STATE_KEY = b"cvf_harvest"  # Parquet metadata key of the checkpoint: next token, pages, requests, ...


class HarvestError(Exception):
    """The OAI-PMH server answered something other than a page of records (a clear reason inside)."""


def oai_url() -> str:
    return os.environ.get("CVF_ARXIV_OAI_URL", DEFAULT_OAI_URL)


def table_path(root: Path, set_spec: str) -> Path:
    """`<root>/licenses/<set>.parquet` (a set like `cs:cs:CV` becomes `cs_cs_CV`)."""
    return Path(root) / "licenses" / f"{re.sub(r'[^A-Za-z0-9.-]', '_', set_spec)}.parquet"


# --- one page ------------------------------------------------------------------------------------

def parse_page(content: bytes) -> dict:
    """A ListRecords response -> {records, deleted, token, complete_list_size, error: (code, text) | None}.

    `token` is None on the last page (an empty or absent resumptionToken). Raises HarvestError
    for anything that is not an OAI-PMH document.
    """
    try:
        root = strict_xml(content)
    except etree.XMLSyntaxError as e:
        raise HarvestError(f"malformed OAI-PMH XML: {e}") from e
    if root.tag != f"{{{OAI_NS['oai']}}}OAI-PMH":
        raise HarvestError(f"not an OAI-PMH response (root element {root.tag!r})")
    page = {"records": [], "deleted": [], "token": None, "complete_list_size": None, "error": None}
    if (error := root.find("oai:error", OAI_NS)) is not None:
        page["error"] = (error.get("code", ""), (error.text or "").strip())
        return page
    for record in root.iterfind("oai:ListRecords/oai:record", OAI_NS):
        header = record.find("oai:header", OAI_NS)
        identifier = header.findtext("oai:identifier", "", OAI_NS).strip()
        row = {"arxiv_id": identifier.removeprefix("oai:arXiv.org:"),
               "datestamp": header.findtext("oai:datestamp", "", OAI_NS).strip()}
        if header.get("status") == "deleted":
            page["deleted"].append(row)
            continue
        meta = record.find("oai:metadata/arXiv:arXiv", OAI_NS)
        if meta is None:
            raise HarvestError(f"record {identifier} has no arXiv metadata (metadataPrefix=arXiv?)")
        row["arxiv_id"] = meta.findtext("arXiv:id", row["arxiv_id"], OAI_NS).strip()
        row["license"] = meta.findtext("arXiv:license", "", OAI_NS).strip()
        row["created"] = meta.findtext("arXiv:created", "", OAI_NS).strip()
        for column, element in _TEXT_FIELDS.items():
            row[column] = " ".join(meta.findtext(f"arXiv:{element}", "", OAI_NS).split())
        row["authors"] = [" ".join(" ".join(a.findtext(f"arXiv:{part}", "", OAI_NS)
                                            for part in ("forenames", "keyname", "suffix")).split())
                          for a in meta.iterfind("arXiv:authors/arXiv:author", OAI_NS)]
        page["records"].append(row)
    if (token := root.find("oai:ListRecords/oai:resumptionToken", OAI_NS)) is not None:
        page["token"] = (token.text or "").strip() or None
        size = token.get("completeListSize")
        page["complete_list_size"] = int(size) if size and size.isdigit() else None
    return page


def merge(rows: dict[str, dict], page: dict) -> None:
    """Fold a page into `rows` (by id): the newest datestamp wins; a deleted record drops the id."""
    for rec in page["records"]:
        old = rows.get(rec["arxiv_id"])
        if old is None or rec["datestamp"] >= old["datestamp"]:
            rows[rec["arxiv_id"]] = rec
    for gone in page["deleted"]:
        if (old := rows.get(gone["arxiv_id"])) is not None and gone["datestamp"] >= old["datestamp"]:
            del rows[gone["arxiv_id"]]


# --- checkpoints: the table, plus one part file per page harvested since ---------------------------
#
# Each page is appended as its own part file (`<set>.parts/<page>.parquet`, its rows, with the
# harvest's state after it and the page's deleted ids in the file's metadata), so storing a page
# costs what the page holds, not what the table holds. The parts are merged into the table once,
# at the end of a harvest (and when a stopped one is taken up again).

def parts_dir(path: Path) -> Path:
    return path.with_suffix(".parts")


def _part_state(table: pa.Table) -> dict:
    return json.loads((table.schema.metadata or {}).get(_STATE_KEY, b"{}"))


def read_checkpoint(path: Path) -> tuple[dict[str, dict], dict]:
    """The rows a harvest stored (the table with its parts folded in, in page order) and its
    state ({} when nothing is stored)."""
    rows, state = {}, {}
    if path.exists():
        table = pq.read_table(path)
        state = _part_state(table)
        rows = {r["arxiv_id"]: r for r in table.to_pylist()}
    for part in sorted(parts_dir(path).glob("*.parquet")):
        table = pq.read_table(part)
        meta = _part_state(table)
        merge(rows, {"records": table.to_pylist(), "deleted": meta.pop("deleted_ids", [])})
        state = meta
    return rows, state


def write_checkpoint(path: Path, rows: dict[str, dict], state: dict) -> None:
    """Write the whole table (with the harvest's state) and drop the parts it now holds."""
    schema = LICENSE_SCHEMA.with_metadata({_STATE_KEY: json.dumps(state).encode()})
    store.write_rows(path, sorted(rows.values(), key=lambda r: r["arxiv_id"]), schema)
    for part in sorted(parts_dir(path).glob("*.parquet")):  # folding one in again would change nothing
        part.unlink()


def append_page(path: Path, page: dict, state: dict) -> None:
    """Store one harvested page as a part file, with the state after it."""
    meta = dict(state, deleted_ids=[{"arxiv_id": d["arxiv_id"], "datestamp": d["datestamp"]} for d in page["deleted"]])
    schema = LICENSE_SCHEMA.with_metadata({_STATE_KEY: json.dumps(meta).encode()})
    store.write_rows(parts_dir(path) / f"{state['pages']:07d}.parquet", page["records"], schema)


# --- the harvest -----------------------------------------------------------------------------------

def harvest(url: str, root: Path, fetcher: PoliteFetcher, *, set_spec: str = "cs", from_date: str | None = None,
            max_restarts: int = 3, progress: bool = False) -> dict:
    """Harvest `set_spec` (records changed since `from_date`, YYYY-MM-DD, when given) into
    `licenses/<set>.parquet`, resuming a harvest left unfinished; return its stats.

    Raises HarvestError (an OAI error, malformed XML, HTTP 4xx, too many expired tokens) and
    TransientError (the server kept failing); the pages stored so far stay, so a rerun goes on.
    """
    root = Path(root)
    path = table_path(root, set_spec)
    folder, name = path.parent, path.stem
    params = {"set": set_spec, "from": from_date, "metadataPrefix": "arXiv"}
    done = store.read_stats(folder, name)
    if done and done["params"] == params and path.exists():
        return done
    for tmp in [*folder.glob(f".{path.name}.*.tmp"), *parts_dir(path).glob(".*.tmp")]:
        tmp.unlink(missing_ok=True)  # half-written by a killed run (one harvest per set at a time)
    rows, state = read_checkpoint(path)
    if any(parts_dir(path).glob("*.parquet")):  # a stopped harvest's pages: merged once, now
        write_checkpoint(path, rows, state)
    if done or state.get("params") != params:  # a new harvest over the rows stored (e.g. a later --from)
        state = {"params": params, "token": None, "pages": 0, "requests": 0, "seconds": 0.0, "restarts": 0,
                 "deleted": 0, "complete_list_size": None}
        store.stats_path(folder, name).unlink(missing_ok=True)
    first = url + "?" + urlencode({"verb": "ListRecords", "metadataPrefix": "arXiv", "set": set_spec}
                                  | ({"from": from_date} if from_date else {}))
    # requests and seconds count every run of this harvest: earlier runs' plus this one's
    t0, seconds0, requests0 = time.time(), state["seconds"], state["requests"] - fetcher.requests_made
    bar = tqdm(desc=f"ListRecords set={set_spec}", unit="record", total=state["complete_list_size"],
               disable=not progress)
    bar.update(len(rows))

    def account() -> None:
        state.update(requests=requests0 + fetcher.requests_made, seconds=round(seconds0 + time.time() - t0, 3))

    restarts = 0  # in this run: a server whose tokens expire faster than we page must not loop forever
    # a run stopped after storing the last page but before its stats: nothing is left to ask
    listed_to_the_end = state["pages"] > 0 and state["token"] is None
    try:
        while not listed_to_the_end:
            page_url = url + "?" + urlencode({"verb": "ListRecords", "resumptionToken": state["token"]}) \
                if state["token"] else first
            resp = fetcher.get(page_url)  # politeness, Retry-After on 503, retries: TransientError at last
            if resp.status_code != 200:
                raise HarvestError(f"OAI-PMH answered HTTP {resp.status_code} ({page_url})")
            try:
                page = parse_page(resp.content)
            except HarvestError as e:
                raise HarvestError(f"{e} ({page_url})") from None
            code, text = page["error"] or ("", "")
            if code == "badResumptionToken":  # expired: list again from the start, keeping the rows
                if restarts >= max_restarts:
                    raise HarvestError(f"badResumptionToken after {max_restarts} restarts of the list: {text}")
                log.warning("resumptionToken expired (%s); restarting the list, keeping %d rows", text, len(rows))
                restarts += 1
                state.update(token=None, restarts=state["restarts"] + 1)
                continue
            if code == "noRecordsMatch":  # an empty list is an answer, not a failure
                state["token"] = None
                break
            if code:
                raise HarvestError(f"OAI-PMH error {code}: {text or 'no message'} ({page_url})")
            merge(rows, page)
            state.update(token=page["token"], pages=state["pages"] + 1, deleted=state["deleted"] + len(page["deleted"]),
                         complete_list_size=page["complete_list_size"] or state["complete_list_size"])
            account()
            append_page(path, page, state)
            bar.total = state["complete_list_size"]
            bar.update(len(page["records"]) + len(page["deleted"]))
            bar.set_postfix(pages=state["pages"], stored=len(rows))
            if state["token"] is None:
                break
    finally:
        bar.close()
    account()
    write_checkpoint(path, rows, state)  # the parts merged once; also for an empty list: the table, no rows
    stats = {"set": set_spec, "params": params, "records": len(rows), "pages": state["pages"],
             "deleted": state["deleted"], "restarts": state["restarts"],
             "complete_list_size": state["complete_list_size"], "requests": state["requests"],
             "seconds": state["seconds"], "done": True}
    store.write_stats(folder, name, stats)
    return stats


# Licences under which a paper's figures may be shown again elsewhere (a contact sheet of the
# dataset card): Creative Commons BY and BY-SA (any version), CC0 and the public-domain mark.
# arXiv's own non-exclusive licence, NC and ND variants and "not collected" do not qualify.
_REDISTRIBUTABLE = re.compile(
    r"^https?://(www\.)?creativecommons\.org/(licenses/(by|by-sa)/[\d.]+|publicdomain/(zero/[\d.]+|mark/[\d.]+))/?$",
    re.IGNORECASE)


def allows_redistribution(license_url: str | None) -> bool:
    """Whether a paper licence URL (as arXiv states it) lets its figures be redistributed:
    CC BY, CC BY-SA, CC0 or public domain (attribution kept); no for anything else."""
    return bool(license_url) and bool(_REDISTRIBUTABLE.match(license_url.strip()))


def licenses_for(root: Path, arxiv_ids: list[str]) -> dict[str, str]:
    """The harvested licence ('' = none stated) of each of `arxiv_ids` found in `licenses/*.parquet`
    (finished or not); ids no table holds are absent. Newest datestamp wins across tables."""
    found: dict[str, tuple[str, str]] = {}
    wanted = sorted(set(arxiv_ids))
    folder = Path(root) / "licenses"  # the tables, and the pages of a harvest still running
    for path in [*sorted(folder.glob("*.parquet")), *sorted(folder.glob("*.parts/*.parquet"))] if wanted else []:
        table = pq.read_table(path, columns=["arxiv_id", "license", "datestamp"],
                              filters=[("arxiv_id", "in", wanted)])
        for r in table.to_pylist():
            if r["arxiv_id"] not in found or r["datestamp"] > found[r["arxiv_id"]][1]:
                found[r["arxiv_id"]] = (r["license"], r["datestamp"])
    return {i: lic for i, (lic, _) in found.items()}


def fill_paper_licenses(root: Path) -> dict[str, int]:
    """Write the harvested licences into the `license` column of every done crawl shard
    (`papers/<shard>.parquet` with its stats). Returns {shard: papers changed}, changed shards only.

    Only done shards: an open one belongs to a crawl that may be writing it, and takes the
    licences from the tables itself when it runs again.
    """
    changed = {}
    for path in sorted((Path(root) / "papers").glob("*.parquet")):
        if not store.shard_done(path.parent, path.stem):
            continue
        table = pq.read_table(path)
        ids, old = table.column("arxiv_id").to_pylist(), table.column("license").to_pylist()
        harvested = licenses_for(root, ids)
        new = [harvested.get(i, lic) for i, lic in zip(ids, old)]
        if n := sum(a != b for a, b in zip(old, new)):
            column = table.schema.get_field_index("license")
            store.atomic_write_parquet(path, table.set_column(column, "license", pa.array(new, pa.string())))
            changed[path.stem] = n
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.licenses", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="set_spec", default="cs",
                    help="OAI-PMH set: an arXiv archive, e.g. cs (every paper with a cs.* category; default)")
    ap.add_argument("--from", dest="from_date", metavar="YYYY-MM-DD",
                    help="only records whose metadata changed on or after this day (default: the whole set)")
    ap.add_argument("--oai-url", help=f"OAI-PMH base URL (default $CVF_ARXIV_OAI_URL or {DEFAULT_OAI_URL})")
    ap.add_argument("--root", "--data", dest="data", metavar="ROOT", type=cli.writable_dir,
                    help="dataset root (default $CVF_DATA or ./data)")
    ap.add_argument("--delay", type=cli.non_negative_float, help=f"seconds between requests to a host (default $CVF_ARXIV_DELAY "
                                                f"or {config.DEFAULT_DELAY})")
    ap.add_argument("--timeout", type=cli.positive_float, default=120.0, help="per-request timeout in seconds (default 120)")
    ap.add_argument("--retries", type=cli.non_negative_int, default=4, help="retries of a failing request (default 4)")
    ap.add_argument("--fill-papers", action="store_true",
                    help="after the harvest, write the licences into the paper records of done crawl shards")
    args = ap.parse_args(argv)
    if args.from_date and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", args.from_date):
        ap.error(f"--from wants YYYY-MM-DD, got {args.from_date!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    root = config.data_root(args.data)
    fetcher = PoliteFetcher(config.arxiv_delay() if args.delay is None else args.delay, root / ".politeness",
                            timeout=args.timeout, max_retries=args.retries)
    try:
        stats = harvest(args.oai_url or oai_url(), root, fetcher, set_spec=args.set_spec, from_date=args.from_date,
                        progress=True)
    except (HarvestError, TransientError) as e:
        print(f"error: {e}\nthe pages harvested so far are kept in {table_path(root, args.set_spec)}; "
              "rerun the same command to go on", file=sys.stderr)
        return 1
    print(f"{stats['records']} licences of set {args.set_spec} in {table_path(root, args.set_spec)} "
          f"({stats['pages']} pages, {stats['requests']} requests, {stats['seconds']:.0f} s)")
    if args.fill_papers:
        changed = fill_paper_licenses(root)
        print(f"licences filled in {sum(changed.values())} paper records of {len(changed)} done shards"
              + (f": {' '.join(changed)}" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
