"""The Computer Vision Figures naming rule and the official downloader's file filters.

A CVF image name is the figure file's path relative to the e-print's root with `/` replaced
by `_` (case, spaces and extension kept, a wrapping top folder included). EPS/PS figures are
named as pdfLaTeX's epstopdf names the PDF it converts them to: `<stem>-eps-converted-to.pdf`.
The official downloader saved a PNG figure under its own name and a PDF figure as
`<img_name>_<paper_id>_0.png` (pdf2image's first page).
"""
from __future__ import annotations

from pathlib import PurePosixPath

# What the official downloader kept, and what we also consider a figure (EPS/PS, via Ghostscript).
OFFICIAL_EXTENSIONS = (".jpeg", ".jpg", ".png", ".gif", ".bmp", ".tiff", ".tif", ".pdf")
POSTSCRIPT_EXTENSIONS = (".eps", ".ps")
FIGURE_EXTENSIONS = OFFICIAL_EXTENSIONS + POSTSCRIPT_EXTENSIONS

# The official downloader skipped names containing these words. Not one of the 88,645 CVF names
# contains them in any case ("Architecture.pdf" would be common otherwise), so match ignoring case.
OFFICIAL_NAME_STOPWORDS = ("arch", "pipeline")


def figure_format(path: str) -> str | None:
    """`png`, `jpg`, `pdf`, `eps`, ... for a figure file, None for anything else."""
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in FIGURE_EXTENSIONS:
        return None
    return {"jpeg": "jpg", "tif": "tiff"}.get(suffix[1:], suffix[1:])


def cvf_name(path: str) -> str:
    """The CVF image name of a figure file at `path` (relative to the archive root).

    >>> cvf_name("figures/new figures/Plate.pdf")
    'figures_new figures_Plate.pdf'
    >>> cvf_name("figs/2digits_2_var.eps")
    'figs_2digits_2_var-eps-converted-to.pdf'
    """
    flat = path.strip("/").replace("/", "_")
    suffix = PurePosixPath(path).suffix
    if suffix.lower() in POSTSCRIPT_EXTENSIONS:
        # epstopdf's default suffix is `-\SourceExt-converted-to`, extension as written.
        return f"{flat[: -len(suffix)]}-{suffix[1:]}-converted-to.pdf"
    return flat


def official_name_filter(img_name: str) -> bool:
    """True when the official downloader would have dropped this name."""
    lowered = img_name.lower()
    return any(word in lowered for word in OFFICIAL_NAME_STOPWORDS)


def output_name(paper_id: str, img_name: str) -> str:
    """The official downloader's PNG file name for a figure: PNGs keep their name, PDFs
    (EPS included, via their converted name) become `<img_name>_<paper_id>_0.png`, and other
    rasters, which never appear in the CVF index, get `.png` appended."""
    lowered = img_name.lower()
    if lowered.endswith(".png"):
        return img_name
    if lowered.endswith(".pdf"):
        return f"{img_name}_{paper_id.replace('/', '_')}_0.png"
    return f"{img_name}.png"
