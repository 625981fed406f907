"""Render a figure file (PDF, EPS/PS, any raster) to the training format: RGB PNG, longer side
at most 1024 px.

PDFs go through PyMuPDF (single page only; the CropBox by default, which is what
`\\includegraphics` shows in the paper, or the MediaBox, poppler's default and so the official
pixels; both boxes are recorded). EPS/PS go through Ghostscript to a PDF first, as pdfLaTeX's
epstopdf does. Rasters go through Pillow with every mode handled and a decompression-bomb guard.

Two ways to get the pixels, same output size:
  * fast (default): render the page straight at the final size;
  * official: what the CVF downloader did, poppler at 200 DPI then Pillow's `thumbnail(1024)`,
    and RGBA -> RGB by dropping alpha. `pipeline.rebuild` uses this.

A figure renderer can hang or crash on hostile input, so `Renderer` runs the work in a child
process (`pipeline.confined`) with a per-file time limit and a memory cap,
and starts a fresh child when one dies: one bad file costs one record, never the worker.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image

from model import cli
from pipeline.confined import ConfinedChild, private_folder, run_confined
from pipeline.limits import MAX_PIXELS, MAX_SIDE, OFFICIAL_DPI, error_text, without_addresses


class RenderError(Exception):
    """A figure that cannot be rendered. `status` is `error` or `skipped` (e.g. multi-page)."""

    def __init__(self, message: str, status: str = "error", info: dict | None = None):
        super().__init__(without_addresses(message))
        self.status, self.info = status, info or {}


@dataclass(frozen=True)
class RenderOptions:
    box: str = "crop"        # PDF page box: "crop" (as the paper shows it) or "media" (poppler)
    alpha: str = "white"     # RGBA -> RGB: "white" composites on white, "drop" discards alpha
    official: bool = False   # PDFs: 200 DPI then thumbnail (official pixels) vs straight to size;
                             # rasters: a plain convert("RGB"), as the official tool did
    poppler: bool = False    # PDFs through pdftoppm itself, as the official tool did (slow)
    max_side: int = MAX_SIDE
    dpi: int = OFFICIAL_DPI
    timeout_s: float = 60.0  # per file, enforced by Renderer


OFFICIAL = RenderOptions(box="media", alpha="drop", official=True)


# --- sizes -------------------------------------------------------------------------------------

def poppler_size(width_pt: float, height_pt: float, dpi: int = OFFICIAL_DPI) -> tuple[int, int]:
    """The bitmap size pdftoppm gives a page at `dpi`: `ceil(points * dpi / 72)` in doubles, with
    the points as poppler parses them (`poppler_number`). Sizes that land on an integer go one
    way or the other by float noise, so the exact arithmetic matters (checked against 22.12)."""
    return math.ceil(width_pt * dpi / 72.0), math.ceil(height_pt * dpi / 72.0)


def poppler_number(text: str) -> float:
    """A PDF number as poppler's lexer reads it: digits after the point are added one by one
    (`x += scale * digit; scale *= 0.1`), which can differ from `float(text)` in the last bit."""
    negative = text.startswith("-")
    whole, _, fraction = text.lstrip("+-").partition(".")
    value, scale = float(int(whole or 0)), 0.1
    for digit in fraction:
        value += scale * int(digit)
        scale *= 0.1
    return -value if negative else value


def thumbnail_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """The size Pillow's `Image.thumbnail((max_side, max_side))` gives (same rounding)."""
    if width <= max_side and height <= max_side:
        return width, height
    aspect = width / height
    x = y = max_side
    if x / y >= aspect:
        x = max(min(math.floor(y * aspect), math.ceil(y * aspect),
                    key=lambda n: abs(aspect - n / y)), 1)
    else:
        y = max(min(math.floor(x / aspect), math.ceil(x / aspect),
                    key=lambda n: 0 if n == 0 else abs(aspect - x / n)), 1)
    return x, y


# --- rasters -----------------------------------------------------------------------------------

def to_rgb(img: Image.Image, alpha: str = "white") -> Image.Image:
    """Any Pillow mode to 8-bit RGB. 16-bit and float images are scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info)
    if has_alpha and alpha == "white":
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # Pillow's RGBA -> RGB drops alpha, as the official tool did


def open_bounded(fp) -> Image.Image:
    """`Image.open(fp)`, header only, refusing images over MAX_PIXELS (RenderError). Pillow's
    own guard (a warning, then an error at twice its global limit) is left to its global
    setting, which this module does not change: the check here is the one that counts."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except Image.DecompressionBombError as e:
        raise RenderError(f"image over the {MAX_PIXELS / 1e6:.0f} Mpx decompression-bomb limit "
                          f"({e})") from e
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise RenderError(f"image is {w}x{h} = {w * h / 1e6:.0f} Mpx, over the "
                          f"{MAX_PIXELS / 1e6:.0f} Mpx decompression-bomb limit")
    return img


