"""Atomic, resumable storage primitives shared by every stage.

A write goes to a temporary file in the destination folder, is fsync'd, then renamed over
the target, so a crash leaves either the old file or the new one, never half of one. The
temporary file is flock'd while it is written: `remove_dead_temporaries` clears only those of
dead writers, so a cleaner never deletes another live process's file.
A shard is done only when its `<shard>_stats.json` exists; the stats file is always the
last thing a shard writes.

`Lock` is the one inter-process lock of the project (an flock on a file that may carry the
holder's state: who holds it, or a host's next request slot), `exclusive` its "one run at a
time" form that names the holder.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq


def _new_temporary(folder: Path, prefix: str) -> tuple[int, str]:
    """Create `folder/<prefix><random>.tmp` with the mode a plain open() would give it: the
    kernel applies the process's umask to 0o666 (mkstemp's 0o600 would need the umask, and
    reading it means setting it, which races with other threads)."""
    for _ in range(100):
        tmp = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")


def _locked_temporary(path: Path) -> tuple[int, str]:
    """A new temporary file next to `path`, flock'd for as long as its writer lives, so that
    `remove_dead_temporaries` never takes a file someone is still writing."""
    # A name near NAME_MAX (255 bytes) is cut short in the temporary's, which must fit too.
    stem = path.name if len(path.name.encode()) <= 200 else path.name[:40]
    while True:
        fd, tmp = _new_temporary(path.parent, f".{stem}.")
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            return fd, tmp
        os.close(fd)  # a cleaner removed it between its creation and our lock: take another


def _atomic_replace(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _locked_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # still holding the lock: a cleaner cannot take it before the rename
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_dead_temporaries(paths: Iterable[str | os.PathLike]) -> int:
    """Remove the temporary files among `paths` that no live writer holds (left by a killed
    run); return how many. A file still being written (its flock held) is left alone."""
    removed = 0
    for tmp in paths:
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(tmp)  # under the lock: its writer, if it comes back, sees it gone
            removed += 1
        except (BlockingIOError, FileNotFoundError):  # being written, or renamed meanwhile
            pass
        finally:
            os.close(fd)
    return removed


class Busy(Exception):
    """Another process holds a lock this one needs."""


class Lock:
    """An exclusive flock on `lock_file`, held from `acquire` (or `with`) to `release`.

    The file is opened "a+" and handed to the holder, who may keep state in it (who holds it,
    a host's next request slot). The kernel drops the lock when its process dies (even by
    SIGKILL), so a lock left by a dead process is simply taken. `wait=False`: raise Busy at
    once when another process holds it, quoting what the holder wrote in the file.
    (filelock's locks truncate the file when they open it: no state could survive.)"""

    def __init__(self, lock_file: str | os.PathLike, *, wait: bool = True, what: str = ""):
        self.path, self.wait, self.what = Path(lock_file), wait, what or str(lock_file)
        self.file: IO[str] | None = None

    def acquire(self) -> IO[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that has not said who it is yet"
            f.close()
            raise Busy(f"{self.what} is already running ({holder}; lock {self.path}): wait for it "
                       "to end, or stop it, then run again") from None
        except BaseException:
            f.close()
            raise
        self.file = f
        return f

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # releases the lock
            self.file = None

    close = release

    def __enter__(self) -> IO[str]:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def exclusive(lock_file: str | os.PathLike, what: str) -> Iterator[None]:
    """One `what` at a time: hold `lock_file` for the block, or raise Busy naming its holder
    (the holder writes its pid, host and start time into the file)."""
    with Lock(lock_file, wait=False, what=what) as f:
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on host {socket.gethostname()}, started "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
            f.flush()
            yield
        finally:
            f.seek(0)
            f.truncate()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic_replace(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_parquet(path: str | os.PathLike, table: pa.Table) -> None:
    _atomic_replace(Path(path), lambda f: pq.write_table(table, f, compression="zstd"))


def write_rows(path: str | os.PathLike, rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Write `rows` (dicts keyed by the schema's field names) as one Parquet file, atomically."""
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic_write_parquet(path, table)
    return table


def read_rows(path: str | os.PathLike) -> list[dict]:
    return pq.read_table(path).to_pylist()


def read_table(paths: Iterable[str | os.PathLike], schema: pa.Schema | None = None) -> pa.Table:
    """Concatenate several Parquet files (e.g. all shards of a stage) into one table."""
    tables = [pq.read_table(p, schema=schema) for p in paths]
    if not tables:
        if schema is None:
            raise FileNotFoundError("no Parquet files to read")
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stats_path(folder: str | os.PathLike, shard: str) -> Path:
    return Path(folder) / f"{shard}_stats.json"


def shard_done(folder: str | os.PathLike, shard: str) -> bool:
    return stats_path(folder, shard).exists()


def write_stats(folder: str | os.PathLike, shard: str, stats: dict) -> None:
    """Mark a shard done. Call this last, after every other output of the shard is stored."""
    atomic_write_json(stats_path(folder, shard), stats)


def read_stats(folder: str | os.PathLike, shard: str) -> dict | None:
    p = stats_path(folder, shard)
    return json.loads(p.read_text()) if p.exists() else None
