"""PDF fallback: figure regions from a paper's PDF, for papers without usable LaTeX sources.

A figure is found from its caption, like PDFFigures 2.0 does: every text block that starts
with `Figure N` / `Fig. N` (or `Table N`) anchors a search next to it, in the caption's
column, for the page's graphics: raster images, vector paths and shadings, taken from
MuPDF's bounding-box log of what the page paints. Graphics that touch each other grow
into one region, so a grid of abutting photos is one figure, and a figure that is wider
than its caption's column (a full-width figure with a column-wide caption) is still whole.
Short text blocks next to the graphics (panel labels, axis ticks, legends) join the region;
body text and other captions stop it. The region is then rendered at a fixed DPI with
annotations off (reader highlights in downloaded copies are not part of the figure).

Coordinates are PDF points in PyMuPDF's page space: origin top-left, y down, [x0, y0, x1, y1].

    python -m pipeline.pdffigures paper.pdf --out figs/ --overlay
"""
from __future__ import annotations

import argparse
import io
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pymupdf
from PIL import Image

from model import cli
from pipeline.limits import MAX_PIXELS, MAX_SIDE, error_text
from pipeline.store import atomic_write_bytes

DPI = 150  # figure regions are rendered at this resolution (a rebuild cuts them again at it)

# `Figure 3:`, `Fig. 3.`, `FIGURE 3 |`, `Table IV:`, `Figure S2.`, `Fig 3` ...
CAPTION_RE = re.compile(
    r"^\s*(?P<kind>figure|fig\.?|table)\s*(?P<num>[A-Z]?\d+[a-z]?|[IVXL]+)\s*(?P<sep>[.:|]|[-\u2013\u2014]\s)?",
    re.IGNORECASE,
)
# Any mention of a figure number in the text, the evaluation's notion of "named figures".
FIGURE_MENTION_RE = re.compile(r"\b(?:figure|fig\.?|figs\.?)\s*(\d+)", re.IGNORECASE)

# Distances in PDF points (1/72 inch), tuned on ../shared/testdata/pdfs.
FIRST_GAP = 36.0   # caption to the nearest graphic of its figure
ROW_GAP = 22.0     # between rows of a figure (sub-captions sit in these gaps)
TOUCH = 6.0        # graphics closer than this belong together (grids with thin gutters)
LABEL_REACH = 14.0  # text this close to the graphics is part of the figure (tick labels)
USUAL_SIDE_BONUS = 12.0  # figures' graphics are usually above the caption, tables' below
MARGIN = 0.045     # page fraction at the top/bottom/sides holding running heads and stamps


@dataclass
class TextBlock:
    rect: pymupdf.Rect
    text: str
    size: float        # dominant font size
    n_lines: int
    bold_start: bool   # first span bold: captions often set their label in bold


@dataclass
class Caption:
    block: TextBlock
    kind: str          # "Figure" or "Table"
    number: str
    strong: bool       # punctuation after the number ("Figure 3:"), not a sentence "Figure 3 shows"


@dataclass
class Region:
    """One figure (or table) region on one page."""
    page: int                  # 0-based
    bbox: tuple                # figure region, PDF points [x0, y0, x1, y1]
    caption_bbox: tuple
    caption: str
    figure_type: str           # "Figure" or "Table"
    figure_number: str | None
    n_images: int = 0
    n_paths: int = 0
    parts: list = field(default_factory=list, repr=False)  # the graphic rects it grew from


# ---------------------------------------------------------------------------------------
# Reading a page: text blocks, captions, graphics


def _text_blocks(page: pymupdf.Page) -> list[TextBlock]:
    """Text blocks of the page, split where a line starts a caption inside a block."""
    flags = pymupdf.TEXTFLAGS_DICT & ~pymupdf.TEXT_PRESERVE_IMAGES
    blocks = []
    for b in page.get_text("dict", flags=flags)["blocks"]:
        groups: list[list[dict]] = []
        for line in b["lines"]:
            if not groups or _starts_caption(line, groups[-1][-1]):
                groups.append([])
            groups[-1].append(line)
        for lines in groups:
            spans = [s for line in lines for s in line["spans"] if s["text"].strip()]
            if not spans:
                continue
            rect = pymupdf.Rect()
            for line in lines:
                rect |= line["bbox"]
            sizes = Counter()
            for s in spans:
                sizes[round(s["size"], 1)] += len(s["text"])
            text = "\n".join("".join(s["text"] for s in line["spans"]) for line in lines)
            blocks.append(TextBlock(rect, text.strip(), sizes.most_common(1)[0][0], len(lines),
                                    bool(spans[0]["flags"] & 16)))
    return blocks


