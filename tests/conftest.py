"""Shared pytest fixtures. Stage-specific fixtures live next to their tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "testdata"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

# Importing prefect configures its console log handler on whatever sys.stderr is at that moment.
# Do it here, under pytest's session-wide capture, so the handler never binds to one test's
# capsys stream (closed after that test; later flow runs would then fail writing their logs).
import prefect.main  # noqa: E402,F401  (prefect itself imports lazily; .main sets up logging)


@pytest.fixture(scope="session")
def testdata() -> Path:
    """../shared/testdata (real papers, e-prints, CVF index, VOC, model vectors), or skip."""
    if not SHARED.is_dir():
        pytest.skip(f"real test material not found at {SHARED} (see shared/README.md)")
    return SHARED


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """A fresh dataset root, exported as $CVF_DATA."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("CVF_DATA", str(root))
    return root
