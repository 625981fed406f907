"""PDF fallback speed (pages/s) and quality on ../shared/testdata/pdfs.

    .venv/bin/python benchmarks/bench_pdffigures.py [--dpi 150] [--skip-eval]

Two timings, one process, one core: finding regions only (layout analysis), and the full
`extract_pdf_figures` (layout + rendering + PNG encoding + atomic writes). Then the
evaluation of `pipeline.pdffigures_eval` (box precision/recall at IoU >= 0.8 where ground
truth exists, figure-number recall per paper).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pymupdf
from tqdm import tqdm

from pipeline.config import shared_testdata
from pipeline.pdffigures import extract_pdf_figures, find_figure_regions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pdfs", type=Path, default=shared_testdata() / "pdfs")
    ap.add_argument("--dpi", type=int, default=150)
    ap.add_argument("--skip-eval", action="store_true")
    args = ap.parse_args()
    pdfs = sorted(args.pdfs.glob("*.pdf"))
    pages = sum(pymupdf.open(p).page_count for p in pdfs)

    t0 = time.perf_counter()
    n_regions = 0
    for pdf in tqdm(pdfs, desc="find regions"):
        with pymupdf.open(pdf) as doc:
            n_regions += len(find_figure_regions(doc))
    find_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_ok = n_bytes = 0
    with tempfile.TemporaryDirectory() as tmp:
        for pdf in tqdm(pdfs, desc=f"extract @ {args.dpi} dpi"):
            records = extract_pdf_figures(pdf, Path(tmp) / pdf.stem, dpi=args.dpi)
            n_ok += sum(r["status"] == "ok" for r in records)
            n_bytes += sum(Path(r["png_path"]).stat().st_size for r in records if r["status"] == "ok")
    extract_s = time.perf_counter() - t0

    print(f"{len(pdfs)} PDFs, {pages} pages")
    print(f"find regions : {find_s:6.1f} s  {pages / find_s:6.1f} pages/s  ({n_regions} figure+table regions)")
    print(f"extract      : {extract_s:6.1f} s  {pages / extract_s:6.1f} pages/s  "
          f"({n_ok} figure PNGs, {n_bytes / 1e6:.1f} MB at {args.dpi} dpi)")
    if not args.skip_eval:
        from pipeline.pdffigures_eval import main as eval_main

        eval_main([])


if __name__ == "__main__":
    main()
