"""Rendering figure files to the training format, and the sandboxed renderer process."""
from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image

from pipeline.render import (OFFICIAL, Renderer, RenderError, RenderOptions, poppler_number,
                             poppler_size,
                             render_figure, render_to_png, thumbnail_size, to_rgb)


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def pdf_bytes(pages=1, media=(0, 0, 400, 200), crop=None) -> bytes:
    doc = pymupdf.open()
    for _ in range(pages):
        page = doc.new_page(width=media[2], height=media[3])
        page.draw_rect(pymupdf.Rect(0, 0, media[2], media[3]), color=(0, 0, 1), fill=(0, 0, 1))
        page.draw_rect(pymupdf.Rect(100, 50, 300, 150), color=(1, 0, 0), fill=(1, 0, 0))
        if crop:
            page.set_cropbox(pymupdf.Rect(*crop))
    return doc.tobytes()


@pytest.mark.parametrize("w, h", [(1024, 1024), (3000, 2000), (2000, 3001), (1025, 7),
                                  (7, 5000), (2667, 1400), (5000, 5000), (333, 9999)])
def test_thumbnail_size_is_pillows(w, h):
    img = Image.new("1", (w, h))
    img.thumbnail((1024, 1024))
    assert thumbnail_size(w, h) == img.size


def test_fast_and_official_pdf_sizes_agree_with_poppler(testdata, tmp_path):
    import tarfile

    with tarfile.open(testdata / "eprints" / "1904.03249.tar.gz") as tar:
        data = tar.extractfile("figures/vis.pdf").read()
    fast, info = render_figure(data, "pdf")
    official, _ = render_figure(data, "pdf", OFFICIAL)
    assert fast.size == official.size == (1024, 538)
    assert info["page_count"] == 1 and info["mediabox"] == [0, 0, 960, 504]
    # Same picture: mean absolute difference of a few grey levels at most.
    diff = np.abs(np.asarray(fast, float) - np.asarray(official, float)).mean()
    assert diff < 8, diff
    if shutil.which("pdftoppm"):
        (tmp_path / "vis.pdf").write_bytes(data)
        subprocess.run(["pdftoppm", "-r", "200", "-png", "-singlefile", str(tmp_path / "vis.pdf"),
                        str(tmp_path / "pop")], check=True)
        with Image.open(tmp_path / "pop.png") as pop:
            assert pop.size == poppler_size(960, 504)


def test_cropbox_default_mediabox_option_both_recorded():
    data = pdf_bytes(media=(0, 0, 400, 200), crop=(100, 50, 300, 150))
    cropped, info = render_figure(data, "pdf")
    media, _ = render_figure(data, "pdf", RenderOptions(box="media"))
    assert info["cropbox"] == [100, 50, 300, 150] and info["mediabox"] == [0, 0, 400, 200]
    assert cropped.size == (556, 278)  # 200x100 pt at 200 DPI, rounded up
    assert media.size == (1024, 512)
    r, g, b = np.asarray(cropped)[139, 278]
    assert r > 200 and b < 50  # the crop box holds only the red square
    assert np.asarray(media)[5, 5][2] > 200  # the media box shows the blue border


def test_multi_page_pdf_is_skipped_with_page_count(tmp_path):
    result = render_to_png(pdf_bytes(pages=3), "pdf", tmp_path / "x.png")
    assert result["status"] == "skipped" and "multi-page" in result["error"]
    assert result["page_count"] == 3 and not (tmp_path / "x.png").exists()


def test_encrypted_and_malformed_pdfs(tmp_path):
    doc = pymupdf.open(stream=pdf_bytes(), filetype="pdf")
    locked = doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="o")
    assert "encrypted" in render_to_png(locked, "pdf", tmp_path / "a.png")["error"]
    bad = render_to_png(b"%PDF-1.4\n garbage garbage", "pdf", tmp_path / "b.png")
    assert bad["status"] == "error" and "PDF" in bad["error"]
    assert render_to_png(b"", "pdf", tmp_path / "c.png")["error"] == "empty file (0 bytes)"


