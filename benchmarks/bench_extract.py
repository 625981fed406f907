"""Figures per second per core: our extraction + rendering vs the official CVF approach.

Both sides run sequentially in one process (one core), over the single-page figure files of
the real e-prints in ../shared/testdata/eprints, and must produce the same output sizes:

  ours      read the e-print in memory (pipeline.archive), render each figure straight to its
            final size (pipeline.render, PyMuPDF / Pillow; MediaBox, as poppler), write the PNG
  official  unpack the tarball to disk, pdf2image (poppler's pdftoppm) at 200 DPI, Pillow
            convert("RGB") + thumbnail(1024), write the PNG

    .venv/bin/python benchmarks/bench_extract.py [--repeat 1]

CPU time counts child processes (pdftoppm) too. Peak memory is the largest resident set of
this process or any child so far: "ours" runs first, so its figure is ours alone.
"""
from __future__ import annotations

import argparse
import os
import resource
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

from pipeline.archive import read_eprint
from pipeline.config import shared_testdata
from pipeline.naming import cvf_name, figure_format, output_name
from pipeline.render import RenderOptions, render_to_png


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def single_page_figures(eprints: list[Path]) -> list[tuple[Path, str]]:
    """(e-print, member path) of every png/pdf figure file that is one page (what CVF kept)."""
    import pymupdf

    out = []
    for eprint in eprints:
        _, members = read_eprint(eprint, lambda p: figure_format(p) in ("png", "pdf"))
        for m in members:
            if m.data is None:
                continue
            if figure_format(m.path) == "pdf":
                with pymupdf.open(stream=m.data, filetype="pdf") as doc:
                    if doc.page_count != 1:
                        continue
            out.append((eprint, m.path))
    return out


def ours(eprints: list[Path], wanted: set[tuple[str, str]], out: Path) -> dict[str, tuple]:
    sizes = {}
    options = RenderOptions(box="media")  # poppler's page box, so the sizes can match
    for eprint in eprints:
        paper_id = eprint.name[: -len(".tar.gz")]
        _, members = read_eprint(eprint, lambda p: (str(eprint), p) in wanted)
        for m in members:
            if m.data is None:
                continue
            name = output_name(paper_id, cvf_name(m.path))
            result = render_to_png(m.data, figure_format(m.path), out / paper_id / name, options)
            sizes[f"{paper_id}/{name}"] = (result["width"], result["height"])
    return sizes


def official(eprints: list[Path], wanted: set[tuple[str, str]], out: Path) -> dict[str, tuple]:
    from pdf2image import convert_from_path

    sizes = {}
    for eprint in eprints:
        paper_id = eprint.name[: -len(".tar.gz")]
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(eprint) as tar:
            tar.extractall(tmp, filter="data")
            for _, path in sorted(w for w in wanted if w[0] == str(eprint)):
                name = output_name(paper_id, cvf_name(path))
                if path.lower().endswith(".pdf"):
                    img = convert_from_path(Path(tmp) / path, dpi=200)[0]
                else:
                    img = Image.open(Path(tmp) / path)
                img = img.convert("RGB")
                img.thumbnail((1024, 1024))
                (out / paper_id).mkdir(parents=True, exist_ok=True)
                img.save(out / paper_id / name)
                sizes[f"{paper_id}/{name}"] = img.size
    return sizes


def timed(fn, *args) -> tuple[dict, float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args)
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eprints", default=str(shared_testdata() / "eprints"),
                        help="folder of <arxiv_id>.tar.gz e-prints")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side (best is kept)")
    args = parser.parse_args()
    eprints = sorted(Path(args.eprints).glob("*.tar.gz"))
    wanted = {(str(e), p) for e, p in single_page_figures(eprints)}
    print(f"{len(wanted)} single-page figure files from {len(eprints)} e-prints")
    results = {}
    for label, fn in (("ours", ours), ("official", official)):
        best = None
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as out:
                run = timed(fn, eprints, wanted, Path(out))
            best = run if best is None or run[1] < best[1] else best
        results[label] = best
        sizes, wall, cpu = best
        rss = max(resource.getrusage(who).ru_maxrss for who in
                  (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
        print(f"{label:9s} {len(sizes)} figures in {wall:6.1f} s wall, {cpu:6.1f} s CPU: "
              f"{len(sizes) / wall:5.2f} figures/s/core (wall), {len(sizes) / cpu:5.2f} per CPU-s, "
              f"peak RSS so far {rss:.0f} MiB")
    ours_sizes, official_sizes = results["ours"][0], results["official"][0]
    differ = {k: (ours_sizes.get(k), v) for k, v in official_sizes.items() if ours_sizes.get(k) != v}
    print(f"same output sizes for {len(official_sizes) - len(differ)}/{len(official_sizes)} figures"
          + "".join(f"\n  differs: {k} ours {a} official {b}" for k, (a, b) in differ.items()))
    print(f"speed-up: {results['official'][1] / results['ours'][1]:.1f}x wall, "
          f"{results['official'][2] / results['ours'][2]:.1f}x CPU")


if __name__ == "__main__":
    main()
