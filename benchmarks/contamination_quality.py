"""Precision and recall of `pipeline.contamination` on figures built to contain evaluation images.

The evaluation folder holds real photos (the Pascal VOC 2012 images of the test material, VOC val images
as re-rendered by VainF/DeepLabV3Plus-Pytorch, skimage.data photos) among a few thousand distractors made
here (crops, tints and rotations of other skimage.data images, LFW faces, synthetic shapes, gradients and
noise). Figures are grids (white gutters, frames or none, cells of several sizes) of:

* positives: one evaluation photo, transformed one way or several (resized, cropped to 70-90%, JPEG'd,
  boxes drawn, recoloured, mirrored), beside other panels;
* negatives: other photos (matplotlib's, scikit-learn's and skimage's, none in the evaluation folder),
  the colour masks of the evaluation photos themselves, and plots.

A positive is found when its figure has a row naming its photo; any other row is a false positive.

    python benchmarks/contamination_quality.py                       # 3000 distractors, 120 + 120 figures
    python benchmarks/contamination_quality.py --distractors 500 --figures 40 --json out.json
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import config, store  # noqa: E402

KINDS = ("resize", "crop", "jpeg", "boxes", "colour", "flip")


# --- image sources --------------------------------------------------------------------------------

def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = (255 * (a - a.min()) / max(1e-6, float(a.max() - a.min()))).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def voc_palette() -> np.ndarray:
    """The Pascal VOC colour map: class index -> RGB, as VOC's colour masks are drawn."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def evaluation_photos(testdata: Path | None) -> dict[str, np.ndarray]:
    """name -> RGB photo: what the evaluation folder holds besides its distractors."""
    import skimage.data as sk

    photos = {f"skimage/{n}.png": _rgb(getattr(sk, n)()) for n in
              ("astronaut", "coffee", "rocket", "chelsea", "immunohistochemistry", "colorwheel")}
    photos["skimage/hubble_deep_field.png"] = _rgb(sk.hubble_deep_field()[:600, :600])
    if testdata is not None and (testdata / "voc").is_dir():
        for p in sorted((testdata / "voc" / "JPEGImages").glob("*.jpg")):
            photos[f"voc/{p.name}"] = np.asarray(Image.open(p).convert("RGB"))
        for p in sorted((testdata / "voc" / "derived_vainf_513").glob("*_image.png")):
            photos[f"voc513/{p.name}"] = np.asarray(Image.open(p).convert("RGB"))
    return photos


def masks_of(testdata: Path | None) -> list[np.ndarray]:
    """Colour masks (VOC palette) of the evaluation photos: the same scenes, no photo in them."""
    out = []
    if testdata is None:
        return out
    pal = voc_palette()
    for p in sorted((testdata / "voc" / "SegmentationClassAug").glob("*.png")):
        out.append(pal[np.asarray(Image.open(p))])
    for p in sorted((testdata / "voc" / "derived_vainf_513").glob("*_target.png")):
        out.append(np.asarray(Image.open(p).convert("RGB")))
    return out


def other_photos() -> list[np.ndarray]:
    """Photos that are in no evaluation folder here (clean panels)."""
    import matplotlib
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    out = [np.asarray(Image.open(hopper).convert("RGB"))] + [np.asarray(i) for i in load_sample_images().images]
    left, right, _ = sk.stereo_motorcycle()
    return out + [_rgb(left), _rgb(sk.horse() == 0)]


def plot(rng: np.random.Generator, size=(320, 240)) -> np.ndarray:
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    w, h = size
    d.line([(30, h - 30), (w - 10, h - 30)], fill="black", width=2)
    d.line([(30, 10), (30, h - 30)], fill="black", width=2)
    for _ in range(int(rng.integers(1, 4))):
        xs = np.linspace(30, w - 10, 60)
        ys = h - 30 - (h - 50) * np.clip(rng.uniform(0.2, 1) * (1 - np.exp(-(xs - 30) / rng.uniform(20, 200))), 0, 1)
        d.line(list(zip(xs, ys)), fill=tuple(int(c) for c in rng.integers(0, 200, 3)), width=2)
    d.text((w // 2 - 20, h - 20), "epochs", fill="black")
    return np.asarray(img)


def distractors(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`n` images none of which is an evaluation photo or a clean panel: crops, tints and rotations of
    skimage's textures and grey photos, LFW faces, shapes, gradients and noise."""
    import skimage.data as sk

    bases = [_rgb(getattr(sk, k)()) for k in ("brick", "grass", "gravel", "moon", "camera", "coins", "clock", "cell",
                                              "text", "page", "binary_blobs", "checkerboard", "shepp_logan_phantom",
                                              "microaneurysms", "logo")]
    faces = [_rgb(f) for f in sk.lfw_subset()]
    out = []
    while len(out) < n:
        kind = len(out) % 4
        if kind == 0:
            a = bases[int(rng.integers(len(bases)))]
        elif kind == 1:
            a = np.asarray(Image.fromarray(faces[int(rng.integers(len(faces)))]).resize((200, 200)))
        elif kind == 2:
            img = Image.new("RGB", (256, 192), tuple(int(c) for c in rng.integers(0, 256, 3)))
            d = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(2, 12))):
                x0, y0 = rng.integers(0, 230), rng.integers(0, 170)
                box = [int(x0), int(y0), int(x0 + rng.integers(10, 120)), int(y0 + rng.integers(10, 100))]
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=colour)
            a = np.asarray(img)
        else:
            yy, xx = np.mgrid[0:192, 0:256] / 256.0
            noise = rng.normal(0, rng.uniform(0, 40), (192, 256, 1))
            a = np.clip(255 * np.stack([np.sin(xx * rng.uniform(1, 9) + c) * np.cos(yy * rng.uniform(1, 9))
                                        for c in rng.uniform(0, 3, 3)], 2) * 0.5 + 128 + noise, 0, 255).astype(np.uint8)
        h, w = a.shape[:2]
        s = rng.uniform(0.4, 1.0)
        ch, cw = max(16, int(h * s)), max(16, int(w * s))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        a = np.rot90(a[y:y + ch, x:x + cw], int(rng.integers(4)))
        tint = rng.uniform(0.7, 1.3, 3)
        out.append(np.clip(a * tint, 0, 255).astype(np.uint8))
    return out


