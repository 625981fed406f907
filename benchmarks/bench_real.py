"""The figure classifier on real papers: crawl real e-prints, extract, train with the official index.

    python benchmarks/bench_real.py --eprints-dir ../shared/testdata/eprints \\
        --cvf-index ../shared/testdata/cvf_index/df_train.csv ../shared/testdata/cvf_index/df_val.csv

1. Serves the e-prints (`<arxiv id>.tar.gz`) from the local arXiv replay and crawls their month
   shards through it, as a crawl of arXiv would (`pipeline.crawl`, no PDFs).
2. Extracts them (`pipeline.extract`) and measures the extraction recall of the figures the
   official index lists for these papers.
3. Trains the classifier exactly as `python -m pipeline.classify train --cvf-index ...` does by
   default (distant labels from the index, grouped CV by paper, no backbone unless --weights).
4. Reports ROC-AUC and PR-AUC, precision and recall at the card's threshold and at the threshold
   from the target count (as many kept as CVF kept of these candidates, the small-scale analogue
   of `pipeline.filter --target-count 88645`), and points at the card and the contact sheet of
   disagreements (`disagreements.png`, false keeps and false drops) beside it.

5. Scores other real papers it never trained on: the figures the PDF fallback cuts from the
   papers of `pdf_figure_labels.tsv` (--pdf-dir), labelled there by hand by CVF's rule.
6. Does the same as 1-4 on a generated replay corpus labelled by its truth (--replay-papers), to
   put the real numbers next to the replay's.

Writes `real.json` and `real.md` to --out (default: the classifier's folder).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "testdata"


def crawl_real(eprints_dir: Path, root: Path) -> list[str]:
    """Crawl the e-prints in `eprints_dir` through the replay into `root`; return their month shards."""
    from pipeline import crawl
    from pipeline.replay.server import Replay, ReplayServer, real_eprint_papers
    from pipeline.shards import shard_of_id

    months = sorted({shard_of_id(p["arxiv_id"]) for p in real_eprint_papers(eprints_dir)})
    if not months:
        raise ValueError(f"no <arxiv id>.tar.gz e-prints in {eprints_dir}")
    with ReplayServer(Replay(extra_eprints=eprints_dir)) as server:
        urls = server.endpoints()
        for month in months:
            crawl.crawl(month, month, root, delay=0, api_url=urls["CVF_ARXIV_API_URL"],
                        eprint_url=urls["CVF_ARXIV_EPRINT_URL"], pdf_url=urls["CVF_ARXIV_PDF_URL"],
                        downloads=("eprint",), pdfs="none")
    return months


def extraction_recall(root: Path, cvf_index: list[Path], months: list[str]) -> dict:
    """How many of the figures the index lists for the crawled papers came out of extraction."""
    from pipeline import labels, store

    papers = {r["arxiv_id"] for m in months for r in store.read_rows(root / "papers" / f"{m}.parquet")}
    figures = {(r["paper_id"], r["img_name"]) for m in months
               for r in store.read_rows(root / "figures" / f"{m}.parquet") if r["status"] == "ok"}
    listed = {(p, n) for p, names in labels.read_cvf_index(cvf_index).items() if p in papers for n in names}
    found = listed & figures
    return {"listed": len(listed), "extracted": len(found), "recall": len(found) / max(len(listed), 1),
            "missing": sorted("/".join(k) for k in listed - figures)}


def at_count(y: np.ndarray, prob: np.ndarray, count: int) -> dict:
    """Precision and recall when the `count` most probable figures are kept."""
    keep = np.zeros(len(y), bool)
    keep[np.argsort(-prob, kind="stable")[:count]] = True
    tp = int((keep & (y == 1)).sum())
    return {"kept": count, "threshold": float(np.sort(prob)[::-1][count - 1]) if count else 1.0,
            "precision": tp / max(count, 1), "recall": tp / max(int(y.sum()), 1)}


def evaluate(eprints_dir: Path, cvf_index: list[Path], root: Path, weights: str | None = None,
             version: str = "real") -> dict:
    """Crawl, extract, train; the numbers of the real-paper benchmark."""
    from pipeline import classify, extract, store

    t0 = time.time()
    months = crawl_real(eprints_dir, root)
    t1 = time.time()
    extract.extract_shards(months, root, progress=False)
    t2 = time.time()
    recall = extraction_recall(root, cvf_index, months)
    out = classify.train(root, weights=weights or "", cvf_index=[str(p) for p in cvf_index], version=version)
    t3 = time.time()
    card = json.loads((out / "card.json").read_text())
    preds = store.read_rows(out / "cv_predictions.parquet")
    y = np.array([r["label"] for r in preds])
    prob = np.array([r["prob"] for r in preds])
    m = card["cv"]["at_threshold"]
    return {
        "papers": card["cv"]["papers"], "labelled": len(y), "kept_by_cvf": int(y.sum()),
        "roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "base_rate": float(y.mean()),
        "at_card_threshold": {k: m[k] for k in ("threshold", "precision", "recall", "balanced_accuracy")},
        "at_target_count": at_count(y, prob, int(y.sum())),
        "extraction": recall, "captions_used": card["caption_features"]["used"],
        "disagreements": card["disagreements"], "classifier": str(out),
        "seconds": {"crawl": round(t1 - t0, 1), "extract": round(t2 - t1, 1), "train": round(t3 - t2, 1)},
    }


def evaluate_replay(n_papers: int, root: Path, corpus: Path, weights: str | None = None) -> dict:
    """The same crawl, extraction and training on a generated replay corpus, labelled by its truth:
    the number to put next to the real one (how much easier the replay is)."""
    from pipeline import classify, crawl, extract
    from pipeline.replay.corpus import generate_corpus
    from pipeline.replay.server import Replay, ReplayServer

    months = ["2021-01", "2021-02"]
    generate_corpus(corpus, n_papers=n_papers, months=months)
    with ReplayServer(Replay(corpus)) as server:
        urls = server.endpoints()
        for month in months:
            crawl.crawl(month, month, root, delay=0, api_url=urls["CVF_ARXIV_API_URL"],
                        eprint_url=urls["CVF_ARXIV_EPRINT_URL"], pdf_url=urls["CVF_ARXIV_PDF_URL"],
                        downloads=("eprint",), pdfs="none")
    extract.extract_shards(months, root, progress=False)
    out = classify.train(root, weights=weights or "", truth=str(corpus / "truth.parquet"), version="replay")
    card = json.loads((out / "card.json").read_text())
    m = card["cv"]["at_threshold"]
    return {"papers": card["cv"]["papers"], "labelled": card["labels"]["labels"],
            "positives": card["labels"]["positives"], "roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"],
            "classifier": str(out)}


PDF_LABELS = Path(__file__).with_name("pdf_figure_labels.tsv")


def evaluate_pdfs(pdf_dir: Path, classifier: Path, root: Path, labels_tsv: Path = PDF_LABELS) -> dict:
    """Other real papers: figures the PDF fallback cuts from the papers in `labels_tsv`, labelled
    by hand by CVF's rule (paper, page, box in PDF points, label), scored by the classifier trained
    on the e-prints (never trained on them). A cut figure matches a labelled box on the same page
    when they overlap by IoU 0.5 or more."""
    import csv
    import shutil

    from sklearn.metrics import average_precision_score, roc_auc_score

    from pipeline import classify, extract, store
    from pipeline.crawl import PAPER_SCHEMA

    rows = list(csv.DictReader(open(labels_tsv, newline=""), delimiter="\t"))
    pdfs = sorted({r["pdf"] for r in rows})
    ids = {pdf: f"2301.{10001 + i:05d}" for i, pdf in enumerate(pdfs)}  # stand-in ids, one month shard
    (root / "raw" / "2023-01").mkdir(parents=True, exist_ok=True)
    papers = []
    for pdf, paper_id in ids.items():
        shutil.copy(pdf_dir / pdf, root / "raw" / "2023-01" / f"{paper_id}.pdf")
        papers.append({"arxiv_id": paper_id, "version": 1, "eprint_status": "missing", "eprint_path": "",
                       "pdf_status": "ok", "pdf_path": f"raw/2023-01/{paper_id}.pdf"})
    store.write_rows(root / "papers" / "2023-01.parquet", papers, PAPER_SCHEMA)
    extract.extract_shard("2023-01", root, progress=False)
    shutil.copytree(classifier.parent, root / "classifier", dirs_exist_ok=True)
    classify.score(root, version=classifier.name)
    scores = {(r["paper_id"], r["img_name"]): r["score"] for r in store.read_rows(root / "scores" / "2023-01.parquet")}
    cut = [f for f in store.read_rows(root / "figures" / "2023-01.parquet") if f["status"] == "ok"]

    def iou(a, b):  # boxes grown by a point: a figure cut one pixel high still matches its label
        a, b = [a[0] - 1, a[1] - 1, a[2] + 1, a[3] + 1], [b[0] - 1, b[1] - 1, b[2] + 1, b[3] + 1]
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0
    y, prob, unmatched = [], [], 0
    for r in rows:
        box = [float(r[k]) for k in ("x0", "y0", "x1", "y1")]
        match = max((f for f in cut if f["paper_id"] == ids[r["pdf"]] and f["page"] == int(r["page"])),
                    key=lambda f: iou(box, f["bbox"]), default=None)
        if match is None or iou(box, match["bbox"]) < 0.5 or scores.get((match["paper_id"], match["img_name"])) is None:
            unmatched += 1
            continue
        y.append(int(r["label"]))
        prob.append(scores[(match["paper_id"], match["img_name"])])
    y, prob = np.array(y), np.array(prob)
    return {"papers": len(pdfs), "labelled": len(rows), "matched": len(y), "unmatched": unmatched,
            "positives": int(y.sum()), "roc_auc": float(roc_auc_score(y, prob)),
            "pr_auc": float(average_precision_score(y, prob)), "base_rate": float(y.mean()),
            "at_target_count": at_count(y, prob, int(y.sum()))}


def markdown(r: dict) -> str:
    c, t = r["at_card_threshold"], r["at_target_count"]
    return f"""# The classifier on real papers

