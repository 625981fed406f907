"""Work on a stranger's file in a confined child process, and helper programs run confined.

A renderer or layout reader can hang, crash or eat memory on hostile input, so such work runs in
a child (`python -m pipeline.confined --serve`) with a per-call time limit and an address-space
cap; a child that dies or times out is killed and the next call starts a fresh one: one bad file
costs one record, never the worker. `pipeline.render.Renderer` is the figure renderer built on it.

Helper programs (Ghostscript, pdftoppm) on a stranger's file run through `run_confined`: a
private empty working folder, a minimal environment, no inherited descriptors, and they die with
the process that started them.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import os
import pickle
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model import cli
from pipeline.limits import MAX_PIXELS, error_text

# --- confined helper programs -------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send `sig` to this process when its parent exits (prctl PR_SET_PDEATHSIG),
    so a `kill -9` of the parent never leaves it running. A no-op where prctl is missing."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def private_folder(prefix: str):
    """A new, empty folder only this user can enter, with an empty `tmp/` inside for the helper
    program's temporary files; removed with everything in it afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))  # mode 0700
    try:
        (folder / "tmp").mkdir(mode=0o700)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_confined(cmd: list[str], folder: Path, timeout_s: float) -> subprocess.CompletedProcess:
    """Run a helper program (Ghostscript, pdftoppm) on a stranger's file: working directory and
    every temporary folder (TMPDIR, TEMP, TMP) inside `folder`, no stdin, no inherited file
    descriptors, a minimal environment (no GS_OPTIONS or GS_LIB from ours), and killed if this
    process dies."""
    tmp = str(folder / "tmp")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder), "LC_ALL": "C",
           "TMPDIR": tmp, "TEMP": tmp, "TMP": tmp}
    return subprocess.run(cmd, cwd=folder, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          close_fds=True, timeout=timeout_s, preexec_fn=die_with_parent)


# --- the child process -------------------------------------------------------------------------

_FRAME = struct.Struct(">Q")


def _send(stream, obj, deadline: float | None = None) -> None:
    """Write one frame; with a deadline, give up (TimeoutError) if the reader stops reading."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    frame = memoryview(_FRAME.pack(len(payload)) + payload)
    if deadline is None:
        stream.write(frame)
        stream.flush()
        return
    fd = stream.fileno()
    while frame:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
            raise TimeoutError
        frame = frame[os.write(fd, frame[: 1 << 16]):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _receive(fd: int, deadline: float | None = None):
    (size,) = _FRAME.unpack(_read_exact(fd, _FRAME.size, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


def memory_cap(memory_mb: int) -> int:
    """The address-space cap in bytes for a child: `memory_mb`, or the hard limit this process
    was started under if that is lower (shared clusters and containers often set one)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = memory_mb << 20
    return cap if hard == resource.RLIM_INFINITY else min(cap, hard)



def _call(module: str, name: str, args: tuple) -> tuple[str, object]:
    """("ok", module.name(*args)) or ("error", why), for `ConfinedChild.call`."""
    try:
        return "ok", getattr(importlib.import_module(module), name)(*args)
    except MemoryError:
        return "error", "out of memory"
    except Exception as e:  # the caller turns it into records
        return "error", error_text(e)


def serve(memory_mb: int, parent_pid: int = 0) -> None:
    """Child loop: read requests, answer each with its result. A request is
    ("call", module, function name, args) -> ("ok", result) or ("error", why)."""
    die_with_parent()
    if parent_pid and os.getppid() != parent_pid:  # the parent died before prctl took effect
        return
    if memory_mb:
        cap = memory_cap(memory_mb)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    import imagehash  # noqa: F401  (import once, up front)
    import pymupdf
    from PIL import Image, ImageFile

    # This process is ours alone, so Pillow's globals may carry the caps here.
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    pymupdf.TOOLS.mupdf_display_errors(False)
    _send(out, "ready")
    while True:
        try:
            request = _receive(sys.stdin.fileno())
        except EOFError:
            return
        _send(out, _call(*request[1:]))


class ConfinedChild:
    """Runs module-level functions in a child process with a time limit per call and a memory
    cap, e.g.

        with ConfinedChild(memory_mb=4096, timeout_s=300) as child:
            value, error = child.call(module_level_function, *args)

    The child works in a private empty folder (its working directory and TMPDIR), inherits no
    file descriptors but its two pipes, and dies with the process that started it (kill -9
    included); the Ghostscript or pdftoppm it runs die with it in turn. Use it from the thread
    that created it: Linux's parent-death signal follows the starting thread.
    """

    folder_prefix = "cvf-child-"  # the private folder's name starts so (a subclass says what for)

    def __init__(self, memory_mb: int = 4096, timeout_s: float = 300.0):
        self.memory_mb, self.timeout_s = memory_mb, timeout_s
        self.proc: subprocess.Popen | None = None
        self.folder: Path | None = None
        self.restarts = 0

    def _start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=self.folder_prefix))  # mode 0700
        project = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, TMPDIR=str(self.folder), TEMP=str(self.folder),
                   TMP=str(self.folder),
                   PYTHONPATH=os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.confined", "--serve",
             "--memory-mb", str(self.memory_mb), "--parent-pid", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, cwd=self.folder, env=env,
            close_fds=True,
            start_new_session=True)  # its own process group: Ghostscript/pdftoppm die with it
        if _receive(self.proc.stdout.fileno(), time.monotonic() + 120) != "ready":
            raise RuntimeError("confined child did not start")

    def _stop(self) -> None:
        if self.proc is not None:
            try:  # the child and anything it started (a hung `gs` would otherwise spin on)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None
        self._remove_folder()

    def _remove_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _ask(self, request: tuple, timeout: float):
        """The child's answer to `request`, or (None, why) when it timed out or died (it is
        then killed and the next request starts a fresh one)."""
        if self.proc is None:
            self._start()
        deadline = time.monotonic() + timeout
        try:
            _send(self.proc.stdin, request, deadline)
            return _receive(self.proc.stdout.fileno(), deadline), ""
        except TimeoutError:
            error = f"renderer timed out after {timeout:.0f} s (killed)"
        except (EOFError, BrokenPipeError):
            code = self.proc.poll() if self.proc.poll() is not None else self.proc.wait(5)
            error = f"renderer crashed (exit code {code})"
        self._stop()
        self.restarts += 1
        return None, error

    def call(self, function, *args, timeout_s: float | None = None) -> tuple[object, str]:
        """(function(*args) run in the child, "") or (None, why it failed). `function` is a
        module-level function; arguments and result travel pickled. `timeout_s`: default the
        child's."""
        answer, error = self._ask(("call", function.__module__, function.__qualname__, args),
                                  timeout_s or self.timeout_s)
        if answer is None:
            return None, error
        status, value = answer
        return (value, "") if status == "ok" else (None, value)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()  # the child sees EOF and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc = None
        self._remove_folder()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.confined",
        description="The confined child process (started by ConfinedChild, not by hand).")
    parser.add_argument("--serve", action="store_true", required=True)
    parser.add_argument("--memory-mb", type=cli.positive_int, default=4096)
    parser.add_argument("--parent-pid", type=cli.non_negative_int, default=0)
    args = parser.parse_args(argv)
    serve(args.memory_mb, args.parent_pid)


if __name__ == "__main__":
    main()
