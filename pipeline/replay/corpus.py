"""A deterministic fake arXiv: paper metadata, LaTeX e-prints, paper PDFs and figure ground truth.

Nothing copyrighted goes in. Photos come from the permissively licensed samples that
scikit-image (`skimage.data`) and scikit-learn (`load_sample_images`) ship in their wheels;
plots and block diagrams are drawn with matplotlib. Each paper gets:

* metadata as the arXiv API would report it (`papers.jsonl`), some cross-listed, some outside
  cs.CV, some withdrawn (their e-print and PDF answer 404);
* an e-print packed as arXiv serves it (`eprint/<id>`): a gzip'd tar of a LaTeX tree (figures
  as .png, .jpg, single- and multi-page .pdf, .eps, sometimes with the `-eps-converted-to.pdf`
  that pdflatex leaves behind, nested folders, names with spaces, a file no `\\includegraphics`
  uses, an unused copy of a used photo grid), a gzip'd single .tex, or a bare PDF; photo grids
  come with column labels, thin or no gutters and attention-map overlays, and near misses
  (grids of confusion matrices: colourful, gridded, no photo) stand beside them;
* a paper PDF (`pdf/<id>.pdf`) with the figures placed on pages above "Figure N:" captions;

and `truth.parquet` says, per figure file in an e-print tree, what the generator drew and
whether it is a grid containing natural images (the positives later stages look for).

    python -m pipeline.replay generate --out data/replay --papers 20 --months 2021-01 2021-02
"""
from __future__ import annotations

import functools
import gzip
import io
import json
import os
import random
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline import store
from pipeline.shards import parse_month

TRUTH_SCHEMA = pa.schema([
    ("paper_id", pa.string()),
    ("img_name", pa.string()),
    ("source_path", pa.string()),
    ("kind", pa.string()),
    ("is_grid_with_photo", pa.bool_()),
])

_WORDS = ("visual prompting inpainting masked autoencoder segmentation detection transformer "
          "diffusion contrastive features depth optical flow pose tracking retrieval few-shot "
          "colorization denoising super-resolution attention codebook quantized generative").split()
_NAMES = ("Ada Alan Grace Edsger Barbara Donald Frances Ken Margaret John Radia Tim Shafi Leslie "
          "Yann Fei-Fei Kaiming Alexei Trevor Jitendra").split()
_SURNAMES = ("Lovelace Turing Hopper Dijkstra Liskov Knuth Allen Thompson Hamilton McCarthy "
             "Perlman Berners-Lee Goldwasser Lamport Lecun Li He Efros Darrell Malik").split()


# --- drawing ------------------------------------------------------------------------------

@functools.cache
def _photos() -> list[np.ndarray]:
    """The sample photos (RGB uint8), squared and shrunk to 192 px so grids stay small."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
             "hubble_deep_field", "camera", "moon", "coins"]
    arrays = [getattr(skimage.data, n)() for n in names] + list(load_sample_images().images)
    out = []
    for a in arrays:
        img = Image.fromarray(a).convert("RGB")
        s = min(img.size)
        img = img.crop(((img.width - s) // 2, (img.height - s) // 2, (img.width + s) // 2, (img.height + s) // 2))
        out.append(np.asarray(img.resize((192, 192), Image.BILINEAR)))
    return out


def _photo_grid(rng: random.Random) -> Image.Image:
    """Rows x cols of sample photos (random crops), like a qualitative-results figure: sometimes
    with column labels above, thin or no gutters, and attention-map overlays on some tiles."""
    from PIL import ImageDraw

    rows, cols, gap = rng.randint(1, 3), rng.randint(2, 5), rng.choice([0, 1, 2, 4, 8])
    tile = 128
    header = 16 if rng.random() < 0.5 else 0
    grid = Image.new("RGB", (cols * tile + (cols - 1) * gap, header + rows * tile + (rows - 1) * gap), "white")
    photos = _photos()
    overlay = rng.random() < 0.3  # saliency / attention maps over the photos of some columns
    for r in range(rows):
        for c in range(cols):
            x, y, s = rng.randint(0, 48), rng.randint(0, 48), rng.randint(120, 144)
            img = Image.fromarray(photos[rng.randrange(len(photos))]).crop((x, y, x + s, y + s)).resize((tile, tile))
            if overlay and c % 2 == 1:
                img = Image.blend(img, _heat(img), 0.5)
            grid.paste(img, (c * (tile + gap), header + r * (tile + gap)))
    if header:
        draw = ImageDraw.Draw(grid)
        for c in range(cols):
            draw.text((c * (tile + gap) + tile // 3, 2), rng.choice(["Input", "Ours", "GT", "Baseline", "Mask"]),
                      fill="black")
    return grid


def _heat(img: Image.Image) -> Image.Image:
    """A jet-coloured map of a photo's blurred brightness, as attention maps are drawn."""
    import matplotlib
    from PIL import ImageFilter

    heat = np.asarray(img.convert("L").filter(ImageFilter.GaussianBlur(10)), dtype=np.float32) / 255.0
    return Image.fromarray((matplotlib.colormaps["jet"](heat)[..., :3] * 255).astype(np.uint8))


