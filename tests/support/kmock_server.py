"""A Kubernetes API emulator for the adapter tests: kmock, extended with the semantics the controller needs.

kmock's `KubernetesEmulator` stores objects as plain dicts: no resourceVersion, no optimistic
concurrency, no status subresource, no label selectors, watches that always start from "now" and never
expire. The controller relies on all of these, so `KubeEmulator` subclasses it and serves the resources
listed in `KINDS` from its own versioned store (everything else still goes to kmock):

- every write bumps one global resourceVersion; an update or patch that carries a stale
  `metadata.resourceVersion` gets 409 Conflict, a create of an existing name 409 AlreadyExists;
- for kinds with a status subresource, writes to the main resource ignore `status` and bump
  `metadata.generation` when anything else changes; writes to `/status` change only `status`;
- `labelSelector` (`k=v`, `k!=v`, `k`, `!k`, `k in (a,b)`) on lists and watches;
- watches start after the given resourceVersion, replay the event log from there, and answer 410 Gone
  (an ERROR event, as the real API server does) when that point was compacted away (`compact()`);
  `disconnect_watches()` ends every open stream, like an API server restart or a load balancer would;
- finalizers: deleting an object with finalizers only sets `deletionTimestamp`; it goes when the last
  finalizer is removed; then the objects it owns (ownerReferences) go too, as the garbage collector does;
- a stand-in for the Deployment controller: Deployments get a status (ready, or progress deadline
  exceeded for images listed in `failing_images`, or never ready for `slow_images`); a test that wants
  pods that take their time sets `cluster` (`tests.support.cluster.ClusterModel`), which is then told of
  every Deployment and HorizontalPodAutoscaler written and writes their status itself;
- observers (`Store.observers`): called with every change the store records, in order and under its
  lock, so a checker (`tests.support.invariants`) sees every state the cluster ever held, not just the last;
- a write log (`KubeEmulator.write_log`): every write request with its user agent (who wrote) and answer;
- injected faults (`KubeEmulator.faults`, `Fault`): chosen requests answer an error (409, 500, ...)
  before or after the write is applied, or are answered late (slower than the client's timeout).

The fixture `start_emulator()` runs it on 127.0.0.1 in a thread of its own (the official client is
synchronous), and returns a `RunningEmulator` whose `stop()` the fixture's teardown calls.
Merge-patch (RFC 7386) is the only patch flavour: the controller sends every patch as merge-patch.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp.web
import attrs
import kmock
from kmock._internal import rendering

Obj = dict[str, Any]
Key = tuple[str, str, str]  # group, version, plural
# (resourceVersion, kind key, ADDED|MODIFIED|DELETED, the object as stored); see `Store.observers`.
Observer = Callable[[int, Key, str, Obj], None]

# One line per request the emulator answers is noise; worse, a test that logged to a stream it then closed
# would see the next request's line fail to write.
logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class ClusterHook(Protocol):
    """What stands in for the cluster's own controllers when a test sets `KubeEmulator.cluster`."""

    def written(self, key: Key, ns: str, obj: Obj) -> None: ...


@dataclass(frozen=True)
class Kind:
    kind: str
    namespaced: bool = True
    status_subresource: bool = False


KINDS: dict[Key, Kind] = {
    ("stackcanary.dev", "v1alpha1", "stackreleases"): Kind("StackRelease", status_subresource=True),
    ("apps", "v1", "deployments"): Kind("Deployment", status_subresource=True),
    ("autoscaling", "v2", "horizontalpodautoscalers"): Kind("HorizontalPodAutoscaler"),
    ("networking.istio.io", "v1", "virtualservices"): Kind("VirtualService"),
    ("networking.istio.io", "v1", "destinationrules"): Kind("DestinationRule"),
    ("coordination.k8s.io", "v1", "leases"): Kind("Lease"),
    ("", "v1", "events"): Kind("Event"),
    ("", "v1", "namespaces"): Kind("Namespace", namespaced=False),
}
DEPLOYMENTS: Key = ("apps", "v1", "deployments")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": self.code, "reason": self.reason, "message": self.message}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


