"""PDF fallback: figure regions on crafted PDFs and on real papers from shared/testdata."""
from __future__ import annotations

import json

import numpy as np
import pymupdf
from PIL import Image

from pipeline.pdffigures import extract_pdf_figures, find_figure_regions, main
from pipeline.pdffigures_eval import iou, truth_boxes

BODY = ("Visual prompting adapts a pretrained inpainting model to new tasks without any "
        "finetuning: the task is given as an example pair arranged on a canvas. ") * 4
GRID = pymupdf.Rect(72, 90, 312, 250)        # 3 x 2 photos, no gutters, left column
ARROW_Y = 170.0


def _photo(seed: int, w: int = 80, h: int = 80) -> bytes:
    """A noisy, mid-grey 'photo' (no white pixels, so cropped margins are easy to spot)."""
    rng = np.random.default_rng(seed)
    px = rng.integers(40, 200, size=(h, w, 3), dtype=np.uint8)
    pix = pymupdf.Pixmap(pymupdf.csRGB, w, h, px.tobytes(), False)
    return pix.tobytes("png")


def _two_column_paper(path, reader_annotation=True, wide_figure=False):
    """A letter page: body text in two columns, a captioned grid of touching photos with
    vector arrows and panel letters, and (optionally) a reader's red square annotation."""
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    right = GRID.x1 + 20 + (GRID.width + 20 if wide_figure else 0)
    cols = 3 if not wide_figure else 6
    cell_w = (GRID.width if not wide_figure else right - 20 - GRID.x0) / cols
    for i in range(cols):
        for j in range(2):
            x0, y0 = GRID.x0 + i * cell_w, GRID.y0 + j * GRID.height / 2
            page.insert_image(pymupdf.Rect(x0, y0, x0 + cell_w, y0 + GRID.height / 2),
                              stream=_photo(10 * i + j))
    region_right = GRID.x0 + cols * cell_w
    # arrows drawn as vectors from the grid to the right, and panel letters on the photos
    page.draw_line((region_right, ARROW_Y), (region_right + 14, ARROW_Y), color=(0, 0, 0), width=1.5)
    page.draw_polyline([(region_right + 10, ARROW_Y - 4), (region_right + 14, ARROW_Y),
                        (region_right + 10, ARROW_Y + 4)], color=(0, 0, 0), width=1.5)
    for i, letter in enumerate("abc"):
        page.insert_text((GRID.x0 + i * cell_w + 3, GRID.y0 + 10), f"({letter})", fontsize=7, color=(1, 1, 1))
    cap_rect = pymupdf.Rect(72, GRID.y1 + 10, 300, GRID.y1 + 50)
    page.insert_textbox(cap_rect, "Figure 1: A grid of touching photographs with arrows between panels.",
                        fontsize=9)
    page.insert_textbox(pymupdf.Rect(72, GRID.y1 + 60, 300, 700), BODY, fontsize=10)
    right_col = pymupdf.Rect(340, GRID.y1 + 10 if wide_figure else 72, 540, 700)
    page.insert_textbox(right_col, "Figure 2 shows nothing, this sentence just names it. " + BODY, fontsize=10)
    if reader_annotation:
        annot = page.add_rect_annot(pymupdf.Rect(GRID.x0 + 20, GRID.y0 + 20, GRID.x0 + 60, GRID.y0 + 60))
        annot.set_colors(stroke=(1, 0, 0), fill=(1, 0, 0))
        annot.update()
    doc.save(path)
    return path


def test_grid_of_touching_images_with_arrows_is_one_region(tmp_path):
    pdf = _two_column_paper(tmp_path / "paper.pdf")
    with pymupdf.open(pdf) as doc:
        regions = find_figure_regions(doc)
    assert [(r.figure_type, r.figure_number) for r in regions] == [("Figure", "1")]
    region = pymupdf.Rect(regions[0].bbox)
    assert regions[0].n_images == 6
    assert region.contains(GRID)
    assert region.x1 >= GRID.x1 + 14 - 0.5, "the vector arrow beside the grid belongs to the figure"
    assert region.y1 < GRID.y1 + 10, "the caption is not part of the figure"
    assert region.x1 < 340, "nothing from the right column"


