"""The Computer Vision Figures naming rule and the official downloader's file filters.

A CVF image name is the figure file's path relative to the e-print's root with `/` replaced
by `_` (case, spaces and extension kept, a wrapping top folder included). EPS/PS figures are
named as pdfLaTeX's epstopdf names the PDF it converts them to: `<stem>-eps-converted-to.pdf`.
The official downloader saved a PNG figure under its own name and a PDF figure as
`<img_name>_<paper_id>_0.png` (pdf2image's first page).

A file name holds at most 255 bytes on common file systems (NAME_MAX), and CVF names, being
whole paths, can be longer: an output name over MAX_NAME_BYTES becomes a stable short one,
`<its first bytes>~<16 hex digits of its sha256>.png` (`fitting_name`). The figure record keeps
the CVF name in `img_name`; its `image_path` is the file on disk.
"""
from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

# What the official downloader kept, and what we also consider a figure (EPS/PS, via Ghostscript).
OFFICIAL_EXTENSIONS = (".jpeg", ".jpg", ".png", ".gif", ".bmp", ".tiff", ".tif", ".pdf")
POSTSCRIPT_EXTENSIONS = (".eps", ".ps")
FIGURE_EXTENSIONS = OFFICIAL_EXTENSIONS + POSTSCRIPT_EXTENSIONS

# The formats CVF's figures came in: the official index holds only .pdf (69,916) and .png
# (18,729) names. Extraction takes these by default (EPS/PS too, as the PDF pdfLaTeX converts
# them to); other rasters (jpg, gif, bmp, tiff) are candidates only when asked for.
CVF_FORMATS = ("pdf", "png")
ALL_FORMATS = ("png", "jpg", "gif", "bmp", "tiff", "pdf", "eps", "ps")


def parse_formats(text: str) -> tuple[str, ...]:
    """`--formats pdf,png,jpg` as format names (jpeg = jpg, tif = tiff); ValueError naming an
    unknown one."""
    formats = tuple(dict.fromkeys({"jpeg": "jpg", "tif": "tiff"}.get(f, f)
                                  for f in (x.strip().lower().lstrip(".") for x in text.split(",")) if f))
    unknown = [f for f in formats if f not in ALL_FORMATS]
    if unknown or not formats:
        raise ValueError(f"--formats {text!r}: unknown format {', '.join(unknown) or '(none given)'}"
                         f" (known: {','.join(ALL_FORMATS)})")
    return formats


def is_candidate(path: str, formats=CVF_FORMATS) -> bool:
    """Whether a figure file at `path` is a candidate under `formats`: its own format is one,
    or the format of its CVF name is (an EPS is the PDF it becomes)."""
    fmt = figure_format(path)
    return fmt is not None and (fmt in formats or figure_format(cvf_name(path)) in formats)


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


# Room below NAME_MAX (255) for the temporary name an atomic write uses beside the file.
MAX_NAME_BYTES = 200


def fitting_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """`name` itself if it has at most `max_bytes` UTF-8 bytes, else a stable short name:
    its first bytes (whole characters), `~`, 16 hex digits of the sha256 of the whole name, and
    its extension. Two names that differ anywhere get different short names."""
    raw = name.encode("utf-8")
    if len(raw) <= max_bytes:
        return name
    suffix = PurePosixPath(name).suffix
    suffix = suffix if len(suffix.encode("utf-8")) <= 16 else ""
    digest = hashlib.sha256(raw).hexdigest()[:16]
    room = max_bytes - len(suffix.encode("utf-8")) - len(digest) - 1
    head = raw[:room].decode("utf-8", "ignore")
    return f"{head}~{digest}{suffix}"


def output_name(paper_id: str, img_name: str) -> str:
    """The official downloader's PNG file name for a figure: PNGs keep their name, PDFs
    (EPS included, via their converted name) become `<img_name>_<paper_id>_0.png`, and other
    rasters, which never appear in the CVF index, get `.png` appended. A name too long for a
    file system is shortened by `fitting_name`."""
    lowered = img_name.lower()
    if lowered.endswith(".png"):
        name = img_name
    elif lowered.endswith(".pdf"):
        name = f"{img_name}_{paper_id.replace('/', '_')}_0.png"
    else:
        name = f"{img_name}.png"
    return fitting_name(name)
