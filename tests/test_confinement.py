"""Hostile input cannot reach the machine, the published data or the process: the confined
renderer (Ghostscript sandbox, parent-death, memory caps), bounded crawl verification, long
names and run-independent error text."""
from __future__ import annotations

import gzip
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

import pymupdf
import pytest

from pipeline import store
from pipeline.archive import Limits, check_blob, OverLimit
from pipeline.extract import extract_eprint, extract_shard
from pipeline.fetch import over_limit, verify
from pipeline.naming import MAX_NAME_BYTES, fitting_name, output_name
from pipeline.confined import memory_cap
from pipeline.render import OFFICIAL, Renderer, RenderOptions, render_to_png
from pipeline.replay.corpus import tar_gz
from replay_fixtures import corpus  # noqa: F401 (fixture)
from test_extract import png, rows_by_name, write_papers

REPO = Path(__file__).resolve().parent.parent
GiB = 1 << 30
needs_gs = pytest.mark.skipif(not shutil.which("gs"), reason="Ghostscript (gs) not installed: make system-deps")


def _ps_string(path: Path | str) -> str:
    return str(path).replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _writing_eps(target: Path) -> bytes:
    """The issue's EPS: writes a file, no error handling (Ghostscript stops on a refusal)."""
    return (f"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n"
            f"({_ps_string(target)}) (w) file dup (hello) writestring closefile\n"
            f"0 0 100 100 rectfill showpage\n").encode()


def _probing_eps(targets: list[Path | str]) -> bytes:
    """An EPS that tries to read each target (and asks whether it exists), catches every
    refusal and paints one black bar per success: its pixels tell what it could learn."""
    probes = []
    for i, target in enumerate(targets):
        t = _ps_string(target)
        probes.append(f"{{ ({t}) (r) file 64 string readstring pop length 0 gt }} stopped "
                      f"{{ false }} if {{ {i * 20} 0 10 100 rectfill }} if")
        probes.append(f"{{ ({t}) status {{ pop pop pop pop true }} {{ false }} ifelse }} stopped "
                      f"{{ false }} if {{ {i * 20 + 10} 0 10 100 rectfill }} if")
    return ("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n"
            "1 0 0 setrgbcolor 0 0 100 100 rectfill 0 setgray\n"
            + "\n".join(probes) + "\nshowpage\n").encode()


@pytest.fixture
def outside(tmp_path):
    """A folder directly under /tmp (where SAFER let Ghostscript read and write when TMPDIR was
    unset) with a world-readable secret in it, and one more world-readable file elsewhere."""
    folder = Path(tempfile.mkdtemp(prefix="cvf-outside-", dir="/tmp"))
    os.chmod(folder, 0o755)
    secret = folder / "secret.txt"
    secret.write_text("the secret\n")
    os.chmod(secret, 0o644)
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("also secret\n")
    os.chmod(elsewhere, 0o644)
    yield folder, secret, elsewhere
    shutil.rmtree(folder, ignore_errors=True)


@needs_gs
def test_an_eps_can_neither_write_nor_read_files_through_the_renderer(outside, tmp_path):
    folder, secret, elsewhere = outside
    with Renderer() as renderer:
        wrote = renderer.render(_writing_eps(folder / "PWNED"), "eps", tmp_path / "w.png")
        assert not (folder / "PWNED").exists()
        assert wrote["status"] == "error" and "refused a file access" in wrote["error"], wrote
        assert "invalidfileaccess" in wrote["error"]

        probe = _probing_eps([secret, elsewhere])
        first = renderer.render(probe, "eps", tmp_path / "a.png")
        secret.unlink()
        elsewhere.unlink()
        second = renderer.render(probe, "eps", tmp_path / "b.png")
    assert first["status"] == second["status"] == "ok", (first, second)
    # the figure does not depend on whether the files exist: nothing was read, nothing stat'ed
    assert first["sha256"] == second["sha256"]
    # and nothing is left behind by the sandboxes
    assert not list(Path(tempfile.gettempdir()).glob("cvf-eps-*"))


