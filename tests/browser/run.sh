#!/usr/bin/env bash
# Runs the dashboard's browser test (tests/browser) and the Python client's tests
# (clients/python/tests) against a real node, installing what is missing first:
#   * Chromium from Debian (`apt-get install chromium`) when /usr/bin/chromium is absent
#     (or $GROKFORGE_CHROMIUM names none); Playwright never downloads a browser;
#   * pytest and Playwright for Python into a venv under
#     ${XDG_CACHE_HOME:-~/.cache}/grokforge/browser-venv, once.
# The node is $GROKFORGE_BIN (default: the CI build, ~/.cache/grokforge/ci-target/debug/grokforge).
# Extra arguments go to pytest (`-k wrong_token`, `-x`); GROKFORGE_PYTEST_PATHS picks the suites
# (default both: "tests/browser clients/python/tests"). Screenshots land in $GROKFORGE_TEST_ARTIFACTS
# (default target/test-artifacts/).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/grokforge
venv=$cache/browser-venv
export GROKFORGE_BIN=${GROKFORGE_BIN:-$cache/ci-target/debug/grokforge}
export GROKFORGE_TEST_ARTIFACTS=${GROKFORGE_TEST_ARTIFACTS:-$repo/target/test-artifacts}
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

chromium=${GROKFORGE_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  echo "run.sh: installing Debian's chromium" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  chromium=/usr/bin/chromium
fi
export GROKFORGE_CHROMIUM=$chromium

if ! "$venv/bin/python" -c 'import pytest, playwright.sync_api' 2>/dev/null; then
  echo "run.sh: installing pytest and playwright into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'pytest>=8' 'playwright>=1.45'
fi

if [ ! -x "$GROKFORGE_BIN" ]; then
  echo "run.sh: no grokforge binary at $GROKFORGE_BIN (build it, or set GROKFORGE_BIN)" >&2
  exit 1
fi

cd "$repo"
# shellcheck disable=SC2086 # a list of paths
exec "$venv/bin/python" -m pytest -p no:cacheprovider --rootdir "$repo" -q \
  ${GROKFORGE_PYTEST_PATHS:-tests/browser clients/python/tests} "$@"
