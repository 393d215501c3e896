"""``invariantkit verify``: the guide's checklist passes on a sound set-up and fails, with its
reason, on each way a set-up can be unsound."""

from __future__ import annotations

import json
import sqlite3
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from invariantkit._verify import (
    _Artifacts,
    _check_dashboards,
    _check_teams,
    run_checks,
)
from invariantkit.cli import main

SOUND_APP = """
import posthog
import sentry_sdk
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from prometheus_client import CollectorRegistry

import invariantkit as ik
from invariantkit import billing

IDEMPOTENCY = ik.Constraint("subscription_payment_events_idempotency_idx")
RENEWAL = ik.monitor_cron("subscription_renewal", every=86400, max_runtime=300, team="billing")
SENTRY = sentry_sdk.Client(
    dsn="http://key@127.0.0.1:9/1", sample_rate={sample_rate}, transport_queue_size={queue}{extra}
)
ik.configure(
    service="billing",
    sinks=[
        ik.sinks.OtelTraces(TracerProvider({sampler})),
        ik.sinks.PrometheusMetrics(CollectorRegistry()),
        ik.sinks.Sentry(SENTRY),
        ik.sinks.PostHog(posthog.Posthog("phc_x", host="http://127.0.0.1:9", send=False)),
        ik.sinks.JsonLogs(),
    ],
)
{more}
"""

ROUTES = {
    "route": {
        "receiver": "default",
        "routes": [
            {"receiver": "test-alerts", "matchers": ['severity="test"']},
            {"receiver": "billing-pager", "matchers": ['team="billing"']},
            {"receiver": "platform", "matchers": ['team="platform"']},
        ],
    },
    "receivers": [
        {"name": "default", "webhook_configs": [{"url": "http://127.0.0.1:9/default"}]},
        {"name": "test-alerts", "webhook_configs": [{"url": "http://127.0.0.1:9/test"}]},
        {"name": "billing-pager", "pagerduty_configs": [{"routing_key": "x"}]},
        {"name": "platform", "webhook_configs": [{"url": "http://127.0.0.1:9/platform"}]},
    ],
}