def test_raster_modes_all_become_rgb():
    rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 0))  # transparent red
    white, _ = render_figure(png_bytes(rgba), "png")
    dropped, _ = render_figure(png_bytes(rgba), "png", OFFICIAL)
    assert white.getpixel((0, 0)) == (255, 255, 255)  # composited on white
    assert dropped.getpixel((0, 0)) == (255, 0, 0)  # official: alpha dropped
    p = Image.new("P", (10, 10), 1)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    assert render_figure(png_bytes(p), "png")[0].getpixel((0, 0)) == (0, 255, 0)
    la = Image.new("LA", (10, 10), (0, 255))
    assert render_figure(png_bytes(la), "png")[0].getpixel((0, 0)) == (0, 0, 0)
    deep = Image.fromarray(np.full((10, 10), 65535 // 2, np.uint16))
    grey = render_figure(png_bytes(deep), "png")[0].getpixel((0, 0))
    assert grey[0] == grey[1] == grey[2] and 120 <= grey[0] <= 135  # scaled, not clipped
    # Official pixels: the CVF tool's plain convert("RGB"), which clips 16-bit values to 255.
    ramp = Image.fromarray((np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8))
    official, _ = render_figure(png_bytes(ramp), "png", OFFICIAL)
    assert np.array_equal(np.asarray(official), np.asarray(ramp.convert("RGB")))
    buf = io.BytesIO()
    Image.new("CMYK", (3000, 1500), (0, 255, 255, 0)).save(buf, "JPEG")
    cmyk, _ = render_figure(buf.getvalue(), "jpg")
    assert cmyk.mode == "RGB" and cmyk.size == (1024, 512)
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    assert render_figure(gif.getvalue(), "gif")[0].getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(Image.new("1", (4, 4), 1)).getpixel((0, 0)) == (255, 255, 255)


def huge_png(side: int) -> bytes:
    """A valid 1-bit PNG of side x side pixels (a few hundred KiB on disk)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\x00" + bytes((side + 7) // 8)
    z = zlib.compressobj(9)
    raw = b"".join(z.compress(row * 1000) for _ in range(side // 1000)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_decompression_bomb_image_is_refused(tmp_path):
    result = render_to_png(huge_png(30_000), "png", tmp_path / "x.png")
    assert result["status"] == "error" and "decompression-bomb limit" in result["error"]
    assert "900000000 pixels" in result["error"] or "30000x30000" in result["error"]
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(not shutil.which("gs"), reason="Ghostscript (gs) not installed")
def test_eps_through_ghostscript_cropped_to_bounding_box():
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 300 100\n"
           b"1 0 0 setrgbcolor 0 0 300 100 rectfill showpage\n%%EOF\n")
    img, info = render_figure(eps, "eps")
    assert img.size == (834, 278) and info["page_count"] == 1
    assert img.getpixel((400, 100)) == (255, 0, 0)
    with pytest.raises(RenderError, match="Ghostscript failed"):
        render_figure(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnosuchop\n", "eps")


def live_processes_mentioning(text: str) -> list[str]:
    """Command lines of the live (not zombie) processes whose command line holds `text`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.skipif(not shutil.which("gs"), reason="Ghostscript not installed")
def test_timed_out_eps_leaves_no_ghostscript_behind(tmp_path, monkeypatch):
    """A PostScript file that loops forever: the record times out and the `gs` the child
    started is killed with it, not left spinning."""
    forever = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n{ 1 pop } loop\n"
    scratch = tmp_path / "scratch"  # the child's temp folder: names this test's `gs` alone
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    with Renderer(RenderOptions(timeout_s=3)) as renderer:
        hung = renderer.render(forever, "eps", tmp_path / "x.png")
        assert hung["status"] == "error" and "timed out" in hung["error"]
        for _ in range(50):
            if not live_processes_mentioning(str(scratch)):
                break
            time.sleep(0.1)
        leftover = live_processes_mentioning(str(scratch))
    for line in leftover:  # do not leave it spinning on a failed run either
        os.kill(int(line.split(":")[0]), signal.SIGKILL)
    assert leftover == []


def test_renderer_survives_a_hung_and_a_crashed_child(tmp_path):
    good = png_bytes(Image.new("RGB", (2000, 1000), (0, 128, 0)))
    noise = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    big = png_bytes(Image.fromarray(noise))  # over a pipe buffer: even sending must time out
    with Renderer(RenderOptions(timeout_s=3)) as renderer:
        assert renderer.render(good, "png", tmp_path / "a.png")["status"] == "ok"
        os.kill(renderer.proc.pid, signal.SIGSTOP)  # a child that hangs
        hung = renderer.render(big, "png", tmp_path / "b.png")
        assert hung["status"] == "error" and "timed out after 3 s" in hung["error"]
        assert renderer.render(good, "png", tmp_path / "c.png")["width"] == 1024
        renderer.proc.kill()  # a child that dies
        renderer.proc.wait()
        crashed = renderer.render(good, "png", tmp_path / "d.png")
        assert crashed["status"] == "error" and "crashed" in crashed["error"]
        assert renderer.render(good, "png", tmp_path / "e.png")["status"] == "ok"
        assert renderer.restarts == 2
    with Image.open(tmp_path / "e.png") as out:
        assert out.mode == "RGB" and out.size == (1024, 512)


def test_boxes_in_pdf_coordinates_with_an_offset_mediabox(testdata):
    doc = pymupdf.open(stream=pdf_bytes(), filetype="pdf")
    doc.xref_set_key(doc[0].xref, "MediaBox", "[50 60 450 260]")
    doc.xref_set_key(doc[0].xref, "CropBox", "[150 110 350 210]")
    data = doc.tobytes()
    cropped, info = render_figure(data, "pdf")
    media, _ = render_figure(data, "pdf", OFFICIAL)
    assert info["mediabox"] == [50, 60, 450, 260] and info["cropbox"] == [150, 110, 350, 210]
    assert cropped.size == (556, 278) and media.size == (1024, 512)
    # A real figure whose MediaBox is offset and has no CropBox: one box, either way.
    with tarfile.open(testdata / "eprints" / "2002.06483.tar.gz") as tar:
        real = tar.extractfile("figures/confusion.pdf").read()
    a, info = render_figure(real, "pdf")
    b, _ = render_figure(real, "pdf", OFFICIAL)
    assert info["cropbox"] == info["mediabox"] and a.size == b.size


@pytest.mark.skipif(not shutil.which("pdftoppm"), reason="poppler-utils not installed")
@pytest.mark.parametrize("paper, member", [
    ("2002.06483", "figures/confusion.pdf"), ("2002.06483", "figures/human_eval.pdf"),
    ("2002.06483", "figures/violinplots.pdf"), ("1906.11713", "figs/edge_contraction.pdf"),
    ("1906.11713", "figs/noise_plots/over_segment_plots_0.pdf")])
def test_official_size_is_pdftoppm_then_thumbnail(testdata, tmp_path, paper, member):
    """Boxes whose size at 200 DPI sits on an integer (float noise either side)."""
    with tarfile.open(testdata / "eprints" / f"{paper}.tar.gz") as tar:
        (tmp_path / "f.pdf").write_bytes(tar.extractfile(member).read())
    subprocess.run(["pdftoppm", "-r", "200", "-png", "-singlefile", str(tmp_path / "f.pdf"),
                    str(tmp_path / "pop")], check=True)
    with Image.open(tmp_path / "pop.png") as pop:
        pop.thumbnail((1024, 1024))
        expected = pop.size
    data = (tmp_path / "f.pdf").read_bytes()
    assert render_figure(data, "pdf", OFFICIAL)[0].size == expected
    assert render_figure(data, "pdf", RenderOptions(box="media"))[0].size == expected


def test_poppler_number_and_size_rules():
    assert poppler_number("556.416") != float("556.416") and poppler_number("-2.5") == -2.5
    assert poppler_size(648, poppler_number("273.6")) == (1800, 761)  # pdftoppm -r 200
    media = [poppler_number(v) for v in ("20.304", "68.256", "605.664", "556.416")]
    assert poppler_size(media[2] - media[0], media[3] - media[1]) == (1626, 1356)


@pytest.mark.skipif(not shutil.which("pdftoppm"), reason="poppler-utils not installed")
def test_poppler_engine_is_pdf2image_to_the_bit(testdata):
    from pdf2image import convert_from_bytes

    with tarfile.open(testdata / "eprints" / "1904.03249.tar.gz") as tar:
        data = tar.extractfile("figures/vis.pdf").read()
    ref = convert_from_bytes(data, dpi=200)[0].convert("RGB")  # the official downloader
    ref.thumbnail((1024, 1024))
    got, info = render_figure(data, "pdf", RenderOptions(box="media", alpha="drop", official=True,
                                                         poppler=True))
    assert info["page_count"] == 1 and np.array_equal(np.asarray(got), np.asarray(ref))
    multi = render_to_png(pdf_bytes(pages=2), "pdf", "/nonexistent/x.png",
                          RenderOptions(poppler=True))
    assert multi["status"] == "skipped" and multi["page_count"] == 2
