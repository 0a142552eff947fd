"""Fixtures for tests that need several hosts (network namespaces; root only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.net.netns import Network, available


@pytest.fixture
def network() -> Iterator[Network]:
    if not available():
        pytest.skip("needs root and iproute2 for network namespaces")
    net = Network()
    try:
        yield net
    finally:
        net.close()
