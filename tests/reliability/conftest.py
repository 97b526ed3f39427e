"""One distributed cluster (tests/reliability/cluster.py) shared by the crash-recovery tests of
a module: starting PostgreSQL databases, Redis, the API and workers once keeps them quick."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_distributed import unavailable
from tests.reliability.cluster import Cluster, Unavailable


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        try:
            c.start()
        except Unavailable as exc:
            unavailable(str(exc))  # skips, or fails under CI=true
        c.wait_ready(c.add_worker(), c.add_worker())
        yield c
    finally:
        c.stop()
