"""A real node on port 0 for the examples' test (`grokforge_client.testing.LocalNode`)."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "clients" / "python"))

from grokforge_client.testing import LocalNode  # noqa: E402

# More progress reports per second than the default, so a job of a few seconds draws a curve.
NODE_ENV = {"GROKFORGE__TRAINING__PROGRESS_EVENTS_PER_SECOND": "25"}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with LocalNode(tmp_path_factory.mktemp("node"), env=NODE_ENV) as running:
        yield running
