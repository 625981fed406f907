"""Candidates as CVF made them: .pdf and .png figure files by default (EPS as the PDF it
becomes), others only when asked; distant supervision never calls a file of a format CVF did
not consider a negative."""
from __future__ import annotations

import pytest

from pipeline import labels
from pipeline.extract import extract_shard, main as extract_main
from pipeline.naming import ALL_FORMATS, is_candidate, parse_formats
from test_extract import one_page_pdf, photo, rows_by_name, tar_gz, write_papers

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n"
       b"newpath 10 10 moveto 90 90 lineto stroke\nshowpage\n%%EOF\n")


def paper_with_every_format() -> bytes:
    return tar_gz({"figs/grid.png": photo(1), "figs/plot.pdf": one_page_pdf(),
                   "figs/photos.jpg": photo(2), "figs/anim.gif": photo(3), "figs/old.eps": EPS,
                   "main.tex": b"\\includegraphics{figs/grid}"})


def test_candidate_rule():
    assert is_candidate("a/b.png") and is_candidate("a/b.PDF") and is_candidate("a/b.eps")
    assert not is_candidate("a/b.jpg") and not is_candidate("a/b.gif") and not is_candidate("a/b.tex")
    assert is_candidate("a/b.jpeg", parse_formats("pdf,png,jpg"))
    assert not is_candidate("a/b.eps", ("png",))  # an EPS is the PDF it becomes
    assert parse_formats(" PNG,.jpeg, tif") == ("png", "jpg", "tiff")
    with pytest.raises(ValueError, match="webp"):
        parse_formats("png,webp")


def test_extraction_takes_cvf_formats_by_default(tmp_path):
    root = tmp_path / "data"
    write_papers(root, "2105-01", {"2105.00001": paper_with_every_format()})
    stats = extract_shard("2105-01", root, progress=False)
    names = {n for _, n in rows_by_name(root, "2105-01")}
    assert names == {"figs_grid.png", "figs_plot.pdf", "figs_old-eps-converted-to.pdf"}
    assert stats["options"]["formats"] == ["pdf", "png"]
    other = tmp_path / "other"
    write_papers(other, "2105-01", {"2105.00001": paper_with_every_format()})
    extract_shard("2105-01", other, progress=False, formats=parse_formats("pdf,png,jpg"))
    assert {n for _, n in rows_by_name(other, "2105-01")} == names | {"figs_photos.jpg"}


def test_cli_formats_flag_and_its_errors(tmp_path, capsys):
    root = tmp_path / "data"
    write_papers(root, "2105-01", {"2105.00001": paper_with_every_format()})
    extract_main(["--root", str(root), "--shards", "2105-01", "--formats", "png,gif"])
    assert {n for _, n in rows_by_name(root, "2105-01")} == {"figs_grid.png", "figs_anim.gif"}
    with pytest.raises(SystemExit) as e:
        extract_main(["--root", str(root), "--formats", "png,webp"])
    assert e.value.code == 2 and "unknown format webp" in capsys.readouterr().err


def test_distant_supervision_skips_formats_cvf_did_not_consider(tmp_path):
    """A listed paper's unlisted JPEG (a photo grid, say) is no known negative: CVF only ever
    listed .pdf and .png names. Its unlisted PDF and PNG are."""
    figures = [{"paper_id": "2101.00001", "img_name": n, "source_kind": "eprint", "name_filter": False}
               for n in ("listed.png", "other.pdf", "other.png", "grid.jpg", "anim.gif", "x-eps-converted-to.pdf")]
    index = tmp_path / "df_train.csv"
    index.write_text(",paper_id,img_name\n0,2101.00001,listed.png\n")
    got, _ = labels.gather(figures, cvf_index=[index])
    assert {(r["img_name"], r["label"]) for r in got} == {
        ("listed.png", 1), ("other.pdf", 0), ("other.png", 0), ("x-eps-converted-to.pdf", 0)}
    assert set(ALL_FORMATS) >= {"jpg", "gif"}
