"""The controller's only door to the Kubernetes API: thin wrappers over the official client, raw JSON in/out.

Every call goes through `KubeApi`, which
- speaks plain dicts (camelCase, exactly what the API server stores): the typed models of the client are
  skipped (`_preload_content=False`), which keeps the renderer's objects byte-for-byte comparable and
  saves the deserialisation CPU on every reconcile;
- sends every patch as JSON merge-patch (RFC 7386), whose list semantics (replace the whole list) are
  the same for custom objects and core kinds;
- classifies failures into the ports' error tree:

      PortError
      ├── TemporaryError          5xx, 429, timeouts, connection refused: try again next tick
      │   ├── ApiConflict         409 on a stale resourceVersion: re-read, then try again
      │   ├── ApiGone             410 on a watch from a compacted resourceVersion: re-list
      │   └── NotLeader           refused here, never sent: this replica does not hold the lease
      └── PermanentError          400, 401, 403, 422: retrying will not help; tell the operator
          ├── ApiNotFound         404 (callers usually turn it into "absent")
          └── ApiTooLarge         413, or etcd's "request is too large" (which API servers may answer 500):
                                  the object would exceed what etcd stores (1.5 MiB by default)

`LeaderOnlyApi` wraps a `KubeApi` so that every write except the Lease's is refused (`NotLeader`) the
moment this replica stops being the leader: a tick that started as leader and outlived the lease (a slow
API server, a long Prometheus query) cannot write after a new leader took over. `identify()` puts the
replica's identity in the User-Agent header, so the API server's audit log says which replica wrote.

Resources are addressed by `Resource(group, version, plural)`; the generic custom-objects endpoints serve
the named groups (apps, autoscaling, coordination.k8s.io, networking.istio.io, stackcanary.dev) and the
core group is used for Events only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from controller.core.spec.release import API_GROUP, API_VERSION
from controller.ports import PermanentError, TemporaryError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
# etcd's answer to a request over its --max-request-bytes; some API servers pass it on as a 500.
ETCD_TOO_LARGE = "request is too large"


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RELEASES = Resource(API_GROUP, API_VERSION, "stackreleases")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
HPAS = Resource("autoscaling", "v2", "horizontalpodautoscalers")
SECRETS = Resource("", "v1", "secrets")
VIRTUAL_SERVICES = Resource("networking.istio.io", "v1", "virtualservices")
DESTINATION_RULES = Resource("networking.istio.io", "v1", "destinationrules")
LEASES = Resource("coordination.k8s.io", "v1", "leases")


class ApiConflict(TemporaryError):
    """409: the object changed since it was read (or already exists)."""


class ApiGone(TemporaryError):
    """410: the resourceVersion a watch started from is no longer kept by the server."""


class ApiNotFound(PermanentError):
    """404: no such object."""


class ApiTooLarge(PermanentError):
    """413, or etcd's "request is too large": the same write will be refused again."""


class NotLeader(TemporaryError):
    """A write refused before it was sent: this replica does not (or no longer) hold the lease."""


def classify(exc: Exception, what: str) -> TemporaryError | PermanentError:
    """An exception from the client as a port error whose message says what was being done."""
    if isinstance(exc, ApiException):
        status = exc.status or 0
        message = f"{what}: HTTP {status} {_reason(exc)}"
        if status == 409:
            return ApiConflict(message)
        if status == 410:
            return ApiGone(message)
        if status == 404:
            return ApiNotFound(message)
        if status == 413 or ETCD_TOO_LARGE in message:
            return ApiTooLarge(message)
        if status in (400, 401, 403, 405, 422):
            return PermanentError(message)
        return TemporaryError(message)
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        return TemporaryError(f"{what}: {_unreachable(exc)}")
    return TemporaryError(f"{what}: {type(exc).__name__}: {exc}")


def _unreachable(exc: urllib3.exceptions.MaxRetryError) -> str:
    """The API server that could not be reached and why, without urllib3's retry wrapping and object reprs."""
    pool = exc.pool
    where = f"{pool.host}:{pool.port}" if pool is not None else "the API server"
    cause = str(exc.reason if exc.reason is not None else exc)
    cause = cause.rsplit("): ", 1)[-1] if "): " in cause else cause  # "HTTPConnection(host=..., port=...): why"
    return f"cannot reach the API server at {where}: {cause}"


