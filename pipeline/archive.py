"""Read arXiv e-prints safely, in memory, without extracting anything to disk.

An e-print is served as a gzip'd tar (most papers), a gzip'd single file (a lone .tex, or
an old paper's PDF), a plain tar, or a bare PDF; trees sometimes hold archives of their own.
`read_eprint` streams the members of any of these, one at a time, so memory stays bounded by
the per-file cap. It never trusts the archive: absolute paths, `..`, links and device
entries come back as rejected members; member count, per-file size and total unpacked bytes
are capped (decompressed bytes are counted as they are produced, so a gzip bomb stops at
the cap instead of filling memory); a corrupt, truncated or foreign (zip) archive raises
`ArchiveError` with a message a person can act on.
"""
from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_members: int = 20_000          # members per archive, nested ones counted too
    max_file_bytes: int = 256 * MiB    # one member, unpacked
    max_total_bytes: int = 2048 * MiB  # everything unpacked from one e-print
    max_depth: int = 2                 # archives inside archives inside the e-print


class ArchiveError(Exception):
    """The e-print as a whole cannot be read (corrupt, truncated, zip, bomb, empty)."""


class OverLimit(ArchiveError):
    """The e-print unpacks to more than a cap allows (a bomb): fetching it again gives the same."""


@dataclass
class Member:
    path: str                 # POSIX path relative to the e-print root (nested: `inner/...`)
    size: int
    data: bytes | None = None  # None when not wanted or rejected
    error: str = ""            # why the member was rejected; empty when it is fine


@dataclass
class _Budget:
    limits: Limits
    unpacked: int = 0
    members: int = 0

    def spend(self, n: int) -> None:
        self.unpacked += n
        if self.unpacked > self.limits.max_total_bytes:
            raise OverLimit(
                f"archive bomb: more than {self.limits.max_total_bytes // MiB} MiB unpacked "
                f"(limit max_total_bytes)")

    def count_member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise OverLimit(f"more than {self.limits.max_members} members (limit max_members)")


class _CountingReader(io.RawIOBase):
    """A read-only stream that charges every byte it hands out to the budget."""

    def __init__(self, inner, budget: _Budget):
        self.inner, self.budget = inner, budget

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        chunk = self.inner.read(len(b))
        self.budget.spend(len(chunk))
        b[: len(chunk)] = chunk
        return len(chunk)


def sniff(head: bytes) -> str:
    """What a blob is, from its first bytes (>= 512 for tar): `gzip`, `tar`, `pdf`, `zip`,
    `postscript`, `bzip2`, `xz`, `empty` or `unknown`."""
    if not head:
        return "empty"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:5] == b"%PDF-":
        return "pdf"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:4] == b"%!PS" or head[:4] == b"\xc5\xd0\xd3\xc6":
        return "postscript"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if len(head) >= 512 and _looks_like_tar(head[:512]):
        return "tar"
    return "unknown"


def _looks_like_tar(block: bytes) -> bool:
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False


def _decoded(name: str) -> str:
    """A member name as text. tarfile hands out bytes that are not UTF-8 as lone surrogates,
    which no Parquet file can hold: such names are read as Latin-1 (old archives' usual
    encoding), one character per byte."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("latin-1")


def safe_member_path(name: str) -> tuple[str, str]:
    """(normalised POSIX path, error). Absolute paths and `..` are errors."""
    name = _decoded(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return name, f"absolute path {name!r} rejected"
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
    if ".." in parts:
        return name, f"path traversal {name!r} rejected"
    return "/".join(parts), ""


_NESTED_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".gz")


def _nested_stem(path: str) -> str | None:
    lowered = path.lower()
    for suffix in _NESTED_SUFFIXES:
        if lowered.endswith(suffix):
            return path[: -len(suffix)]
    return None


def read_eprint(path: str | os.PathLike, want: Callable[[str], bool] = lambda p: True,
                limits: Limits = Limits()) -> tuple[str, Iterator[Member]]:
    """Open the e-print at `path`: (kind, members).

    kind is `tar` (members of the tree), `file` (a gzip'd single file: one member named
    after the gzip header, or `main.tex`) or `pdf` (the e-print is the paper's PDF: one
    member, `<stem>.pdf`). Members whose path `want` rejects come back without data.
    Raises ArchiveError at once for empty, zip and unknown blobs, and while iterating for
    corrupt, truncated or oversized archives (members already yielded stay valid).
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(512)
    kind = sniff(head)
    budget = _Budget(limits)
    if kind == "empty":
        raise ArchiveError("empty file (0 bytes)")
    if kind == "zip":
        raise ArchiveError("zip archive where a tar or gzip e-print was expected")
    if kind == "pdf":
        size = path.stat().st_size
        return "pdf", iter([Member(f"{path.stem}.pdf", size, path.read_bytes())])
    if kind == "tar":
        return "tar", _tar_members(lambda: open(path, "rb"), "", want, budget, 0)
    if kind != "gzip":
        raise ArchiveError(f"not an e-print: {kind} data (expected gzip, tar or PDF)")

    # gzip: a tar inside, or a single file. Peek at the first unpacked block to tell.
    try:
        with gzip.open(path, "rb") as g:
            inner_head = g.read(512)
    except (OSError, EOFError, zlib.error) as e:
        raise ArchiveError(f"corrupt or truncated gzip: {e}") from e
    if sniff(inner_head) == "tar":
        return "tar", _tar_members(lambda: gzip.open(path, "rb"), "", want, budget, 0)
    name = _gzip_original_name(path) or "main.tex"
    if sniff(inner_head) == "pdf":
        data = _read_capped(lambda: gzip.open(path, "rb"), budget)
        return "pdf", iter([Member(f"{path.stem}.pdf", len(data), data)])
    return "file", _single_member(lambda: gzip.open(path, "rb"), name, want, budget)


