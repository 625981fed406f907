"""Papers per second for the crawl (metadata + e-print, + PDF where the e-print is no source)
against the local replay, delay 0.

Shows the crawler's own overhead next to arXiv's politeness: at CVF_ARXIV_DELAY=3 each paper
costs at least one download, >= 3 s, so anything well above 0.33 papers/s here is negligible.

    .venv/bin/python benchmarks/bench_crawl.py --papers 60 --months 2021-01 2021-02
    .venv/bin/python benchmarks/bench_crawl.py --pdfs all     # every PDF, as before --pdfs auto
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline.crawl import PDF_MODES, crawl_shard, make_fetcher
from pipeline.replay.corpus import generate_corpus
from pipeline.replay.server import Replay, ReplayServer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--papers", type=int, default=60, help="papers in the generated corpus")
    ap.add_argument("--months", nargs="+", default=["2021-01", "2021-02"])
    ap.add_argument("--pdfs", choices=PDF_MODES, default="auto", help="when the crawl fetches a PDF (default auto)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        corpus = generate_corpus(tmp / "corpus", args.papers, args.months)
        print(f"generated {args.papers} papers in {time.perf_counter() - t0:.1f} s")
        with ReplayServer(Replay(corpus)) as server:
            e = server.endpoints()
            root = tmp / "data"
            fetcher = make_fetcher(root, delay=0)
            t0 = time.perf_counter()
            stats = [crawl_shard(m, root, fetcher, api_url=e["CVF_ARXIV_API_URL"], eprint_url=e["CVF_ARXIV_EPRINT_URL"],
                                 pdf_url=e["CVF_ARXIV_PDF_URL"], pdfs=args.pdfs) for m in args.months]
            seconds = time.perf_counter() - t0
            papers = sum(s["papers"] for s in stats)
            mb = sum(s["bytes"] for s in stats) / 1e6
            print(f"cold crawl: {papers} papers, {fetcher.requests_made} requests, {mb:.1f} MB in {seconds:.2f} s "
                  f"= {papers / seconds:.1f} papers/s ({1000 * seconds / papers:.0f} ms per paper)")
            for m in args.months:  # reopen every shard: re-list, verify stored files, fetch nothing
                (root / "papers" / f"{m}_stats.json").unlink()
            n0, t0 = fetcher.requests_made, time.perf_counter()
            for m in args.months:
                crawl_shard(m, root, fetcher, api_url=e["CVF_ARXIV_API_URL"], eprint_url=e["CVF_ARXIV_EPRINT_URL"],
                            pdf_url=e["CVF_ARXIV_PDF_URL"], pdfs=args.pdfs)
            seconds = time.perf_counter() - t0
            print(f"resume of open shards (verify, no refetch): {papers / seconds:.1f} papers/s, "
                  f"{fetcher.requests_made - n0} requests")


if __name__ == "__main__":
    main()
