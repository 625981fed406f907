"""Atomic, resumable storage primitives shared by every stage.

A write goes to a temporary file in the destination folder, is fsync'd, then renamed over
the target, so a crash leaves either the old file or the new one, never half of one.
A shard is done only when its `<shard>_stats.json` exists; the stats file is always the
last thing a shard writes.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_replace(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