def render_raster(data: bytes, options: RenderOptions) -> tuple[Image.Image, dict]:
    try:
        img = open_bounded(io.BytesIO(data))
        w, h = img.size
        img.seek(0)  # animated GIF/PNG/TIFF: the first frame
        if not options.official and img.format == "JPEG":
            img.draft("RGB", (options.max_side, options.max_side))  # decode at reduced scale
        img.load()
    except RenderError:
        raise
    except Image.DecompressionBombError as e:
        raise RenderError(f"image over the {MAX_PIXELS / 1e6:.0f} Mpx decompression-bomb limit "
                          f"({e})") from e
    except Exception as e:  # Pillow raises many kinds for broken files
        raise RenderError(f"unreadable image: {error_text(e)}") from e
    # The official tool called convert("RGB") whatever the mode, so its 16-bit and float
    # images are clipped to 255 (mostly white), not scaled: official pixels keep that.
    img = img.convert("RGB") if options.official else to_rgb(img, options.alpha)
    img.thumbnail((options.max_side, options.max_side))
    return img, {"source_width": w, "source_height": h}


# --- PDF and PostScript ------------------------------------------------------------------------

def _box(rect) -> list[float]:
    return [round(float(v), 3) for v in (rect.x0, rect.y0, rect.x1, rect.y1)]


def _raw_box(doc, page, key: str) -> list[float] | None:
    """A page box as the file writes it (PDF coordinates, doubles), inherited from the page
    tree if need be. PyMuPDF's own rects are single precision, which is enough to shift
    poppler's rounded-up bitmap size by a pixel."""
    xref = page.xref
    while xref:
        kind, value = doc.xref_get_key(xref, key)
        if kind == "array":
            try:
                x0, y0, x1, y1 = (poppler_number(v) for v in value.strip("[]").split())
            except ValueError:
                return None
            return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        kind, parent = doc.xref_get_key(xref, "Parent")
        xref = int(parent.split()[0]) if kind == "xref" else 0
    return None


def _page_boxes(doc, page) -> tuple[list[float], list[float]]:
    """(MediaBox, CropBox) in PDF coordinates; the CropBox is clipped to the MediaBox."""
    media = _raw_box(doc, page, "MediaBox") or _box(page.mediabox)
    crop = _raw_box(doc, page, "CropBox") or media
    crop = [max(crop[0], media[0]), max(crop[1], media[1]),
            min(crop[2], media[2]), min(crop[3], media[3])]
    return media, crop


def _open_figure_pdf(data: bytes):
    """(document, info) of a one-page figure PDF; info holds `page_count`, `mediabox` and
    `cropbox`. Malformed, encrypted, empty and multi-page PDFs raise RenderError (multi-page:
    status `skipped`, info kept)."""
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as e:
        raise RenderError(f"malformed PDF: {e}") from e
    try:
        if doc.needs_pass:
            raise RenderError("encrypted PDF: a password is required")
        info = {"page_count": doc.page_count}
        if doc.page_count == 0:
            raise RenderError("PDF has no pages")
        media, crop = _page_boxes(doc, doc[0])
        info["mediabox"], info["cropbox"] = [round(v, 3) for v in media], [round(v, 3) for v in crop]
        if doc.page_count > 1:
            raise RenderError(f"multi-page PDF ({doc.page_count} pages)", "skipped", info)
    except BaseException:
        doc.close()
        raise
    return doc, info


def render_pdf(data: bytes, options: RenderOptions) -> tuple[Image.Image, dict]:
    doc, info = _open_figure_pdf(data)
    with doc:
        page = doc[0]
        media, crop = _page_boxes(doc, page)
        box = media if options.box == "media" else crop
        if box != crop:  # show the whole MediaBox, as poppler does by default
            doc.xref_set_key(page.xref, "CropBox", "[%r %r %r %r]" % tuple(media))
            page = doc.reload_page(page)
        rect = page.rect  # the chosen box, rotated as displayed
        width, height = box[2] - box[0], box[3] - box[1]
        if page.rotation % 180:
            width, height = height, width
        if width < 1 or height < 1:
            raise RenderError(f"empty page box {box}")
        full_w, full_h = poppler_size(width, height, options.dpi)
        target = thumbnail_size(full_w, full_h, options.max_side)
        try:
            if options.official:
                scale = options.dpi / 72.0
                if full_w * full_h > MAX_PIXELS:  # a poster-sized page: render smaller
                    scale *= math.sqrt(MAX_PIXELS / (full_w * full_h))
                pix = page.get_pixmap(matrix=pymupdf.Matrix(scale, scale), alpha=False,
                                      annots=False)
            else:
                pix = page.get_pixmap(matrix=pymupdf.Matrix(target[0] / rect.width,
                                                            target[1] / rect.height),
                                      alpha=False, annots=False)
        except Exception as e:
            raise RenderError(f"PDF page failed to render: {e}") from e
        img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    if options.official:
        if img.size != (full_w, full_h):
            # A poster-sized page was rendered smaller: go straight to the thumbnail's size
            # (scaling it up to 200 DPI first only to shrink it again would cost gigabytes).
            img = img.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
        else:
            img.thumbnail((options.max_side, options.max_side))
    elif img.size != target:  # MuPDF's pixel rounding can differ from poppler's by one
        img = img.resize(target, Image.Resampling.BICUBIC)
    return img, info