class SetUp:
    """A set-up in a temporary directory: the module, an Alertmanager config, playbooks, a DB."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.capsys = capsys
        self.module = ""
        self.alertmanager = root / "alertmanager.yml"
        self.playbooks = root / "playbooks"
        self.db = root / "billing.db"

    def write(
        self,
        *,
        sample_rate: float = 1.0,
        queue: int = 10_000,
        extra: str = "",
        more: str = "",
        routes: Any = None,
        sampler: str = "",
    ) -> None:
        self.module = f"app_{uuid.uuid4().hex[:10]}"
        source = SOUND_APP.format(
            sample_rate=sample_rate,
            queue=queue,
            extra=extra,
            more=textwrap.dedent(more),
            sampler=sampler,
        )
        (self.root / f"{self.module}.py").write_text(source)
        self.alertmanager.write_text(yaml.safe_dump(ROUTES if routes is None else routes))
        conn = sqlite3.connect(self.db)
        conn.executescript(
            "CREATE TABLE IF NOT EXISTS subscription_payment_events (idempotency_key TEXT);"
            "CREATE UNIQUE INDEX IF NOT EXISTS subscription_payment_events_idempotency_idx "
            "ON subscription_payment_events (idempotency_key);"
        )
        conn.close()

    def publish_playbooks(self) -> None:
        assert main(["playbooks", "-m", self.module, "-o", str(self.playbooks)]) == 0
        self.capsys.readouterr()
        sys.modules.pop(self.module, None)
        self._redeclare()

    def _redeclare(self) -> None:
        from invariantkit import billing
        from invariantkit._catalog import get_catalog

        for invariant in (
            billing.NO_DOUBLE_CHARGE,
            billing.CANCELED_NEVER_CHARGED,
            billing.PERIOD_MUST_ADVANCE,
        ):
            get_catalog().add(invariant)

    def verify(self, *extra: str) -> tuple[int, dict[str, Any]]:
        args = ["verify", "-m", self.module, "--alertmanager-config", str(self.alertmanager)]
        args += ["--dsn", str(self.db), "--playbooks", str(self.playbooks), "--json", *extra]
        code = main(args)
        out, _ = self.capsys.readouterr()
        return code, json.loads(out)


@pytest.fixture
def setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[SetUp]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    made = SetUp(tmp_path, capsys)
    made._redeclare()
    yield made
    sys.modules.pop(made.module, None)


def _by_id(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["id"]: check for check in result["checks"]}


def test_a_sound_set_up_passes_every_item(setup: SetUp) -> None:
    """Rules, teams, routing (amtool), the test alert, published playbooks, dashboards,
    sampling, one trace id and user id everywhere, constraints present: all pass."""
    setup.write()
    setup.publish_playbooks()
    code, result = setup.verify()
    assert code == 0
    assert result["ok"] is True
    statuses = {c["id"]: c["status"] for c in result["checks"]}
    assert set(statuses.values()) == {"pass"}, [
        c for c in result["checks"] if c["status"] != "pass"
    ]
    checks = _by_id(result)
    assert "amtool" in checks["alerts.routing"]["reason"]
    assert "promtool" in checks["rules.valid"]["reason"]


def test_the_items_of_the_guide_are_all_there(setup: SetUp) -> None:
    setup.write()
    setup.publish_playbooks()
    _, result = setup.verify()
    items = {c["item"] for c in result["checks"]}
    for line in (
        "All three billing invariants have alerts configured",
        "Alerts have been tested (trigger manually)",
        "Playbooks exist and are up to date",
        "Dashboards have owners and descriptions",
        "Sampling rates are appropriate (not missing events)",
        "Correlation IDs propagate across all systems",
        "Sentry, Grafana, PostHog all have the same user_id",
    ):
        assert line in items
    assert any(item.startswith("Alerts fire to the correct channel/person") for item in items)


def test_a_team_without_a_route_fails(setup: SetUp) -> None:
    """Platform alerts fall through to a receiver that sends nowhere."""
    routes = json.loads(json.dumps(ROUTES))
    routes["route"]["routes"] = [
        r for r in routes["route"]["routes"] if r["receiver"] != "platform"
    ]
    routes["route"]["receiver"] = "null"
    routes["receivers"].append({"name": "null"})
    setup.write(routes=routes)
    setup.publish_playbooks()
    code, result = setup.verify()
    assert code == 1
    routing = _by_id(result)["alerts.routing"]
    assert routing["status"] == "fail"
    assert any(
        "team=platform" in line and "sends nowhere" in line
        for line in [routing["reason"], *routing["details"]]
    )


def test_test_alerts_that_would_page_warn(setup: SetUp) -> None:
    routes = json.loads(json.dumps(ROUTES))
    routes["route"]["routes"] = routes["route"]["routes"][1:]  # no special route for tests
    setup.write(routes=routes)
    setup.publish_playbooks()
    code, result = setup.verify()
    assert code == 0
    routing = _by_id(result)["alerts.routing"]
    assert routing["status"] == "warn"
    assert "billing-pager" in routing["reason"]


def test_a_missing_playbook_fails(setup: SetUp) -> None:
    """An invariant whose declared runbook does not exist, and a published directory missing
    a generated playbook: both fail with the alert named."""
    setup.write(
        more="""
        REFUND = ik.Invariant(
            "REFUND_NOT_ABOVE_CHARGE", type="refund_above_charge",
            summary="A refund exceeded its charge", runbook_url="runbooks/refund.md",
        )
        """
    )
    setup.publish_playbooks()
    (setup.playbooks / "no-double-charge.md").unlink()
    code, result = setup.verify()
    assert code == 1
    check = _by_id(result)["playbooks"]
    assert check["status"] == "fail"
    text = " ".join([check["reason"], *check["details"]])
    assert "runbooks/refund.md does not exist" in text
    assert "no-double-charge.md is missing" in text


def test_an_outdated_playbook_warns(setup: SetUp) -> None:
    setup.write()
    setup.publish_playbooks()
    (setup.playbooks / "no-double-charge.md").write_text("# Double charge\n\nCall Bob.\n")
    code, result = setup.verify()
    assert code == 0
    assert _by_id(result)["playbooks"]["status"] == "warn"
    assert "out of date" in _by_id(result)["playbooks"]["reason"]


def test_sampled_errors_fail_and_a_small_queue_warns(setup: SetUp) -> None:
    setup.write(sample_rate=0.25, queue=100)
    setup.publish_playbooks()
    code, result = setup.verify()
    assert code == 1
    checks = _by_id(result)
    assert checks["sampling.sentry"]["status"] == "fail"
    assert "sample_rate=0.25" in checks["sampling.sentry"]["reason"]
    assert checks["sampling.sentry_queue"]["status"] == "warn"


def test_sampled_traces_warn(setup: SetUp) -> None:
    setup.write(sampler="sampler=ParentBasedTraceIdRatio(0.1)")
    setup.publish_playbooks()
    code, result = setup.verify()
    assert code == 0
    check = _by_id(result)["sampling.traces"]
    assert check["status"] == "warn"
    assert "TraceIdRatioBased{0.1}" in check["reason"]


def test_a_before_send_that_drops_violations_breaks_correlation(setup: SetUp) -> None:
    setup.write(
        extra=", before_send=lambda event, hint: None if event.get('tags', {}).get('invariant') else event"
    )
    setup.publish_playbooks()
    code, result = setup.verify()
    assert code == 1
    check = _by_id(result)["correlation.trace_id"]
    assert check["status"] == "fail"
    assert "drops invariant violations" in " ".join([check["reason"], *check["details"]])


def test_a_missing_constraint_fails(setup: SetUp) -> None:
    setup.write()
    setup.publish_playbooks()
    conn = sqlite3.connect(setup.db)
    conn.execute("DROP INDEX subscription_payment_events_idempotency_idx")
    conn.commit()
    conn.close()
    code, result = setup.verify()
    assert code == 1
    check = _by_id(result)["constraints"]
    assert check["status"] == "fail"
    assert "subscription_payment_events_idempotency_idx is missing" in check["reason"]


@pytest.mark.slow
def test_constraints_in_postgresql(setup: SetUp, pg_dsn: str) -> None:
    """--dsn postgresql://...: the unique index is looked up in PostgreSQL's catalog."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE subscription_payment_events (idempotency_key text)")
        conn.execute(
            "CREATE UNIQUE INDEX subscription_payment_events_idempotency_idx "
            "ON subscription_payment_events (idempotency_key)"
        )
    setup.write()
    setup.publish_playbooks()
    code, result = setup.verify("--dsn", pg_dsn)
    assert code == 0, result
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX subscription_payment_events_idempotency_idx")
    code, result = setup.verify("--dsn", pg_dsn)
    assert code == 1
    assert _by_id(result)["constraints"]["status"] == "fail"


