"""Is this panel a natural image or a graphic? A small logistic model over pixel statistics.

CVF's rule keeps a figure when it is a grid with at least one natural image in it, so the
classifier asks of every panel (`pipeline.panels`) whether it is a photo. Photos are smooth
and textured at once: many small and medium gradients, many distinct colours, no colour that
covers most of the panel. Plots, diagrams, tables and text are flat fills, white background
and sharp lines, a handful of colours.

`panel_stats(rgb)` gives `STAT_NAMES` for one panel; `PhotoModel.load()` reads the bundled
weights (`photo_model.json`: plain numbers, no pickle) and `.prob(stats)` says how much each
panel looks like a photo. The weights are trained here, from nothing downloaded:

    python -m pipeline.photo_model train --voc PATH/TO/VOCdevkit/VOC2012 --out pipeline/photo_model.json

Data recipe: photos are random crops, at random scales, of scikit-image's sample photos
(`skimage.data`: astronaut, cat, coffee, rocket, ...; faces of `lfw_subset`), scikit-learn's
two sample photos, and PASCAL VOC images when given; some photos get a colour-map heat overlay
(attention maps are photos too). Graphics are matplotlib line, bar, scatter, violin plots,
heat maps and confusion matrices with numbers, block diagrams with arrows, and text. Every
image goes through the same working copy as at scoring time (`working_copy`), so training
and scoring see the same pixels.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from model import cli

WEIGHTS = Path(__file__).with_name("photo_model.json")
WORK_SIDE = 512  # the working copy's longer side (that of `pipeline.panels`)
MAX_STAT_SIDE = 96  # panels are subsampled to at most this side for their statistics (speed)
WHITE = 235

STAT_NAMES = [
    "white",        # share of near-white pixels
    "flat",         # share of pixels with no gradient at all (flat fills, background)
    "smooth",       # share with a small gradient (shading, sky, skin)
    "textured",     # share with a medium gradient (texture)
    "sharp",        # share with a strong gradient (lines, text strokes, edges)
    "colours",      # distinct colours (4 bits a channel), log-scaled to [0, 1]
    "top_colour",   # share of the most common colour
    "top8_colours",  # share of the eight most common colours
    "gray_entropy",  # bits of the 64-bin grey histogram, / 6
    "saturation",   # mean saturation
    "smooth_of_ink",  # smooth + textured among non-white pixels
    "sharp_of_ink",   # sharp among non-white pixels
]


def working_copy(image: Image.Image) -> np.ndarray:
    """The figure as an RGB uint8 array at most WORK_SIDE on its longer side (transparency on white)."""
    scale = WORK_SIDE / max(*image.size, 1)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if scale < 1 and image.format == "JPEG":  # (no effect once decoded)
        image.draft("RGB", size)  # decoded at a reduced scale: the DCT does the first halvings for free
    if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if max(image.size) > WORK_SIDE:
        # reducing_gap=1: a box reduction by the whole factor first, then bilinear for the rest; a
        # third of the cost of a bilinear resize from the full size
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0)
    return np.asarray(image)


def panel_stats(rgb: np.ndarray) -> np.ndarray:
    """STAT_NAMES of one panel (an RGB uint8 array cut from the working copy)."""
    step = max(1, -(-max(rgb.shape[:2]) // MAX_STAT_SIDE))
    rgb = rgb[::step, ::step]
    h, w = rgb.shape[:2]
    if h < 3 or w < 3:
        return np.zeros(len(STAT_NAMES), np.float32)
    r, g, b, gray, mx, mn = channels(rgb)
    grad = np.hypot(gray[1:-1, 2:] - gray[1:-1, :-2], gray[2:, 1:-1] - gray[:-2, 1:-1]) / 2.0
    # the gradient's class of every inner pixel: 0 flat, 1 smooth, 2 textured, 3 sharp
    grade = np.digitize(grad, (0, 6, 40), right=True)
    white = (rgb[..., 0] >= WHITE) & (rgb[..., 1] >= WHITE) & (rgb[..., 2] >= WHITE)
    ink = ~white[1:-1, 1:-1]
    n, n_ink = grade.size, max(int(ink.sum()), 1)
    grades = np.bincount(grade.ravel(), minlength=4) / n
    ink_grades = np.bincount(grade[ink], minlength=4) / n_ink
    counts = np.bincount(colour_codes(rgb).ravel(), minlength=4096)
    top = np.sort(counts[counts > 0])[::-1]  # the colours' counts, largest first
    # the 64-bin histogram: gray // 4, as a product by 1/4 (exact) and a truncation, far faster
    hist = np.bincount((gray * 0.25).astype(np.int32).ravel(), minlength=64).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    saturation = (mx - mn) / np.maximum(mx, 1)  # 0 where mx is 0
    total = float(h * w)
    return np.array([
        white.mean(),
        *grades,  # flat, smooth, textured, sharp
        np.log1p(len(top)) / np.log1p(4096),
        top[0] / total,
        top[:8].sum() / total,
        float(-(p * np.log2(p)).sum()) / 6.0,
        float(saturation.mean()),
        ink_grades[1] + ink_grades[2],
        ink_grades[3],
    ], dtype=np.float32)


def channels(rgb: np.ndarray):
    """An RGB uint8 array's channels as float32, their grey mean, max and min. A reduction over an
    axis of three is slow in numpy, so these are taken channel by channel, once."""
    r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))
    return r, g, b, (r + g + b) / 3.0, np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)


def colour_codes(rgb: np.ndarray) -> np.ndarray:
    """The 4-bit-a-channel colour code (0..4095) of every pixel of an RGB uint8 array."""
    q = rgb >> 4
    return (q[..., 0].astype(np.int32) << 8) | (q[..., 1].astype(np.int32) << 4) | q[..., 2]


class PhotoModel:
    """A logistic regression over STAT_NAMES, standardised: probability that a panel is a photo."""

    def __init__(self, mean, scale, coef, intercept: float, card: dict | None = None):
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self.coef, self.intercept = np.asarray(coef, np.float64), float(intercept)
        self.card = card or {}
        if not (len(self.mean) == len(self.scale) == len(self.coef) == len(STAT_NAMES)):
            raise ValueError(f"photo model weights are for {len(self.coef)} statistics, not {len(STAT_NAMES)}")

    @classmethod
    @functools.cache
    def load(cls, path: Path = WEIGHTS) -> "PhotoModel":
        data = json.loads(Path(path).read_text())
        if data.get("stat_names") != STAT_NAMES:
            raise ValueError(f"{path} was trained on other statistics ({data.get('stat_names')}); retrain it with "
                             "`python -m pipeline.photo_model train`")
        return cls(data["mean"], data["scale"], data["coef"], data["intercept"], data.get("card"))

    def prob(self, stats: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(stats) - self.mean) / self.scale @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


# --- the training set, drawn here ------------------------------------------------------------------


def _photo_sources(voc: Path | None) -> list[np.ndarray]:
    import skimage.data as d
    from sklearn.datasets import load_sample_images

    out = []
    for name in ["astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                 "hubble_deep_field", "immunohistochemistry", "moon", "rocket", "retina", "cell"]:
        a = getattr(d, name)()
        out.append(np.stack([a] * 3, axis=-1) if a.ndim == 2 else a[..., :3])
    faces = (d.lfw_subset()[:40] * 255).astype(np.uint8)
    out += [np.stack([f] * 3, axis=-1) for f in faces]
    out += list(load_sample_images().images)
    if voc is not None:
        for path in sorted(Path(voc).rglob("*.jpg"))[:200]:
            with Image.open(path) as im:
                out.append(np.asarray(im.convert("RGB")))
    return out


def _random_photo(rng: np.random.Generator, sources: list[np.ndarray]) -> Image.Image:
    a = sources[rng.integers(len(sources))]
    h, w = a.shape[:2]
    ch, cw = max(8, int(h * rng.uniform(0.3, 1))), max(8, int(w * rng.uniform(0.3, 1)))
    y, x = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
    side = int(rng.integers(48, 400))
    im = Image.fromarray(a[y:y + ch, x:x + cw]).resize((side, max(8, int(side * ch / cw))), Image.Resampling.BILINEAR)
    if rng.random() < 0.25:  # an attention map / saliency overlay: still a photo
        import matplotlib

        heat = np.asarray(im.convert("L").filter(ImageFilter.GaussianBlur(8)))
        cmap = matplotlib.colormaps[str(rng.choice(["jet", "viridis", "inferno"]))]
        over = (cmap(heat / 255.0)[..., :3] * 255).astype(np.uint8)
        im = Image.blend(im.convert("RGB"), Image.fromarray(over), float(rng.uniform(0.3, 0.6)))
    if rng.random() < 0.3:  # JPEG'd, as photos in papers are
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=int(rng.integers(60, 95)))
        im = Image.open(io.BytesIO(buf.getvalue()))
    return im.convert("RGB")


def _render(fig, dpi: int) -> Image.Image:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _random_graphic(rng: np.random.Generator) -> Image.Image:
    import matplotlib.pyplot as plt

    kind = rng.choice(["lines", "bars", "scatter", "heatmap", "violin", "diagram", "text", "curves_fill"])
    fig, ax = plt.subplots(figsize=(rng.uniform(2.5, 6), rng.uniform(2, 4.5)))
    x = np.linspace(0, 10, 80)
    if kind == "lines":
        for k in range(int(rng.integers(1, 6))):
            ax.plot(x, np.cumsum(rng.normal(size=80)) + k, marker=rng.choice(["", "o", "s"]), label=f"m{k}")
        ax.legend(fontsize=7)
        ax.grid(rng.random() < 0.5)
    elif kind == "curves_fill":
        for k in range(int(rng.integers(1, 4))):
            y = np.exp(-x / rng.uniform(1, 6)) + 0.1 * k
            ax.plot(x, y)
            ax.fill_between(x, y - 0.05, y + 0.05, alpha=0.3)
        ax.set_xscale("log" if rng.random() < 0.3 else "linear")
    elif kind == "bars":
        n = int(rng.integers(3, 12))
        for k in range(int(rng.integers(1, 4))):
            ax.bar(np.arange(n) + 0.25 * k, rng.uniform(1, 5, n), width=0.25, hatch=rng.choice(["", "//"]))
    elif kind == "scatter":  # t-SNE-like clusters
        for k in range(int(rng.integers(2, 10))):
            c = rng.normal(size=2) * 5
            pts = c + rng.normal(size=(int(rng.integers(30, 300)), 2))
            ax.scatter(pts[:, 0], pts[:, 1], s=float(rng.uniform(2, 12)))
        ax.axis("off" if rng.random() < 0.5 else "on")
    elif kind == "heatmap":  # confusion matrices and tables of numbers
        n = int(rng.integers(3, 10))
        m = rng.random((n, n))
        ax.imshow(m, cmap=str(rng.choice(["Blues", "viridis", "Reds", "coolwarm"])))
        if rng.random() < 0.7:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6)
    elif kind == "violin":
        ax.violinplot([rng.normal(size=100) * rng.uniform(0.5, 2) for _ in range(int(rng.integers(2, 8)))])
    elif kind == "diagram":
        n = int(rng.integers(2, 7))
        for i in range(n):
            ax.add_patch(plt.Rectangle((i * 1.4, rng.uniform(0, 0.4)), 1.0, 0.6, fc=plt.cm.Pastel1(i % 9),
                                       ec="black"))
            ax.text(i * 1.4 + 0.5, 0.5, str(rng.choice(["Encoder", "Conv", "Loss", "MLP", "Attn"])), ha="center",
                    fontsize=8)
            if i:
                ax.annotate("", xy=(i * 1.4, 0.5), xytext=(i * 1.4 - 0.4, 0.5), arrowprops={"arrowstyle": "->"})
        ax.set_xlim(-0.2, n * 1.4)
        ax.set_ylim(-0.2, 1.2)
        ax.axis("off")
    else:
        words = "the of results method network image training loss accuracy we show our".split()
        for i in range(int(rng.integers(4, 16))):
            ax.text(0.02, 1 - i * 0.07, " ".join(rng.choice(words, int(rng.integers(4, 10)))), fontsize=8,
                    transform=ax.transAxes)
        ax.axis("off")
    return _render(fig, int(rng.integers(50, 130)))


def training_set(n: int, seed: int = 0, voc: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(statistics, is_photo) of `n` drawn panels, half photos, half graphics."""
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(seed)
    sources = _photo_sources(voc)
    x, y = [], []
    for i in range(n):
        photo = i % 2 == 0
        im = _random_photo(rng, sources) if photo else _random_graphic(rng)
        x.append(panel_stats(working_copy(im)))
        y.append(int(photo))
    return np.stack(x), np.array(y)


