"""Layout features on real images, and the synthetic corpus the classify/filter/publish tests share.

The corpus helper draws real figures (grids of scikit-image sample photos, single photos,
matplotlib plots and grids of plots, PIL block diagrams) and writes them as figure records +
PNGs + paper records under a dataset root, following the data contract (docs/contract.md).
"""
from __future__ import annotations

import datetime as dt
import io
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from pipeline import store  # noqa: E402
from pipeline.naming import output_name  # noqa: E402
from pipeline.features import FEATURE_NAMES, layout_features, layout_features_of_file  # noqa: E402

KINDS = ["photo_grid", "photo", "plot", "plot_grid", "diagram"]  # only photo_grid is positive


@lru_cache(maxsize=1)
def _photos() -> list[np.ndarray]:
    import skimage.data as d

    out = []
    for name in ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera", "coins"]:
        a = getattr(d, name)()
        out.append(np.stack([a] * 3, axis=-1) if a.ndim == 2 else a[..., :3])
    return out


def _crop(rng, size: tuple[int, int]) -> Image.Image:
    photo = _photos()[rng.integers(len(_photos()))]
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
    y, x = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
    return Image.fromarray(photo[y:y + ch, x:x + cw]).resize(size)


def _draw_photo_grid(rng) -> Image.Image:
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(2, 6))
    pw, ph, gap = int(rng.integers(70, 130)), int(rng.integers(70, 130)), int(rng.integers(4, 12))
    im = Image.new("RGB", (cols * (pw + gap) + gap, rows * (ph + gap) + gap), "white")
    for r in range(rows):
        for c in range(cols):
            im.paste(_crop(rng, (pw, ph)), (gap + c * (pw + gap), gap + r * (ph + gap)))
    return im


