"""Panel segmentation: grids with white gutters, frames, abutting photos and unequal cells come
apart cell by cell; single photos, plots and blank figures do not."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.panels import crop_panels, find_panels

skdata = pytest.importorskip("skimage.data")


def photos() -> list[np.ndarray]:
    return [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket(),
            np.stack([skdata.camera()] * 3, axis=2), skdata.hubble_deep_field()[:400, :400]]


def resized(a: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR))


def grid(cells: list[tuple[int, int, np.ndarray]], size: tuple[int, int], frame: int = 0) -> tuple[np.ndarray, list]:
    """Paste photos at (x, y) on a white canvas; returns the canvas and the true boxes."""
    canvas = np.full((size[1], size[0], 3), 255, np.uint8)
    boxes = []
    for x, y, photo in cells:
        h, w = photo.shape[:2]
        canvas[y:y + h, x:x + w] = photo
        if frame:
            canvas[y:y + frame, x:x + w] = 0
            canvas[y + h - frame:y + h, x:x + w] = 0
            canvas[y:y + h, x:x + frame] = 0
            canvas[y:y + h, x + w - frame:x + w] = 0
        boxes.append((x, y, x + w, y + h))
    return canvas, boxes


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_matches(found, truth, min_iou=0.9):
    assert len(found) == len(truth), (found, truth)
    for t in truth:
        assert max(iou(t, f) for f in found) >= min_iou, (t, found)


def test_regular_grid_with_white_gutters_and_labels():
    ph = photos()
    cells = [(10 + c * 210, 10 + r * 230, resized(ph[(r * 3 + c) % 6], 200, 200)) for r in range(2) for c in range(3)]
    canvas, truth = grid(cells, (650, 480))
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for c in range(3):  # a label under each column: a thin band, no panel
        draw.text((80 + c * 210, 212), f"({'abc'[c]})", fill=(0, 0, 0))
    assert_matches(find_panels(img), truth)


def test_unequal_cells_frames_and_abutting_photos():
    ph = photos()
    # a tall panel beside a column of two; a strip of three photos edge to edge below
    cells = [(0, 0, resized(ph[0], 300, 410)), (310, 0, resized(ph[1], 250, 200)),
             (310, 210, resized(ph[2], 250, 200))]
    strip = [(i * 180, 430, resized(ph[3 + i], 180, 150)) for i in range(3)]
    canvas, truth = grid(cells + strip, (560, 580), frame=2)
    found = find_panels(canvas)
    assert_matches(found, truth, min_iou=0.85)
    assert found[:3] == sorted(found[:3], key=lambda b: (b[0], b[1]))  # reading order


def test_single_photo_and_blank_and_coordinates_in_original_pixels():
    photo = skdata.astronaut()  # 512 x 512, its own content edge to edge
    assert find_panels(photo) == [(0, 0, 512, 512)]
    big = np.full((3000, 2000, 3), 255, np.uint8)
    big[500:2500, 400:1600] = resized(skdata.coffee(), 1200, 2000)
    (box,) = find_panels(big)
    assert iou(box, (400, 500, 1600, 2500)) > 0.98
    assert find_panels(np.full((100, 100, 3), 255, np.uint8)) == []
    rgba = Image.new("RGBA", (200, 100), (0, 0, 0, 0))  # transparent is white, not black
    assert find_panels(rgba) == []


def test_plot_is_one_panel():
    img = Image.new("RGB", (640, 480), "white")
    d = ImageDraw.Draw(img)
    d.line([(60, 420), (620, 420)], fill="black", width=2)   # x axis
    d.line([(60, 20), (60, 420)], fill="black", width=2)     # y axis
    xs = np.linspace(60, 620, 100)
    d.line(list(zip(xs, 420 - 350 * (1 - np.exp(-(xs - 60) / 150)))), fill="blue", width=2)
    d.text((300, 440), "epochs", fill="black")
    found = find_panels(img)
    assert len(found) == 1 and iou(found[0], (59, 19, 622, 422)) > 0.8


def test_crop_panels_gives_the_cells():
    ph = photos()
    canvas, truth = grid([(0, 0, resized(ph[0], 100, 80)), (110, 0, resized(ph[1], 100, 80))], (210, 80))
    crops = crop_panels(Image.fromarray(canvas), find_panels(canvas))
    assert len(crops) == 2  # a photo's own white edge line may be trimmed: a pixel or two
    assert all(abs(c.size[0] - 100) <= 2 and abs(c.size[1] - 80) <= 2 for c in crops)


def test_peak_seams_cut_photos_edge_to_edge_that_the_fixed_step_misses():
    ph = photos()
    for a, b in ((0, 1), (0, 5), (4, 2), (5, 0)):  # neighbours too alike in grey for SEAM_STEP
        canvas, truth = grid([(0, 0, resized(ph[a], 200, 160)), (200, 0, resized(ph[b], 180, 160)),
                              (0, 160, resized(ph[b], 200, 150)), (200, 160, resized(ph[a], 180, 150))], (380, 310))
        assert len(find_panels(canvas)) < 4  # the default, which the classifier's features count, is unchanged
        assert_matches(find_panels(canvas, peak_seams=True), truth)
    for photo in (skdata.astronaut(), skdata.chelsea(), skdata.coffee()):  # a photo's own edges are no seam
        assert len(find_panels(photo, peak_seams=True)) == 1