def _starts_caption(line: dict, previous: dict) -> bool:
    """A caption run into the block above it (figure labels, a paragraph): a caption label
    after a gap, in bold, in another font size, or not aligned with the line before.

    A body line that merely wraps to start with "Table 3." has none of these.
    """
    spans = [s for s in line["spans"] if s["text"].strip()]
    before = [s for s in previous["spans"] if s["text"].strip()]
    if not spans or not before or not CAPTION_RE.match("".join(s["text"] for s in line["spans"])):
        return False
    height = line["bbox"][3] - line["bbox"][1]
    gap = line["bbox"][1] - previous["bbox"][3]
    return (gap > 0.3 * height or bool(spans[0]["flags"] & 16)
            or abs(spans[0]["size"] - before[-1]["size"]) > 0.5
            or abs(line["bbox"][0] - previous["bbox"][0]) > 2 * height)


def caption_parts(text: str) -> tuple[str, str]:
    """("Figure 3", the caption's words) of a caption block's text; ("", text) without a label."""
    text = " ".join(text.split())
    m = CAPTION_RE.match(text)
    if not m:
        return "", text
    kind = "Table" if m.group("kind").lower() == "table" else "Figure"
    return f"{kind} {m.group('num')}", text[m.end():].strip()


def _caption(block: TextBlock) -> Caption | None:
    m = CAPTION_RE.match(block.text)
    if not m:
        return None
    kind = "Table" if m.group("kind").lower() == "table" else "Figure"
    rest = block.text[m.end():].lstrip()
    strong = bool(m.group("sep")) or block.bold_start or not rest
    if not strong and rest[:1].islower():
        return None  # "Figure 3 shows ..." is a sentence of body text
    return Caption(block, kind, m.group("num"), strong)


def _graphics(page: pymupdf.Page) -> tuple[list[pymupdf.Rect], list[pymupdf.Rect], list[pymupdf.Rect]]:
    """Bounding boxes of painted images, of visible vector paths, and of white canvases.

    White fills without a stroke paint nothing on white paper; they are kept apart as
    canvases (a figure's own background gives its extent, see `_on_canvas`) and never grow
    a region. Dropped: page-sized paths (backgrounds) and items wholly in the top or bottom
    margin (running-head rules).
    """
    page_rect = page.rect
    area = page_rect.get_area()
    top, bottom = page_rect.y0 + MARGIN * page_rect.height, page_rect.y1 - MARGIN * page_rect.height

    # get_bboxlog and get_drawings include annotation appearances; they are not the paper
    annots = [pymupdf.Rect(a.rect) for a in page.annots()]

    def on_page(r):
        r = pymupdf.Rect(max(r[0], page_rect.x0), max(r[1], page_rect.y0),
                         min(r[2], page_rect.x1), min(r[3], page_rect.y1))
        if r.x0 > r.x1 or r.y0 > r.y1 or (r.width == 0 and r.height == 0):
            return None  # off the page, or a point
        if r.y1 < top or r.y0 > bottom:
            return None
        return None if any(_inside_fraction(r, a) > 0.9 for a in annots) else r

    images, paths, canvases = [], [], []
    for kind, bbox in page.get_bboxlog():
        r = on_page(bbox)
        if r is None:
            continue
        if kind in ("fill-image", "fill-imgmask") and r.width > 2 and r.height > 2:
            images.append(r)
        elif kind == "fill-shade":
            paths.append(r)
    clips = []
    for d, clip in _drawings_with_clips(page):
        if d["type"] == "clip":
            if not any(_inside_fraction(d["scissor"], a) > 0.9 for a in annots):
                clips.append(pymupdf.Rect(d["scissor"]))
            continue
        if d["type"] not in ("f", "s", "fs"):
            continue
        r = on_page(_intersect(d["rect"], clip) if clip is not None else d["rect"])
        if r is None or r.get_area() > 0.8 * area:
            continue
        stroked = d.get("color") is not None and (d.get("stroke_opacity") or 1) > 0
        filled = d.get("fill") is not None and (d.get("fill_opacity") or 1) > 0
        if stroked or (filled and min(d["fill"]) < 0.98):
            paths.append(r)
        elif filled:
            canvases.append(r)
    if images:
        images = _clip_images(images, clips)
    return images, _merge_touching(paths, 1.0), canvases


