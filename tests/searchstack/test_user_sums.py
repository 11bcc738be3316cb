"""Per-user sufficient statistics of master-search (searchstack.telemetry.UserSums): the counters equal the sums
over users of their totals, computed here directly from a plain per-user table (not by the update rules)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from searchstack.app import create_app
from searchstack.settings import ROLES, Settings
from searchstack.telemetry import MAX_USER_ID_CHARS, ServiceMetrics, UserSums

LABELS = {"service": "master-search", "version": "v4"}
SUMS = ("user_units", "user_impressions_squares", "user_clicks_squares", "user_clicks_impressions",
        "user_click_value_squares", "user_click_value_clicks")
INTEGER_SUMS = SUMS[:4]


@dataclass
class Totals:
    impressions: int = 0
    clicks: int = 0
    value: float = 0.0


class Model:
    """The per-user table the counters summarize. An event that is not attributed to a tracked user (no id, an
    id too long, a new id once `cap` users are kept) is a user of its own."""

    def __init__(self, cap: int | None = None) -> None:
        self.cap = cap
        self.users: dict[object, Totals] = {}
        self.tracked: set[str] = set()
        self.untracked_events = 0

    def _user(self, user_id: str | None) -> Totals:
        if user_id and user_id in self.tracked:
            return self.users[user_id]
        fits = self.cap is None or len(self.tracked) < self.cap
        if user_id and len(user_id) <= MAX_USER_ID_CHARS and fits:
            self.tracked.add(user_id)
            return self.users.setdefault(user_id, Totals())
        if user_id:
            self.untracked_events += 1
        return self.users.setdefault(object(), Totals())  # a fresh key: a user of its own

    def impression(self, user_id: str | None) -> None:
        self._user(user_id).impressions += 1

    def click(self, user_id: str | None, value: float = 0.0) -> None:
        totals = self._user(user_id)
        totals.clicks += 1
        totals.value += value

    def sums(self) -> dict[str, float]:
        rows = list(self.users.values())
        return {
            "user_units": len(rows),
            "user_impressions_squares": sum(t.impressions ** 2 for t in rows),
            "user_clicks_squares": sum(t.clicks ** 2 for t in rows),
            "user_clicks_impressions": sum(t.clicks * t.impressions for t in rows),
            "user_click_value_squares": sum(t.value ** 2 for t in rows),
            "user_click_value_clicks": sum(t.value * t.clicks for t in rows),
            "impressions": sum(t.impressions for t in rows),
            "clicks": sum(t.clicks for t in rows),
            "click_value": sum(t.value for t in rows),
        }


Event = tuple[str, str | None, float]  # ("impression" | "click", user id, click value)


def replay(events: Iterable[Event], *targets: UserSums | Model) -> None:
    for kind, user, value in events:
        for target in targets:
            if kind == "impression":
                target.impression(user)
            else:
                target.click(user, value)


def counters(registry: CollectorRegistry, names: Iterable[str]) -> dict[str, float]:
    values = {name: registry.get_sample_value(f"searchstack_{name}_total", LABELS) for name in names}
    missing = [name for name, value in values.items() if value is None]
    assert not missing, f"series not exposed: {missing}"
    return {name: float(value) for name, value in values.items() if value is not None}


def assert_sums(actual: dict[str, float], expected: dict[str, float]) -> None:
    for name in actual:
        if name in INTEGER_SUMS or name in ("impressions", "clicks"):
            assert actual[name] == expected[name], name  # exact: integer counts
        else:
            assert actual[name] == pytest.approx(expected[name], rel=1e-12, abs=1e-9), name


SCRIPT: list[Event] = [
    ("impression", "alice", 0.0),
    ("impression", "alice", 0.0),
    ("click", "alice", 2.5),
    ("impression", "bob", 0.0),
    ("click", None, 4.0),  # no user id: a user of its own
    ("impression", "", 0.0),  # an empty id too
    ("click", "alice", 1.0),
    ("impression", "alice", 0.0),
    ("click", "bob", 0.0),
    ("click", "carol", 3.0),  # a click before any impression
    ("impression", "carol", 0.0),
    ("click", "bob", 7.25),
    ("impression", "bob", 0.0),
]


def test_counters_are_sums_over_users_of_their_totals() -> None:
    registry = CollectorRegistry()
    sums = UserSums(registry, LABELS)
    sums.start()
    assert counters(registry, [*SUMS, "user_untracked_events"]) == dict.fromkeys([*SUMS, "user_untracked_events"], 0)
    model = Model()
    replay(SCRIPT, sums, model)
    expected = model.sums()
    assert expected["user_units"] == 3 + 2  # alice, bob, carol and two anonymous events
    assert_sums(counters(registry, SUMS), expected)
    assert sums.tracked_users == 3
    assert counters(registry, ["user_untracked_events"]) == {"user_untracked_events": 0}

    rng = random.Random(7)  # then many events of returning users, anonymous ones among them
    users = [f"user-{i}" for i in range(25)]
    events: list[Event] = [
        (rng.choice(("impression", "impression", "click")), rng.choice([*users, None]), round(rng.random() * 50, 2))
        for _ in range(2000)
    ]
    replay(events, sums, model)
    assert_sums(counters(registry, SUMS), model.sums())


def test_long_user_ids_and_bad_values_are_not_tracked() -> None:
    registry = CollectorRegistry()
    sums, model = UserSums(registry, LABELS), Model()
    sums.start()
    long_id = "u" * (MAX_USER_ID_CHARS + 1)
    longest = "u" * MAX_USER_ID_CHARS  # still tracked
    events: list[Event] = [("impression", long_id, 0.0), ("click", long_id, 1.5), ("impression", longest, 0.0)]
    replay(events, sums, model)
    assert sums.tracked_users == 1
    assert_sums(counters(registry, SUMS), model.sums())
    assert counters(registry, ["user_untracked_events"]) == {"user_untracked_events": 2}
    before = counters(registry, SUMS)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite and >= 0"):
            sums.click("someone", bad)
    assert counters(registry, SUMS) == before and sums.tracked_users == 1, "a rejected click changes nothing"


def test_cap_counts_new_users_as_anonymous_and_keeps_the_sums_consistent() -> None:
    metrics = ServiceMetrics(Settings(role="master-search", version=LABELS["version"], max_tracked_users=2))
    metrics.start_business_series()
    model = Model(cap=2)
    events: list[Event] = [
        ("impression", "a", 0.0), ("impression", "b", 0.0), ("click", "a", 1.0),
        ("impression", "c", 0.0), ("click", "c", 2.0), ("impression", "c", 0.0),  # c: the table is full
        ("impression", "a", 0.0), ("click", "b", 0.5), ("impression", "b", 0.0),  # known users stay tracked
        ("impression", None, 0.0), ("click", "d", 0.0),
    ]
    for kind, user, value in events:
        if kind == "impression":
            metrics.count_impression(user)
            model.impression(user)
        else:
            metrics.count_click(value, user)
            model.click(user, value)
    expected = model.sums()
    got = counters(metrics.registry, [*SUMS, "impressions", "clicks", "click_value", "user_untracked_events"])
    assert metrics.user_sums.tracked_users == 2
    assert got["user_untracked_events"] == 4 == model.untracked_events  # c three times, d once
    anonymous_events = 4 + 1  # those, and the event without a user id
    assert got["user_units"] == 2 + anonymous_events
    assert got["impressions"] == expected["impressions"] == 7  # sum of I_u is the impressions counter
    assert got["clicks"] == expected["clicks"] == 4
    assert got["click_value"] == pytest.approx(expected["click_value"]) and expected["click_value"] == 3.5
    del got["user_untracked_events"]
    assert_sums(got, expected)
    # a: I=2, C=1, V=1; b: I=2, C=1, V=0.5; then six users of one event each (c x3, d, anonymous).
    assert got["user_impressions_squares"] == 4 + 4 + 1 + 1 + 1
    assert got["user_clicks_impressions"] == 2 + 2


def test_settings_from_env_read_the_user_header_and_the_cap() -> None:
    settings = Settings.from_env("master-search", {"USER_HEADER": "X-Customer", "SEARCHSTACK_MAX_TRACKED_USERS": "5"})
    assert (settings.user_header, settings.max_tracked_users) == ("x-customer", 5)
    defaults = Settings.from_env("master-search", {})
    assert (defaults.user_header, defaults.max_tracked_users) == ("x-user-id", 100_000)
    with pytest.raises(ValueError, match="SEARCHSTACK_MAX_TRACKED_USERS"):
        Settings.from_env("master-search", {"SEARCHSTACK_MAX_TRACKED_USERS": "many"})
    with pytest.raises(ValueError, match="SEARCHSTACK_MAX_TRACKED_USERS"):
        Settings(role="master-search", max_tracked_users=-1)


# --- through the app ----------------------------------------------------------------------------------------
class Mesh(httpx.AsyncBaseTransport):
    """Routes a downstream call to the in-process app named by its host (the default URLs are http://<role>:8000)."""

    def __init__(self) -> None:
        self.apps: dict[str, httpx.ASGITransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.apps[request.url.host].handle_async_request(request)


def business_samples(text: str, version: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels == {"service": "master-search", "version": version} and sample.name.endswith("_total"):
                out[sample.name.removeprefix("searchstack_").removesuffix("_total")] = sample.value
    return out


def test_master_search_exports_the_per_user_sums_of_its_searches_and_clicks() -> None:
    version = LABELS["version"]
    mesh = Mesh()
    apps = {role: create_app(Settings(role=role, version=version), transport=mesh) for role in ROLES}
    for role, app in apps.items():
        mesh.apps[role] = httpx.ASGITransport(app=app)
    model = Model()
    query = {"text": "penax hater numo", "n_results": 5}

    async def run() -> str:
        async with httpx.AsyncClient(transport=mesh.apps["master-search"], base_url="http://master-search") as client:
            async def search(user: str | None, seed: int, body: dict[str, object] | None = None) -> httpx.Response:
                headers = {"x-user-id": user} if user is not None else {}
                return await client.post("/master-service/search", json=body or {**query, "random_seed": seed},
                                         headers=headers)

            async def click(user: str | None, doc_id: str, value: float | None) -> int:
                headers = {"x-user-id": user} if user is not None else {}
                body: dict[str, object] = {"doc_id": doc_id} if value is None else {"doc_id": doc_id, "value": value}
                return (await client.post("/master-service/click", json=body, headers=headers)).status_code

            try:
                seeds = itertools.count()
                for user in ("alice", "alice", "bob", "alice", None, "carol", "bob"):
                    answer = await search(user, next(seeds))
                    assert answer.status_code == 200, answer.text
                    model.impression(user)
                doc_id = next(iter(answer.json()))
                invalid = await search("alice", 0, {"text": "", "n_results": 5})
                assert invalid.status_code == 422  # not an impression
                for user, value in (("alice", 2.5), ("alice", None), ("bob", 1.25), (None, 4.0), ("dave", 3.0)):
                    assert await click(user, doc_id, value) == 200
                    model.click(user, value or 0.0)
                assert await click("bob", "no-such-doc", 9.0) == 404  # not a click
                return (await client.get("/metrics")).text
            finally:
                for app in apps.values():
                    await app.state.ctx.downstream.aclose()

    samples = business_samples(asyncio.run(run()), version)
    expected = model.sums()
    assert expected["user_units"] == 4 + 2  # alice, bob, carol, dave; an anonymous search and click
    assert {name: samples[name] for name in ("impressions", "clicks")} == {"impressions": 7, "clicks": 5}
    assert samples["click_value"] == pytest.approx(expected["click_value"])
    assert samples["user_untracked_events"] == 0
    assert_sums({name: samples[name] for name in SUMS}, expected)
    assert apps["master-search"].state.ctx.metrics.user_sums.tracked_users == 4
    keyword = asyncio.run(_metrics_text(create_app(Settings(role="keyword", version=version))))
    assert "searchstack_user_units_total{" not in keyword, "per-user sums are master-search's only"


async def _metrics_text(app: FastAPI) -> str:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as client:
        return (await client.get("/metrics")).text
