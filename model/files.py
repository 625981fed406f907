"""Writing a file so that a crash never leaves half of it: the one way `model/` writes results.

The bytes go to a temporary file in the destination's folder, are fsync'd, and the file is
renamed over the destination: a reader (or a rerun after a crash) finds the old file or the new
one. (`pipeline.store` does the same for the data pipeline, which `model/` does not import.)
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(f)` on a fresh temporary file beside `path`, then move it to `path`.

    The file gets the mode a plain open() would give (the umask applies, as for any new file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[:200]}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))
