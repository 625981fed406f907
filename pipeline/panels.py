"""The panels of a figure: the cells of its grid, found by recursive cuts along gutters.

Multi-panel figures in papers separate their panels in a few ways, and a cut finds each:

* white gutters: rows (or columns) that are white from edge to edge of the region;
* thin rules and frames: a few rows of one flat colour (a black line between framed cells);
* seams: photos placed edge to edge, with no gutter; the row where one ends and the next
  begins differs sharply from the one before along nearly its whole length.

The cut is recursive (XY-cut): a region is cut into bands along every separator of one
direction, each band is cut along the other, and so on, so grids of unequal cells (a tall
panel beside a column of small ones, rows of different lengths) come apart cell by cell.
Bands too thin to be a panel (a row of labels, a caption line) are dropped. It works on a
downscaled copy: a few milliseconds a figure.

`find_panels(image)` returns boxes `(x0, y0, x1, y1)` in the image's own pixels, in reading
order; one box (the content, margins trimmed) when the figure is a single panel, none when it
is blank.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

WORK_SIDE = 512      # the longer side of the working copy
WHITE = 225          # a pixel at least this bright on every channel is background (JPEG'd white too)
GUTTER_SHARE = 1.0   # a line this white is a gutter: all of it (an axis is a 2-pixel line across white)
FLAT_RANGE = 24      # a line whose channels vary by at most this much is flat (a rule)
RULE_MAX = 0.02      # ... and a run of flat lines is a rule while at most this share of the side
RULE_GRAY = 160      # ... and darker than this (a pale flat line is more often sky than a rule)
RULE_CONTRAST = 40   # ... and this much darker or lighter than a line beside it
SEAM_STEP = 24       # a grey step at least this large between two lines ...
SEAM_SHARE = 0.85    # ... along this share of the line makes a seam
PEAK_RATIO = 2.5     # find_panels(peak_seams=True): a line whose mean step stands this many times above ...
PEAK_WINDOW = 10     # ... the median step of the lines this far on either side (the line's own neighbours
                     # left out: a resized seam smears over two) ...
PEAK_MIN_STEP = 10   # ... and is at least this large (mean over the line, grey levels) ...
PEAK_SHARE = 0.6     # ... with a step over twice the median nearby along this share of the line
MIN_PANEL = 0.04     # a panel's sides are at least this share of the figure's longer side
MIN_PANEL_PX = 12    # ... and at least this many pixels of the working copy
MAX_PANELS = 256
MAX_DEPTH = 6

Box = tuple[int, int, int, int]


def as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """An RGB uint8 array of any PIL image or array; transparency is composited on white."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.shape[2] == 4:
            alpha = arr[..., 3:4].astype(np.float32) / 255.0
            arr = arr[..., :3] * alpha + 255.0 * (1 - alpha)
        return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)
    if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def find_panels(image: Image.Image | np.ndarray, *, seams: bool = True, peak_seams: bool = False,
                min_panel: float = MIN_PANEL, max_panels: int = MAX_PANELS) -> list[Box]:
    """The panel boxes of one figure, in its own pixel coordinates, in reading order.

    `peak_seams` also cuts where the grey step between two lines peaks sharply above the steps of the
    lines around it along most of the line: photos placed edge to edge whose colours are too close
    for the fixed SEAM_STEP. It finds more seams and, now and then, cuts a photo along a straight
    horizon: for a search that also compares the uncut figure, not for counting panels."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(as_rgb(image))
    w0, h0 = image.size
    if h0 == 0 or w0 == 0:
        return []
    scale = min(1.0, WORK_SIDE / max(h0, w0))
    if scale < 1.0:  # shrink before converting: a poster-size figure never exists as an array
        image = image.resize((max(1, round(w0 * scale)), max(1, round(h0 * scale))),
                             Image.Resampling.BOX, reducing_gap=2.0)
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    cut = _Cutter(rgb, seams, peak_seams, max(MIN_PANEL_PX, round(min_panel * max(h, w))), max_panels)
    boxes = cut.split((0, 0, w, h), depth=0)
    sx, sy = w0 / w, h0 / h
    return [(int(x0 * sx), int(y0 * sy), min(w0, int(np.ceil(x1 * sx))), min(h0, int(np.ceil(y1 * sy))))
            for x0, y0, x1, y1 in boxes]


class _Cutter:
    def __init__(self, rgb: np.ndarray, seams: bool, peak_seams: bool, min_len: int, max_panels: int):
        self.rgb = rgb  # uint8: min/max along lines are twice as fast as on a wider type
        self.white = (rgb >= WHITE).all(axis=2)
        self.gray = rgb.astype(np.float32).mean(axis=2)
        self.seams = seams
        self.peak_seams = peak_seams
        self.min_len = min_len
        self.max_panels = max_panels
        self.found = 0

    def split(self, box: Box, depth: int) -> list[Box]:
        box = self._trim(box)
        if box is None:
            return []
        x0, y0, x1, y1 = box
        if x1 - x0 < self.min_len or y1 - y0 < self.min_len:
            return []
        if depth < MAX_DEPTH:
            for axis in (0, 1):  # rows first: a figure reads top to bottom, then left to right
                bands = self._bands(box, axis)
                if len(bands) > 1 or (bands and bands[0] != _span(box, axis)):
                    out = []
                    for lo, hi in bands:
                        sub = (x0, lo, x1, hi) if axis == 0 else (lo, y0, hi, y1)
                        out.extend(self.split(sub, depth + 1))
                    return out
        if self.found >= self.max_panels:
            return []
        self.found += 1
        return [box]

    def _separators(self, box: Box, axis: int) -> np.ndarray:
        """For each line of the box across `axis` (rows for 0, columns for 1): is it a separator?"""
        x0, y0, x1, y1 = box
        line_axis = 1 if axis == 0 else 0
        white = self.white[y0:y1, x0:x1].mean(axis=line_axis) >= GUTTER_SHARE
        region = self.rgb[y0:y1, x0:x1]
        spread = (region.max(axis=line_axis).astype(np.int16) - region.min(axis=line_axis)).max(axis=1)
        level = self.gray[y0:y1, x0:x1].mean(axis=line_axis)
        flat = _rules((spread <= FLAT_RANGE) & (level < RULE_GRAY), level,
                      max(2, round(RULE_MAX * max(x1 - x0, y1 - y0))))
        sep = white | flat
        if self.seams:
            gray = self.gray[y0:y1, x0:x1]
            step = np.abs(np.diff(gray, axis=axis))  # between line i and i + 1
            seam = (step >= SEAM_STEP).mean(axis=line_axis) >= SEAM_SHARE
            # a seam is no line of its own: mark the first line of the next panel as a one-line
            # cut, which costs that panel one line
            if self.peak_seams:
                seam |= _peak_seams(step, line_axis)
            sep[1:] |= seam
        return sep

    def _bands(self, box: Box, axis: int) -> list[tuple[int, int]]:
        """The runs of non-separator lines at least `min_len` long, in image coordinates."""
        start = box[1] if axis == 0 else box[0]
        sep = self._separators(box, axis)
        bands, run_start = [], None
        for i, s in enumerate(np.append(sep, True)):
            if not s and run_start is None:
                run_start = i
            elif s and run_start is not None:
                if i - run_start >= self.min_len:
                    bands.append((start + run_start, start + i))
                run_start = None
        return bands

    def _trim(self, box: Box) -> Box | None:
        """The box shrunk to its content: white margins removed; None when it is all white."""
        x0, y0, x1, y1 = box
        white = self.white[y0:y1, x0:x1]
        rows = np.flatnonzero(white.mean(axis=1) < GUTTER_SHARE)
        cols = np.flatnonzero(white.mean(axis=0) < GUTTER_SHARE)
        if rows.size == 0 or cols.size == 0:
            return None
        return x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1


def _span(box: Box, axis: int) -> tuple[int, int]:
    return (box[1], box[3]) if axis == 0 else (box[0], box[2])


def _peak_seams(step: np.ndarray, line_axis: int) -> np.ndarray:
    """For each pair of neighbouring lines: is the grey step between them a sharp peak, far above
    the steps nearby (a photo's own rows change gradually; two photos meet at one line), and spread
    along most of the line (an object's edge covers part of it)?"""
    mean = step.mean(axis=line_axis)
    n = len(mean)
    out = np.zeros(n, bool)
    for i in np.flatnonzero(mean >= PEAK_MIN_STEP):
        around = np.r_[mean[max(0, i - PEAK_WINDOW):max(0, i - 1)], mean[i + 2:i + 2 + PEAK_WINDOW]]
        nearby = float(np.median(around)) if len(around) >= PEAK_WINDOW else np.inf
        if mean[i] < PEAK_RATIO * nearby:
            continue
        line = step[i] if line_axis == 1 else step[:, i]
        out[i] = (line >= max(4.0, 2 * nearby)).mean() >= PEAK_SHARE
    return out


def _rules(flat: np.ndarray, level: np.ndarray, max_len: int) -> np.ndarray:
    """The runs of flat lines that are rules: thin (a long run is a flat area of a panel) and
    standing out from a neighbouring line (a dark flat line between dark lines is the night
    sky of a photo, not a frame)."""
    out = np.zeros_like(flat)
    n, i = len(flat), 0
    while i < n:
        if not flat[i]:
            i += 1
            continue
        j = i
        while j < n and flat[j]:
            j += 1
        run = level[i:j].mean()
        beside = [level[k] for k in (i - 1, j) if 0 <= k < n]
        if j - i <= max_len and (not beside or max(abs(b - run) for b in beside) >= RULE_CONTRAST):
            out[i:j] = True
        i = j
    return out


def crop_panels(image: Image.Image, boxes: list[Box]) -> list[Image.Image]:
    """The panels as images (RGB), in the order of `boxes`."""
    rgb = image if image.mode == "RGB" else Image.fromarray(as_rgb(image))
    return [rgb.crop(b) for b in boxes]
