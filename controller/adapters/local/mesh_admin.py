"""A small synchronous client for the local mesh router's admin API (see localmesh.admin).

    admin = RouterAdmin("http://127.0.0.1:15000")
    admin.put_config(objects)          # raises RouterConfigRejected with the router's validation message
    admin.put_endpoints([{"service": "keyword", "labels": {"version": "v1"}, "address": "127.0.0.1:8101"}])
    text = admin.metrics_text()

Transport failures raise httpx errors; callers at a port boundary map them onto their own error types.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

__all__ = ["RouterAdmin", "RouterAdminError", "RouterConfigRejected"]


class RouterAdminError(Exception):
    """The admin API answered something other than success."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class RouterConfigRejected(RouterAdminError):
    """The router refused a config or endpoint list (HTTP 400); the previous one stays in force."""


class RouterAdmin:
    def __init__(self, url: str, timeout: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RouterAdmin:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def healthy(self) -> bool:
        try:
            return self._client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def get_config(self) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = self._json(self._client.get("/config"))["objects"]
        return objects

    def put_config(self, objects: list[dict[str, Any]]) -> None:
        self._json(self._client.put("/config", json={"objects": objects}))

    def get_endpoints(self) -> list[dict[str, Any]]:
        endpoints: list[dict[str, Any]] = self._json(self._client.get("/endpoints"))["endpoints"]
        return endpoints

    def put_endpoints(self, endpoints: list[dict[str, Any]]) -> None:
        self._json(self._client.put("/endpoints", json={"endpoints": endpoints}))

    def metrics_text(self) -> str:
        response = self._client.get("/metrics")
        if response.status_code != 200:
            raise RouterAdminError(response.status_code, response.text)
        return response.text

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        if response.status_code == 400:
            raise RouterConfigRejected(400, _error_of(response))
        if response.status_code != 200:
            raise RouterAdminError(response.status_code, _error_of(response))
        body: dict[str, Any] = response.json()
        return body


def _error_of(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text
