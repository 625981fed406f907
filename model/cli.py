"""Argument types and the error rule shared by every cvf command (pipeline/, labeling/, model/, flows/).

The rule: a bad value gives one `error: ...` line on stderr and exit status 2, before any work
starts, never a traceback. argparse already answers a bad value of a `type=` below with its usage
and one `prog: error: argument --x: ...` line (exit 2); `fail` and `exit_on` give the same line
and status for what can only be checked later (a file that turns out not to be a checkpoint).

It lives in model/ because model/ imports nothing of pipeline/, while pipeline/, labeling/ and
flows/ may import model/. It imports only the standard library, so that importing it costs nothing
(model/__init__ is empty: `import model.cli` pulls in no torch).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

ArgumentTypeError = argparse.ArgumentTypeError


def _number(text: str, kind: type):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise ArgumentTypeError(f"{text!r}: give a finite number")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1 (counts, epochs, batch sizes, folds)."""
    value = _number(text, int)
    if value < 1:
        raise ArgumentTypeError(f"{value}: give at least 1")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of at least 0 (0 meaning none or off, as the option's help says)."""
    value = _number(text, int)
    if value < 0:
        raise ArgumentTypeError(f"{value}: give 0 or more")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (timeouts, bandwidths, learning rates)."""
    value = _number(text, float)
    if value <= 0:
        raise ArgumentTypeError(f"{value:g}: give a number above 0")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of at least 0 (delays, weight decay, warm-up epochs)."""
    value = _number(text, float)
    if value < 0:
        raise ArgumentTypeError(f"{value:g}: give 0 or more")
    return value


def open_unit_interval(text: str) -> float:
    """A fraction strictly between 0 and 1 (a mask ratio, a share)."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise ArgumentTypeError(f"{value:g}: give a number in (0, 1), both ends excluded")
    return value


def unit_interval(text: str) -> float:
    """A fraction from 0 to 1, both included (a score threshold)."""
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise ArgumentTypeError(f"{value:g}: give a number in [0, 1]")
    return value


def port(text: str) -> int:
    """A TCP port to listen on, 1-65535."""
    value = _number(text, int)
    if not 1 <= value <= 65535:
        raise ArgumentTypeError(f"{value}: a port is 1 to 65535")
    return value


def port_or_zero(text: str) -> int:
    """A TCP port, or 0 for any free one."""
    value = _number(text, int)
    if not 0 <= value <= 65535:
        raise ArgumentTypeError(f"{value}: a port is 1 to 65535 (0: any free one)")
    return value


def is_url(text: str) -> bool:
    """An fsspec URL such as s3://bucket/x or memory://x (checked where it is opened, not here)."""
    return "://" in text


def writable_dir(text: str) -> str:
    """A folder that is, or can be made, writable: an existing writable folder, or a path whose
    nearest existing parent is a writable folder (not a file). Nothing is created here. An fsspec
    URL passes as it is."""
    if is_url(text):
        return text
    if not text:
        raise ArgumentTypeError("give a folder")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ArgumentTypeError(f"{text}: a file, not a folder")
    existing = path
    while not existing.exists():  # nearest existing ancestor: /dev/null for /dev/null/x
        if existing.is_symlink():
            raise ArgumentTypeError(f"{text}: {existing} is a broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise ArgumentTypeError(f"{text}: {existing} is a file, so no folder can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ArgumentTypeError(f"{text}: {existing} is not writable")
    return text


def writable_file(text: str) -> str:
    """A file to write: not a folder, and its folder passes `writable_dir`."""
    path = Path(text).expanduser()
    if not text or path.is_dir():
        raise ArgumentTypeError(f"{text!r}: a folder, not a file name" if text else "give a file name")
    writable_dir(str(path.parent))
    return text


def folder_name(text: str) -> str:
    """One folder name (a split, a run name): no separator, not `.` or `..`."""
    if not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise ArgumentTypeError(f"{text!r}: give a plain folder name, e.g. train")
    return text


def readable_file(text: str) -> str:
    """An existing regular file this process can read."""
    path = Path(text).expanduser()
    if not path.exists():
        raise ArgumentTypeError(f"{text}: no such file")
    if not path.is_file():
        raise ArgumentTypeError(f"{text}: not a file")
    if not os.access(path, os.R_OK):
        raise ArgumentTypeError(f"{text}: not readable")
    return text


def existing_dir(text: str) -> str:
    """An existing folder."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ArgumentTypeError(f"{text}: {'not a folder' if path.exists() else 'no such folder'}")
    return text


def fail(message, status: int = 2) -> NoReturn:
    """The rule's one line: `error: <message>` on stderr, then exit (2: a bad value or file)."""
    message = str(message)
    print(message if message.startswith("error:") else f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


@contextmanager
def exit_on(*expected: type[BaseException], status: int = 2):
    """Turn the expected exceptions of a command (a file that is not what the user said, an output
    that cannot be written) into the rule's one `error:` line and exit `status`. A `SystemExit`
    raised with a message (`raise SystemExit("error: ...")`) gets the same status, so that a
    bad value found deep in a run still exits 2; unexpected exceptions keep their traceback."""
    try:
        yield
    except expected as e:
        fail(e, status)
    except SystemExit as e:
        if isinstance(e.code, str):
            fail(e.code, status)
        raise
