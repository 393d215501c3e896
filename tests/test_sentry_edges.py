"""Sentry at the edges: tags Sentry's ingestion (Relay) would drop are made valid, cron monitor
slugs fit in 50 characters, and nothing is sent while no client is active."""

from __future__ import annotations

import re
from typing import Any

import pytest

import invariantkit as ik
from invariantkit._safe import sentry_tag_key, sentry_tags
from invariantkit.sinks._sentry_crons import monitor_slug
from invariantkit.testing import Signals, capture_signals

_RELAY_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,32}\Z")


def test_tags_reach_sentry_as_relay_keeps_them() -> None:
    """Keys with spaces, non-ASCII or over 32 characters, values with newlines or over 200
    characters: every tag of the real SDK's event has a valid key and a one-line value of at
    most 200 characters; two keys never become one."""
    tags = {
        "customer name": "a\nb",
        "x" * 40: "v",
        "x" * 40 + "y": "w",
        "kündigung": "1",
        "plan": "p" * 500,
        "ok_key": "line\r\nbreak\u2028here",
    }
    with capture_signals() as signals:
        invariant = ik.Invariant("SENTRY_EDGE_TAGS", type="sentry_edge", summary="x")
        ik.assert_invariant(False, invariant, tags=tags)
        [event] = signals.sentry_events
    sent: dict[str, Any] = event["tags"]
    assert len(sent) == len(tags) + 5  # invariant, invariant_type, domain, team, trace_id
    for key, value in sent.items():
        assert _RELAY_KEY.match(key), key
        assert "\n" not in value
        assert "\r" not in value
        assert len(value) <= 200
    assert sent["ok_key"] == "line break here"
    assert sent[sentry_tag_key("customer name")] == "a b"


def test_tag_keys_are_made_valid_deterministically() -> None:
    """A valid key is unchanged; an invalid one always becomes the same valid key."""
    assert sentry_tag_key("subscription_id") == "subscription_id"
    assert sentry_tag_key("a b") == sentry_tag_key("a b")
    assert sentry_tag_key("a b") != sentry_tag_key("a_b")
    assert sentry_tags({"k": "v"}) == {"k": "v"}


@pytest.mark.parametrize("length", [50, 51, 120])
def test_monitor_slugs_fit_in_50_characters(length: int) -> None:
    """A cron name over 50 characters gets a slug of 50, deterministic and distinct."""
    name = ("a" * length)[:length]
    slug = monitor_slug(name)
    assert len(slug) <= 50
    assert slug == monitor_slug(name)
    if length > 50:
        assert slug != monitor_slug(name[:-1] + "b")
    else:
        assert slug == name


def test_an_explicit_slug_over_50_characters_fails_at_declaration() -> None:
    """``sentry_slug=`` longer than Sentry keeps is a clear error naming the field."""
    with pytest.raises(ValueError, match="sentry_slug"):
        ik.monitor_cron("slug_too_long", every=60, max_runtime=60, sentry_slug="s" * 51)


def test_long_cron_names_check_in_under_their_short_slug(signals: Signals) -> None:
    """The check-ins of a cron named over 50 characters carry its shortened slug."""
    name = "nightly_" + "reconciliation_of_every_ledger_entry_" * 2
    with ik.monitor_cron(name, every=3600, max_runtime=600):
        pass
    ik.flush()
    slugs = {c["monitor_slug"] for c in signals.sentry_checkins}
    assert slugs == {monitor_slug(name)}
    assert len(monitor_slug(name)) == 50
