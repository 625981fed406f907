"""Cheap layout features that say "a grid of panels with a natural image in it".

CVF kept figures that are grid-like and contain at least one natural image. Two things tell
them apart from plots and diagrams even without a neural network:

* the layout: panels separated by white gutters show up as runs of (almost) all-white rows
  and columns in the projection profiles; we count the bands between them;
* the pixels: photos are colourful, textured and have many distinct colours; plots and
  diagrams are mostly flat white with thin sharp lines and a few flat colours.

`layout_features(image)` returns one float vector in the order of `FEATURE_NAMES`. It works
on a downscaled copy, so it costs a few milliseconds per figure.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

FEATURE_NAMES = [
    "aspect",  # width / height
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

_SIDE = 256  # the longer side of the working copy
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
    """The feature vector of one figure (any PIL mode; transparency is composited on white)."""
    w0, h0 = image.size
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, image)
    image = image.convert("RGB")
    image.thumbnail((_SIDE, _SIDE), Image.Resampling.BILINEAR)
    rgb = np.asarray(image, dtype=np.float32)
    h, w = rgb.shape[:2]
    gray = rgb.mean(axis=2)
    white = (rgb >= _WHITE).all(axis=2)

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
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    saturation = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0)
    hist = np.bincount((gray // 4).astype(np.int64).ravel(), minlength=64).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log2(p)).sum())
    q = (rgb.astype(np.uint16) >> 4)
    codes = (q[..., 0] << 8) | (q[..., 1] << 4) | q[..., 2]
    distinct = np.unique(codes).size / 4096.0

    grad = _gradient(gray)
    ink = ~white
    n_ink = max(int(ink.sum()), 1)
    texture = (grad > 2) & (grad < 40) & ink
    flat = (grad == 0) & ink

    # Photographic cells: an 8x8 grid; a cell is textured if most of it is medium-gradient.
    cells = 0
    ch, cw = max(h // 8, 1), max(w // 8, 1)
    for i in range(8):
        for j in range(8):
            t = texture[i * ch:(i + 1) * ch, j * cw:(j + 1) * cw]
            cells += bool(t.size) and t.mean() > 0.35

    return np.array([
        w0 / max(h0, 1),
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
CAPTION_FEATURE_NAMES = ["has_caption", "caption_log_words", "has_subcaption", "n_panels_log",
                         "caption_has_math"] + [f"cue_{w}" for w in CAPTION_CUES]


def caption_features(caption: str | None, subcaption: str | None = None,
                     n_panels: int | None = None) -> np.ndarray:
    """One float vector in the order of CAPTION_FEATURE_NAMES: whether the figure has a caption,
    its length, a sub-caption, the float's panel count, math, and which cue words it uses."""
    caption, subcaption = caption or "", subcaption or ""
    words = [w.strip(".,;:()[]{}\"'").lower() for w in f"{caption} {subcaption}".split()]
    cues = [float(any(w.startswith(cue) for w in words)) for cue in CAPTION_CUES]
    return np.array([float(bool(caption)), np.log1p(len(caption.split())), float(bool(subcaption)),
                     np.log1p(n_panels or 0), float("$" in caption)] + cues, dtype=np.float32)
