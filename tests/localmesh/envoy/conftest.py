"""Fixtures of the Envoy tests: two backends (v1, v2 of `shop`) on threads, and one real Envoy on loopback per
module, each stopped by the fixture's teardown (Envoy by its PID: SIGTERM, then SIGKILL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localmesh.envoy.process import Envoy
from localmesh.envoy.translate import Options
from tests.localmesh.envoy.support import Backend, free_port


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, Backend]]:
    started = {v: Backend(v) for v in ("v1", "v2")}
    yield started
    for backend in started.values():
        backend.stop()


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    proxy = Envoy(tmp_path_factory.mktemp("envoy"), Options(port=free_port()))
    proxy.start()
    pid = proxy.pid
    yield proxy
    proxy.stop()
    assert pid is not None and proxy.pid is None