def _render(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    plt.close(fig)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _draw_plot(rng, panels: int = 1) -> Image.Image:
    fig, axes = plt.subplots(1, panels, figsize=(3 * panels, 2.6), squeeze=False)
    x = np.linspace(0, 10, 50)
    for ax in axes[0]:
        for k in range(int(rng.integers(1, 4))):
            if rng.random() < 0.5:
                ax.plot(x, np.sin(x * rng.uniform(0.3, 2)) + k, label=f"run {k}")
            else:
                ax.bar(np.arange(5) + 0.25 * k, rng.uniform(1, 5, 5), width=0.25)
        ax.set_xlabel("epoch")
        ax.set_title("accuracy")
    return _render(fig)


def _draw_diagram(rng) -> Image.Image:
    im = Image.new("RGB", (int(rng.integers(300, 600)), int(rng.integers(150, 300))), "white")
    d = ImageDraw.Draw(im)
    n = int(rng.integers(3, 6))
    bw = im.width // (n * 2)
    for i in range(n):
        x = bw // 2 + i * 2 * bw
        colour = tuple(int(c) for c in rng.integers(120, 255, 3))
        d.rectangle([x, im.height // 3, x + bw, 2 * im.height // 3], fill=colour, outline="black", width=2)
        d.text((x + 4, im.height // 2 - 5), f"L{i}", fill="black")
        if i:
            d.line([x - bw, im.height // 2, x, im.height // 2], fill="black", width=2)
    return im


def draw_figure(kind: str, rng) -> Image.Image:
    if kind == "photo_grid":
        return _draw_photo_grid(rng)
    if kind == "photo":
        return _crop(rng, (int(rng.integers(200, 400)), int(rng.integers(150, 300))))
    if kind == "plot":
        return _draw_plot(rng)
    if kind == "plot_grid":
        return _draw_plot(rng, panels=int(rng.integers(2, 4)))
    if kind == "diagram":
        return _draw_diagram(rng)
    raise ValueError(kind)


def make_corpus(root: Path, n_papers: int = 12, figures_per_paper: int = 5, seed: int = 0,
                shards: tuple[str, ...] = ("2019-03", "2020-07")) -> list[dict]:
    """Write papers/, figures/ (with stats), images/ and truth.parquet under `root`.

    Returns the truth rows (`paper_id`, `img_name`, `kind`, `is_grid_with_photo`). Every paper
    has at least one positive and one negative so grouped CV folds see both classes.
    """
    rng = np.random.default_rng(seed)
    truth, papers, figures = [], {s: [] for s in shards}, {s: [] for s in shards}
    for i in range(n_papers):
        shard = shards[i % len(shards)]
        paper_id = f"{shard[2:4]}{shard[5:7]}.{10000 + i:05d}"
        year, month = int(shard[:4]), int(shard[5:7])
        papers[shard].append({
            "arxiv_id": paper_id, "version": 1 + i % 2, "title": f"Paper {i}",
            "published": dt.datetime(year, month, 3, tzinfo=dt.timezone.utc),
            "license": "http://creativecommons.org/licenses/by/4.0/" if i % 3 == 0 else "",
            "eprint_status": "ok", "pdf_status": "ok",
        })
        kinds = ["photo_grid", KINDS[1 + i % 4]] + list(rng.choice(KINDS, figures_per_paper - 2))
        for j, kind in enumerate(kinds):
            img_name = f"figs_fig{j}.png" if j % 2 else f"figures_sub dir_fig{j}-eps-converted-to.pdf"
            rel = f"images/{shard}/{paper_id}/{output_name(paper_id, img_name)}"
            im = draw_figure(kind, rng)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            im.save(root / rel)
            figures[shard].append({
                "paper_id": paper_id, "img_name": img_name, "source_path": img_name.replace("_", "/", 1),
                "source_kind": "eprint", "format": "png", "image_path": rel,
                "width": im.width, "height": im.height, "sha256": store.sha256_file(root / rel),
                "phash": "0" * 16, "bytes": (root / rel).stat().st_size, "status": "ok", "error": "",
                "included": True, "name_filter": False, "dup_of": "", "near_dup_of": "",
            })
            truth.append({"paper_id": paper_id, "img_name": img_name, "source_path": img_name,
                          "kind": kind, "is_grid_with_photo": kind == "photo_grid"})
    for shard in shards:
        store.write_rows(root / "papers" / f"{shard}.parquet", papers[shard],
                         pa.Table.from_pylist(papers[shard]).schema)
        store.write_rows(root / "figures" / f"{shard}.parquet", figures[shard],
                         pa.Table.from_pylist(figures[shard]).schema)
        store.write_stats(root / "figures", shard, {"figures": len(figures[shard])})
    store.write_rows(root / "truth.parquet", truth, pa.Table.from_pylist(truth).schema)
    return truth


# ---------------------------------------------------------------------------------------------


def _features(kind: str, seed: int = 0) -> dict:
    return dict(zip(FEATURE_NAMES, layout_features(draw_figure(kind, np.random.default_rng(seed)))))


def test_feature_vector_has_one_finite_value_per_name():
    for kind in KINDS:
        v = layout_features(draw_figure(kind, np.random.default_rng(1)))
        assert v.shape == (len(FEATURE_NAMES),) and np.isfinite(v).all(), kind


def test_panel_count_of_a_photo_grid_follows_its_layout():
    rng = np.random.default_rng(3)
    photo = _crop(rng, (90, 80))
    im = Image.new("RGB", (4 * 100 + 10, 2 * 90 + 10), "white")
    for r in range(2):
        for c in range(4):
            im.paste(photo, (10 + c * 100, 10 + r * 90))
    f = dict(zip(FEATURE_NAMES, layout_features(im)))
    assert (f["row_bands"], f["col_bands"], f["panel_count"]) == (2, 4, 8)
    assert f["band_regularity"] > 0.8


def test_photos_are_colourful_and_textured_plots_and_diagrams_are_flat():
    for seed in range(3):
        grid, plot, diagram = _features("photo_grid", seed), _features("plot", seed), _features("diagram", seed)
        assert grid["textured_cells"] > plot["textured_cells"]
        assert grid["textured_cells"] > diagram["textured_cells"]
        assert grid["distinct_colours"] > plot["distinct_colours"]
        assert plot["white_fraction"] > grid["white_fraction"]
        assert diagram["flat_fraction"] > grid["flat_fraction"]


def test_blank_and_transparent_images_do_not_crash(tmp_path):
    blank = layout_features(Image.new("RGB", (50, 20), "white"))
    assert blank[FEATURE_NAMES.index("panel_count")] == 0
    clear = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # fully transparent: white, not black
    assert layout_features(clear)[FEATURE_NAMES.index("white_fraction")] == 1.0
    path = tmp_path / "tiny.png"
    Image.new("L", (1, 1)).save(path)
    assert np.isfinite(layout_features_of_file(path)).all()


def test_corpus_helper_writes_contract_files(tmp_path):
    truth = make_corpus(tmp_path, n_papers=2, figures_per_paper=2)
    assert len(truth) == 4
    rows = store.read_rows(tmp_path / "figures" / "2019-03.parquet")
    assert all((tmp_path / r["image_path"]).exists() for r in rows)
    assert store.shard_done(tmp_path / "figures", "2019-03")


def test_panel_features_see_a_grid_with_photos_and_not_a_plot():
    from pipeline.features import PANEL_FEATURE_NAMES  # noqa: F401  (part of FEATURE_NAMES)

    for seed in range(3):
        grid, plot = _features("photo_grid", seed), _features("plot", seed)
        assert grid["grid_with_photo"] == 1 and grid["photo_panels_log"] >= np.log1p(2), grid
        assert grid["photo_area_share"] > 0.5 and grid["photo_max"] > 0.9
        assert plot["grid_with_photo"] == 0 and plot["photo_panels_log"] == 0 and plot["photo_max"] < 0.5, plot
        diagram = _features("diagram", seed)
        assert diagram["photo_panels_log"] == 0, diagram
    photo = _features("photo", 0)  # one photo: a photo, but no grid
    assert photo["photo_max"] > 0.9 and photo["grid_with_photo"] == 0


def test_named_by_latex_reads_what_extraction_recorded():
    from pipeline.features import CAPTION_FEATURE_NAMES, is_named_by_latex, record_caption_features
    from pipeline.latex import NOT_IN_DOCUMENT, NOT_NAMED

    assert is_named_by_latex({"caption": "Results.", "caption_error": ""})
    assert is_named_by_latex({"caption": "", "caption_error": "the figure has no \\caption"})  # used, uncaptioned
    assert not is_named_by_latex({"caption": "", "caption_error": NOT_NAMED})  # a copy left unused
    assert not is_named_by_latex({"caption": "", "caption_error": f"{NOT_IN_DOCUMENT} (appendix.tex)"})
    # the reader had problems: the plain reference scan decides
    troubled = {"caption": "", "caption_error": f"{NOT_NAMED}; LaTeX problems: x"}
    assert is_named_by_latex({**troubled, "included": True}) and not is_named_by_latex({**troubled, "included": False})
    assert is_named_by_latex({"source_kind": "pdf", "caption": "", "caption_error": "PDF fallback: no caption text"})
    v = record_caption_features({"caption": "Qualitative comparison.", "caption_error": ""})
    assert v[CAPTION_FEATURE_NAMES.index("named_by_latex")] == 1 and v[CAPTION_FEATURE_NAMES.index("cue_qualitative")] == 1
