#!/usr/bin/env bash
# Runs the dashboard's browser test (tests/browser), the Python client's tests
# (clients/python/tests) and the Python examples' (examples/python/tests) against a real node,
# installing what is missing first:
#   * Chromium from Debian (`apt-get install chromium`) when /usr/bin/chromium is absent
#     (or $GROKFORGE_CHROMIUM names none); Playwright never downloads a browser;
#   * pytest, Playwright for Python and matplotlib (the examples' curves) into a venv under
#     ${XDG_CACHE_HOME:-~/.cache}/grokforge/browser-venv, once.
# The examples' PyTorch part runs in the LibTorch virtualenv (scripts/torch-python.sh); it skips
# where torch does not import, unless GROKFORGE_REQUIRE_TORCH=1.
# The node is $GROKFORGE_BIN (default: the CI build, ~/.cache/grokforge/ci-target/debug/grokforge).
# Extra arguments go to pytest (`-k wrong_token`, `-x`); GROKFORGE_PYTEST_PATHS picks the suites
# (default all three: "tests/browser clients/python/tests examples/python/tests"). Screenshots
# land in $GROKFORGE_TEST_ARTIFACTS (default target/test-artifacts/).
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

if ! "$venv/bin/python" -c 'import pytest, playwright.sync_api, matplotlib' 2>/dev/null; then
  echo "run.sh: installing pytest, playwright and matplotlib into $venv" >&2
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'pytest>=8' 'playwright>=1.45' 'matplotlib>=3.7'
fi

if [ ! -x "$GROKFORGE_BIN" ]; then
  echo "run.sh: no grokforge binary at $GROKFORGE_BIN (build it, or set GROKFORGE_BIN)" >&2
  exit 1
fi

cd "$repo"
# shellcheck disable=SC2086 # a list of paths
exec "$venv/bin/python" -m pytest -p no:cacheprovider --rootdir "$repo" -q \
  ${GROKFORGE_PYTEST_PATHS:-tests/browser clients/python/tests examples/python/tests} "$@"