# --- transforms and figures -----------------------------------------------------------------------

def transform(photo: np.ndarray, kinds: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    """The photo as a paper might show it: cropped, boxes drawn, recoloured, mirrored, JPEG'd (in that
    order, those of `kinds`), always resized to 100-320 px."""
    img = Image.fromarray(photo)
    w, h = img.size
    if "crop" in kinds:
        sx, sy = rng.uniform(0.72, 0.9), rng.uniform(0.72, 0.9)
        cw, ch = int(w * sx), int(h * sy)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x, y, x + cw, y + ch))
    if "boxes" in kinds:
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = int(rng.integers(0, img.width * 2 // 3)), int(rng.integers(0, img.height * 2 // 3))
            x1 = int(min(img.width - 1, x0 + rng.integers(img.width // 6, img.width // 2)))
            y1 = int(min(img.height - 1, y0 + rng.integers(img.height // 6, img.height // 2)))
            d.rectangle([x0, y0, x1, y1], outline=tuple(int(c) for c in rng.integers(0, 256, 3)),
                        width=max(2, img.width // 120))
    if "colour" in kinds:
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.85, 1.15))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.85, 1.15))
    if "flip" in kinds:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    side = rng.uniform(100, 320)
    scale = side / max(img.size)
    img = img.resize((max(16, round(img.width * scale)), max(16, round(img.height * scale))), Image.Resampling.BILINEAR)
    if "jpeg" in kinds:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(30, 75)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(img)


def fit(a: np.ndarray, side: int) -> np.ndarray:
    img = Image.fromarray(a)
    s = side / max(img.size)
    return np.asarray(img.resize((max(8, round(img.width * s)), max(8, round(img.height * s))), Image.Resampling.BILINEAR))


def grid_figure(panels: list[np.ndarray], rng: np.random.Generator, layout: dict | None = None) -> np.ndarray:
    """Panels in rows (random columns per row, gutters of 0-12 px, some framed), on white, at most
    1024 px wide: how papers lay out results. `layout` (if given) gets the gutter and frame chosen."""
    columns = int(rng.integers(2, 5)) if len(panels) > 2 else len(panels)
    gutter = int(rng.choice([0, 4, 8, 12]))
    frame = int(rng.choice([0, 0, 2]))
    if layout is not None:
        layout.update(gutter=gutter, frame=frame)
    rows = [panels[i:i + columns] for i in range(0, len(panels), columns)]
    cell_h = int(rng.integers(110, 260))
    placed = []
    for row in rows:
        placed.append([fit(p, cell_h) if p.shape[0] >= p.shape[1] else
                       np.asarray(Image.fromarray(p).resize((max(8, round(p.shape[1] * cell_h / p.shape[0])), cell_h)))
                       for p in row])
    width = max(sum(p.shape[1] for p in row) + gutter * (len(row) + 1) for row in placed)
    height = sum(max(p.shape[0] for p in row) for row in placed) + gutter * (len(placed) + 1)
    canvas = np.full((height, width, 3), 255, np.uint8)
    y = gutter
    for row in placed:
        x = gutter
        for p in row:
            canvas[y:y + p.shape[0], x:x + p.shape[1]] = p
            if frame:
                canvas[y:y + frame, x:x + p.shape[1]] = 0
                canvas[y + p.shape[0] - frame:y + p.shape[0], x:x + p.shape[1]] = 0
                canvas[y:y + p.shape[0], x:x + frame] = 0
                canvas[y:y + p.shape[0], x + p.shape[1] - frame:x + p.shape[1]] = 0
            x += p.shape[1] + gutter
        y += max(p.shape[0] for p in row) + gutter
    if max(canvas.shape[:2]) > 1024:  # what extraction does to a larger figure
        canvas = fit(canvas, 1024)
    return canvas


def clean_panel(rng, others, masks) -> np.ndarray:
    pick = rng.random()
    if pick < 0.45 or not masks:
        return transform(others[int(rng.integers(len(others)))], ("crop",) if rng.random() < 0.5 else (), rng)
    if pick < 0.8:
        return transform(masks[int(rng.integers(len(masks)))], (), rng)
    return plot(rng)


def build_case(root: Path, eval_dir: Path, n_figures: int, n_distractors: int, seed: int = 0,
               testdata: Path | None = None, combined_share: float = 0.25) -> dict:
    """Write the evaluation folder and `n_figures` positive and `n_figures` negative figures as the
    extraction stage's records of one shard; returns the truth: figure name -> evaluation image or ''."""
    rng = np.random.default_rng(seed)
    photos = evaluation_photos(testdata)
    photos.pop("voc513/0_image.png", None)  # the same photo as voc/2007_000033.jpg, re-rendered
    for name, a in photos.items():
        (eval_dir / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(eval_dir / name)
    for i, a in enumerate(distractors(n_distractors, rng)):
        (eval_dir / "distractors").mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(eval_dir / "distractors" / f"{i:05d}.jpg", quality=90)
    others, masks = other_photos(), masks_of(testdata)
    names = sorted(photos)
    shard, truth, rows, layouts = "2021-01", {}, [], {}
    for i in range(2 * n_figures):
        positive = i < n_figures
        panels = [clean_panel(rng, others, masks) for _ in range(int(rng.integers(1, 6)))]
        target = ""
        if positive:
            target = names[i % len(names)]
            kinds = (KINDS[i % len(KINDS)],)
            if rng.random() < combined_share:
                kinds = tuple(rng.choice(KINDS, 3, replace=False))
            panels.insert(int(rng.integers(len(panels) + 1)), transform(photos[target], kinds, rng))
        layout = {"kinds": "+".join(kinds) if positive else "", "panels": len(panels)}
        figure = grid_figure(panels, rng, layout)
        paper = f"2101.{i:05d}"
        path = root / "images" / shard / paper / "fig.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(figure).save(path)
        truth[f"{paper}/fig.png"] = target
        layouts[f"{paper}/fig.png"] = layout
        rows.append({"paper_id": paper, "img_name": "fig.png", "status": "ok",
                     "image_path": path.relative_to(root).as_posix()})
    from pipeline.extract import FIGURE_SCHEMA, figure_row

    store.write_rows(root / "figures" / f"{shard}.parquet", [figure_row(**r) for r in rows], FIGURE_SCHEMA)
    store.write_stats(root / "figures", shard, {})
    store.atomic_write_json(root / "truth.json", {"truth": truth, "layouts": layouts})
    return truth


def score(root: Path, name: str, truth: dict) -> dict:
    import pyarrow.parquet as pq

    rows = pq.read_table(root / "contamination" / f"{name}.parquet").to_pylist()
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(f"{r['paper_id']}/{r['img_name']}", set()).add(r["eval_image"])
    positives = [k for k, v in truth.items() if v]
    hits = sum(truth[k] in found.get(k, set()) for k in positives)
    false = [(k, e) for k, es in found.items() for e in es if e != truth.get(k)]
    layouts = json.loads((root / "truth.json").read_text())["layouts"]
    by_kind: dict[str, list[int]] = {}
    for k in positives:
        kind = layouts[k]["kinds"] if "+" not in layouts[k]["kinds"] else "combined (3 of them)"
        for key in (kind, "gutter 0 and frames" if layouts[k]["gutter"] == 0 and layouts[k]["frame"] else
                    "gutter 0, no frame" if layouts[k]["gutter"] == 0 else "white gutters"):
            by_kind.setdefault(key, [0, 0])
            by_kind[key][0] += truth[k] in found.get(k, set())
            by_kind[key][1] += 1
    return {"positives": len(positives), "found": hits, "recall": hits / max(1, len(positives)),
            "rows": len(rows), "false_rows": len(false), "precision": (len(rows) - len(false)) / max(1, len(rows)),
            "negative_figures_flagged": sum(1 for k in found if not truth.get(k)),
            "found_by_kind_and_layout": {k: f"{a}/{b}" for k, (a, b) in sorted(by_kind.items())},
            "missed": [f"{k}: {truth[k]} ({layouts[k]})" for k in positives if truth[k] not in found.get(k, set())][:20],
            "false_examples": [f"{k} ~ {e}" for k, e in false[:20]]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--distractors", type=int, default=3000)
    ap.add_argument("--figures", type=int, default=120, help="positive figures (as many negatives)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    from pipeline import contamination

    testdata = config.shared_testdata()
    with tempfile.TemporaryDirectory() as tmp:
        root, eval_dir = Path(tmp) / "data", Path(tmp) / "evalset"
        t0 = time.monotonic()
        truth = build_case(root, eval_dir, args.figures, args.distractors, args.seed,
                           testdata if testdata.is_dir() else None)
        t1 = time.monotonic()
        report = contamination.run([eval_dir], root, workers=args.workers, progress=False)["evalset"]
        result = {"eval_images": report["eval_images"], "figures": report["figures"], "build_s": round(t1 - t0, 1),
                  "run_s": round(time.monotonic() - t1, 1), **score(root, "evalset", truth)}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
