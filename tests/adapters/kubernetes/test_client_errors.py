"""The API client's failures as operators read them: one line naming what was done, where, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.adapters.kubernetes.client import RELEASES, KubeApi
from controller.adapters.local.processes import free_port
from controller.ports import PortError, TemporaryError

pytestmark = pytest.mark.timeout(60)


def test_an_unreachable_api_server_is_named_without_urllib3s_wrapping() -> None:
    port = free_port()  # nothing listens there
    api = KubeApi.for_url(f"http://127.0.0.1:{port}")
    with pytest.raises(TemporaryError) as error:
        api.get_or_none(RELEASES, "search", "search-v2")
    reason = error.value.reason
    assert reason == (f"reading stackreleases/search-v2 in search: cannot reach the API server at 127.0.0.1:{port}: "
                      "Failed to establish a new connection: [Errno 111] Connection refused"), reason


def test_a_kubeconfig_that_does_not_exist_is_named(tmp_path: Path) -> None:
    missing = f"{tmp_path}/kubeconfig"
    with pytest.raises(PortError) as error:
        KubeApi.connect(missing)
    assert not error.value.retryable and missing in error.value.reason