def _reason(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


# (verb, plural, HTTP status or 0 for a connection failure)
ApiObserver = Callable[[str, str, int], None]


class KubeApi:
    """Dict-in, dict-out access to namespaced resources. Thread-safe (urllib3's pool is)."""

    def __init__(self, api_client: kubernetes.client.ApiClient, observer: ApiObserver | None = None,
                 timeout: float = 10.0) -> None:
        self.api_client = api_client
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.observer = observer
        self.timeout = timeout

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None,
                observer: ApiObserver | None = None) -> KubeApi:
        """In-cluster config when running in a pod, else the kubeconfig (explicit path or the default)."""
        configuration = kubernetes.client.Configuration()
        if kubeconfig is None:
            try:
                kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                return cls(kubernetes.client.ApiClient(configuration), observer)
            except kubernetes.config.ConfigException:
                pass
        try:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration)
        except (kubernetes.config.ConfigException, OSError) as exc:  # none, no such context, unreadable
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise PermanentError(f"no Kubernetes API to talk to: {exc} (kubeconfig: {where})") from exc
        return cls(kubernetes.client.ApiClient(configuration), observer)

    def identify(self, identity: str) -> None:
        """Send `stack-canary-controller/<identity>` as the User-Agent of every request."""
        self.api_client.user_agent = f"stack-canary-controller/{identity}"

    @classmethod
    def for_url(cls, url: str, observer: ApiObserver | None = None) -> KubeApi:
        """A plain-HTTP API server without auth (the emulator in tests and benchmarks)."""
        configuration = kubernetes.client.Configuration()
        configuration.host = url
        return cls(kubernetes.client.ApiClient(configuration), observer)

    # --- calls ---------------------------------------------------------------------------------------
    def _call(self, verb: str, res: Resource, what: str, fn: Callable[[], Any]) -> Obj:
        try:
            response = fn()
            data: Obj = json.loads(response.data or b"{}")
        except ApiException as exc:
            self._observe(verb, res, exc.status or 0)
            raise classify(exc, what) from exc
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            self._observe(verb, res, 0)
            raise classify(exc, what) from exc
        self._observe(verb, res, response.status)
        return data

    def _observe(self, verb: str, res: Resource, status: int) -> None:
        if self.observer is not None:
            self.observer(verb, res.plural, status)

    def get(self, res: Resource, namespace: str, name: str) -> Obj:
        return self._call("get", res, f"reading {res.plural}/{name} in {namespace}", lambda: (
            self.custom.get_namespaced_custom_object(res.group, res.version, namespace, res.plural, name,
                                                     _preload_content=False, _request_timeout=self.timeout)))

    def get_or_none(self, res: Resource, namespace: str, name: str) -> Obj | None:
        try:
            return self.get(res, namespace, name)
        except ApiNotFound:
            return None

    def list(self, res: Resource, namespace: str | None, label_selector: str | None = None) -> Obj:
        """The whole list object: `items` and `metadata.resourceVersion` (to start a watch from)."""
        where = namespace or "all namespaces"
        if namespace is None:
            return self._call("list", res, f"listing {res.plural} in {where}", lambda: (
                self.custom.list_cluster_custom_object(res.group, res.version, res.plural,
                                                       label_selector=label_selector, _preload_content=False,
                                                       _request_timeout=self.timeout)))
        return self._call("list", res, f"listing {res.plural} in {where}", lambda: (
            self.custom.list_namespaced_custom_object(res.group, res.version, namespace, res.plural,
                                                      label_selector=label_selector, _preload_content=False,
                                                      _request_timeout=self.timeout)))

    def create(self, res: Resource, namespace: str, body: Mapping[str, Any]) -> Obj:
        name = body.get("metadata", {}).get("name", "")
        return self._call("create", res, f"creating {res.plural}/{name} in {namespace}", lambda: (
            self.custom.create_namespaced_custom_object(res.group, res.version, namespace, res.plural,
                                                        dict(body), _preload_content=False,
                                                        _request_timeout=self.timeout)))

    def patch(self, res: Resource, namespace: str, name: str, patch: Mapping[str, Any]) -> Obj:
        """Merge-patch; a `metadata.resourceVersion` in the patch makes it conditional (409 when stale)."""
        return self._call("patch", res, f"patching {res.plural}/{name} in {namespace}", lambda: (
            self.custom.patch_namespaced_custom_object(res.group, res.version, namespace, res.plural, name,
                                                       dict(patch), _content_type=MERGE_PATCH,
                                                       _preload_content=False, _request_timeout=self.timeout)))

    def replace_status(self, res: Resource, namespace: str, name: str, body: Mapping[str, Any]) -> Obj:
        """PUT on /status: the whole object, of which the server takes the status only."""
        return self._call("update", res, f"replacing {res.plural}/{name}/status in {namespace}", lambda: (
            self.custom.replace_namespaced_custom_object_status(
                res.group, res.version, namespace, res.plural, name, dict(body), _preload_content=False,
                _request_timeout=self.timeout)))

    def replace(self, res: Resource, namespace: str, name: str, body: Mapping[str, Any]) -> Obj:
        """PUT: conditional on the body's `metadata.resourceVersion`."""
        return self._call("update", res, f"replacing {res.plural}/{name} in {namespace}", lambda: (
            self.custom.replace_namespaced_custom_object(res.group, res.version, namespace, res.plural, name,
                                                         dict(body), _preload_content=False,
                                                         _request_timeout=self.timeout)))

    def delete(self, res: Resource, namespace: str, name: str) -> None:
        with contextlib.suppress(ApiNotFound):
            self._call("delete", res, f"deleting {res.plural}/{name} in {namespace}", lambda: (
                self.custom.delete_namespaced_custom_object(res.group, res.version, namespace, res.plural, name,
                                                            _preload_content=False,
                                                            _request_timeout=self.timeout)))

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> Obj:
        events = Resource("", "v1", "events")
        return self._call("create", events, f"creating an Event in {namespace}", lambda: (
            self.core.create_namespaced_event(namespace, dict(body),  # type: ignore[arg-type]
                                              _preload_content=False,
                                              _request_timeout=self.timeout)))

    def read_secret(self, namespace: str, name: str) -> Obj:
        """One Secret, by name (the controller may `get` Secrets, never list or watch them)."""
        return self._call("get", SECRETS, f"reading secrets/{name} in {namespace}", lambda: (
            self.core.read_namespaced_secret(name, namespace, _preload_content=False,
                                             _request_timeout=self.timeout)))

    def watch(self, res: Resource, namespace: str | None, resource_version: str,
              timeout_seconds: int = 300) -> Iterator[Obj]:
        """Watch events (dicts with `type` and `object`) after `resource_version`, until the server ends.

        An ERROR event with code 410 raises ApiGone (the caller re-lists); other ERROR events raise too.
        """
        what = f"watching {res.plural} in {namespace or 'all namespaces'}"
        kwargs: dict[str, Any] = dict(watch=True, resource_version=resource_version,
                                      timeout_seconds=timeout_seconds, allow_watch_bookmarks=True,
                                      _preload_content=False, _request_timeout=(self.timeout, timeout_seconds + 5))
        response: Any
        try:
            if namespace is None:
                response = self.custom.list_cluster_custom_object(res.group, res.version, res.plural, **kwargs)
            else:
                response = self.custom.list_namespaced_custom_object(res.group, res.version, namespace,
                                                                     res.plural, **kwargs)
        except ApiException as exc:
            self._observe("watch", res, exc.status or 0)
            raise classify(exc, what) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self._observe("watch", res, 0)
            raise classify(exc, what) from exc
        self._observe("watch", res, response.status)
        try:
            yield from _events(response, what)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise classify(exc, what) from exc
        finally:
            response.release_conn()


