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


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio on a free 127.0.0.1 port, one per session (labeling and browser tests
    share it); each test gets its own dataset root under the server's document root and its own
    project."""
    from labeling import serve

    try:
        serve.label_studio_bin()
    except FileNotFoundError as e:
        pytest.skip(f"Label Studio venv missing ({e})")
    base = tmp_path_factory.mktemp("labelstudio")
    docroot = base / "roots"
    docroot.mkdir()
    server = serve.start(base / "server", docroot, port=0, timeout=600)  # slow on a busy machine
    token = (base / "server" / "token").read_text().strip()
    yield {"url": server.url, "token": token, "docroot": docroot, "server_dir": base / "server"}
    server.stop()


# --- a real browser: Debian's Chromium driven by Playwright ------------------------------------

CHROMIUM = os.environ.get("CVF_CHROMIUM", "/usr/bin/chromium")
# Quiet and local: no GPU, no QUIC, no first-run, no background fetches, updates or sync.
CHROMIUM_ARGS = ["--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Chromium (the system package; Playwright's own download cannot work offline) with a fresh
    profile. Skipped when Chromium or Playwright is absent, except in CI, where it is a failure.

    Module-scoped on purpose: while Playwright's sync API is open, its asyncio loop counts as
    running on the main thread, and libraries that ask (Prefect's `State.result()`) turn async
    for every later test of the session."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        missing = f"Playwright for Python is not installed ({e}); `pip install playwright`"
    if missing is None and not Path(CHROMIUM).is_file():
        missing = f"{CHROMIUM} not found; `make system-deps` installs Debian's chromium"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    args = CHROMIUM_ARGS + (["--no-sandbox"] if os.geteuid() == 0 else [])
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
            headless=True, args=args, viewport={"width": 1100, "height": 820},
            bypass_csp=True)   # the demo page forbids eval(), which wait_for_function needs
        yield context
        context.close()


@pytest.fixture
def page(browser):
    """A fresh tab; every request it makes is recorded in `page.requested_urls`."""
    tab = browser.new_page()
    tab.requested_urls = []
    tab.on("request", lambda request: tab.requested_urls.append(request.url))
    yield tab
    tab.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where the browser tests write their screenshots: $CVF_SCREENSHOTS (e.g. docs/screenshots
    to refresh the committed ones), else a temporary folder."""
    where = os.environ.get("CVF_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