def _gzip_original_name(path: Path) -> str:
    """The FNAME field of a gzip header, if the compressor stored one."""
    with open(path, "rb") as f:
        header = f.read(10)
        if len(header) < 10 or not header[3] & 0x08:
            return ""
        if header[3] & 0x04:  # FEXTRA comes first
            xlen = int.from_bytes(f.read(2), "little")
            f.read(xlen)
        raw = bytearray()
        while (c := f.read(1)) not in (b"", b"\x00") and len(raw) < 255:
            raw += c
    name, error = safe_member_path(PurePosixPath(raw.decode("latin-1")).name)
    return "" if error else name


def _read_capped(open_stream, budget: _Budget) -> bytes:
    try:
        with open_stream() as raw:
            stream = io.BufferedReader(_CountingReader(raw, budget))
            data = stream.read(budget.limits.max_file_bytes + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise ArchiveError(f"corrupt or truncated gzip: {e}") from e
    if len(data) > budget.limits.max_file_bytes:
        raise _single_file_too_big(budget.limits)
    return data


def _single_file_too_big(limits: Limits) -> OverLimit:
    return OverLimit(f"single file over {limits.max_file_bytes // MiB} MiB unpacked "
                     f"(limit max_file_bytes)")


def check_blob(data: bytes, compressed: bool, tar: bool, limits: Limits = Limits()) -> None:
    """Read a downloaded e-print through to its end in a stream, keeping nothing, under the
    caps `read_eprint` applies (a tar: members and total unpacked bytes; a single gzip'd file:
    max_file_bytes), so that memory stays bounded whatever it unpacks to. Raises OverLimit for
    a bomb, ArchiveError for a corrupt or truncated blob (the gzip CRC and length are checked)."""
    budget = _Budget(limits)
    raw = gzip.GzipFile(fileobj=io.BytesIO(data)) if compressed else io.BytesIO(data)
    stream = io.BufferedReader(_CountingReader(raw, budget), buffer_size=1 << 16)
    try:
        if tar:
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for _ in archive:  # stream mode: each header, skipping each member's bytes
                    budget.count_member()
        while stream.read(1 << 20):  # to the end: the gzip trailer is checked there
            if not tar and budget.unpacked > limits.max_file_bytes:
                raise _single_file_too_big(limits)
    except ArchiveError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ArchiveError(f"corrupt or truncated: {e}") from e


def _single_member(open_stream, name: str, want, budget: _Budget) -> Iterator[Member]:
    data = _read_capped(open_stream, budget)
    yield Member(name, len(data), data if want(name) else None)


def _tar_members(open_stream, prefix: str, want, budget: _Budget, depth: int) -> Iterator[Member]:
    """Stream a tar's members. `open_stream` gives a fresh binary stream of the tar bytes."""
    try:
        with open_stream() as raw:
            counted = io.BufferedReader(_CountingReader(raw, budget), buffer_size=1 << 16)
            with tarfile.open(fileobj=counted, mode="r|") as tar:
                for info in tar:
                    budget.count_member()
                    if info.isdir():
                        continue
                    yield from _member(tar, info, prefix, want, budget, depth)
    except ArchiveError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ArchiveError(f"corrupt or truncated archive: {e}") from e


def _member(tar: tarfile.TarFile, info: tarfile.TarInfo, prefix: str, want,
            budget: _Budget, depth: int) -> Iterator[Member]:
    rel, error = safe_member_path(info.name)
    path = f"{prefix}{rel}"
    limits = budget.limits
    if not error and (info.issym() or info.islnk()):
        error = f"link {info.name!r} -> {info.linkname!r} rejected"
    elif not error and not info.isreg():
        error = f"special entry {info.name!r} (device, fifo) rejected"
    elif not error and info.size > limits.max_file_bytes:
        error = f"{info.size} bytes, over the {limits.max_file_bytes // MiB} MiB per-file cap"
    if error:
        yield Member(path, info.size, None, error)
        return

    nested = _nested_stem(rel)
    if nested is not None:
        if depth >= limits.max_depth:
            yield Member(path, info.size, None, f"archive nested deeper than {limits.max_depth}")
            return
        data = tar.extractfile(info).read()
        inner = sniff(data[:512])
        if inner == "gzip":
            inner_head = gunzip_head(data)
            if sniff(inner_head) == "tar":
                yield from _nested(lambda: gzip.GzipFile(fileobj=io.BytesIO(data)),
                                   f"{prefix}{nested}/", want, budget, depth, path)
                return
        elif inner == "tar":
            yield from _nested(lambda: io.BytesIO(data), f"{prefix}{nested}/", want, budget,
                               depth, path)
            return
        yield Member(path, info.size, data if want(path) else None)  # e.g. a gzip'd .tex
        return

    if not want(path):
        yield Member(path, info.size, None)
        return
    yield Member(path, info.size, tar.extractfile(info).read())


def gunzip_head(data: bytes) -> bytes:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 512)
    except zlib.error:
        return b""


def _nested(open_stream, prefix, want, budget, depth, path) -> Iterator[Member]:
    """Members of an archive inside the e-print; if it is broken, one rejected member."""
    try:
        yield from _tar_members(open_stream, prefix, want, budget, depth + 1)
    except OverLimit:  # the e-print's budget is spent: the whole e-print is over a cap
        raise
    except ArchiveError as e:
        yield Member(path, 0, None, f"nested archive: {e}")
