"""The local crash campaign's observer (bench/local_crash.py): a health check tells a slow workload from one that
is not there."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.local_crash import Observer
from controller.adapters.local.processes import free_port


class _SlowHealth(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(2.5)  # longer than the first check's 2 s
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def slow_workload() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.timeout(60)
def test_a_workload_that_answers_slowly_is_healthy_and_one_that_is_gone_is_not(slow_workload: str,
                                                                              tmp_path: Path) -> None:
    observer = Observer(tmp_path, "release")
    try:
        assert observer._healthy(slow_workload)
        assert not observer._healthy(f"127.0.0.1:{free_port()}")
        assert "ConnectError" in observer.last_health_error
    finally:
        observer.close()