def _drawings_with_clips(page: pymupdf.Page):
    """Each drawing with the clip rect in force when it is painted (None: no clip).

    Plots clip their curves to the axes; MuPDF's path boxes are the unclipped ones, which can
    run far outside the figure.
    """
    stack: list[tuple[int, pymupdf.Rect]] = []  # (level, effective clip)
    for d in page.get_cdrawings(extended=True):  # raw tuples: much faster than get_drawings
        level = d.get("level", 0)
        while stack and stack[-1][0] >= level:
            stack.pop()
        clip = stack[-1][1] if stack else None
        if d["type"] == "clip":
            scissor = pymupdf.Rect(d["scissor"])
            stack.append((level, _intersect(scissor, clip) if clip is not None else scissor))
        yield d, clip


def _intersect(a, b) -> pymupdf.Rect:
    """Intersection that keeps lines (a zero-height line inside b stays a line)."""
    return pymupdf.Rect(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def _clip_images(images: list[pymupdf.Rect], clips: list[pymupdf.Rect]) -> list[pymupdf.Rect]:
    """Cut images down to the clip paths that crop them.

    LaTeX's `trim`/`clip` and screenshots pasted into slides paint a whole image and show only
    part of it; MuPDF reports the whole image's box (images are not in the drawings list, so
    their clip is not known exactly). A clip rect lying inside an image's box is taken as its
    visible part.
    """
    visible = []
    for img in images:
        inner = [c for c in clips if _inside_fraction(c, img) > 0.9 and c.get_area() < 0.95 * img.get_area()]
        visible.append(img & _union(inner) if inner else img)
    return visible


def _merge_touching(rects: list[pymupdf.Rect], tol: float) -> list[pymupdf.Rect]:
    """Merge rects whose gap is at most `tol` into their union, until none touch."""
    rects = sorted(rects, key=lambda r: (r.y0, r.x0))
    while True:
        merged: list[pymupdf.Rect] = []
        for r in rects:
            grown = pymupdf.Rect(r.x0 - tol, r.y0 - tol, r.x1 + tol, r.y1 + tol)
            for i, m in enumerate(merged):
                if _overlaps(grown, m):
                    merged[i] = _join(m, r)
                    break
            else:
                merged.append(pymupdf.Rect(r))
        if len(merged) == len(rects):
            return merged
        rects = merged


def _overlaps(a: pymupdf.Rect, b: pymupdf.Rect) -> bool:
    """Closed-interval overlap, so zero-width lines and abutting images count."""
    return a.x0 <= b.x1 and b.x0 <= a.x1 and a.y0 <= b.y1 and b.y0 <= a.y1


def _gap(a: pymupdf.Rect, b: pymupdf.Rect) -> float:
    """Largest axis gap between two rects (0 when they overlap or touch)."""
    return max(a.x0 - b.x1, b.x0 - a.x1, a.y0 - b.y1, b.y0 - a.y1, 0.0)


def _inside_fraction(a: pymupdf.Rect, b: pymupdf.Rect) -> float:
    """How much of a's area lies in b (for a line or point: 1 if b holds it, else 0).

    Plain float arithmetic: this runs for every drawing against every clip and annotation.
    """
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    if ax1 <= ax0 or ay1 <= ay0:
        return float(bx0 <= ax0 and ax1 <= bx1 and by0 <= ay0 and ay1 <= by1)
    w = min(ax1, bx1) - max(ax0, bx0)
    h = min(ay1, by1) - max(ay0, by0)
    return 0.0 if w <= 0 or h <= 0 else w * h / ((ax1 - ax0) * (ay1 - ay0))


def _body_font_size(blocks: list[TextBlock]) -> float:
    sizes = Counter()
    for b in blocks:
        sizes[b.size] += len(b.text)
    return sizes.most_common(1)[0][0] if sizes else 10.0


# ---------------------------------------------------------------------------------------
# Growing a region from a caption


def _is_body(block: TextBlock, body_size: float, graphics: list[pymupdf.Rect]) -> bool:
    """Paragraph text: body-sized, several lines or a long line, and not painted over graphics."""
    if block.size < 0.88 * body_size:
        return False
    if block.n_lines < 2 and len(block.text) < 60:
        return False
    if block.rect.width < 80 or len(block.text) / block.n_lines < 25:
        return False  # narrow, or short lines: table cells, legends
    return not any(_inside_fraction(block.rect, g) > 0.5 for g in graphics)


def _grow(caption: Caption, up: bool, graphics: list[pymupdf.Rect], labels: list[pymupdf.Rect],
          stops: list[pymupdf.Rect], page_rect: pymupdf.Rect) -> tuple[list[pymupdf.Rect], float]:
    """Graphics forming the figure on one side of `caption` (above when `up`), or [].

    Also returns the gap between the caption and the nearest of them.
    """
    cap = caption.block.rect
    column = (cap.x0 - 4, cap.x1 + 4)

    def beside(r):  # on the searched side of the caption
        return r.y1 <= cap.y0 + 2 if up else r.y0 >= cap.y1 - 2

    def in_column(r):
        return r.x1 > column[0] and r.x0 < column[1]

    # the nearest body text or caption in the column bounds the search
    limit = page_rect.y0 if up else page_rect.y1
    for s in stops:
        if s is not cap and in_column(s) and beside(s):
            limit = max(limit, s.y1) if up else min(limit, s.y0)

    def within_limit(r):
        return r.y0 >= limit - 1 if up else r.y1 <= limit + 1

    # 1. walk away from the caption through the column, row by row
    items = [(g, True) for g in graphics if beside(g) and in_column(g) and within_limit(g)]
    items += [(t, False) for t in labels if beside(t) and in_column(t) and within_limit(t)]
    items.sort(key=lambda it: -it[0].y1 if up else it[0].y0)
    taken: list[tuple[pymupdf.Rect, bool]] = []
    edge = cap.y0 if up else cap.y1
    for r, is_graphic in items:
        gap = (edge - r.y1) if up else (r.y0 - edge)
        if gap > (ROW_GAP if taken else FIRST_GAP):
            break
        taken.append((r, is_graphic))
        edge = min(edge, r.y0) if up else max(edge, r.y1)
    while taken and not taken[-1][1]:
        taken.pop()  # text beyond the last graphic is a heading or an equation, not the figure
    parts = [r for r, is_graphic in taken if is_graphic]
    if not parts:
        return [], float("inf")
    nearest = min(parts, key=lambda r: (cap.y0 - r.y1) if up else (r.y0 - cap.y1))
    first_gap = max((cap.y0 - nearest.y1) if up else (nearest.y0 - cap.y1), 0.0)

    # 2. grow across the page through touching graphics (full-width figures, wide grids)
    region = _union(parts)
    body_stops = [s for s in stops if s is not cap]
    changed = True
    while changed:
        changed = False
        for g in graphics:
            if any(g is p for p in parts) or not beside(g) or _gap(g, region) > TOUCH:
                continue
            grown = _join(region, g)
            if any(_inside_fraction(s, grown) > 0.3 for s in body_stops):
                continue
            parts.append(g)
            region = grown
            changed = True
    return parts, first_gap


def _join(a: pymupdf.Rect, b: pymupdf.Rect) -> pymupdf.Rect:
    """The box around both; unlike `a | b` it keeps lines (MuPDF skips empty rects)."""
    return pymupdf.Rect(min(a.x0, b.x0), min(a.y0, b.y0), max(a.x1, b.x1), max(a.y1, b.y1))


def _union(rects: list[pymupdf.Rect]) -> pymupdf.Rect:
    u = pymupdf.Rect(rects[0])
    for r in rects[1:]:
        u = _join(u, r)
    return u


def _with_labels(region: pymupdf.Rect, labels: list[pymupdf.Rect], cap: pymupdf.Rect,
                 up: bool) -> pymupdf.Rect:
    """Add the short text blocks that sit on or next to the graphics (panel labels, ticks)."""
    changed = True
    while changed:
        changed = False
        for t in labels:
            if t in region or _gap(t, region) > LABEL_REACH:
                continue
            if (up and t.y1 > cap.y0 + 2) or (not up and t.y0 < cap.y1 - 2):
                continue
            # a label must overlap the region's span on one axis, as ticks and panel letters do
            if t.x1 < region.x0 or t.x0 > region.x1:
                if t.y1 < region.y0 or t.y0 > region.y1:
                    continue
            region = _join(region, t)
            changed = True
    return region


def _on_canvas(region: pymupdf.Rect, canvases: list[pymupdf.Rect], cap: pymupdf.Rect, up: bool,
               stops: list[pymupdf.Rect]) -> pymupdf.Rect:
    """Widen the region to the white canvas it is drawn on (an included PDF figure's page),
    when that canvas holds the region, stays on its side of the caption and holds no body text."""
    for c in canvases:
        if _inside_fraction(region, c) < 0.95 or c.get_area() > 2.0 * region.get_area():
            continue
        if (up and c.y1 > cap.y0 + 2) or (not up and c.y0 < cap.y1 - 2):
            continue
        if any(s is not cap and _inside_fraction(s, c) > 0.3 for s in stops):
            continue
        region = _join(region, c)
    return region


# ---------------------------------------------------------------------------------------
# Public API


def find_figure_regions(page_or_doc, body_size: float | None = None) -> list[Region]:
    """Figure and table regions of one page (a `pymupdf.Page`) or of every page of a document.

    Only captions with graphics next to them give a region. A number may come back on
    another page (supplements often restart at Figure 1); both are kept.
    """
    if isinstance(page_or_doc, pymupdf.Document):
        doc = page_or_doc
        pages_blocks = [_text_blocks(p) for p in doc]
        size = body_size or _body_font_size([b for bl in pages_blocks for b in bl])
        furniture = _running_heads(doc, pages_blocks)
        regions = []
        for page, blocks in zip(doc, pages_blocks):
            blocks = [b for b in blocks if _furniture_key(page, b) not in furniture]
            regions += _page_regions(page, blocks, size)
        return regions
    blocks = _text_blocks(page_or_doc)
    return _page_regions(page_or_doc, blocks, body_size or _body_font_size(blocks))


def _furniture_key(page: pymupdf.Page, block: TextBlock):
    """Running heads and page numbers: text near the top or bottom edge, digits ignored."""
    h = page.rect.height
    if block.rect.y0 > 0.12 * h and block.rect.y1 < 0.88 * h:
        return None
    return round(block.rect.y0 / 4), re.sub(r"\d+", "#", block.text)


def _running_heads(doc: pymupdf.Document, pages_blocks: list[list[TextBlock]]) -> set:
    """Keys of edge text repeated on at least a third of the pages (and on 3 or more)."""
    counts = Counter(k for page, blocks in zip(doc, pages_blocks)
                     for k in {_furniture_key(page, b) for b in blocks} if k)
    return {k for k, n in counts.items() if n >= max(3, len(doc) / 3)}


def _page_regions(page: pymupdf.Page, blocks: list[TextBlock], body_size: float) -> list[Region]:
    page_rect = page.rect
    images, paths, canvases = _graphics(page)
    graphics = images + paths
    side = MARGIN * page_rect.width
    captions, labels, stops = [], [], []
    for b in blocks:
        if b.rect.x1 < page_rect.x0 + side or b.rect.x0 > page_rect.x1 - side:
            continue  # margin stamps (arXiv id, line numbers)
        cap = _caption(b)
        if cap:
            captions.append(cap)
            stops.append(b.rect)
        elif _is_body(b, body_size, graphics):
            stops.append(b.rect)
        else:
            labels.append(b.rect)
    # strong captions first; a sentence-like "Figure 3 ..." only where no real caption has 3
    strong = {(c.kind, c.number) for c in captions if c.strong}
    captions = [c for c in captions if c.strong or (c.kind, c.number) not in strong]

    # Figures pick first: their captions sit below them far more reliably than tables' do.
    regions, claimed = [], set()
    for kind in ("Figure", "Table"):
        regions += _assign(page, [c for c in captions if c.kind == kind], images, graphics, canvases,
                           labels, stops, claimed)
    regions.sort(key=lambda r: (r.bbox[1], r.bbox[0]))
    return regions


def _assign(page, captions, images, graphics, canvases, labels, stops, claimed) -> list[Region]:
    """Give each caption its graphics, greedily, smallest caption-to-graphics gap first.

    Figures usually hang below their graphics and tables above theirs, so that side gets a
    bonus, but a caption takes the other side when its graphics are there and not yet
    claimed by another caption (`claimed` holds ids of graphics already given away).
    """
    page_rect = page.rect
    regions, pending = [], list(captions)
    while pending:
        free = [g for g in graphics if id(g) not in claimed]
        best = None
        for cap in pending:
            for up in (True, False):
                parts, gap = _grow(cap, up, free, labels, stops, page_rect)
                score = gap - (USUAL_SIDE_BONUS if up == (cap.kind == "Figure") else 0.0)
                if parts and (best is None or score < best[0]):
                    best = (score, cap, up, parts)
        if best is None:
            break
        _, cap, up, parts = best
        pending.remove(cap)
        claimed.update(id(p) for p in parts)
        bbox = _with_labels(_union(parts), labels, cap.block.rect, up)
        bbox = _on_canvas(bbox, canvases, cap.block.rect, up, stops) & page_rect
        n_images = sum(1 for p in parts if any(p is i for i in images))
        regions.append(Region(page.number, tuple(round(v, 2) for v in bbox),
                              tuple(cap.block.rect), cap.block.text, cap.kind, cap.number,
                              n_images, len(parts) - n_images, parts))
    return regions


def render_region(page: pymupdf.Page, bbox, dpi: int = DPI) -> Image.Image:
    """The region as an RGB image at `dpi`, annotations off, shrunk to MAX_SIDE if larger.
    A region over the renderer's pixel guard at `dpi` (a poster-sized figure) is rendered at
    the guard's size instead: its thumbnail is the same size, and memory stays bounded."""
    clip = pymupdf.Rect(bbox)
    pixels = clip.width * clip.height * (dpi / 72) ** 2
    if pixels > MAX_PIXELS:
        zoom = dpi / 72 * math.sqrt(MAX_PIXELS / pixels)
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), clip=clip, annots=False,
                              alpha=False, colorspace=pymupdf.csRGB)
    else:
        pix = page.get_pixmap(dpi=dpi, clip=clip, annots=False, alpha=False,
                              colorspace=pymupdf.csRGB)
    img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    return img


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_region(page: pymupdf.Page, bbox, png: Path, dpi: int = DPI) -> Image.Image:
    """Render the region (`render_region`) and write it to `png` atomically; the image.
    Extraction and `pipeline.rebuild` both write through here, so their bytes agree."""
    img = render_region(page, bbox, dpi)
    atomic_write_bytes(png, _png_bytes(img))
    return img


