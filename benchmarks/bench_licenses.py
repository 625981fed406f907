"""What a licence harvest costs us per page, beside arXiv's 3 s between requests.

Each ListRecords page (1,000 arXiv-format records with ~1 kB abstracts, as arXiv serves them) is
parsed, merged into the rows in memory and stored as a part file of its own (with the next
token), whatever the table's size; the table is written once, at the end. Both are timed at
several table sizes up to the whole cs set.

    .venv/bin/python benchmarks/bench_licenses.py [--sizes 10000 100000 600000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline.licenses import append_page, merge, parse_page, write_checkpoint
from pipeline.replay.server import _oai_record, oai_response

ABSTRACT = "We study grids of natural images and the figures that hold them. " * 16  # ~1 kB


def fake_page(first: int, n: int = 1000) -> bytes:
    records = [_oai_record({"arxiv_id": f"{2100 + i // 100000}.{i % 100000:05d}", "updated": "2021-03-04T00:00:00",
                            "published": "2021-03-01T00:00:00", "title": ABSTRACT[:80],
                            "categories": ["cs.CV", "cs.LG"], "license": "http://creativecommons.org/licenses/by/4.0/"})
               for i in range(first, first + n)]
    body = "".join(r.replace("</title>", f"</title><abstract>{ABSTRACT}</abstract>") for r in records)
    return oai_response("ListRecords", f'<ListRecords>{body}<resumptionToken completeListSize="600000" '
                                       f'cursor="{first}">{first + n}|1001</resumptionToken></ListRecords>')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 600_000],
                    help="table sizes (records already stored) to time a checkpoint at")
    args = ap.parse_args()
    page = fake_page(0)
    t0 = time.perf_counter()
    for _ in range(5):
        parsed = parse_page(page)
    parse_s = (time.perf_counter() - t0) / 5
    print(f"page: {len(page) / 1e6:.2f} MB, {len(parsed['records'])} records; parse {parse_s * 1e3:.0f} ms")

    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows = {}
            for first in range(0, size, 1000):
                merge(rows, {"records": [dict(r, arxiv_id=f"{first + k:07d}") for k, r in enumerate(parsed["records"])],
                             "deleted": []})
            t0 = time.perf_counter()
            merge(rows, parsed)
            merge_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            append_page(Path(tmp) / "cs.parquet", parsed, {"token": "x", "pages": size // 1000})
            part_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            write_checkpoint(Path(tmp) / "cs.parquet", rows, {"token": None})
            final_s = time.perf_counter() - t0
            print(f"table {len(rows):>7} rows: merge {merge_s * 1e3:5.0f} ms, part {part_s * 1e3:5.0f} ms; "
                  f"page total {(parse_s + merge_s + part_s):.2f} s vs 3 s politeness; "
                  f"the table once at the end {final_s:.2f} s")


if __name__ == "__main__":
    main()
