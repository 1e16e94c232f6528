"""Fixtures of the dashboard's browser test: a real node on port 0 and headless Chromium.

* The node is `$GROKFORGE_BIN` (default: the CI build under `~/.cache/grokforge/ci-target`),
  started by `grokforge_client.testing.LocalNode` with a fresh data directory.
* Chromium is Debian's (`/usr/bin/chromium`, or `$GROKFORGE_CHROMIUM`), driven by Playwright for
  Python; Playwright's own browser download is never used.
* `$GROKFORGE_DASHBOARD_PROXY`, when set, names a dev proxy script
  (`script --upstream HOST:PORT --assets DIR`, printing `proxy listening on URL`) that serves
  the assets from the working tree and forwards the rest to the node: for working on the assets
  without rebuilding the binary. Unset, the browser talks to the node directly.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "clients" / "python"))

from grokforge_client.testing import LocalNode  # noqa: E402

ASSETS = REPO / "gateway" / "assets" / "dashboard"
# A job as small as the recipe allows, so the whole scenario takes seconds on a laptop CPU, and
# more progress events per second than the default, so its curve visibly grows while it runs.
NODE_ENV = {"GROKFORGE__TRAINING__PROGRESS_EVENTS_PER_SECOND": "25"}


def artifacts_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("GROKFORGE_TEST_ARTIFACTS") or REPO / "target" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def artifacts() -> pathlib.Path:
    return artifacts_dir()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with LocalNode(tmp_path_factory.mktemp("node"), env=NODE_ENV) as running:
        yield running


@pytest.fixture(scope="module")
def base_url(node):
    script = os.environ.get("GROKFORGE_DASHBOARD_PROXY")
    if not script:
        yield node.url
        return
    upstream = node.url.removeprefix("http://")
    proxy = subprocess.Popen(
        [sys.executable, script, "--upstream", upstream, "--assets", str(ASSETS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    url = None
    while url is None and time.monotonic() < deadline:
        line = proxy.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        url = match.group(1) if match else None
    assert url, "the dashboard proxy printed no address"
    yield url
    proxy.terminate()
    proxy.wait(10)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("GROKFORGE_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            # Root in a container has no user namespaces for Chromium's sandbox.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