_SET_EXPR = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p for p in [*parts, current] if p.strip()]


def selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    if not selector:
        return True
    for term in _split_selector(selector):
        if m := _SET_EXPR.match(term):
            values = {v.strip() for v in m.group(3).split(",")}
            inside = labels.get(m.group(1)) in values
            if inside != (m.group(2) == "in"):
                return False
        elif "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(k) != v:
                return False
        elif term.strip().startswith("!"):
            if term.strip()[1:] in labels:
                return False
        elif term.strip() not in labels:
            return False
    return True


# etcd's default --max-request-bytes: an object whose JSON is larger cannot be stored, and the API server answers
# the write that would make it so with an error (413, "etcdserver: request is too large").
ETCD_MAX_BYTES = 1_572_864


def _storable(obj: Obj, key: Key, name: str) -> None:
    size = len(json.dumps(obj, separators=(",", ":"), default=str))
    if size > ETCD_MAX_BYTES:
        raise ApiError(413, "RequestEntityTooLarge", f"etcdserver: request is too large ({key[2]} {name!r}: "
                                                     f"{size} bytes, limit {ETCD_MAX_BYTES})")


@dataclass
class Store:
    """The versioned object store; thread-safe (the tests' threads and the server's loop both use it)."""

    objects: dict[tuple[Key, str, str], Obj] = field(default_factory=dict)
    # (kind, namespace) -> names: lists of one namespace need not scan every object of the cluster.
    index: dict[tuple[Key, str], set[str]] = field(default_factory=dict)
    log: list[tuple[int, Key, str, Obj]] = field(default_factory=list)
    rv: int = 1000
    horizon: int = 0  # watches from before this resourceVersion get 410 Gone
    lock: threading.RLock = field(default_factory=threading.RLock)

    log_limit: int = 20_000  # like etcd's compaction: older history is gone, watches from there get 410
    # Called after every recorded change, under the lock (so in the order of the resourceVersions).
    observers: list[Observer] = field(default_factory=list)

    def _record(self, key: Key, event: str, obj: Obj) -> None:
        stored = copy.deepcopy(obj)
        self.log.append((self.rv, key, event, stored))
        for observer in self.observers:
            observer(self.rv, key, event, stored)
        if len(self.log) > self.log_limit:
            dropped = self.log[: len(self.log) - self.log_limit]
            del self.log[: len(dropped)]
            self.horizon = dropped[-1][0]

    def get(self, key: Key, ns: str, name: str) -> Obj:
        with self.lock:
            obj = self.objects.get((key, ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{key[2]} "{name}" not found')
            return copy.deepcopy(obj)

    def list(self, key: Key, ns: str | None, selector: str | None) -> tuple[list[Obj], int]:
        with self.lock:
            spaces = [ns] if ns is not None else sorted(n for (k, n) in self.index if k == key)
            found = [self.objects[(key, n, name)] for n in spaces for name in sorted(self.index.get((key, n), ()))]
            items = [copy.deepcopy(o) for o in found
                     if selector_matches(selector, o["metadata"].get("labels") or {})]
            return items, self.rv

    def create(self, key: Key, ns: str, obj: Obj) -> Obj:
        kind = KINDS[key]
        meta = obj.setdefault("metadata", {})
        name = meta.get("name") or (meta.get("generateName", "obj-") + uuid.uuid4().hex[:5])
        with self.lock:
            if (key, ns, name) in self.objects:
                raise ApiError(409, "AlreadyExists", f'{key[2]} "{name}" already exists')
            _storable(obj, key, name)
            self.rv += 1
            meta.update(name=name, resourceVersion=str(self.rv), uid=str(uuid.uuid4()),
                        creationTimestamp="2026-01-01T00:00:00Z")
            if kind.namespaced:
                meta["namespace"] = ns
            if kind.status_subresource:
                obj.pop("status", None)
                meta["generation"] = 1
            obj["apiVersion"] = f"{key[0]}/{key[1]}" if key[0] else key[1]
            obj["kind"] = kind.kind
            self.objects[(key, ns, name)] = obj
            self.index.setdefault((key, ns), set()).add(name)
            self._record(key, "ADDED", obj)
            return copy.deepcopy(obj)

    def update(self, key: Key, ns: str, name: str, body: Obj, *, patch: bool, status: bool) -> Obj:
        with self.lock:
            old = self.objects.get((key, ns, name))
            if old is None:
                raise ApiError(404, "NotFound", f'{key[2]} "{name}" not found')
            wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
            if wanted_rv is not None and str(wanted_rv) != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {key[2]} "{name}": the object '
                                                "has been modified; please apply your changes to the latest "
                                                "version and try again")
            new = merge_patch(old, body) if patch else copy.deepcopy(body)
            new = self._keep_owned_parts(key, old, new, status)
            if new == old:
                return copy.deepcopy(old)  # a no-op write keeps the resourceVersion, as the API server does
            _storable(new, key, name)
            self.rv += 1
            new["metadata"]["resourceVersion"] = str(self.rv)
            self.objects[(key, ns, name)] = new
            self._record(key, "MODIFIED", new)
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                self._remove(key, ns, name)  # the last finalizer is gone: now it is deleted
            return copy.deepcopy(new)

    @staticmethod
    def _keep_owned_parts(key: Key, old: Obj, new: Obj, status: bool) -> Obj:
        kind = KINDS[key]
        meta = dict(new.get("metadata") or {})
        for fixed in ("name", "namespace", "uid", "creationTimestamp", "resourceVersion", "generation",
                      "deletionTimestamp"):
            if fixed in old["metadata"]:
                meta[fixed] = old["metadata"][fixed]
            else:
                meta.pop(fixed, None)
        new = {**new, "metadata": meta, "apiVersion": old["apiVersion"], "kind": old["kind"]}
        if not kind.status_subresource:
            return new
        if status:  # /status changes nothing but the status
            result = {k: v for k, v in old.items() if k != "status"}
            if "status" in new:
                result["status"] = new["status"]
            return result
        if "status" in old:
            new["status"] = old["status"]
        else:
            new.pop("status", None)
        body = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
        if body(new) != body(old):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        return new

    def delete(self, key: Key, ns: str, name: str) -> Obj:
        with self.lock:
            obj = self.objects.get((key, ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{key[2]} "{name}" not found')
            if obj["metadata"].get("finalizers"):  # finalizers hold the object: it is only marked
                if not obj["metadata"].get("deletionTimestamp"):
                    self.rv += 1
                    obj["metadata"].update(deletionTimestamp="2026-01-01T00:00:01Z", resourceVersion=str(self.rv))
                    self._record(key, "MODIFIED", obj)
                return copy.deepcopy(obj)
            return self._remove(key, ns, name)

    def _remove(self, key: Key, ns: str, name: str) -> Obj:
        with self.lock:
            obj = self.objects.pop((key, ns, name))
            self.index[(key, ns)].discard(name)
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._record(key, "DELETED", obj)
            self._collect_dependents(obj["metadata"].get("uid"))
            return copy.deepcopy(obj)

    def _collect_dependents(self, uid: str | None) -> None:
        """The garbage collector's part: objects owned by a deleted object go too."""
        dependents = [(k, n, name) for (k, n, name), o in self.objects.items()
                      if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]
        for k, n, name in dependents:
            if (k, n, name) in self.objects:
                self._remove(k, n, name)

    def events_after(self, key: Key, rv: int, ns: str | None, selector: str | None) -> list[tuple[int, Obj]]:
        with self.lock:
            if rv < self.horizon:
                raise ApiError(410, "Expired", f"too old resource version: {rv} ({self.horizon})")
            return [(at, {"type": event, "object": copy.deepcopy(obj)}) for at, k, event, obj in self.log
                    if at > rv and k == key and (ns is None or obj["metadata"].get("namespace") == ns)
                    and selector_matches(selector, obj["metadata"].get("labels") or {})]

    def compact(self) -> None:
        with self.lock:
            self.horizon = self.rv
            self.log.clear()


def ready_deployment_status(obj: Obj) -> Obj:
    replicas = obj.get("spec", {}).get("replicas", 1)
    return {"observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}


def stuck_deployment_status(obj: Obj, failed: bool) -> Obj:
    replicas = obj.get("spec", {}).get("replicas", 1)
    progressing = ({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                    "message": f'ReplicaSet "{obj["metadata"]["name"]}" has timed out progressing.'}
                   if failed else {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"})
    return {"observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
            "updatedReplicas": replicas, "unavailableReplicas": replicas,
            "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
                           progressing]}


@dataclass
class Fault:
    """One injected fault: the requests it matches answer `code` (or late, after `delay` seconds).

    `after_apply`: the write is carried out and then answered with the error (the client cannot tell
    whether it happened). `times`: how many matching requests it hits (None: until removed);
    `probability`: the chance each matching request is hit (drawn from the emulator's seeded rng).
    """

    code: int = 500
    delay: float = 0.0
    method: str | None = None  # GET, POST, PUT, PATCH, DELETE; None: any
    plural: str | None = None
    subresource: str | None = None  # "status", "" for the main resource, None: either
    namespace: str | None = None
    agent: str | None = None  # only requests whose User-Agent contains this
    after_apply: bool = False
    times: int | None = 1
    probability: float = 1.0
    hits: int = 0

    def matches(self, method: str, plural: str, subresource: str, namespace: str, agent: str) -> bool:
        return ((self.method is None or self.method == method) and (self.plural is None or self.plural == plural)
                and (self.subresource is None or self.subresource == subresource)
                and (self.namespace is None or self.namespace == namespace)
                and (self.agent is None or self.agent in agent)
                and (self.times is None or self.hits < self.times))


@dataclass(frozen=True)
class WriteRecord:
    at: float  # time.monotonic()
    method: str
    plural: str
    subresource: str
    namespace: str
    name: str
    agent: str  # the User-Agent header: who wrote
    code: int
    fault: bool  # an injected fault touched it (an error answer or a delay)


def _rbac_verb(request: rendering.Request, key: Key | None) -> tuple[str, str, str, str]:
    """The RBAC (namespace, apiGroup, resource, verb) a request needs, for every request whatever its kind:
    resources the emulator does not model (secrets, pods, configmaps, ...) and subresources included, and
    a request for no resource at all (discovery, `/version`) as ("nonResourceURL", "", path, verb)."""
    method = str(request.method.value)
    if key is None:
        verb = {"POST": "post", "PUT": "put", "PATCH": "patch", "DELETE": "delete", "HEAD": "head"}.get(method, "get")
        return ("nonResourceURL", "", str(request.url.path), verb)
    if request.action is kmock.action.WATCH:
        verb = "watch"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            method, "get" if request.name else "list")
    resource = key[2] + (f"/{request.subresource}" if request.subresource else "")
    return (request.namespace or "cluster", key[0], resource, verb)


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with a versioned store for the kinds in `KINDS` (see the module docstring)."""

    store: Store = attrs.field(factory=Store)
    failing_images: set[str] = attrs.field(factory=set)
    slow_images: set[str] = attrs.field(factory=set)
    # None: Deployments are ready the instant they are written; else this is told of every write instead.
    cluster: ClusterHook | None = attrs.field(default=None)
    # Requests by (method, plural, subresource), for the "no writes in steady state" assertions.
    counts: dict[tuple[str, str, str], int] = attrs.field(factory=dict)
    # RBAC verbs used while `recording`, of every request whatever its kind (served by this store, by kmock,
    # or by nothing): (namespace or "cluster", apiGroup, resource[/subresource], verb).
    recording: bool = attrs.field(default=False)
    verbs: set[tuple[str, str, str, str]] = attrs.field(factory=set)
    # Every write request (POST, PUT, PATCH, DELETE) with its writer and answer, in arrival order.
    write_log: list[WriteRecord] = attrs.field(factory=list)
    # Injected faults, tried in order; the first that matches (and whose draw hits) answers the request.
    faults: list[Fault] = attrs.field(factory=list)
    fault_rng: random.Random = attrs.field(factory=lambda: random.Random(0))
    _wake: asyncio.Event | None = attrs.field(default=None)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None)
    _watch_generation: int = attrs.field(default=0)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        key = (res.group or "", res.version or "", res.plural or "") if res is not None and res.plural else None
        if self.recording:  # before anything else: what the emulator does not serve was still asked for
            self.verbs.add(_rbac_verb(request, key))
        if key is None or key not in KINDS:
            return await super()._handle(request)
        method = str(request.method.value)
        count_key = (method, key[2], request.subresource or "")
        self.counts[count_key] = self.counts.get(count_key, 0) + 1
        fault = None if request.action is kmock.action.WATCH else self._fault_for(method, key, request)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)  # late, not lost: the request is served after the wait
        try:
            if request.action is kmock.action.WATCH:
                return await self._watch(request, key)
            if fault is not None and fault.code and not fault.after_apply:
                raise ApiError(fault.code, "InjectedFault", f"injected fault: HTTP {fault.code}")
            body = self._serve(request, key)
            if fault is not None and fault.code and fault.after_apply:
                self._notify()
                raise ApiError(fault.code, "InjectedFault", f"injected fault after the write: HTTP {fault.code}")
        except ApiError as error:
            self._log_write(request, key, error.code, fault is not None)
            return aiohttp.web.json_response(error.status(), status=error.code)
        self._notify()
        code = 201 if method == "POST" else 200
        self._log_write(request, key, code, fault is not None)
        return aiohttp.web.json_response(body, status=code)

    def _fault_for(self, method: str, key: Key, request: rendering.Request) -> Fault | None:
        raw = request._raw_request
        agent = raw.headers.get("User-Agent", "") if raw is not None else ""
        for fault in self.faults:
            if fault.matches(method, key[2], request.subresource or "", request.namespace or "", agent):
                if fault.probability < 1.0 and self.fault_rng.random() >= fault.probability:
                    continue
                fault.hits += 1
                return fault
        return None

    def _log_write(self, request: rendering.Request, key: Key, code: int, fault: bool) -> None:
        method = str(request.method.value)
        if method not in ("POST", "PUT", "PATCH", "DELETE"):
            return
        raw = request._raw_request
        agent = raw.headers.get("User-Agent", "") if raw is not None else ""
        self.write_log.append(WriteRecord(time.monotonic(), method, key[2], request.subresource or "",
                                          request.namespace or "", request.name or "", agent, code, fault))

    def _serve(self, request: rendering.Request, key: Key) -> Obj:
        ns = request.namespace or ""
        method, name = request.method.value, request.name
        data = request.data if isinstance(request.data, dict) else {}
        if method == "GET" and name is None:
            items, rv = self.store.list(key, request.namespace, request.params.get("labelSelector"))
            return {"apiVersion": f"{key[0]}/{key[1]}" if key[0] else key[1], "kind": KINDS[key].kind + "List",
                    "metadata": {"resourceVersion": str(rv)}, "items": items}
        if method == "GET" and name:
            return self.store.get(key, ns, name)
        if method == "POST":
            obj = self.store.create(key, ns, copy.deepcopy(data))
            return self._after_write(key, ns, obj)
        if method in ("PATCH", "PUT") and name:
            status = request.subresource == "status"
            obj = self.store.update(key, ns, name, copy.deepcopy(data), patch=method == "PATCH", status=status)
            return self._after_write(key, ns, obj) if not status else obj
        if method == "DELETE" and name:
            return self.store.delete(key, ns, name)
        raise ApiError(405, "MethodNotAllowed", f"{method} {request.url.path} is not served")

    def _after_write(self, key: Key, ns: str, obj: Obj) -> Obj:
        """The Deployment controller's part: a Deployment's status follows its spec."""
        if self.cluster is not None:
            self.cluster.written(key, ns, obj)
            return obj
        if key != DEPLOYMENTS:
            return obj
        images = {c.get("image") for c in obj["spec"]["template"]["spec"].get("containers", [])}
        if images & self.failing_images:
            status = stuck_deployment_status(obj, failed=True)
        elif images & self.slow_images:
            status = stuck_deployment_status(obj, failed=False)
        else:
            status = ready_deployment_status(obj)
        if obj.get("status") != status:
            self.store.update(key, ns, obj["metadata"]["name"], {"status": status}, patch=True, status=True)
        return obj

    # --- watches -------------------------------------------------------------------------------------
    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = asyncio.Event()

    async def _watch(self, request: rendering.Request, key: Key) -> aiohttp.web.StreamResponse:
        params = request.params
        selector = params.get("labelSelector")
        rv_param = params.get("resourceVersion")
        timeout = float(params.get("timeoutSeconds", "30"))
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        assert request._raw_request is not None
        await response.prepare(request._raw_request)
        if not rv_param or rv_param == "0":  # "from any point": synthetic ADDED for what exists now
            items, rv = self.store.list(key, request.namespace, selector)
            for item in items:
                await response.write(json.dumps({"type": "ADDED", "object": item}).encode() + b"\n")
        else:
            rv = int(rv_param)
        generation = self._watch_generation
        deadline = asyncio.get_running_loop().time() + timeout
        while generation == self._watch_generation and asyncio.get_running_loop().time() < deadline:
            try:
                events = self.store.events_after(key, rv, request.namespace, selector)
            except ApiError as gone:
                await response.write(json.dumps({"type": "ERROR", "object": gone.status()}).encode() + b"\n")
                break
            for at, event in events:
                await response.write(json.dumps(event).encode() + b"\n")
                rv = at
            if self._wake is None:
                self._wake = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.05)
        await response.write_eof()
        return response

    def disconnect_watches(self) -> None:
        self._watch_generation += 1

    def compact(self) -> None:
        self.store.compact()

    def writes(self) -> int:
        return sum(n for (method, _, _), n in self.counts.items() if method in ("POST", "PUT", "PATCH", "DELETE"))

    def requests_total(self) -> int:
        return sum(self.counts.values())


@dataclass
class RunningEmulator:
    emulator: KubeEmulator
    port: int
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    stop_event: asyncio.Event

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store(self) -> Store:
        return self.emulator.store

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout=10)

    def objects(self, plural: str, namespace: str | None = None) -> list[Obj]:
        key = next(k for k in KINDS if k[2] == plural)
        return self.store.list(key, namespace, None)[0]


def start_emulator() -> RunningEmulator:
    """Start the emulator on a free loopback port in a daemon thread; call `.stop()` to end it."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        emulator = KubeEmulator()
        stop = asyncio.Event()
        async with emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            box.update(emulator=emulator, port=server.port, loop=asyncio.get_running_loop(), stop=stop)
            ready.set()
            await stop.wait()
            emulator.disconnect_watches()
            await asyncio.sleep(0.1)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="kube-emulator", daemon=True)
    thread.start()
    if not ready.wait(timeout=10):
        raise RuntimeError("the Kubernetes emulator did not start")
    return RunningEmulator(box["emulator"], box["port"], box["loop"], thread, box["stop"])


def iter_kinds() -> Iterator[tuple[Key, Kind]]:
    yield from KINDS.items()
