"""A release's decisions stay within a byte budget however long it analyses: Kubernetes keeps the whole object in
one etcd value, which etcd refuses over 1.5 MiB by default, and each decision names every check of every analysed
service (`controller.core.status.bounded_history`)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from controller.core.status import COMPACT_CHECK_FIELDS, FULL_HISTORY_BYTES, HISTORY_BYTES, HISTORY_LIMIT
from tests.support.decisions import judged, looked

ETCD_MAX_BYTES = 1_572_864


def size(value: Any) -> int:
    return len(json.dumps(value, default=str))


@pytest.mark.parametrize("services", [5, 20])
def test_a_release_that_analyses_for_hours_stays_storable(services: int) -> None:
    status, made = looked(services, looks=300)
    history = status.history
    assert size([r.for_storage() for r in history]) <= HISTORY_BYTES
    assert size(status.for_storage()) < ETCD_MAX_BYTES * 0.6  # room for the spec, metadata and managedFields
    # The newest decisions, none skipped, the newest whole; older ones keep each check's verdict and e-value.
    assert [r.at for r in history] == [r.at for r in made[-len(history):]]
    assert history[-1] == made[-1]
    whole = [r for r in history if r == made[[m.at for m in made].index(r.at)]]
    newest = size(made[-1].for_storage())
    assert len(whole) >= 1 and size([r.for_storage() for r in whole]) <= FULL_HISTORY_BYTES + newest
    for r in history[:len(history) - len(whole)]:
        assert len(r.checks) == 4 * services
        assert all(set(c) == set(COMPACT_CHECK_FIELDS) for c in r.checks), r.checks[0]
    assert history[-len(whole):] == tuple(whole)  # whole ones are the newest, compacted ones older


def test_the_budget_was_needed_at_the_count_limit_alone() -> None:
    """Without it, the count limit alone would keep 200 whole decisions of five services: over etcd's limit."""
    record, _ = judged(5)
    assert size(record.for_storage()) * HISTORY_LIMIT > ETCD_MAX_BYTES


@pytest.mark.parametrize("services", [1, 5, 20])
def test_the_size_estimate_is_at_least_the_json(services: int) -> None:
    record, _ = judged(services)
    for r in (record, record.compact(), replace(record, reason="a reason with \"quotes\" and ünïcödé " * 20)):
        assert r.stored_size() >= size(r.for_storage())


def test_a_short_release_keeps_every_decision_whole() -> None:
    status, made = looked(5, looks=12)
    assert status.history == tuple(made)


def test_one_decision_over_every_budget_is_still_kept_whole() -> None:
    status, made = looked(300, looks=3)  # 1,200 checks a decision
    assert size(made[-1].for_storage()) > HISTORY_BYTES
    assert status.history[-1] == made[-1]
