"""Hooks' signing keys from Kubernetes Secrets: the `Secrets` port over the API server.

A hook names `secretRef: {name, key}`; the Secret is read from the release's own namespace with one `get`
(the controller's RBAC grants `get` on `secrets` and nothing else: no `list`, no `watch`, so it cannot
enumerate them). The value never reaches a log line (`Secret` registers it for redaction) and a failure
says only which Secret and key and whether it was missing or unreadable, never the API's answer.
"""

from __future__ import annotations

import base64
import binascii

from controller.adapters.kubernetes.client import ApiNotFound, KubeApi
from controller.ports import PortError, SecretUnavailable


class KubeSecrets:
    """`Secrets` over the API server: `get` on one Secret, decoded from base64."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def read(self, namespace: str, name: str, key: str) -> bytes:
        where = f"Secret {namespace}/{name}"
        try:
            obj = self.api.read_secret(namespace, name)
        except ApiNotFound:
            raise SecretUnavailable(f"{where} does not exist") from None
        except PortError:
            raise SecretUnavailable(f"{where} could not be read") from None
        encoded = (obj.get("data") or {}).get(key)
        if not isinstance(encoded, str) or not encoded:
            raise SecretUnavailable(f"{where} has no key {key!r}")
        try:
            value = base64.b64decode(encoded, validate=True).strip()
        except (binascii.Error, ValueError):
            raise SecretUnavailable(f"{where}: key {key!r} is not valid base64") from None
        if not value:
            raise SecretUnavailable(f"{where}: key {key!r} is empty")
        return value
