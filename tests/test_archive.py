"""Safe e-print reading: every kind arXiv serves, and every kind of hostile archive."""
from __future__ import annotations

import gzip
import io
import random
import tarfile
import zipfile

import pytest

from pipeline.archive import ArchiveError, Limits, read_eprint, sniff

KiB, MiB = 1 << 10, 1 << 20


def tar_bytes(entries: list[tuple[str, bytes]], extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buf.getvalue()


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def members(path, limits=Limits()):
    kind, it = read_eprint(path, limits=limits)
    return kind, {m.path: m for m in it}


def test_gzip_tar_with_nested_archives(tmp_path):
    inner = tar_bytes([("deep/fig.png", b"png-bytes")])
    outer = tar_bytes([("main.tex", b"\\includegraphics{x}"),
                       ("figs/a.pdf", b"%PDF-1.4 x"),
                       ("extra/more.tar.gz", gzip.compress(inner)),
                       ("plain.tar", inner)])
    kind, got = members(write(tmp_path, "e", gzip.compress(outer)))
    assert kind == "tar"
    assert got["figs/a.pdf"].data == b"%PDF-1.4 x"
    assert got["extra/more/deep/fig.png"].data == b"png-bytes"
    assert got["plain/deep/fig.png"].data == b"png-bytes"


def test_plain_tar_gzip_single_file_and_bare_pdf(tmp_path):
    assert members(write(tmp_path, "t", tar_bytes([("a.png", b"x")])))[0] == "tar"
    single = io.BytesIO()
    with gzip.GzipFile(filename="paper.tex", fileobj=single, mode="wb") as g:
        g.write(b"\\documentclass{article}")
    kind, got = members(write(tmp_path, "g", single.getvalue()))
    assert kind == "file" and got["paper.tex"].data.startswith(b"\\documentclass")
    kind, got = members(write(tmp_path, "1234.5678.eprint", b"%PDF-1.5\n..."))
    assert kind == "pdf" and got["1234.5678.pdf"].data.startswith(b"%PDF")
    kind, _ = members(write(tmp_path, "gz-pdf", gzip.compress(b"%PDF-1.3 old paper")))
    assert kind == "pdf"


def test_traversal_links_and_devices_are_rejected_members(tmp_path):
    link = tarfile.TarInfo("figs/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("figs/hard.png")
    hard.type, hard.linkname = tarfile.LNKTYPE, "figs/ok.png"
    dev = tarfile.TarInfo("figs/dev.png")
    dev.type = tarfile.CHRTYPE
    fifo = tarfile.TarInfo("figs/fifo.png")
    fifo.type = tarfile.FIFOTYPE
    data = tar_bytes([("../../evil.png", b"x"), ("/abs/evil.png", b"x"), ("figs/ok.png", b"ok")],
                     extra=[link, hard, dev, fifo])
    _, got = members(write(tmp_path, "e", gzip.compress(data)))
    assert got["figs/ok.png"].data == b"ok" and not got["figs/ok.png"].error
    errors = {m.path: m.error for m in got.values() if m.error}
    assert "path traversal" in errors["../../evil.png"]
    assert "absolute path" in errors["/abs/evil.png"]
    assert "link" in errors["figs/link.png"] and "link" in errors["figs/hard.png"]
    assert "special entry" in errors["figs/dev.png"] and "special entry" in errors["figs/fifo.png"]
    assert all(m.data is None for m in got.values() if m.error)


def test_truncated_archive_keeps_what_was_read_then_raises(tmp_path):
    noise = random.Random(0).randbytes(400_000)  # incompressible, so the cut lands inside b.png
    data = gzip.compress(tar_bytes([("a.png", b"a" * 10_000), ("b.png", noise)]))
    path = write(tmp_path, "e", data[: len(data) * 2 // 3])
    kind, it = read_eprint(path)
    seen = []
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        for m in it:
            seen.append(m.path)
    assert seen == ["a.png"]


@pytest.mark.parametrize("blob, message", [
    (b"", "empty file"),
    (b"\x1f\x8b\x08\x00" + b"\xff" * 200, "corrupt or truncated gzip"),
    (b"just some text, no archive" * 40, "not an e-print"),
])
def test_unreadable_blobs(tmp_path, blob, message):
    with pytest.raises(ArchiveError, match=message):
        kind, it = read_eprint(write(tmp_path, "e", blob))
        list(it)


def test_zip_where_tar_expected(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("fig.png", b"x")
    with pytest.raises(ArchiveError, match="zip archive"):
        read_eprint(write(tmp_path, "e", buf.getvalue()))
    assert sniff(buf.getvalue()[:512]) == "zip"


def test_archive_bomb_stops_at_total_cap(tmp_path):
    # 40 MiB of zeros packs into ~40 KiB: a 1000:1 bomb against a 8 MiB budget.
    bomb = gzip.compress(tar_bytes([("a.png", b"ok"), ("zeros.png", bytes(40 * MiB))]), 9)
    assert len(bomb) < 100 * KiB
    limits = Limits(max_total_bytes=8 * MiB, max_file_bytes=64 * MiB)
    with pytest.raises(ArchiveError, match="archive bomb"):
        list(read_eprint(write(tmp_path, "e", bomb), limits=limits)[1])


def test_member_over_file_cap_is_rejected_alone(tmp_path):
    data = gzip.compress(tar_bytes([("big.png", bytes(3 * MiB)), ("small.png", b"s")]))
    _, got = members(write(tmp_path, "e", data), Limits(max_file_bytes=1 * MiB))
    assert "per-file cap" in got["big.png"].error and got["big.png"].data is None
    assert got["small.png"].data == b"s"


def test_member_count_cap(tmp_path):
    data = tar_bytes([(f"f{i}.png", b"x") for i in range(30)])
    with pytest.raises(ArchiveError, match="max_members"):
        list(read_eprint(write(tmp_path, "e", data), limits=Limits(max_members=10))[1])


def test_gzip_single_file_bomb(tmp_path):
    with pytest.raises(ArchiveError, match="max_file_bytes|archive bomb"):
        list(read_eprint(write(tmp_path, "e", gzip.compress(bytes(5 * MiB))),
                         limits=Limits(max_file_bytes=1 * MiB))[1])


def test_real_eprints_read(testdata):
    for path in sorted((testdata / "eprints").glob("*.tar.gz")):
        kind, it = read_eprint(path)
        got = list(it)
        assert kind == "tar" and got and not any(m.error for m in got), path.name