def test_an_unreachable_database_fails_with_the_reason(setup: SetUp) -> None:
    setup.write()
    setup.publish_playbooks()
    code, result = setup.verify("--dsn", str(setup.root / "missing.db"))
    assert code == 1
    assert "no SQLite database" in _by_id(result)["constraints"]["reason"]


def test_without_the_optional_inputs_it_warns_instead(
    setup: SetUp, capsys: pytest.CaptureFixture[str]
) -> None:
    """No Alertmanager config, no playbooks directory, no database: warnings that say what to
    pass, and the exit status stays 0."""
    setup.write()
    code = main(["verify", "-m", setup.module, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    checks = _by_id(result)
    for id_, hint in (
        ("alerts.routing", "--alertmanager-config"),
        ("playbooks", "--playbooks"),
        ("constraints", "--dsn"),
    ):
        assert checks[id_]["status"] == "warn"
        assert hint in checks[id_]["reason"]


def test_the_table_output(
    setup: SetUp, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    setup.write()
    setup.publish_playbooks()
    code = main(
        [
            "verify",
            "-m",
            setup.module,
            "--alertmanager-config",
            str(setup.alertmanager),
            "--playbooks",
            str(setup.playbooks),
            "--dsn",
            str(setup.db),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Monitoring is sound" in out
    assert "Correlation IDs propagate across all systems" in out


def test_without_amtool_routing_is_not_tested_and_says_so(setup: SetUp) -> None:
    """Without amtool nothing guesses the routes: a warning names the package to install."""
    setup.write()
    from invariantkit._catalog import get_catalog

    __import__(setup.module)
    checks = {
        c.id: c
        for c in run_checks(
            alertmanager_config=setup.alertmanager,
            amtool=False,
            promtool=False,
            catalog=get_catalog(),
        )
    }
    assert checks["alerts.routing"].status == "warn"
    assert "amtool not found" in checks["alerts.routing"].reason
    assert "prometheus-alertmanager" in checks["alerts.routing"].reason
    assert checks["rules.valid"].status == "pass"


# -- units --------------------------------------------------------------------------------------


def test_teams_and_severities_are_required() -> None:
    art = _Artifacts(
        rules=[{"alert": "A", "expr": "x > 0", "labels": {"severity": "critical"}}],
        rules_text="",
        rules_error=None,
        dashboards={},
        dashboards_error=None,
        playbooks={},
        playbooks_error=None,
    )
    check = _check_teams(art)
    assert check.status == "fail"
    assert "alert A has no team label" in check.reason


def test_dashboards_need_an_owner_a_description_and_described_panels() -> None:
    board = {"title": "Billing", "panels": [{"title": "Rate", "description": ""}]}
    art = _Artifacts([], "", None, {"billing": board}, None, {}, None)
    check = _check_dashboards(art)
    assert check.status == "fail"
    text = " ".join([check.reason, *check.details])
    for problem in ("has no owner", "has no description", "panel 'Rate' has no description"):
        assert problem in text
    good = {
        "title": "Billing",
        "description": "Purpose: billing health. Owner: @billing-team.",
        "panels": [
            {"type": "row", "panels": [{"title": "Rate", "description": "Renewals per hour."}]}
        ],
    }
    assert (
        _check_dashboards(_Artifacts([], "", None, {"billing": good}, None, {}, None)).status
        == "pass"
    )


def test_verify_needs_a_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify"]) == 2
    assert "no module given" in capsys.readouterr().err
