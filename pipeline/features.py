"""Cheap layout features that say "a grid of panels with a natural image in it".

CVF kept figures that are grid-like and contain at least one natural image. Two things tell
them apart from plots and diagrams even without a neural network:

* the layout: panels separated by white gutters show up as runs of (almost) all-white rows
  and columns in the projection profiles; we count the bands between them;
* the pixels: photos are colourful, textured and have many distinct colours; plots and
  diagrams are mostly flat white with thin sharp lines and a few flat colours.

Beyond those whole-figure statistics, the figure is cut into its panels (`pipeline.panels`)
and each panel is asked whether it is a photo (`pipeline.photo_model`, a small bundled model):
the photographic share of the area, how many panels are photos, and how many panels there are
and how regular they are, which is what CVF's rule asks for.

`layout_features(image)` returns one float vector in the order of `FEATURE_NAMES`. It works
on downscaled copies, so it costs a few milliseconds per figure.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.latex import NO_LATEX, NOT_IN_DOCUMENT, NOT_NAMED
from pipeline.panels import find_panels
from pipeline.photo_model import STAT_NAMES, PhotoModel, channels, colour_codes, panel_stats, working_copy

LAYOUT_FEATURE_NAMES = [
    "aspect",  # width / height, clipped to [0.1, 10]
    "log_pixels",  # log10 of the original pixel count
    "white_fraction",  # share of near-white pixels
    "row_bands",  # bands of content between white gutters, top to bottom
    "col_bands",  # same, left to right
    "panel_count",  # row_bands * col_bands, capped
    "row_gutter_fraction",  # share of rows that are white gutters (inside the content box)
    "col_gutter_fraction",
    "band_regularity",  # 1 - coefficient of variation of band sizes (equal panels -> 1)
    "colourfulness",  # Hasler & Suesstrunk 2003
    "saturation_mean",
    "gray_entropy",  # bits, of the 64-bin grey histogram
    "distinct_colours",  # share of the 4096 colours (4 bits per channel) that occur
    "edge_density",  # share of pixels with a strong gradient
    "texture_fraction",  # share of non-white pixels with a medium gradient (photo texture)
    "flat_fraction",  # share of non-white pixels with zero gradient (flat fills)
    "textured_cells",  # share of 8x8 grid cells that look photographic
]
PANEL_FEATURE_NAMES = [
    "panels_log",  # log(1 + panels found by `pipeline.panels.find_panels`)
    "panel_rows",  # distinct rows of panels (panels whose tops line up)
    "panel_cols",  # distinct columns of panels
    "panel_size_regularity",  # 1 - coefficient of variation of the panels' areas (equal cells -> 1)
    "panel_coverage",  # share of the content box the panels cover
    "photo_whole",  # the photo model's probability for the whole figure taken as one panel
    "photo_max",  # ... for its most photo-like panel
    "photo_mean",  # ... averaged over panels, weighted by area
    "photo_panels_log",  # log(1 + panels with photo probability >= 0.5)
    "photo_panel_share",  # share of the panels that are photos
    "photo_area_share",  # share of the content box covered by photo panels
    "grid_with_photo",  # at least two panels, at least one of them a photo: CVF's rule, as a 0/1
    "photo_saturation",  # mean colour saturation of the photo panels (microscopy and depth maps are grey)
]
FEATURE_NAMES = LAYOUT_FEATURE_NAMES + PANEL_FEATURE_NAMES

_SATURATION = STAT_NAMES.index("saturation")
MAX_PANELS = 32  # the photo model looks at this many panels at most, the largest
_SIDE = 256  # the longer side of the small copy: whole-figure features and panel cuts
_WHITE = 235  # a pixel at least this bright on every channel counts as white
_GUTTER = 0.985  # a row/column this white is a gutter


def _bands(is_gutter: np.ndarray, min_len: int) -> list[int]:
    """Lengths of the runs of non-gutter lines at least `min_len` long."""
    runs, n = [], 0
    for g in is_gutter:
        if g:
            if n >= min_len:
                runs.append(n)
            n = 0
        else:
            n += 1
    if n >= min_len:
        runs.append(n)
    return runs


def _content_box(white_rows: np.ndarray, white_cols: np.ndarray) -> tuple[slice, slice]:
    """Trim the white margin around the content, so margins are not counted as gutters."""
    rows = np.flatnonzero(~white_rows)
    cols = np.flatnonzero(~white_cols)
    if rows.size == 0 or cols.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _gradient(gray: np.ndarray) -> np.ndarray:
    gx = np.zeros_like(gray)
    gy = np.zeros_like(gray)
    gx[:, 1:-1] = gray[:, 2:] - gray[:, :-2]
    gy[1:-1, :] = gray[2:, :] - gray[:-2, :]
    return np.hypot(gx, gy) / 2.0


def layout_features(image: Image.Image) -> np.ndarray:
    """The feature vector of one figure, in the order of FEATURE_NAMES (any PIL mode;
    transparency is composited on white)."""
    w0, h0 = image.size
    work = working_copy(image)  # decoded and shrunk once, for both groups of features
    small = _small_copy(work)
    return np.concatenate([_whole_figure_features(np.asarray(small), w0, h0), panel_features(work, small)])


def _small_copy(work: np.ndarray) -> Image.Image:
    """The working copy at most _SIDE on its longer side: for the whole-figure features and the panels."""
    small = Image.fromarray(work)
    small.thumbnail((_SIDE, _SIDE), Image.Resampling.BILINEAR)
    return small


def _whole_figure_features(rgb: np.ndarray, w0: int, h0: int) -> np.ndarray:
    """LAYOUT_FEATURE_NAMES of the small copy (RGB uint8) of a figure w0 x h0 pixels large."""
    h, w = rgb.shape[:2]
    r, g, b, gray, mx, mn = channels(rgb)
    white = (rgb[..., 0] >= _WHITE) & (rgb[..., 1] >= _WHITE) & (rgb[..., 2] >= _WHITE)

    # Layout: gutters are rows/columns that are (almost) entirely white inside the content box.
    box_r, box_c = _content_box(white.mean(axis=1) >= _GUTTER, white.mean(axis=0) >= _GUTTER)
    inner = white[box_r, box_c]
    if inner.size:
        row_gutter = inner.mean(axis=1) >= _GUTTER
        col_gutter = inner.mean(axis=0) >= _GUTTER
        min_len = max(3, min(h, w) // 25)  # a panel is at least ~4% of the figure
        row_runs = _bands(row_gutter, min_len)
        col_runs = _bands(col_gutter, min_len)
    else:
        row_gutter = col_gutter = np.zeros(1, bool)
        row_runs, col_runs = [], []
    sizes = np.array(row_runs + col_runs, dtype=np.float32)
    regularity = 1.0 - float(sizes.std() / sizes.mean()) if sizes.size > 2 else 0.0

    # Pixels: colour, texture and flatness.
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    saturation = (mx - mn) / np.maximum(mx, 1)  # 0 where mx is 0, as then mn is 0 too
    # the 64-bin histogram: gray // 4, as a product by 1/4 (exact) and a truncation, far faster
    hist = np.bincount((gray * 0.25).astype(np.int32).ravel(), minlength=64).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log2(p)).sum())
    distinct = np.count_nonzero(np.bincount(colour_codes(rgb).ravel(), minlength=4096)) / 4096.0

    grad = _gradient(gray)
    ink = ~white
    n_ink = max(int(ink.sum()), 1)
    texture = (grad > 2) & (grad < 40) & ink
    flat = (grad == 0) & ink

    # Photographic cells: an 8x8 grid; a cell is textured if most of it is medium-gradient.
    ch, cw = max(h // 8, 1), max(w // 8, 1)
    if h >= 8 and w >= 8:  # the 64 cells at once
        cells = int((texture[:8 * ch, :8 * cw].reshape(8, ch, 8, cw).mean(axis=(1, 3)) > 0.35).sum())
    else:
        cells = 0
        for i in range(8):
            for j in range(8):
                t = texture[i * ch:(i + 1) * ch, j * cw:(j + 1) * cw]
                cells += bool(t.size) and t.mean() > 0.35

    return np.array([
        min(max(w0 / max(h0, 1), 0.1), 10.0),  # clipped: a sliver's aspect would swamp a linear head
        np.log10(max(w0 * h0, 1)),
        white.mean(),
        len(row_runs),
        len(col_runs),
        min(len(row_runs) * len(col_runs), 64),
        row_gutter.mean(),
        col_gutter.mean(),
        regularity,
        colourfulness,
        float(saturation.mean()),
        entropy,
        distinct,
        float((grad > 40).mean()),
        texture.sum() / n_ink,
        flat.sum() / n_ink,
        cells / 64.0,
    ], dtype=np.float32)


def _lines(starts: list[int], tolerance: float) -> int:
    """How many distinct values `starts` has, values within `tolerance` being one."""
    count, last = 0, None
    for v in sorted(starts):
        if last is None or v - last > tolerance:
            count += 1
            last = v
    return count


def _panels(work: np.ndarray, small: Image.Image) -> list[tuple[int, int, int, int]]:
    """The largest MAX_PANELS panels of the working copy, in its pixels, in reading order. They
    are found on the small copy of the whole-figure features: the cuts cost in proportion to
    the area."""
    h, w = work.shape[:2]
    sy, sx = h / small.height, w / small.width
    boxes = [(int(x0 * sx), int(y0 * sy), min(w, int(np.ceil(x1 * sx))), min(h, int(np.ceil(y1 * sy))))
             for x0, y0, x1, y1 in find_panels(small)]
    if len(boxes) > MAX_PANELS:
        largest = set(sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))[:MAX_PANELS])
        boxes = [b for b in boxes if b in largest]
    return boxes


def panel_features(work: np.ndarray, small: Image.Image | None = None) -> np.ndarray:
    """PANEL_FEATURE_NAMES of a figure's working copy (`pipeline.photo_model.working_copy`);
    `small` is its copy at most _SIDE on its longer side, made here when not given."""
    if small is None:
        small = _small_copy(work)
    model = PhotoModel.load()
    h, w = work.shape[:2]
    boxes = _panels(work, small)
    stats = np.stack([panel_stats(work)] + [panel_stats(work[y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes])
    prob = model.prob(stats)  # one call for the whole figure and its panels
    whole, stats, prob = float(prob[0]), stats[1:], prob[1:]
    if not boxes:
        return np.array([0, 0, 0, 0, 0, whole, 0, 0, 0, 0, 0, 0, 0], dtype=np.float32)
    area = np.array([(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes], dtype=np.float64)
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    content = max((x1 - x0) * (y1 - y0), 1)
    photo = prob >= 0.5
    tolerance = 0.03 * max(h, w)
    regularity = 1.0 - float(area.std() / area.mean()) if len(boxes) > 1 else 0.0
    return np.array([
        np.log1p(len(boxes)),
        _lines([b[1] for b in boxes], tolerance),
        _lines([b[0] for b in boxes], tolerance),
        max(regularity, -1.0),
        min(area.sum() / content, 1.0),
        whole,
        float(prob.max()),
        float((prob * area).sum() / area.sum()),
        np.log1p(int(photo.sum())),
        float(photo.mean()),
        min(float(area[photo].sum() / content), 1.0),
        float(len(boxes) >= 2 and photo.any()),
        float((stats[photo, _SATURATION] * area[photo]).sum() / area[photo].sum()) if photo.any() else 0.0,
    ], dtype=np.float32)


def layout_features_of_file(path) -> np.ndarray:
    with Image.open(path) as im:
        return layout_features(im)


# --- the figure's words -----------------------------------------------------------------------

# Cue words of captions: the first group says "a grid of photos" (qualitative results shown side
# by side), the second "a plot or a diagram". A word counts when a caption word starts with it.
CAPTION_CUES = [
    "qualitative", "example", "comparison", "visual", "result", "input", "ground", "sample", "image",
    "photo", "frame", "scene", "predict", "segmentation", "depth", "mask", "failure", "generated",
    "plot", "curve", "accuracy", "performance", "architecture", "pipeline", "overview", "diagram",
    "framework", "module", "network", "table", "loss", "ablation", "distribution", "training",
]
CAPTION_FEATURE_NAMES = ["named_by_latex", "has_caption", "caption_log_words", "has_subcaption",
                         "n_panels_log", "caption_has_math"] + [f"cue_{w}" for w in CAPTION_CUES]


def caption_features(caption: str | None, subcaption: str | None = None, n_panels: int | None = None,
                     named_by_latex: bool = True) -> np.ndarray:
    """One float vector in the order of CAPTION_FEATURE_NAMES: whether a whole document of the
    paper's LaTeX names the file in a graphic (a copy left unused in the tree, a figure of an
    appendix no document reads, are not), whether the figure has a caption, its length, a
    sub-caption, the float's panel count, math, and which cue words it uses."""
    caption, subcaption = caption or "", subcaption or ""
    words = [w.strip(".,;:()[]{}\"'").lower() for w in f"{caption} {subcaption}".split()]
    cues = [float(any(w.startswith(cue) for w in words)) for cue in CAPTION_CUES]
    return np.array([float(bool(named_by_latex)), float(bool(caption)), np.log1p(len(caption.split())),
                     float(bool(subcaption)), np.log1p(n_panels or 0), float("$" in caption)] + cues,
                    dtype=np.float32)


def is_named_by_latex(record: dict) -> bool:
    """Whether a whole document of the paper's LaTeX names the figure's file, from what
    extraction recorded (`pipeline.latex.figure_texts`' caption_error). Where the LaTeX reader
    had problems, the plain reference scan (`included`) decides. A figure the PDF fallback cut
    from the paper is in the paper by construction."""
    if record.get("source_kind") == "pdf":
        return True
    error = record.get("caption_error") or ""
    if record.get("caption") or not error.startswith((NOT_NAMED, NOT_IN_DOCUMENT, NO_LATEX)):
        return True
    if error.startswith(NOT_NAMED) and "LaTeX problems" in error:
        return bool(record.get("included"))
    return False


def record_caption_features(record: dict) -> np.ndarray:
    """caption_features of a figure record."""
    return caption_features(record.get("caption"), record.get("subcaption"), record.get("n_panels"),
                            is_named_by_latex(record))
