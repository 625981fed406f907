"""The storage primitives every stage shares: atomic writes and the one inter-process lock."""
from __future__ import annotations

import gzip
import os
import stat
import threading

import pytest

from pipeline import store
from pipeline.archive import Limits, OverLimit, read_eprint
from test_archive import tar_bytes


@pytest.fixture
def umask():
    """Set the process umask for a test, the old one restored after."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def test_atomic_writes_take_the_umask_in_force_when_they_write(tmp_path, umask):
    umask(0o077)  # set after the module was imported
    store.atomic_write_text(tmp_path / "private.txt", "x")
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
    umask(0o022)
    store.atomic_write_json(tmp_path / "shared.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_writes_leave_the_umask_alone_while_threads_write(tmp_path, umask):
    umask(0o027)
    seen = []

    def writer(i):
        for j in range(20):
            store.atomic_write_bytes(tmp_path / f"{i}-{j}", b"x")
            seen.append(os.umask(0o027))  # reading it means setting it; it must still be ours

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(seen) == {0o027}
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {0o640}


def test_one_lock_names_its_holder_and_is_taken_once_released(tmp_path):
    lock_file = tmp_path / "root" / ".crawl.lock"
    with store.exclusive(lock_file, "a crawl of root"):
        with pytest.raises(store.Busy, match=r"a crawl of root is already running \(pid \d+ on host"):
            store.Lock(lock_file, wait=False, what="a crawl of root").acquire()
    lock = store.Lock(lock_file, wait=False)
    f = lock.acquire()  # released: free again
    f.write("state kept in the file")
    f.flush()
    lock.release()
    with store.Lock(lock_file) as f:
        f.seek(0)
        assert f.read() == "state kept in the file"  # a lock does not wipe what its file holds


def test_a_nested_archive_over_a_cap_fails_the_whole_eprint(tmp_path):
    """Over a cap is told by the exception's type (OverLimit), a broken nested archive is one
    rejected member."""
    inner = tar_bytes([(f"f{i}.png", b"x") for i in range(50)])
    outer = tar_bytes([("main.tex", b"x"), ("figs.tar", inner), ("broken.tar.gz", gzip.compress(inner)[:200])])
    path = tmp_path / "e"
    path.write_bytes(gzip.compress(outer))
    with pytest.raises(OverLimit):
        list(read_eprint(path, limits=Limits(max_members=20))[1])
    got = {m.path: m for m in read_eprint(path)[1]}
    assert got["broken.tar.gz"].error.startswith("nested archive: ")
    assert got["figs/f3.png"].data == b"x"
