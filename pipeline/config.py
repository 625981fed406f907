"""Where things live and which endpoints to talk to, read from the environment.

Every knob has a CLI flag too; the environment only supplies defaults.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_API_URL = "https://export.arxiv.org/api/query"
DEFAULT_EPRINT_URL = "https://export.arxiv.org/e-print/{id}"
DEFAULT_PDF_URL = "https://export.arxiv.org/pdf/{id}"
DEFAULT_DELAY = 3.0


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The dataset root: `root` if given, else $CVF_DATA, else ./data."""
    return Path(root or os.environ.get("CVF_DATA") or "data").resolve()


def arxiv_api_url() -> str:
    return os.environ.get("CVF_ARXIV_API_URL", DEFAULT_API_URL)


def arxiv_eprint_url() -> str:
    return os.environ.get("CVF_ARXIV_EPRINT_URL", DEFAULT_EPRINT_URL)


def arxiv_pdf_url() -> str:
    return os.environ.get("CVF_ARXIV_PDF_URL", DEFAULT_PDF_URL)


def arxiv_delay() -> float:
    return float(os.environ.get("CVF_ARXIV_DELAY", DEFAULT_DELAY))


def contact() -> str:
    """Who arXiv can write to about this crawler ($CVF_CONTACT), named in every User-Agent."""
    return os.environ.get("CVF_CONTACT", "")


def shared_testdata() -> Path:
    """../shared/testdata next to the repository (tests and benchmarks only)."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"
