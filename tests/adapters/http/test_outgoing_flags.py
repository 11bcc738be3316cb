"""The notification flags' refusals name the flag that gave the bad value, and a key that would sign nothing
is refused rather than ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.adapters.http.outgoing import build_outgoing

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "junk").write_text("junk\n")
    (tmp_path / "key").write_text("k3y\n")
    return {"junk": str(tmp_path / "junk"), "key": str(tmp_path / "key"), "missing": str(tmp_path / "missing")}


@pytest.mark.parametrize(("given", "message"), [
    ({"slack_webhook_file": "missing"}, "--slack-webhook-file {missing}: cannot read secret file {missing}"),
    ({"notify_url_files": ["junk"]}, "--notify-url-file {junk}: no scheme"),
    ({"notify_urls": ["http://10.0.0.1/x"], "cluster": True}, "--notify-url: host 10.0.0.1 is refused"),
    ({"notify_urls": ["http://hooks.example/x"], "notify_secret_file": "missing"},
     "--notify-secret-file: cannot read secret file {missing}"),
    ({"notify_secret_file": "key"}, "--notify-secret-file signs the JSON webhooks' payloads, but no --notify-url"),
    ({"notify_secret_file": "key", "slack_webhook_file": "key"}, "--notify-secret-file signs the JSON webhooks"),
])
def test_a_bad_value_is_refused_naming_its_flag(files: dict[str, str], given: dict[str, Any], message: str) -> None:
    named = {k: (files.get(v, v) if isinstance(v, str) else [files.get(x, x) for x in v] if isinstance(v, list)
                 else v) for k, v in given.items()}
    with pytest.raises(ValueError) as error:
        build_outgoing(**named)
    assert str(error.value).startswith(message.format(**files)), str(error.value)


def test_a_signed_webhook_is_built(files: dict[str, str]) -> None:
    outgoing = build_outgoing(notify_urls=["http://hooks.example/x"], notify_secret_file=files["key"])
    try:
        assert outgoing.notifier is not None
    finally:
        outgoing.close()
