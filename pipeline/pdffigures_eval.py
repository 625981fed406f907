"""How well the PDF fallback finds figures, against the ground truth in shared/testdata.

Three kinds of truth exist for the PDFs in `testdata/pdfs`:

* boxes: DeepFigures' expected output for `pdffigures1_looking_beyond_text.pdf` (pixels at
  100 DPI, 0-based pages; figures and tables) and DocBank's figure box for page index 3 of
  `docbank_1805.05760_cataracts_black.pdf` (points; the outer box, the nested ones are panels).
  Scored as precision/recall at box IoU >= 0.8, PDFFigures 2.0's criterion, on the
  annotated pages only.
* pdffigures2's unit-test expectations (type, number, page; no boxes).
* for every paper, the figure numbers its text names (`Figure 3`, `Fig. 3`): recall of those
  numbers among the regions found.

    python -m pipeline.pdffigures_eval            # prints the tables below
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pymupdf

from model import cli
from pipeline.config import shared_testdata
from pipeline.pdffigures import FIGURE_MENTION_RE, Region, find_figure_regions

IOU_MATCH = 0.8


@dataclass
class TruthBox:
    pdf: str             # file name in testdata/pdfs
    page: int            # 0-based
    figure_type: str     # "Figure" or "Table"
    name: str
    bbox: tuple          # PDF points, top-left origin


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def truth_boxes(testdata: Path) -> list[TruthBox]:
    gt = testdata / "figure_gt"
    boxes = []
    deep = json.loads((gt / "deepfigures_endtoend" /
                       "pdffigures1_looking_beyond_text.deepfigures-result.json").read_text())
    scale = 72.0 / deep["dpi"]
    for f in deep["figures"]:
        b = f["figure_boundary"]
        boxes.append(TruthBox("pdffigures1_looking_beyond_text.pdf", f["page"], f["figure_type"],
                              f["name"], tuple(v * scale for v in (b["x1"], b["y1"], b["x2"], b["y2"]))))
    bank = json.loads((gt / "docbank_sample" / "1805.05760_page3_figure_boxes.json").read_text())
    outer = max(bank["figure_boxes"], key=lambda f: (f["pdf_pt"][2] - f["pdf_pt"][0]) * (f["pdf_pt"][3] - f["pdf_pt"][1]))
    boxes.append(TruthBox(Path(bank["pdf"]).name, bank["page_index0"], "Figure", "3", tuple(outer["pdf_pt"])))
    return boxes


def match_boxes(truth: list[TruthBox], found: list[Region]) -> tuple[int, int, int]:
    """(true positives, found, truth) with a greedy one-to-one match at IoU >= 0.8."""
    pairs = sorted(((iou(t.bbox, r.bbox), i, j) for i, t in enumerate(truth)
                    for j, r in enumerate(found) if t.page == r.page and t.figure_type == r.figure_type),
                   reverse=True)
    used_t, used_r = set(), set()
    for score, i, j in pairs:
        if score >= IOU_MATCH and i not in used_t and j not in used_r:
            used_t.add(i)
            used_r.add(j)
    return len(used_t), len(found), len(truth)


def named_figure_numbers(doc: pymupdf.Document) -> set[str]:
    """Figure numbers the paper's text names anywhere (captions and references)."""
    text = " ".join(page.get_text() for page in doc)
    return set(FIGURE_MENTION_RE.findall(text.replace("\n", " ")))


def evaluate(testdata: Path | None = None, pdfs: list[Path] | None = None) -> dict:
    testdata = testdata or shared_testdata()
    pdf_dir = testdata / "pdfs"
    pdfs = pdfs or sorted(pdf_dir.glob("*.pdf"))
    truth = truth_boxes(testdata)
    expectations = json.loads((testdata / "figure_gt" / "pdffigures2_test_expectations.json").read_text())

    report = {"boxes": {}, "pdffigures2_tests": {}, "figure_numbers": {}}
    tp = n_found = n_truth = 0
    fig_tp = fig_found = fig_truth = 0
    for pdf in pdfs:
        with pymupdf.open(pdf) as doc:
            regions = find_figure_regions(doc)
            named = named_figure_numbers(doc)
        found_numbers = {r.figure_number for r in regions if r.figure_type == "Figure"}
        report["figure_numbers"][pdf.name] = {
            "named": len(named), "found": len(named & found_numbers),
            "recall": round(len(named & found_numbers) / len(named), 3) if named else None,
            "missing": sorted(named - found_numbers, key=lambda n: int(n)),
        }
        mine = [t for t in truth if t.pdf == pdf.name]
        if mine:
            pages = {t.page for t in mine}
            on_pages = [r for r in regions if r.page in pages]
            a, b, c = match_boxes(mine, on_pages)
            tp, n_found, n_truth = tp + a, n_found + b, n_truth + c
            figs = [t for t in mine if t.figure_type == "Figure"]
            a, b, c = match_boxes(figs, [r for r in on_pages if r.figure_type == "Figure"])
            fig_tp, fig_found, fig_truth = fig_tp + a, fig_found + b, fig_truth + c
            report["boxes"][pdf.name] = [
                {"truth": f"{t.figure_type} {t.name} p{t.page}", "best_iou": round(max(
                    [iou(t.bbox, r.bbox) for r in on_pages if r.page == t.page and r.figure_type == t.figure_type],
                    default=0.0), 3)} for t in mine]
        expected = expectations.get(pdf.name, {}).get("items")
        if expected:
            got = {(r.figure_type, r.figure_number, r.page) for r in regions}
            report["pdffigures2_tests"][pdf.name] = [
                {"item": f"{e['figType']} {e['name']} p{e['page']}",
                 "found": (e["figType"], e["name"], e["page"]) in got} for e in expected]

    def pr(t, f, n):
        return {"tp": t, "found": f, "truth": n, "precision": round(t / f, 3) if f else None,
                "recall": round(t / n, 3) if n else None}

    report["box_scores"] = {"figures_and_tables": pr(tp, n_found, n_truth),
                            "figures": pr(fig_tp, fig_found, fig_truth)}
    numbers = report["figure_numbers"].values()
    named = sum(v["named"] for v in numbers)
    report["figure_number_recall"] = round(sum(v["found"] for v in numbers) / named, 3) if named else None
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.pdffigures_eval",
                                 description="Score the PDF figure finder on shared/testdata "
                                             "(box IoU >= 0.8 where boxes exist, figure-number recall per paper).")
    ap.add_argument("--testdata", type=cli.existing_dir, default=None, help="default: ../shared/testdata")
    ap.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = ap.parse_args(argv)
    report = evaluate(args.testdata)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for kind, s in report["box_scores"].items():
        print(f"boxes ({kind}): precision {s['precision']} recall {s['recall']} "
              f"({s['tp']} matched of {s['found']} found, {s['truth']} true) at IoU >= {IOU_MATCH}")
    for pdf, rows in report["boxes"].items():
        print(f"  {pdf}: " + ", ".join(f"{r['truth']} iou={r['best_iou']}" for r in rows))
    for pdf, rows in report["pdffigures2_tests"].items():
        print(f"pdffigures2 test {pdf}: " + ", ".join(f"{r['item']} {'ok' if r['found'] else 'MISSED'}" for r in rows))
    print(f"figure-number recall over all papers: {report['figure_number_recall']}")
    for pdf, v in report["figure_numbers"].items():
        print(f"  {pdf:50s} {v['found']:3d}/{v['named']:3d}  missing {v['missing']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