WRITE_VERBS = frozenset({"create", "patch", "update", "delete"})


class LeaderOnlyApi(KubeApi):
    """`inner`, except that writes (but the Lease's) raise NotLeader unless `is_leader()` says yes.

    Checked right before each request, not once per tick: leadership can end in the middle of a tick.
    """

    def __init__(self, inner: KubeApi, is_leader: Callable[[], bool]) -> None:
        # Not super().__init__: every attribute below is the inner client's, so that a change to it
        # (an observer set later, a timeout) holds for both.
        self.inner = inner
        self.is_leader = is_leader
        self.refused = 0

    @property
    def api_client(self) -> kubernetes.client.ApiClient:
        return self.inner.api_client

    @api_client.setter
    def api_client(self, value: kubernetes.client.ApiClient) -> None:
        self.inner.api_client = value

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return self.inner.custom

    @custom.setter
    def custom(self, value: kubernetes.client.CustomObjectsApi) -> None:
        self.inner.custom = value

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return self.inner.core

    @core.setter
    def core(self, value: kubernetes.client.CoreV1Api) -> None:
        self.inner.core = value

    @property
    def observer(self) -> ApiObserver | None:
        return self.inner.observer

    @observer.setter
    def observer(self, value: ApiObserver | None) -> None:
        self.inner.observer = value

    @property
    def timeout(self) -> float:
        return self.inner.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self.inner.timeout = value

    def _call(self, verb: str, res: Resource, what: str, fn: Callable[[], Any]) -> Obj:
        if verb in WRITE_VERBS and res != LEASES and not self.is_leader():
            self.refused += 1
            raise NotLeader(f"{what}: not sent, this replica is not the leader")
        return super()._call(verb, res, what, fn)


def _events(response: Any, what: str) -> Iterator[Obj]:
    buffer = b""
    for chunk in response.stream(64 * 1024, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield _event(line, what)
    if buffer.strip():
        yield _event(buffer, what)


def _event(line: bytes, what: str) -> Obj:
    event: Obj = json.loads(line)
    if event.get("type") == "ERROR":
        status = event.get("object") or {}
        message = f"{what}: {status.get('code')} {status.get('reason')}: {status.get('message')}"
        if status.get("code") == 410:
            raise ApiGone(message)
        raise TemporaryError(message)
    return event