{r['papers']} real e-prints crawled through the replay, extracted, labelled by the official index
({r['labelled']} candidates, {r['kept_by_cvf']} kept by CVF, base rate {r['base_rate']:.2f}), grouped CV by paper.

| ROC-AUC | PR-AUC | precision / recall at the card's threshold ({c['threshold']:.2f}) | precision / recall keeping as many as CVF ({t['kept']}) |
| --- | --- | --- | --- |
| {r['roc_auc']:.3f} | {r['pr_auc']:.3f} | {c['precision']:.3f} / {c['recall']:.3f} | {t['precision']:.3f} / {t['recall']:.3f} |

Extraction recall of the figures the index lists: {r['extraction']['extracted']} of {r['extraction']['listed']}
({r['extraction']['recall']:.3f}){'; missing: ' + ', '.join(r['extraction']['missing']) if r['extraction']['missing'] else ''}.

{pdf_line(r)}

{replay_line(r)}

Disagreements ({r['disagreements']['false_keeps']} false keeps, {r['disagreements']['false_drops']} false drops):
`{r['classifier']}/disagreements.png`; the card: `{r['classifier']}/card.md`.
"""


def pdf_line(r: dict) -> str:
    pl = r.get("pdfs")
    if not pl:
        return "Other real papers (hand-labelled PDF figures) were not measured in this run (no --pdf-dir)."
    return (f"Other real papers, never trained on: {pl['matched']} figures the PDF fallback cut from {pl['papers']} "
            f"papers, labelled by hand by CVF's rule ({pl['positives']} positive, base rate {pl['base_rate']:.2f}; "
            f"`benchmarks/pdf_figure_labels.tsv`), scored by the classifier above: ROC-AUC {pl['roc_auc']:.3f}, "
            f"PR-AUC {pl['pr_auc']:.3f}.")


def replay_line(r: dict) -> str:
    rp = r.get("replay")
    if not rp:
        return "The replay was not measured in this run (--replay-papers 0)."
    return (f"Next to it, the generated replay ({rp['papers']} papers, {rp['labelled']} figures, {rp['positives']} "
            f"photo grids, labelled by its truth): ROC-AUC {rp['roc_auc']:.3f}, PR-AUC {rp['pr_auc']:.3f}.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--eprints-dir", type=Path, default=SHARED / "eprints",
                   help="folder of real e-prints named <arxiv id>.tar.gz (default ../shared/testdata/eprints)")
    p.add_argument("--cvf-index", type=Path, nargs="+",
                   default=[SHARED / "cvf_index" / "df_train.csv", SHARED / "cvf_index" / "df_val.csv"],
                   help="the official index's df_train.csv and df_val.csv")
    p.add_argument("--root", type=Path, help="dataset root to crawl into (default: a temporary folder)")
    p.add_argument("--weights", help="backbone weights, as for `pipeline.classify train --weights` (default none)")
    p.add_argument("--pdf-dir", type=Path, default=SHARED / "pdfs",
                   help="folder of the PDFs that pdf_figure_labels.tsv labels (default ../shared/testdata/pdfs; "
                        "skipped when absent)")
    p.add_argument("--replay-papers", type=int, default=60,
                   help="also measure a generated replay corpus of this many papers, for comparison (0: skip)")
    p.add_argument("--out", type=Path, help="where to write real.json and real.md (default: the classifier folder)")
    args = p.parse_args()
    for path in [args.eprints_dir, *args.cvf_index]:
        if not path.exists():
            p.error(f"{path} not found")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "data"
        result = evaluate(args.eprints_dir, args.cvf_index, root, args.weights)
        if args.pdf_dir and args.pdf_dir.is_dir():
            result["pdfs"] = evaluate_pdfs(args.pdf_dir, Path(result["classifier"]), Path(tmp) / "pdf-data")
        if args.replay_papers:
            result["replay"] = evaluate_replay(args.replay_papers, Path(tmp) / "replay-data", Path(tmp) / "replay",
                                               args.weights)
        out = args.out or Path(result["classifier"])
        out.mkdir(parents=True, exist_ok=True)
        if args.out and not args.root:  # the temporary root goes away: keep the card and the sheet
            import shutil

            for name in ("card.md", "card.json", "pr_curve.png", "disagreements.png", "cv_predictions.parquet"):
                if (Path(result["classifier"]) / name).exists():
                    shutil.copy(Path(result["classifier"]) / name, out / name)
            result["classifier"] = str(out)
        (out / "real.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "real.md").write_text(markdown(result))
        print(json.dumps({k: v for k, v in result.items() if k != "extraction"} | {
            "extraction_recall": result["extraction"]["recall"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
