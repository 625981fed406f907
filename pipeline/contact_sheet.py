"""A contact sheet: many figures as thumbnails on one PNG, for eyeballing a sample."""
from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageDraw

from pipeline import store


def contact_sheet(paths: list[str | os.PathLike], out_png: str | os.PathLike, columns: int = 6, thumb: int = 160,
                  captions: list[str] | None = None, gap: int = 6) -> Path:
    """Tile the images at `paths` as `thumb`-pixel thumbnails, `columns` per row, into `out_png`.

    Unreadable images become a grey tile marked "unreadable" instead of failing the sheet.
    Captions (e.g. paper ids) are drawn under each tile when given.
    """
    captions = captions or [""] * len(paths)
    rows = max(1, -(-len(paths) // columns))
    label_h = 12 if any(captions) else 0
    cell_w, cell_h = thumb + gap, thumb + label_h + gap
    sheet = Image.new("RGB", (gap + columns * cell_w, gap + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (path, caption) in enumerate(zip(paths, captions)):
        x, y = gap + (i % columns) * cell_w, gap + (i // columns) * cell_h
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((thumb, thumb))
                sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        except (OSError, ValueError):
            draw.rectangle([x, y, x + thumb, y + thumb], fill=(200, 200, 200))
            draw.text((x + 4, y + thumb // 2), "unreadable", fill="black")
        if caption:
            draw.text((x, y + thumb + 1), caption[: thumb // 6], fill=(60, 60, 60))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    store.atomic_write_bytes(out_png, buf.getvalue())
    return Path(out_png)
