"""Run a local Label Studio on 127.0.0.1 with its data inside the dataset root.

    python -m labeling.serve                 # foreground; Ctrl-C stops it
    python -m labeling.serve --background    # returns once the server answers
    python -m labeling.serve --stop

The server runs from its own venv (.venv-labelstudio, made by scripts/setup_labelstudio.sh):
it cannot share the project's environment with Prefect. It is quiet and local: no version
check, no analytics, no Sentry, no sign-up, bound to loopback only. Figure images are served
through Label Studio's local-files storage, rooted at the dataset root. The first start creates
a user and an API token and keeps them in 0600 files beside the server's data; the token is
never printed.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from model import cli
from labeling.client import read_private_file, server_file, write_private_file
from pipeline.config import data_root
from pipeline.store import atomic_write_json

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO / ".venv-labelstudio" / "bin" / "label-studio"
DEFAULT_PORT = 8080
USER_EMAIL = "cvf@cvf.local"
# Label Studio reads these unprefixed names too; a stray one in the user's shell would change it.
UNPREFIXED = ("HOST", "PORT", "USERNAME", "PASSWORD", "DEBUG", "LOG_LEVEL")


@dataclass
class Server:
    url: str
    pid: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen | None = None  # set when this process started it

    def stop(self, timeout: float = 20.0) -> None:
        stop_pid(self.pid, timeout)


def label_studio_bin() -> Path:
    path = Path(os.environ.get("CVF_LABEL_STUDIO_BIN") or DEFAULT_BIN)
    if not path.exists():
        raise FileNotFoundError(
            f"Label Studio server not installed at {path}; run `make labelstudio` "
            "(or bash scripts/setup_labelstudio.sh): it makes its own venv, .venv-labelstudio")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def ensure_credentials(data_dir: Path) -> tuple[str, str, str]:
    """(email, password, token) of the server's user, made on first use, kept in 0600 files."""
    token_path, password_path = data_dir / "token", data_dir / "password"
    if not token_path.exists():
        write_private_file(token_path, secrets.token_hex(20))  # 40 hex chars, as Label Studio's own
    if not password_path.exists():
        write_private_file(password_path, secrets.token_urlsafe(12))
    return USER_EMAIL, read_private_file(password_path), read_private_file(token_path)


def server_env(data_dir: Path, document_root: Path) -> dict[str, str]:
    email, password, token = ensure_credentials(data_dir)
    env = {k: v for k, v in os.environ.items()
           if k not in UNPREFIXED and not k.startswith(("LABEL_STUDIO_", "CVF_LABEL_STUDIO_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_USERNAME": email,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
    })
    return env


def wait_until_up(url: str, process: subprocess.Popen | None, log_path: Path,
                  timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise RuntimeError(f"Label Studio exited with code {process.returncode}; "
                               f"log {log_path}:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Label Studio did not answer at {url} within {timeout:.0f} s; see {log_path}")


def start(data_dir: str | os.PathLike, document_root: str | os.PathLike, port: int = 0,
          timeout: float = 240.0) -> Server:
    """Start the server (port 0: any free port) and return once it answers on 127.0.0.1:port.

    The server runs in its own session, so it outlives this process until `stop` is called.
    """
    data_dir, document_root = Path(data_dir).resolve(), Path(document_root).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)  # its database holds the users' tokens
    port = port or free_port()
    if not port_is_free(port):
        # Label Studio would silently move to the next port; refuse instead.
        raise RuntimeError(f"port {port} on 127.0.0.1 is in use; pick another with --port")
    log_path = data_dir / "server.log"
    command = [str(label_studio_bin()), "start", "--no-browser",
               "--internal-host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir)]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, env=server_env(data_dir, document_root),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=data_dir, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, log_path, timeout)
    except BaseException:
        stop_pid(process.pid)
        raise
    return Server(url, process.pid, data_dir, log_path, process)


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """Stop a server we started (it leads its own process group)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:  # not our child: poll for it to go
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def running_server(root: str | os.PathLike | None = None) -> dict | None:
    """What server.json says about our server, if that server is still up."""
    path = server_file(root)
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    try:
        os.kill(info["pid"], 0)
        if httpx.get(f"{info['url']}/health", timeout=2).status_code == 200:
            return info
    except (ProcessLookupError, httpx.HTTPError):
        pass
    return None


def serve(root: str | os.PathLike | None = None, port: int = DEFAULT_PORT) -> Server:
    """Start the local server for the dataset root and record where it is in server.json."""
    root = data_root(root)
    server = start(root / "labelstudio", document_root=root, port=port)
    atomic_write_json(server_file(root), {"url": server.url, "pid": server.pid,
                                          "document_root": str(root)})
    return server


def how_to_log_in(url: str, root: Path) -> str:
    return (f"Label Studio is up at {url}\n"
            f"  log in as {USER_EMAIL}; the password is in {root / 'labelstudio' / 'password'}\n"
            f"  the pipeline reads its API token from {root / 'labelstudio' / 'token'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labeling.serve",
        description="Start a local, offline Label Studio (127.0.0.1 only) whose data lives in "
                    "<root>/labelstudio and which serves the figure images of the dataset root.")
    parser.add_argument("--root", type=cli.writable_dir, help="dataset root (default: $CVF_DATA or ./data)")
    parser.add_argument("--port", type=cli.port_or_zero, default=DEFAULT_PORT,
                        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 = any free port)")
    parser.add_argument("--background", action="store_true",
                        help="start, wait until it answers, and return (stop it with --stop)")
    parser.add_argument("--stop", action="store_true", help="stop the server started for this root")
    args = parser.parse_args(argv)
    root = data_root(args.root)

    running = running_server(root)
    if args.stop:
        if running is None:
            print("no Label Studio running for", root)
            return 0
        stop_pid(running["pid"])
        print("stopped Label Studio at", running["url"])
        return 0
    if running is not None:
        print(how_to_log_in(running["url"], root))
        return 0

    print(f"starting Label Studio for {root} (the first start migrates its database: ~40 s) ...")
    try:
        server = serve(root, args.port)
    except (FileNotFoundError, RuntimeError, TimeoutError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(how_to_log_in(server.url, root))
    if args.background:
        print("stop it with: python -m labeling.serve --stop" + (f" --root {root}" if args.root else ""))
        return 0
    print("Ctrl-C stops it")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