@needs_gs
def test_an_eps_in_an_eprint_is_refused_and_the_record_says_so(outside, tmp_path):
    folder, secret, _ = outside
    root = tmp_path / "data"
    reader = (f"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 300 50\n"
              f"/Helvetica findfont 12 scalefont setfont 10 20 moveto\n"
              f"({_ps_string(secret)}) (r) file 64 string readstring pop show showpage\n").encode()
    write_papers(root, "2021-06", {"2106.00001": tar_gz({
        "figs/write.eps": _writing_eps(folder / "PWNED"), "figs/read.eps": reader,
        "figs/fine.png": png((0, 90, 0))})})
    extract_shard("2021-06", root, progress=False)
    rows = rows_by_name(root, "2021-06")
    assert not (folder / "PWNED").exists()
    for name in ("figs_write-eps-converted-to.pdf", "figs_read-eps-converted-to.pdf"):
        row = rows[("2106.00001", name)]
        assert row["status"] == "error" and "refused a file access" in row["error"], row
        assert not row["image_path"]
    assert rows[("2106.00001", "figs_fine.png")]["status"] == "ok"


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@needs_gs
def test_renderer_child_and_its_ghostscript_die_with_a_killed_parent(tmp_path):
    script = textwrap.dedent("""
        import sys
        from pipeline.render import Renderer, RenderOptions
        r = Renderer(RenderOptions(timeout_s=120))
        r._start()
        print(r.proc.pid, flush=True)
        r.render(b"%!PS-Adobe-3.0 EPSF-3.0\\n%%BoundingBox: 0 0 10 10\\n{ } loop\\n", "eps", sys.argv[1])
    """)
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "x.png")], cwd=REPO,
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not (gs := _children(child)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gs, "the looping EPS never reached Ghostscript"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while (_alive(child) or any(map(_alive, gs))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child) and not any(map(_alive, gs))


def test_renderer_child_works_in_a_private_empty_folder_with_only_its_pipes(tmp_path):
    with open(tmp_path / "held-open.txt", "w"):  # a descriptor of ours the child must not get
        with Renderer() as renderer:
            assert renderer.render(png((1, 2, 3)), "png", tmp_path / "a.png")["status"] == "ok"
            pid = renderer.proc.pid
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            assert cwd.name.startswith("cvf-render-") and not list(cwd.iterdir())
            assert (cwd.stat().st_mode & 0o777) == 0o700
            assert not any("held-open" in fd for fd in fds), fds
        assert not cwd.exists()  # removed with the child


# Peak resident memory of a subprocess, read by itself at its end: VmHWM starts afresh at exec,
# whereas ru_maxrss would carry the size of the pytest process it was forked from.
PEAK_KIB = "int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"


def _limit_address_space(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_memory_cap_follows_a_lower_hard_limit():
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    expected = 4096 << 20 if hard == resource.RLIM_INFINITY else min(4096 << 20, hard)
    assert memory_cap(4096) == expected
    script = "from pipeline.confined import memory_cap; print(memory_cap(4096))"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         preexec_fn=_limit_address_space(3 * GiB), check=True)
    assert int(out.stdout) == 3 * GiB


def test_extraction_runs_the_replay_corpus_under_a_3_gib_address_space_limit(tmp_path):
    from pipeline.replay.corpus import generate_corpus

    corpus = generate_corpus(tmp_path / "replay", n_papers=6, months=["2021-08"])
    root = tmp_path / "data"
    ids = sorted(p.name for p in (corpus / "eprint").iterdir())
    write_papers(root, "2021-08", {i: corpus / "eprint" / i for i in ids})
    run = subprocess.run([sys.executable, "-m", "pipeline.extract", "--root", str(root),
                          "--shards", "2021-08"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)),
                         preexec_fn=_limit_address_space(3 * GiB), timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    stats = store.read_stats(root / "figures", "2021-08")
    assert stats["papers"] == len(ids) and stats["by_status"].get("ok", 0) > 0
    assert "renderer crashed" not in str(stats["errors_by_kind"])


def _poster_pdf(side_pt: float = 10_000) -> bytes:
    doc = pymupdf.open()
    page = doc.new_page(width=side_pt, height=side_pt)
    page.draw_rect(pymupdf.Rect(side_pt * 0.1, side_pt * 0.1, side_pt * 0.9, side_pt * 0.9),
                   fill=(0, 0, 1))
    return doc.tobytes()


def test_official_pixels_of_a_poster_page_fit_a_small_memory_cap(tmp_path):
    # 10,000 pt at 200 DPI is 27,778 px a side: the page is rendered at the 150 Mpx guard and
    # goes straight to the thumbnail; scaling it up to full size first needed 9 GB.
    with Renderer(OFFICIAL, memory_mb=2048) as renderer:
        result = renderer.render(_poster_pdf(), "pdf", tmp_path / "poster.png")
    assert result["status"] == "ok", result
    assert (result["width"], result["height"]) == (1024, 1024)


def _paper_with_a_poster_figure(side_pt: float = 10_000) -> bytes:
    doc = pymupdf.open()
    page = doc.new_page(width=side_pt + 1200, height=side_pt + 1200)
    page.draw_rect(pymupdf.Rect(600, 600, 600 + side_pt, 600 + side_pt), fill=(0, 0.4, 0))
    page.insert_text((600, side_pt + 620), "Figure 1: A very large figure.", fontsize=12)
    return doc.tobytes()


def test_the_pdf_fallback_rasterises_in_the_capped_child(tmp_path):
    """A 10,000 pt figure on a paper page: rendering it at 150 DPI takes 1.3 GB. The fallback
    runs in the renderer's child, so the extracting process itself stays small."""
    root = tmp_path / "data"
    write_papers(root, "2021-07", {"2107.00001": None}, pdfs={"2107.00001": _paper_with_a_poster_figure()})
    script = textwrap.dedent(f"""
        import resource
        from pipeline.extract import extract_shard
        extract_shard("2021-07", {str(root)!r}, progress=False)
        print({PEAK_KIB})
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    peak_kib = int(run.stdout.split()[-1])
    assert peak_kib < 700 << 10, f"extracting process peaked at {peak_kib >> 10} MiB"
    rows = store.read_rows(root / "figures" / "2021-07.parquet")
    assert len(rows) == 1 and rows[0]["source_kind"] == "pdf" and rows[0]["img_name"], rows
    # rendered in the child, at the pixel guard rather than 434 Mpx
    assert rows[0]["status"] == "ok" and rows[0]["width"] == 1024, rows


def test_a_250_character_cvf_name_extracts_ok(tmp_path):
    folder = "d" * 120
    path = f"{folder}/{'f' * 125}.png"  # CVF name: 120 + 1 + 125 + 4 = 250 characters
    root = tmp_path / "data"
    write_papers(root, "2021-09", {"2109.00001": tar_gz({path: png((0, 0, 200)),
                                                         "main.tex": b"x"})})
    extract_shard("2021-09", root, progress=False)
    rows = [r for r in store.read_rows(root / "figures" / "2021-09.parquet") if r["img_name"]]
    assert len(rows) == 1
    row = rows[0]
    assert len(row["img_name"]) == 250 and row["status"] == "ok", row
    on_disk = root / row["image_path"]
    assert on_disk.is_file() and len(on_disk.name.encode()) <= MAX_NAME_BYTES
    assert on_disk.name == output_name("2109.00001", row["img_name"])


def test_fitting_names_are_stable_short_and_distinct():
    short = "fig.png"
    assert fitting_name(short) == short
    a, b = "a" * 300 + "1.png", "a" * 300 + "2.png"
    assert fitting_name(a) == fitting_name(a) != fitting_name(b)
    assert len(fitting_name(a).encode()) <= MAX_NAME_BYTES and fitting_name(a).endswith(".png")
    wide = "é" * 200 + ".pdf"  # two bytes a character: never cut inside one
    assert len(fitting_name(wide).encode()) <= MAX_NAME_BYTES
    # the official rule's own suffix can overflow NAME_MAX on a name that fits
    name = output_name("2101.00001", "x" * 240 + ".pdf")
    assert len(name.encode()) <= MAX_NAME_BYTES and name.endswith(".png")


def test_error_text_is_the_same_in_every_run(tmp_path):
    first = render_to_png(b"not an image", "png", tmp_path / "a.png")
    second = render_to_png(b"not an image", "png", tmp_path / "b.png")
    assert first["status"] == "error" and first["error"] == second["error"]
    assert "0x" not in first["error"], first["error"]


def _gzip_bomb(unpacked: int) -> bytes:
    """A gzip'd single file of `unpacked` zero bytes (about 2 MB for 2 GiB), a valid gzip with
    CRC and length. After a full flush deflate starts afresh, so one compressed MiB of zeros
    repeats: made in a second rather than by compressing 2 GiB."""
    chunk = b"\0" * (1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    assert block == packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    n, crc = unpacked // len(chunk), 0
    for _ in range(n):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"
    return header + block * n + packer.flush() + struct.pack("<II", crc, (n * len(chunk)) & 0xFFFFFFFF)


def test_gzip_verification_streams_and_stops_at_the_archive_cap():
    bomb = _gzip_bomb(512 << 20)
    assert len(gzip.decompress(_gzip_bomb(8 << 20))) == 8 << 20  # a well-formed gzip
    problem = verify(bomb, "gz")
    assert over_limit(problem) and "max_file_bytes" in problem
    with pytest.raises(OverLimit):
        check_blob(bomb, compressed=True, tar=False, limits=Limits(max_file_bytes=1 << 20))
    assert verify(gzip.compress(b"\\documentclass{article}"), "gz-tex") == ""
    assert "corrupt" in verify(gzip.compress(b"\\documentclass{article}" * 100)[:-12], "gz-tex")
    assert not over_limit(verify(gzip.compress(b"\\documentclass{article}" * 100)[:-12], "gz-tex"))


def test_crawl_of_a_2_gib_gzip_bomb_stays_small_and_records_an_error(corpus, tmp_path):
    """The crawl downloads an e-print that unpacks to 2 GiB: it stays under 1 GiB resident,
    records the e-print as an error with the reason, and finishes the month."""
    from pipeline.replay.corpus import load_papers
    from pipeline.replay.server import Replay, ReplayServer

    bombed = tmp_path / "corpus"
    shutil.copytree(corpus, bombed)
    victim = sorted(p["arxiv_id"] for p in load_papers(bombed)
                    if p["published"].startswith("2021-01") and not p.get("withdrawn"))[0]
    eprint = next(p for p in (bombed / "eprint").iterdir() if p.name.startswith(victim))
    eprint.write_bytes(_gzip_bomb(2 * GiB))
    root = tmp_path / "data"
    with ReplayServer(Replay(bombed)) as server:
        e = server.endpoints()
        run = subprocess.run(
            [sys.executable, "-c", "import resource, sys\nfrom pipeline.crawl import main\n"
             f"code = main(sys.argv[1:])\nprint({PEAK_KIB})\nsys.exit(code)",
             "--from", "2021-01", "--to", "2021-01", "--data", str(root), "--delay", "0",
             "--api-url", e["CVF_ARXIV_API_URL"], "--eprint-url", e["CVF_ARXIV_EPRINT_URL"],
             "--pdf-url", e["CVF_ARXIV_PDF_URL"]],
            cwd=REPO, capture_output=True, text=True, timeout=600,
            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert run.returncode == 0, run.stderr[-2000:]
    peak_kib = int(run.stdout.split()[-1])
    assert peak_kib < 1 << 20, f"crawl peaked at {peak_kib >> 10} MiB"
    rows = {r["arxiv_id"]: r for r in store.read_rows(root / "papers" / "2021-01.parquet")}
    row = rows[victim]
    assert row["eprint_status"] == "error" and "max_file_bytes" in row["eprint_error"], row
    assert store.read_stats(root / "papers", "2021-01")  # the month finished


def test_extract_eprint_says_when_figure_files_are_there_but_not_the_listed_one(tmp_path):
    eprint = tmp_path / "e.eprint"
    eprint.write_bytes(tar_gz({"figs/a.png": png((1, 2, 3)), "main.tex": b"x"}))
    with Renderer() as renderer:
        rows = extract_eprint("2101.00001", eprint, tmp_path / "img", tmp_path, renderer,
                              only={"figs_b.png"})
    assert len(rows) == 1 and not rows[0]["img_name"]
    assert "figure files present (1) but not the listed one" in rows[0]["error"]
    assert "no figure files" not in rows[0]["error"]