def _record(region: Region | None, **fields) -> dict:
    rec = {"img_name": "", "source_path": "", "png_path": "", "width": 0, "height": 0,
           "page": None, "bbox": None, "figure_type": None, "figure_number": None,
           "caption": "", "status": "error", "error": ""}
    if region is not None:
        rec.update(page=region.page, source_path=f"page-{region.page + 1}", bbox=list(region.bbox),
                   figure_type=region.figure_type, figure_number=region.figure_number,
                   caption=region.caption)
    rec.update(fields)
    return rec


def _img_name(region: Region, seen: Counter) -> str:
    stem = f"page{region.page + 1}_{'fig' if region.figure_type == 'Figure' else 'table'}"
    stem += region.figure_number or "x"
    seen[stem] += 1
    return f"{stem}.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}.png"


def extract_pdf_figures(pdf_path, out_dir, dpi: int = DPI, include_tables: bool = False) -> list[dict]:
    """Find the figures of a PDF and write each as `<out_dir>/<img_name>` (RGB PNG).

    Returns one dict per region: img_name (`page3_fig2.png`: 1-based page, caption number),
    source_path (`page-3`), png_path, width, height, page (0-based), bbox (PDF points,
    [x0, y0, x1, y1], top-left origin), figure_type, figure_number, caption, status (`ok` or
    `error`), error. A PDF that cannot be read gives one `error` dict with an empty img_name;
    a PDF without captioned figures gives []. Existing PNGs are overwritten atomically.
    """
    out_dir = Path(out_dir)
    try:
        doc = pymupdf.open(pdf_path)
    except Exception as e:  # pymupdf raises several types for broken files
        return [_record(None, error=f"cannot open PDF: {error_text(e)}")]
    with doc:
        if doc.needs_pass:
            return [_record(None, error="PDF is encrypted with a password")]
        if not doc.is_pdf:
            return [_record(None, error="not a PDF")]
        try:
            regions = find_figure_regions(doc)
        except Exception as e:
            return [_record(None, error=f"layout analysis failed: {error_text(e)}")]
        records, seen = [], Counter()
        for region in regions:
            if region.figure_type == "Table" and not include_tables:
                continue
            name = _img_name(region, seen)
            try:
                png = out_dir / name
                img = write_region(doc[region.page], region.bbox, png, dpi)
                records.append(_record(region, img_name=name, png_path=str(png), width=img.width,
                                       height=img.height, status="ok"))
            except Exception as e:
                records.append(_record(region, img_name=name,
                                       error=f"render failed: {error_text(e)}"))
        return records


