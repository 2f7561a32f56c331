"""Fixtures of tests/failover: a fresh Sentinel topology per test (a failover spends it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.failover.topology import SentinelTopology


@pytest.fixture
def topology() -> Iterator[SentinelTopology]:
    """One primary, two replicas behind link proxies, three sentinels; all stopped after the test."""
    with SentinelTopology() as topology:
        yield topology
