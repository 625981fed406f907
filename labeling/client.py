"""Connect to a Label Studio server: ours (`python -m labeling.serve`) or one the user runs.

Where the server is, first that applies:
  the `url` argument, $CVF_LABEL_STUDIO_URL, the URL `labeling.serve` recorded in
  <root>/labelstudio/server.json, http://127.0.0.1:8080.
The API token, first that applies:
  the `token` argument, $CVF_LABEL_STUDIO_TOKEN, the file named by $CVF_LABEL_STUDIO_TOKEN_FILE,
  <root>/labelstudio/token (written by `labeling.serve`). A token file must be private (0600).

The token is a secret: it lives only inside the SDK client and is never printed, logged or
written into any output of the pipeline.
"""
from __future__ import annotations

import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from pipeline.config import data_root

DEFAULT_URL = "http://127.0.0.1:8080"


class LabelStudioError(RuntimeError):
    """Label Studio cannot be used: not reachable, token refused, bad answer. Says what to do."""


def server_file(root: str | os.PathLike | None = None) -> Path:
    return data_root(root) / "labelstudio" / "server.json"


def token_file(root: str | os.PathLike | None = None) -> Path:
    return data_root(root) / "labelstudio" / "token"


def server_url(url: str | None = None, root: str | os.PathLike | None = None) -> str:
    if url:
        return url.rstrip("/")
    if os.environ.get("CVF_LABEL_STUDIO_URL"):
        return os.environ["CVF_LABEL_STUDIO_URL"].rstrip("/")
    recorded = server_file(root)
    if recorded.exists():
        return json.loads(recorded.read_text())["url"].rstrip("/")
    return DEFAULT_URL


def read_private_file(path: str | os.PathLike) -> str:
    """The stripped content of a secret file, refusing one that others may read."""
    path = Path(path)
    if not path.exists():
        raise LabelStudioError(f"token file {path} does not exist")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise LabelStudioError(f"token file {path} is readable by others; run: chmod 600 {path}")
    return path.read_text().strip()


def write_private_file(path: str | os.PathLike, text: str) -> None:
    """Write a secret file created 0600 from the start (never briefly world-readable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def api_token(token: str | None = None, root: str | os.PathLike | None = None) -> str:
    # Stripped: a line end pasted with the token makes an illegal header, which httpx reports
    # as a connection failure.
    if token and token.strip():
        return token.strip()
    if os.environ.get("CVF_LABEL_STUDIO_TOKEN", "").strip():
        return os.environ["CVF_LABEL_STUDIO_TOKEN"].strip()
    if os.environ.get("CVF_LABEL_STUDIO_TOKEN_FILE"):
        return read_private_file(os.environ["CVF_LABEL_STUDIO_TOKEN_FILE"])
    if token_file(root).exists():
        return read_private_file(token_file(root))
    raise LabelStudioError(
        "no Label Studio API token: set CVF_LABEL_STUDIO_TOKEN or CVF_LABEL_STUDIO_TOKEN_FILE "
        "(a 0600 file), or start the local server with `python -m labeling.serve`, "
        f"which writes {token_file(root)}")


def connect(url: str | None = None, token: str | None = None,
            root: str | os.PathLike | None = None, timeout: float = 60.0) -> LabelStudio:
    """An SDK client for a reachable server that accepts our token, or LabelStudioError."""
    url = server_url(url, root)
    try:
        client = LabelStudio(base_url=url, api_key=api_token(token, root), timeout=timeout)
        client.users.whoami()
    except ApiError as e:
        if e.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {url} refused the API token (HTTP {e.status_code}); check "
                "CVF_LABEL_STUDIO_TOKEN / the token file: a personal access token from "
                "Account & Settings, or a legacy token if the server enables them"
            ) from None
        raise LabelStudioError(f"Label Studio at {url} answered HTTP {e.status_code}") from None
    except httpx.HTTPError as e:
        raise LabelStudioError(
            f"cannot reach Label Studio at {url} ({type(e).__name__}); start it with "
            "`python -m labeling.serve` or point CVF_LABEL_STUDIO_URL at your server") from None
    return client


@contextmanager
def api_errors(what: str):
    """Turn the SDK's errors into a LabelStudioError naming `what` failed.

    The SDK's own message is not passed on: it prints the response headers, session cookie
    included.
    """
    try:
        yield
    except ApiError as e:
        body = e.body if isinstance(e.body, dict) else {}
        detail = body.get("validation_errors") or body.get("detail") or ""
        raise LabelStudioError(f"{what} failed: HTTP {e.status_code} {detail}".rstrip()) from None
    except httpx.HTTPError as e:
        raise LabelStudioError(f"{what} failed: {type(e).__name__}") from None


def export_tasks(client: LabelStudio, project_id: int) -> list[dict]:
    """Every task of the project with its annotations and predictions (Label Studio's JSON)."""
    with api_errors(f"export of project {project_id}"):
        chunks = client.projects.exports.download_sync(
            project_id, export_type="JSON", download_all_tasks=True)
        return json.loads(b"".join(chunks))


def find_project(client: LabelStudio, title: str):
    """The project with this title, or None."""
    with api_errors("listing projects"):
        for project in client.projects.list(title=title):
            if project.title == title:
                return project
    return None
