"""One distributed cluster (tests/reliability/cluster.py) shared by the crash-recovery tests of
a module: starting PostgreSQL databases, Redis, the API and workers once keeps them quick; each
test gets it with its workers topped up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_distributed import unavailable
from tests.reliability.cluster import Cluster, Unavailable

WORKERS = 2


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        try:
            c.start()
        except Unavailable as exc:
            unavailable(str(exc))  # skips, or fails under CI=true
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster(running_cluster: Cluster) -> Cluster:
    """The module's cluster as each test starts it: WORKERS workers up and ready. A test that
    killed some leaves it short; this tops it up, so no test depends on the others or their
    order."""
    c = running_cluster
    for _ in range(WORKERS - len(c.live())):
        c.add_worker()
    c.wait_ready(*c.live())
    return c