def _matrix_grid(rng: random.Random):
    """A near miss: a grid of confusion matrices / heat maps with numbers. Colourful, a grid, no photo."""
    import matplotlib.pyplot as plt

    n = rng.randint(2, 4)
    fig, axes = plt.subplots(1, n, figsize=(1.9 * n, 2.0), squeeze=False)
    for ax in axes[0]:
        k = rng.randint(3, 6)
        m = np.array([[rng.random() for _ in range(k)] for _ in range(k)])
        ax.imshow(m, cmap=rng.choice(["Blues", "viridis", "coolwarm"]))
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", fontsize=5)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.05, top=0.95, wspace=0.1)
    return fig


def _photo(rng: random.Random) -> Image.Image:
    return Image.fromarray(_photos()[rng.randrange(len(_photos()))]).resize((256, 256))


def _plot(rng: random.Random, panels: int = 1):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(2.4 * panels, 2.0), squeeze=False)
    x = np.linspace(0, 10, 50)
    for ax in axes[0]:
        for k in range(rng.randint(1, 3)):
            ax.plot(x, np.exp(-x / rng.uniform(2, 8)) + 0.05 * k + 0.02 * np.sin(rng.uniform(1, 4) * x), label=f"run {k}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(rng.choice(["loss", "mIoU", "accuracy"]))
        ax.legend(fontsize=6, framealpha=1)  # EPS has no transparency
    # fixed margins (0.75 in. for the y label): tight_layout would double the drawing time
    fig.subplots_adjust(left=0.75 / fig.get_figwidth(), right=0.97, bottom=0.22, top=0.95, wspace=0.45)
    return fig


def _diagram(rng: random.Random):
    import matplotlib.pyplot as plt

    stages = rng.sample(["Encoder", "Decoder", "VQGAN", "Patchify", "Mask", "Attention", "Head", "Codebook"], 4)
    fig, ax = plt.subplots(figsize=(5.0, 1.4))
    for i, name in enumerate(stages):
        ax.add_patch(plt.Rectangle((i * 1.3, 0.2), 1.0, 0.6, fc=plt.cm.Pastel1(i), ec="black"))
        ax.text(i * 1.3 + 0.5, 0.5, name, ha="center", va="center", fontsize=8)
        if i:
            ax.annotate("", xy=(i * 1.3, 0.5), xytext=(i * 1.3 - 0.3, 0.5), arrowprops={"arrowstyle": "->"})
    ax.set_xlim(-0.1, len(stages) * 1.3)
    ax.set_ylim(0, 1)
    ax.axis("off")
    return fig


def _save_image(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "eps":
        img.save(buf, "EPS")
    elif fmt == "pdf":
        fixed = time.gmtime(1_577_836_800)  # PIL stamps the current time otherwise
        img.save(buf, "PDF", resolution=150, creationDate=fixed, modDate=fixed)
    else:
        img.save(buf, "JPEG" if fmt == "jpg" else "PNG", **({"quality": 88} if fmt == "jpg" else {}))
    return buf.getvalue()


def _save_figure(fig, *fmts: str) -> list[bytes]:
    """The figure in each format (low-dpi PNG: it only fills the paper PDF), then closed."""
    import matplotlib.pyplot as plt

    out = []
    for fmt in fmts:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=72 if fmt == "png" else 100,
                    metadata={"CreationDate": None} if fmt == "pdf" else None)
        out.append(buf.getvalue())
    plt.close(fig)
    return out


def _multipage_pdf(rng: random.Random) -> bytes:
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    buf = io.BytesIO()
    with PdfPages(buf, metadata={"CreationDate": None}) as pdf:
        for _ in range(2):
            fig = _plot(rng)
            pdf.savefig(fig)
            plt.close(fig)
    return buf.getvalue()


# --- one paper ------------------------------------------------------------------------------

@dataclass
class FigureFile:
    source_path: str  # path inside the e-print tree
    kind: str  # photo_grid, photo, plot, plot_grid, diagram, matrix_grid (a near miss), unused_copy
    data: bytes
    preview: bytes  # what the paper PDF shows: PNG, or the PDF itself for vector figures
    referenced: bool = True

    @property
    def is_grid_with_photo(self) -> bool:
        return self.kind == "photo_grid"

    @property
    def img_name(self) -> str:
        """The CVF name: path with '/' -> '_'; EPS as the PDF pdflatex converts it to."""
        name = self.source_path.replace("/", "_")
        return name[:-4] + "-eps-converted-to.pdf" if name.lower().endswith(".eps") else name


def _png(img: Image.Image) -> bytes:
    return _save_image(img.resize((img.width // 2, img.height // 2)) if img.width > 600 else img, "png")


def _make_figures(rng: random.Random, n: int) -> list[FigureFile]:
    """`n` figure files covering every format, plus at most one unreferenced file."""
    folder = rng.choice(["figures", "figs", "img", "figures/results"])
    figs = []
    for i in range(n):
        kind = rng.choices(["photo_grid", "photo", "plot", "plot_grid", "diagram", "matrix_grid"],
                           [4, 1, 2, 1, 2, 1])[0]
        stem = rng.choice(["qualitative", "results", "teaser", "overview", "curve", "examples", "fig"]) + f"_{i}"
        if rng.random() < 0.15:
            stem = stem.replace("_", " ")  # file names with spaces exist in the wild
        if kind in ("photo_grid", "photo"):
            img = _photo_grid(rng) if kind == "photo_grid" else _photo(rng)
            fmt = rng.choice(["png", "jpg", "jpg", "pdf", "eps"])
            figs.append(FigureFile(f"{folder}/{stem}.{fmt}", kind, _save_image(img, fmt), _png(img)))
        elif kind == "plot" and rng.random() < 0.25:
            data = _multipage_pdf(rng)
            figs.append(FigureFile(f"{folder}/{stem}.pdf", kind, data, data))
        else:
            fmt = rng.choice(["pdf", "pdf", "eps", "png"])
            fig = (_diagram(rng) if kind == "diagram" else _matrix_grid(rng) if kind == "matrix_grid"
                   else _plot(rng, 3 if kind == "plot_grid" else 1))
            data, preview = _save_figure(fig, fmt, "png") if fmt != "pdf" else _save_figure(fig, fmt) * 2
            figs.append(FigureFile(f"{folder}/{stem}.{fmt}", kind, data, preview))
    if figs and rng.random() < 0.4:
        figs[-1].referenced = False  # a leftover the LaTeX never uses
    grids = [f for f in figs if f.kind == "photo_grid" and f.referenced]
    if grids and rng.random() < 0.3:  # an unused copy of a used photo grid: CVF never listed those
        used = grids[0]
        stem, ext = used.source_path.rsplit(".", 1)
        figs.append(FigureFile(f"{stem}_old.{ext}", "unused_copy", used.data, used.preview, referenced=False))
    return figs


def _latex(meta: dict, figs: list[FigureFile], rng: random.Random) -> dict[str, bytes]:
    """main.tex (and sometimes sections/*.tex) including the referenced figures."""
    blocks = []
    for n, f in enumerate(figs, 1):
        if not f.referenced:
            continue
        path = f.source_path
        if rng.random() < 0.5 and " " not in path:  # \includegraphics often omits the extension
            path = path.rsplit(".", 1)[0]
        blocks.append("\\begin{figure}[t]\n  \\centering\n"
                      f"  \\includegraphics[width=\\linewidth]{{{path}}}\n"
                      f"  \\caption{{{meta['title']}: figure {n}.}}\n  \\label{{fig:{n}}}\n\\end{{figure}}\n")
    authors = " \\and ".join(meta["authors"])
    head = ("\\documentclass{article}\n\\usepackage{graphicx}\n"
            f"\\title{{{meta['title']}}}\n\\author{{{authors}}}\n"
            f"\\begin{{document}}\n\\maketitle\n\\begin{{abstract}}\n{meta['summary']}\n\\end{{abstract}}\n")
    if len(blocks) > 1 and rng.random() < 0.5:
        half = len(blocks) // 2
        return {"main.tex": (head + "".join(blocks[:half]) + "\\input{sections/results}\n\\end{document}\n").encode(),
                "sections/results.tex": "".join(blocks[half:]).encode()}
    return {"main.tex": (head + "".join(blocks) + "\\end{document}\n").encode()}


def tar_gz(files: dict[str, bytes]) -> bytes:
    """Pack {path: bytes} as a deterministic gzip'd tar, the way arXiv serves a source tree."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), 1_600_000_000, 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), mtime=0)


def _paper_pdf(meta: dict, figs: list[FigureFile]) -> bytes:
    """A small paper: title page, then the figures above 'Figure N:' captions."""
    import fitz  # PyMuPDF

    doc = fitz.open()
    page = doc.new_page(width=612, height=792)
    page.insert_text((72, 90), meta["title"], fontsize=14)
    page.insert_text((72, 112), ", ".join(meta["authors"]), fontsize=9)
    page.insert_textbox(fitz.Rect(72, 130, 540, 300), "Abstract. " + meta["summary"], fontsize=9)
    y = 320
    for n, f in enumerate((f for f in figs if f.referenced), 1):
        if y > 520:
            page, y = doc.new_page(width=612, height=792), 72
        rect = fitz.Rect(100, y, 512, y + 200)
        if f.preview[:5] == b"%PDF-":
            with fitz.open("pdf", f.preview) as src:
                page.show_pdf_page(rect, src, 0)
        else:
            page.insert_image(rect, stream=f.preview, keep_proportion=True)
        page.insert_text((100, y + 218), f"Figure {n}: {meta['title']}: figure {n}.", fontsize=9)
        y += 250
    doc.set_metadata({"title": meta["title"], "creator": "cvf replay", "producer": "cvf replay"})
    return doc.tobytes(garbage=3, deflate=True, no_new_id=True)


def _metadata(rng: random.Random, arxiv_id: str, month: str, index: int) -> dict:
    year, mon = parse_month(month)
    start = datetime(year, mon, 1, tzinfo=timezone.utc)
    published = start + timedelta(days=rng.randint(0, 27), seconds=rng.randint(0, 86399))
    version = rng.choice([1, 1, 1, 2, 3])
    # every few papers: a cross-list into cs.CV, or a paper outside cs.CV the query must not return
    primary, categories = (("cs.LG", ["cs.LG", "cs.CV"]) if index % 5 == 2 else ("stat.ML", ["stat.ML", "cs.LG"])
                           if index % 11 == 4 else rng.choice([("cs.CV", ["cs.CV"]), ("cs.CV", ["cs.CV", "cs.LG"]),
                                                               ("eess.IV", ["eess.IV", "cs.CV"])]))
    withdrawn = index % 13 == 6
    words = rng.sample(_WORDS, 5)
    return {
        "arxiv_id": arxiv_id,
        "version": version + (1 if withdrawn else 0),
        "title": " ".join(w.capitalize() for w in words[:4]) + " for " + words[4].capitalize(),
        "authors": [f"{rng.choice(_NAMES)} {rng.choice(_SURNAMES)}" for _ in range(rng.randint(1, 4))],
        "summary": "We study " + ", ".join(words) + ". " + " ".join(rng.choices(_WORDS, k=30)) + ".",
        "published": published.isoformat(),
        "updated": (published + timedelta(days=30 * (version - 1) + (40 if withdrawn else 0))).isoformat(),
        "primary_category": primary,
        "categories": categories,
        "comment": "This paper has been withdrawn by the author" if withdrawn else rng.choice(["", "10 pages, 6 figures", "CVPR 2021"]),
        "journal_ref": rng.choice(["", "", "Proc. CVPR 2021"]),
        "doi": rng.choice(["", "", f"10.0000/replay.{arxiv_id}"]),
        "license": rng.choice(["http://creativecommons.org/licenses/by/4.0/",
                               "http://arxiv.org/licenses/nonexclusive-distrib/1.0/"]),
        "withdrawn": withdrawn,
    }


def generate_corpus(out_dir: str | os.PathLike, n_papers: int = 20, months: list[str] | tuple[str, ...] = ("2021-01",),
                    seed: int = 0) -> Path:
    """Write a replay corpus to `out_dir` (papers.jsonl, eprint/, pdf/, truth.parquet); return it.

    Same arguments, same corpus. Papers are spread round-robin over `months`.
    """
    import matplotlib

    matplotlib.use("Agg")
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")  # reproducible EPS from matplotlib
    out = Path(out_dir)
    (out / "eprint").mkdir(parents=True, exist_ok=True)
    (out / "pdf").mkdir(exist_ok=True)
    papers, truth = [], []
    for i in range(n_papers):
        month = months[i % len(months)]
        rng = random.Random(f"{seed}-{i}")
        arxiv_id = f"{month[2:4]}{month[5:7]}.{10001 + i // len(months) * 3:05d}"
        meta = _metadata(rng, arxiv_id, month, i)
        packing = "gz-tex" if i % 7 == 3 else "pdf" if i % 9 == 5 else "tar.gz"
        figs = _make_figures(rng, rng.randint(2, 5)) if packing == "tar.gz" else []
        if packing == "tar.gz" and i % 4 == 1:  # pdflatex's leftover next to an EPS figure
            if eps := next((f for f in figs if f.source_path.endswith(".eps")), None):
                figs.append(FigureFile(eps.source_path[:-4] + "-eps-converted-to.pdf", eps.kind,
                                       b"", b"", referenced=False))
        pdf = _paper_pdf(meta, [f for f in figs if f.data])
        if packing == "tar.gz":
            files = _latex(meta, [f for f in figs if f.data], rng)
            for f in figs:
                files[f.source_path] = f.data or _converted_eps(figs, f)
            eprint = tar_gz(files)
            seen = set()
            for f in figs:
                if f.img_name in seen:  # the EPS and its converted PDF are one CVF image
                    continue
                seen.add(f.img_name)
                truth.append({"paper_id": arxiv_id, "img_name": f.img_name, "source_path": f.source_path,
                              "kind": f.kind, "is_grid_with_photo": f.is_grid_with_photo})
        elif packing == "gz-tex":
            eprint = gzip.compress(_latex(meta, [], rng)["main.tex"], mtime=0)
        else:
            eprint = pdf
        meta["eprint_packing"] = packing
        store.atomic_write_bytes(out / "eprint" / arxiv_id, eprint)
        store.atomic_write_bytes(out / "pdf" / f"{arxiv_id}.pdf", pdf)
        papers.append(meta)
    store.atomic_write_text(out / "papers.jsonl", "".join(json.dumps(p, sort_keys=True) + "\n" for p in papers))
    store.write_rows(out / "truth.parquet", truth, TRUTH_SCHEMA)
    return out


def _converted_eps(figs: list[FigureFile], converted: FigureFile) -> bytes:
    """The PDF pdflatex would have made from the EPS beside it (same drawing, as PDF)."""
    eps = next(f for f in figs if f.source_path == converted.source_path.replace("-eps-converted-to.pdf", ".eps"))
    if eps.preview[:5] == b"%PDF-":
        return eps.preview
    return _save_image(Image.open(io.BytesIO(eps.preview)).convert("RGB"), "pdf")


def load_papers(corpus_dir: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in (Path(corpus_dir) / "papers.jsonl").read_text().splitlines() if line]