def render_pdf_poppler(data: bytes, options: RenderOptions) -> tuple[Image.Image, dict]:
    """The official tool's exact pixels: pdftoppm at `options.dpi` (pdf2image's call), then
    Pillow's RGB conversion and thumbnail. Page count and boxes come from PyMuPDF."""
    doc, info = _open_figure_pdf(data)
    doc.close()
    with private_folder("cvf-poppler-") as tmp:
        src = tmp / "in.pdf"
        src.write_bytes(data)
        cmd = ["pdftoppm", "-r", str(options.dpi), "-png", "-singlefile", "-f", "1", "-l", "1"]
        cmd += ["-cropbox"] if options.box == "crop" else []
        try:
            run = run_confined(cmd + [str(src), str(tmp / "out")], tmp, options.timeout_s * 0.9)
        except FileNotFoundError as e:
            raise RenderError("pdftoppm not found: install poppler-utils (make system-deps)") from e
        except subprocess.TimeoutExpired as e:
            raise RenderError(f"pdftoppm timed out after {options.timeout_s * 0.9:.0f} s") from e
        out = tmp / "out.png"
        if run.returncode != 0 or not out.exists():
            tail = run.stderr.replace(bytes(tmp), b"").decode("utf-8", "replace").strip()[-300:]
            raise RenderError(f"pdftoppm failed (exit {run.returncode}): {tail}")
        try:  # pdftoppm's own output: Pillow's guard only (a huge page was still rendered)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                page = Image.open(out)
            with page:
                img = page.convert("RGB")
        except Image.DecompressionBombError as e:
            raise RenderError(f"pdftoppm's page is over Pillow's pixel limit ({e})") from e
    img.thumbnail((options.max_side, options.max_side))
    return img, info


_GS_REFUSED = re.compile(rb"Error: /(invalidfileaccess|invalidaccess) in (\S+)")


def eps_to_pdf(data: bytes, timeout_s: float = 60.0) -> bytes:
    """Convert EPS/PS to a one-page PDF cropped to its bounding box, as epstopdf does.

    PostScript is a programming language and the file is a stranger's, so Ghostscript runs
    confined: -dSAFER, reading only the input and writing only the output
    (--permit-file-read/-write), its temporary folder a private empty one (with TMPDIR unset
    SAFER would let the file read and write all of /tmp). An EPS that tries to open any other
    file gets /invalidfileaccess, whether that file exists or not, and the record says so."""
    with private_folder("cvf-eps-") as tmp:
        src, dst = tmp / "in.eps", tmp / "out.pdf"
        src.write_bytes(data)
        cmd = ["gs", "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE",
               f"--permit-file-read={src}", f"--permit-file-write={dst}",
               "-sDEVICE=pdfwrite", "-dEPSCrop", "-dAutoRotatePages=/None",
               f"-sOutputFile={dst}", str(src)]
        try:
            run = run_confined(cmd, tmp, timeout_s)
        except FileNotFoundError as e:
            raise RenderError("Ghostscript (gs) not found: install it (make system-deps)") from e
        except subprocess.TimeoutExpired as e:
            raise RenderError(f"Ghostscript timed out after {timeout_s:.0f} s") from e
        output = (run.stderr + run.stdout).replace(bytes(tmp), b"")  # no random folder names
        if run.returncode != 0 or not dst.exists() or dst.stat().st_size == 0:
            if refused := _GS_REFUSED.search(output):
                what, where = (g.decode("ascii", "replace") for g in refused.groups())
                raise RenderError(f"Ghostscript refused a file access outside the sandbox "
                                  f"(/{what} in {where}): the EPS tried to open a file other "
                                  f"than itself")
            tail = output.decode("utf-8", "replace").strip()[-300:]
            raise RenderError(f"Ghostscript failed (exit {run.returncode}): {tail}")
        return dst.read_bytes()