def draw_overlay(page: pymupdf.Page, regions: list[Region], dpi: int = 72) -> Image.Image:
    """The page with figure boxes (red) and their captions (blue), for people to check."""
    from PIL import ImageDraw

    pix = page.get_pixmap(dpi=dpi, annots=False, alpha=False, colorspace=pymupdf.csRGB)
    img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    draw = ImageDraw.Draw(img)
    s = dpi / 72
    for r in regions:
        draw.rectangle([v * s for v in r.caption_bbox], outline=(40, 90, 230), width=2)
        draw.rectangle([v * s for v in r.bbox], outline=(230, 30, 30), width=3)
        # The label on a white patch: red text alone is lost on a dark photo.
        xy, label = (r.bbox[0] * s + 4, r.bbox[1] * s + 4), f"{r.figure_type} {r.figure_number}"
        draw.rectangle(draw.textbbox(xy, label), fill=(255, 255, 255))
        draw.text(xy, label, fill=(230, 30, 30))
    return img


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.pdffigures",
        description="Find the captioned figures of a paper PDF and write each as a PNG "
                    "(the fallback for papers without LaTeX sources). Prints one line per region.")
    ap.add_argument("pdf", nargs="+", type=cli.readable_file, help="paper PDF file(s)")
    ap.add_argument("--out", required=True, type=cli.writable_dir,
                    help="folder for the PNGs (one subfolder per PDF when several)")
    ap.add_argument("--dpi", type=cli.positive_int, default=150, help="render resolution (default 150)")
    ap.add_argument("--tables", action="store_true", help="also write table regions")
    ap.add_argument("--overlay", action="store_true",
                    help="also write <page>_overlay.png per page with a region: boxes drawn on the page")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    failed = 0
    for pdf in tqdm(args.pdf, desc="PDFs", disable=len(args.pdf) < 2):
        out = Path(args.out) / (Path(pdf).stem if len(args.pdf) > 1 else "")
        records = extract_pdf_figures(pdf, out, dpi=args.dpi, include_tables=args.tables)
        for r in records:
            box = ", ".join(f"{v:.0f}" for v in r["bbox"]) if r["bbox"] else ""
            print(f"{pdf}\t{r['status']}\t{r['img_name']}\t[{box}]\t{r['width']}x{r['height']}\t"
                  f"{r['error'] or ' '.join(r['caption'].split())[:60]!r}")
            failed += r["status"] != "ok"
        if args.overlay and records and records[0]["page"] is not None:
            with pymupdf.open(pdf) as doc:
                regions = find_figure_regions(doc)
                for p in sorted({r.page for r in regions}):
                    img = draw_overlay(doc[p], [r for r in regions if r.page == p])
                    atomic_write_bytes(out / f"page{p + 1}_overlay.png", _png_bytes(img))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