def test_full_width_figure_with_column_caption_spans_both_columns(tmp_path):
    pdf = _two_column_paper(tmp_path / "wide.pdf", wide_figure=True, reader_annotation=False)
    with pymupdf.open(pdf) as doc:
        regions = find_figure_regions(doc)
    assert len(regions) == 1 and regions[0].n_images == 12
    assert regions[0].bbox[2] > 500


def test_extract_writes_rgb_png_without_reader_annotations(tmp_path):
    pdf = _two_column_paper(tmp_path / "paper.pdf")
    records = extract_pdf_figures(pdf, tmp_path / "out", dpi=150)
    assert len(records) == 1
    rec = records[0]
    assert rec["status"] == "ok" and rec["error"] == ""
    assert rec["img_name"] == "page1_fig1.png" and rec["source_path"] == "page-1" and rec["page"] == 0
    assert rec["figure_number"] == "1" and rec["caption"].startswith("Figure 1:")
    img = Image.open(rec["png_path"])
    assert img.mode == "RGB" and img.size == (rec["width"], rec["height"])
    x0, y0, x1, y1 = rec["bbox"]
    assert abs(img.width - (x1 - x0) * 150 / 72) <= 2  # rendered at the fixed DPI
    px = np.asarray(img).astype(int)
    red = (px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] < 60)
    assert red.sum() == 0, "the reader's red annotation must not be rendered"
    # and the annotation really is on the page: rendering with annotations shows it
    with pymupdf.open(pdf) as doc:
        shown = doc[0].get_pixmap(dpi=72, clip=pymupdf.Rect(rec["bbox"]), annots=True)
        arr = np.frombuffer(shown.samples, np.uint8).reshape(shown.height, shown.width, shown.n)
        assert ((arr[..., 0] > 200) & (arr[..., 1] < 60)).sum() > 100


def test_large_figures_are_shrunk_to_1024(tmp_path):
    pdf = _two_column_paper(tmp_path / "paper.pdf")
    rec = extract_pdf_figures(pdf, tmp_path / "out", dpi=600)[0]
    assert max(rec["width"], rec["height"]) == 1024