def render_figure(data: bytes, fmt: str, options: RenderOptions = RenderOptions()
                  ) -> tuple[Image.Image, dict]:
    """Render one figure file's bytes (`fmt` as `naming.figure_format` gives it)."""
    if not data:
        raise RenderError("empty file (0 bytes)")
    pdf = render_pdf_poppler if options.poppler else render_pdf
    if fmt in ("eps", "ps"):
        return pdf(eps_to_pdf(data, options.timeout_s), options)
    if fmt == "pdf":
        return pdf(data, options)
    return render_raster(data, options)


def save_png(img: Image.Image, path: str | os.PathLike) -> dict:
    """Write `img` as PNG atomically; its width, height, sha256, bytes and perceptual hash."""
    import imagehash

    from pipeline.store import atomic_write_bytes, sha256_bytes

    buf = io.BytesIO()
    img.save(buf, "PNG")
    png = buf.getvalue()
    atomic_write_bytes(path, png)
    return {"width": img.width, "height": img.height, "sha256": sha256_bytes(png),
            "bytes": len(png), "phash": str(imagehash.phash(img))}


def render_to_png(data: bytes, fmt: str, out_path: str | os.PathLike,
                  options: RenderOptions = RenderOptions()) -> dict:
    """Render and save one figure. Never raises for bad input: the result carries
    `status` (`ok`, `skipped`, `error`), `error`, and on success the PNG's facts."""
    result = {"status": "ok", "error": "", "page_count": None, "mediabox": None, "cropbox": None}
    try:
        img, info = render_figure(data, fmt, options)
        result.update({k: info[k] for k in ("page_count", "mediabox", "cropbox") if k in info})
        result.update(save_png(img, out_path))
    except RenderError as e:
        result.update(e.info, status=e.status, error=str(e))
    except MemoryError:
        result.update(status="error", error="out of memory while rendering")
    except OSError as e:  # the PNG cannot be written (disk full, a read-only folder)
        result.update(status="error", error=f"cannot write the PNG: {error_text(e)}")
    return result


# --- rendering in the confined child -----------------------------------------------------------

class Renderer(ConfinedChild):
    """Renders figures in a confined child process (`pipeline.confined`) with a per-file time
    limit and a memory cap, e.g.

        with Renderer(RenderOptions(timeout_s=30)) as renderer:
            result = renderer.render(pdf_bytes, "pdf", "out.png")  # status, error, sha256, ...
            records = renderer.pdf_figures("paper.pdf", "figs/")   # the PDF fallback
            value, error = renderer.call(module_level_function, *args)  # any such work

    `call`'s default time limit is 5 times the per-file one.
    """

    folder_prefix = "cvf-render-"

    def __init__(self, options: RenderOptions = RenderOptions(), memory_mb: int = 4096):
        super().__init__(memory_mb, 5 * options.timeout_s)
        self.options = options

    def render(self, data: bytes, fmt: str, out_path: str | os.PathLike) -> dict:
        result, error = self.call(render_to_png, data, fmt, str(Path(out_path).resolve()),
                                  self.options, timeout_s=self.options.timeout_s)
        if result is None:
            return {"status": "error", "error": error, "page_count": None, "mediabox": None,
                    "cropbox": None}
        return result

    def pdf_figures(self, pdf_path: str | os.PathLike, out_dir: str | os.PathLike) -> list[dict]:
        """`pipeline.pdffigures.extract_pdf_figures(pdf_path, out_dir)` in the child. A child
        that dies or times out gives one `error` record without an img_name."""
        from pipeline.pdffigures import extract_pdf_figures

        records, error = self.call(extract_pdf_figures, str(Path(pdf_path).resolve()),
                                   str(Path(out_dir).resolve()))
        if records is None:
            return [{"img_name": "", "status": "error", "error": f"PDF fallback: {error}"}]
        return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.render",
        description="Render one figure file (PDF, EPS/PS, PNG, JPEG, GIF, BMP, TIFF) to an RGB "
                    "PNG with the longer side at most 1024 px, as the extraction stage does.")
    parser.add_argument("file", nargs="?", help="figure file to render")
    parser.add_argument("-o", "--out", type=cli.writable_file, help="output PNG (default: <file>.png)")
    parser.add_argument("--official", action="store_true",
                        help="the CVF downloader's pixels: MediaBox, 200 DPI then thumbnail, "
                             "alpha dropped")
    args = parser.parse_args(argv)
    if not args.file:
        parser.error("give a figure file")
    if not Path(args.file).is_file():
        parser.error(f"{args.file}: no such file")
    from pipeline.naming import figure_format

    fmt = figure_format(args.file) or "png"
    out = args.out or f"{args.file}.png"
    with Renderer(OFFICIAL if args.official else RenderOptions()) as renderer:  # capped, confined
        result = renderer.render(Path(args.file).read_bytes(), fmt, out)
    print({k: v for k, v in result.items() if v not in (None, "")})
    sys.exit(0 if result["status"] == "ok" else 1)


if __name__ == "__main__":
    main()
