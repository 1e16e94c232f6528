"""A real node on port 0 for the client's tests (`grokforge_client.testing.LocalNode`)."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from grokforge_client.testing import LocalNode  # noqa: E402


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with LocalNode(tmp_path_factory.mktemp("node")) as running:
        yield running


@pytest.fixture
def client(node):
    return node.client()