def test_bad_pdfs_give_one_error_record(tmp_path):
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"%PDF-1.4\nthis is not really a pdf" * 3)
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    locked = tmp_path / "locked.pdf"
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "secret")
    doc.save(locked, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o")
    for path, words in [(junk, "cannot open"), (empty, "cannot open"), (locked, "encrypted")]:
        records = extract_pdf_figures(path, tmp_path / "out")
        assert len(records) == 1, path
        assert records[0]["status"] == "error" and words in records[0]["error"], records[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_paper_without_figures_gives_nothing(tmp_path):
    doc = pymupdf.open()
    doc.new_page().insert_textbox(pymupdf.Rect(72, 72, 540, 700), "Figure 3 shows a result. " + BODY)
    doc.save(tmp_path / "text.pdf")
    assert extract_pdf_figures(tmp_path / "text.pdf", tmp_path / "out") == []


def test_cli_writes_pngs_and_overlay(tmp_path, capsys):
    pdf = _two_column_paper(tmp_path / "paper.pdf")
    assert main([str(pdf), "--out", str(tmp_path / "cli"), "--overlay"]) == 0
    assert (tmp_path / "cli" / "page1_fig1.png").is_file()
    assert Image.open(tmp_path / "cli" / "page1_overlay.png").size == (612, 792)
    assert "page1_fig1.png" in capsys.readouterr().out


# --- real papers --------------------------------------------------------------------------


def test_docbank_figure_box_and_its_three_photos_are_one_region(testdata):
    truth = [t for t in truth_boxes(testdata) if t.pdf.startswith("docbank")][0]
    with pymupdf.open(testdata / "pdfs" / truth.pdf) as doc:
        regions = find_figure_regions(doc[truth.page])
    figures = [r for r in regions if r.figure_type == "Figure"]
    assert len(figures) == 1
    assert iou(figures[0].bbox, truth.bbox) >= 0.8
    assert figures[0].n_images == 3 and figures[0].figure_number == "3"


def test_deepfigures_figures_match_at_iou_08(testdata):
    truth = [t for t in truth_boxes(testdata) if t.pdf.startswith("pdffigures1") and t.figure_type == "Figure"]
    assert len(truth) == 4
    with pymupdf.open(testdata / "pdfs" / truth[0].pdf) as doc:
        regions = find_figure_regions(doc)
    for t in truth:
        found = [r for r in regions if r.figure_type == "Figure" and r.figure_number == t.name]
        assert found and found[0].page == t.page, t
        assert iou(found[0].bbox, t.bbox) >= 0.8, (t, found[0].bbox)


def test_pdffigures2_expected_figure(testdata):
    name = "pdffigures2_test_498bb0ef_open_ie.pdf"
    expected = json.loads((testdata / "figure_gt" / "pdffigures2_test_expectations.json").read_text())[name]
    fig = [e for e in expected["items"] if e["figType"] == "Figure"][0]
    with pymupdf.open(testdata / "pdfs" / name) as doc:
        regions = find_figure_regions(doc)
    found = [r for r in regions if r.figure_type == "Figure"]
    assert [(r.figure_number, r.page) for r in found] == [(fig["name"], fig["page"])]
    assert " ".join(found[0].caption.split())[:60] == fig["caption"][:60]


def test_full_width_scan_figure_with_column_caption(testdata):
    # Glia paper, page index 5: the figure spans the page, its caption only the left column.
    with pymupdf.open(testdata / "pdfs" / "pdffigures2_test_3a9202f9_calcium_glia.pdf") as doc:
        regions = [r for r in find_figure_regions(doc) if r.page == 5]
        image = pymupdf.Rect(doc[5].get_image_info()[0]["bbox"])
    assert [r.figure_number for r in regions] == ["3"]
    assert iou(regions[0].bbox, image) >= 0.95


def test_grid_paper_figure_is_one_region(testdata):
    # GenesisTex2 page index 2: one full-width texture grid of 41 abutting rasters.
    with pymupdf.open(testdata / "pdfs" / "genesistex2.pdf") as doc:
        page = doc[2]
        n_images = len(page.get_image_info())
        regions = find_figure_regions(page)
    figures = [r for r in regions if r.figure_type == "Figure"]
    assert n_images > 30
    assert len(figures) == 1 and figures[0].n_images == n_images


def test_reader_highlights_in_real_copy_are_not_rendered(testdata, tmp_path):
    # This copy of ViT carries 167 reader highlights, two of them on Table 2 (page index 5).
    pdf = testdata / "pdfs" / "vit_2010.11929.pdf"
    records = extract_pdf_figures(pdf, tmp_path, dpi=72, include_tables=True)
    assert all(r["status"] == "ok" for r in records)
    rec = [r for r in records if r["figure_type"] == "Table" and r["figure_number"] == "2"][0]
    assert rec["page"] == 5 and rec["img_name"] == "page6_table2.png"
    mine = np.asarray(Image.open(rec["png_path"]))
    with pymupdf.open(pdf) as doc:
        page, clip = doc[5], pymupdf.Rect(rec["bbox"])
        assert any(a.rect.intersects(clip) for a in page.annots())
        renders = {}
        for annots in (False, True):
            pix = page.get_pixmap(dpi=72, clip=clip, annots=annots, alpha=False)
            renders[annots] = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, 3)
    assert np.array_equal(mine, renders[False])
    assert not np.array_equal(mine, renders[True])


def test_figure_number_recall_on_some_papers(testdata):
    from pipeline.pdffigures_eval import named_figure_numbers

    found_total = named_total = 0
    for name in ["aop-sam.pdf", "multimix_medical.pdf", "ghnerf_gh-nerf.pdf", "resnet_1512.03385.pdf"]:
        with pymupdf.open(testdata / "pdfs" / name) as doc:
            named = named_figure_numbers(doc)
            found = {r.figure_number for r in find_figure_regions(doc) if r.figure_type == "Figure"}
        found_total += len(named & found)
        named_total += len(named)
    assert found_total / named_total >= 0.85