def train(n: int = 1200, seed: int = 0, voc: Path | None = None, out: Path = WEIGHTS) -> dict:
    """Fit the photo model on a drawn training set, measure it on another, write the weights JSON."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    x, y = training_set(n, seed, voc)
    xt, yt = training_set(max(n // 4, 10), seed + 1, voc)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    lr = LogisticRegression(C=1.0, max_iter=2000).fit((x - mean) / scale, y)
    model = PhotoModel(mean, scale, lr.coef_[0], lr.intercept_[0])
    p = model.prob(xt)
    card = {"train_panels": int(len(y)), "heldout_panels": int(len(yt)), "seed": seed, "voc_images": bool(voc),
            "heldout_accuracy": round(float(accuracy_score(yt, p >= 0.5)), 4),
            "heldout_roc_auc": round(float(roc_auc_score(yt, p)), 4)}
    data = {"stat_names": STAT_NAMES, "mean": mean.tolist(), "scale": scale.tolist(), "coef": lr.coef_[0].tolist(),
            "intercept": float(lr.intercept_[0]), "card": card}
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out)
    return card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.photo_model", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="draw a training set, fit, and write the weights JSON")
    t.add_argument("--panels", type=int, default=1200, help="training panels to draw (default 1200)")
    t.add_argument("--seed", type=cli.non_negative_int, default=0, help="seed of the drawing (default 0)")
    t.add_argument("--voc", type=cli.existing_dir, help="a folder of PASCAL VOC JPEGs to add to the photos (optional)")
    t.add_argument("--out", type=cli.writable_file, default=WEIGHTS,
                   help=f"weights file to write (default {WEIGHTS.name})")
    args = p.parse_args(argv)
    if args.panels < 20:
        p.error(f"--panels must be at least 20 (half photos, half graphics), got {args.panels}")
    args.voc = Path(args.voc) if args.voc else None
    args.out = Path(args.out)
    card = train(args.panels, args.seed, args.voc, args.out)
    print(f"photo model -> {args.out}: held-out accuracy {card['heldout_accuracy']:.3f}, "
          f"ROC-AUC {card['heldout_roc_auc']:.3f} on {card['heldout_panels']} panels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
