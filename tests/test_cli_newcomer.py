"""What a newcomer meets first: a wrong path or month is a one-line usage error (exit 2),
not a traceback, and the pictures people look at are readable."""
from __future__ import annotations

import pymupdf
import pytest

from pipeline import crawl, rebuild, render
from pipeline.pdffigures import Region, draw_overlay


def usage_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_render_missing_file_is_a_usage_error(tmp_path, capsys):
    err = usage_error(render.main, [str(tmp_path / "nope.pdf")], capsys)
    assert "nope.pdf: no such file" in err


def test_rebuild_missing_index_is_a_usage_error(tmp_path, capsys):
    err = usage_error(rebuild.main, ["--index", str(tmp_path / "df_val.csv"), "--split", "val",
                                     "--out", str(tmp_path / "cvf"), "--root", str(tmp_path)], capsys)
    assert "df_val.csv: no such file" in err
    assert not (tmp_path / "cvf").exists()


def test_rebuild_index_without_columns_is_a_usage_error(tmp_path, capsys):
    index = tmp_path / "wrong.csv"
    index.write_text("id,name\n2101.00001,fig.png\n")
    err = usage_error(rebuild.main, ["--index", str(index), "--split", "val",
                                     "--out", str(tmp_path / "cvf"), "--root", str(tmp_path)], capsys)
    assert "no img_name, paper_id column" in err


def test_crawl_bad_month_is_a_usage_error(tmp_path, capsys):
    err = usage_error(crawl.main, ["--from", "2021-13", "--to", "2022-01", "--data", str(tmp_path)], capsys)
    assert "not a month shard (YYYY-MM): '2021-13'" in err
    err = usage_error(crawl.main, ["--from", "2022-02", "--to", "2022-01", "--data", str(tmp_path)], capsys)
    assert "after end" in err
    assert not (tmp_path / "papers").exists()


def test_overlay_label_readable_on_a_dark_figure():
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    page.draw_rect(pymupdf.Rect(72, 72, 540, 400), color=(0, 0, 0), fill=(0, 0, 0))
    region = Region(page=0, bbox=(72, 72, 540, 400), caption_bbox=(72, 410, 540, 430),
                    caption="Figure 1: dark", figure_type="Figure", figure_number="1")
    img = draw_overlay(page, [region], dpi=72)
    # Inside the box's top-left corner, where the label sits, there is a white patch (and red
    # text on it); without it the corner would be black and the label unreadable.
    corner = img.crop((76, 76, 120, 86)).getcolors(10_000)
    colors = {c for _, c in corner}
    assert (255, 255, 255) in colors
    assert any(r > 150 and g < 100 and b < 100 for r, g, b in colors)


def test_year_histogram_one_year_is_a_bar_not_a_wall():
    import io

    import numpy as np
    from PIL import Image

    from pipeline.publish import year_histogram

    png = year_histogram({"per_year": {2021: {"train": 15, "val": 0, "total": 15}}})
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    train_blue = (np.abs(rgb - (31, 119, 180)).sum(axis=2) < 30)  # matplotlib's first colour
    bar_columns = train_blue.sum(axis=0) > 50  # columns of the bar, not the legend swatch
    assert 20 < bar_columns.sum() < rgb.shape[1] / 4


def test_duplicates_report_counts_figures_like_the_shard_stats(tmp_path):
    from pipeline import store
    from pipeline.extract import dedup_corpus, extract_shard
    from test_extract import photo, tar_gz, write_papers

    root = tmp_path / "data"
    # One paper with two figures, one whose e-print is missing (a paper-level row, no figure).
    write_papers(root, "2021-01", {"2101.00001": tar_gz({"a.png": photo(1), "b.png": photo(2)}),
                                   "2101.00002": None})
    stats = extract_shard("2021-01", root, progress=False)
    assert len(store.read_rows(root / "figures" / "2021-01.parquet")) == 3
    assert stats["figures"] == 2
    assert dedup_corpus(root)["figures"] == 2


def test_extract_flow_without_papers_is_a_usage_error(tmp_path, capsys):
    from flows.extract import main

    err = usage_error(main, ["--root", str(tmp_path)], capsys)
    assert "no papers/<shard>.parquet under" in err
