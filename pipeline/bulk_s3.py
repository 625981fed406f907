"""The bulk route's S3 side: a client for arXiv's requester-pays bucket, its manifest, and a
source tar fetched by ranged GETs into a `.part` file (a killed download resumes) and checked
against the manifest's md5. Errors are botocore's, described in one line.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path, PurePosixPath

from pipeline import store
from pipeline.bulk_selection import BulkError, SourceTar, bulk_dir, parse_manifest

log = logging.getLogger("cvf.bulk")

MANIFEST_KEY = "src/arXiv_src_manifest.xml"


# --- S3 ----------------------------------------------------------------------------------------

def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client: credentials from boto3's chain, `endpoint_url` or $AWS_ENDPOINT_URL, us-east-1
    unless configured otherwise, retries in adaptive mode."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=session.region_name or "us-east-1",
                          config=Config(retries={"max_attempts": 8, "mode": "adaptive"},
                                        connect_timeout=30, read_timeout=120))


def s3_errors():
    from botocore.exceptions import BotoCoreError, ClientError
    return (BotoCoreError, ClientError)


def _transient_errors():
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError
    from urllib3.exceptions import ProtocolError
    return (ConnectionClosedError, EndpointConnectionError, IncompleteReadError, ReadTimeoutError,
            ResponseStreamingError, ProtocolError, ConnectionError, TimeoutError)


def describe_s3_error(e: Exception) -> str:
    from botocore.exceptions import ClientError
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip(": ")
    return f"{type(e).__name__}: {e}"


def fetch_manifest(s3, bucket: str, root: Path) -> list[SourceTar]:
    """The bucket's manifest (one requester-pays GET), kept in `bulk/arXiv_src_manifest.xml`."""
    try:
        data = s3.get_object(Bucket=bucket, Key=MANIFEST_KEY, RequestPayer="requester")["Body"].read()
    except s3_errors() as e:
        raise BulkError(f"cannot read s3://{bucket}/{MANIFEST_KEY}: {describe_s3_error(e)}") from None
    tars = parse_manifest(data)
    kept = bulk_dir(root) / PurePosixPath(MANIFEST_KEY).name
    if not kept.exists() or kept.read_bytes() != data:
        store.atomic_write_bytes(kept, data)
    return tars


class Md5Mismatch(Exception):
    pass


def download_tar(s3, bucket: str, tar: SourceTar, dest: Path, attempts: int = 5,
                 chunk: int = 1 << 20) -> dict:
    """Fetch `tar` to `dest`, verified against the manifest's md5. Bytes go to a part file named
    by that md5 first; a run killed midway leaves it, and the next one asks only for the rest (a
    ranged GET). Returns {resumed_from, bytes_downloaded, requests}. Raises Md5Mismatch (the part is
    deleted), TimeoutError (the transfer kept breaking; the part stays) or the S3 error."""
    part = dest.with_name(f"{dest.name}.{tar.md5sum}.part")  # a tar arXiv replaced never resumes an old part
    part.parent.mkdir(parents=True, exist_ok=True)
    for stale in part.parent.glob(f"{dest.name}.*.part"):  # parts of the replaced tar
        if stale != part:
            stale.unlink(missing_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > tar.size:  # cannot be this tar's beginning: start over
        part.unlink()
        have = 0
    resumed_from, received, requests = have, 0, 0
    for attempt in range(attempts):
        if have >= tar.size:
            break
        try:
            requests += 1
            resp = s3.get_object(Bucket=bucket, Key=tar.filename, RequestPayer="requester",
                                 Range=f"bytes={have}-{tar.size - 1}")
            with open(part, "ab") as f:
                for block in resp["Body"].iter_chunks(chunk):
                    f.write(block)
                    have += len(block)
                    received += len(block)
                f.flush()
                os.fsync(f.fileno())
        except _transient_errors() as e:  # a cut body: what arrived stays, the next GET goes on from there
            log.warning("%s: transfer cut at %d of %d bytes (%s); going on", tar.name, have, tar.size, e)
            time.sleep(min(30.0, 2.0 ** attempt))
    if have < tar.size:
        raise TimeoutError(f"got {have} of {tar.size} bytes after {attempts} tries; rerun to go on")
    if (md5 := file_md5(part)) != tar.md5sum:
        part.unlink()
        raise Md5Mismatch(f"md5 {md5} of the downloaded tar differs from the manifest's {tar.md5sum}; "
                          "the download was discarded")
    os.replace(part, dest)
    return {"resumed_from": resumed_from, "bytes_downloaded": received, "requests": requests}


def file_md5(path: Path) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            md5.update(block)
    return md5.hexdigest()
