"""The Notifier port as core/v1 Events on the StackRelease, so `kubectl describe` tells the story.

Each notice becomes one Event: `reason` is the notice's reason (Initialized, WeightIncreased,
AnalysisFailed, RolledBack, Promoted, InvalidSpec, ...), `type` Warning or Normal, the message carries
the numbers. An Event that cannot be written is logged and dropped: events are for people, and a failing
event must never fail (or repeat) a tick whose status was already persisted.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from controller.adapters.kubernetes.client import RELEASES, KubeApi, Obj
from controller.core.spec.release import RELEASE_KIND
from controller.ports import Clock, Notice, PortError

log = logging.getLogger(__name__)

COMPONENT = "stack-canary-controller"
MESSAGE_LIMIT = 1024  # the API server refuses Event messages over 1 KiB


def rfc3339(seconds: float, micro: bool = False) -> str:
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def event_body(release: Obj, notice: Notice, now: float, instance: str) -> Obj:
    meta = release.get("metadata", {})
    name = meta.get("name", notice.release)
    stamp = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": meta.get("namespace", "")},
        "involvedObject": {"apiVersion": RELEASES.api_version, "kind": RELEASE_KIND, "name": name,
                           "namespace": meta.get("namespace", ""), "uid": meta.get("uid", ""),
                           "resourceVersion": meta.get("resourceVersion", "")},
        "reason": notice.reason,
        "message": notice.message[:MESSAGE_LIMIT],
        "type": "Warning" if notice.warning else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventNotifier:
    """Notices about one release, as Events in its namespace."""

    def __init__(self, api: KubeApi, release: Obj, clock: Clock, instance: str = "") -> None:
        self.api = api
        self.release = release
        self.clock = clock
        self.instance = instance or COMPONENT
        self.sent: list[Obj] = []

    def notify(self, notice: Notice) -> None:
        body = event_body(self.release, notice, self.clock.now(), self.instance)
        level = logging.WARNING if notice.warning else logging.INFO
        log.log(level, "%s/%s %s: %s", body["metadata"]["namespace"], body["involvedObject"]["name"],
                notice.reason, notice.message)
        try:
            self.sent.append(self.api.create_event(body["metadata"]["namespace"], body))
        except PortError as exc:
            log.warning("event %s not recorded: %s", notice.reason, exc.reason)
