"""What a figure may cost: the caps every renderer of a stranger's file obeys, in one place,
and the text of an error record (the same in every run).

The caps are plain constants, checked where an image is opened or a page is rasterised. They
are never written into Pillow's globals at import: a library must not change how every other
importer opens images (the confined child, which is ours alone, does set them).
"""
from __future__ import annotations

import re

MAX_SIDE = 1024  # the training format: longer side at most 1024 px
OFFICIAL_DPI = 200  # the CVF downloader's pdftoppm resolution
# Decompression-bomb guard: refuse rasters (and official-DPI pages) over this many pixels.
# Pillow's own default warns at 89 Mpx; a 30,000 x 30,000 image is 900 Mpx.
MAX_PIXELS = 150_000_000

_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


def without_addresses(text: str) -> str:
    """`text` without memory addresses (`<_io.BytesIO object at 0x7f..>` in Pillow's messages),
    so that an error record is the same in every run."""
    return _ADDRESS.sub("", text)


def error_text(e: BaseException) -> str:
    """`Type: message` of an exception, the same in every run."""
    return without_addresses(f"{type(e).__name__}: {e}")
