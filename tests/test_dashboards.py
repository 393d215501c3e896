"""The generated Grafana dashboards: the guide's three, with owner/purpose/updated and every
panel described, in Grafana's dashboard model (their queries run in test_alerts_e2e.py)."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest

import invariantkit as ik
from invariantkit._catalog import Catalog, CronDecl
from invariantkit.alerts import grafana_dashboards, playbooks
from invariantkit.alerts._grafana import GRAFANA_VARIABLES, SCHEMA_VERSION, panel_queries
from support.catalogs import with_guarantees

GUIDE_FIELDS = (
    "what_it_shows",
    "what_normal_looks_like",
    "what_action_to_take",
    "related_playbook",
)
SECTIONS = ("**What it shows:**", "**What normal looks like:**", "**What to do:**", "**Playbook:**")


def guide_catalog() -> Catalog:
    catalog = with_guarantees()
    catalog.add(
        ik.Invariant("LEDGER_BALANCED", type="ledger_imbalance", summary="Ledger out of balance")
    )
    catalog.add(CronDecl("subscription_renewal", every=86400, max_runtime=300, team="billing"))
    catalog.add(ik.Constraint("subscription_payment_events_idempotency_idx"))
    return catalog


@pytest.fixture
def boards() -> dict[str, dict[str, Any]]:
    return grafana_dashboards(guide_catalog(), updated="2024-01-15")


def data_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] not in ("row", "text")]


def titles(board: dict[str, Any]) -> list[str]:
    return [p["title"] for p in board["panels"]]


class TestGrafanaModel:
    """What Grafana needs to import them."""

    def test_the_guides_three_dashboards(self, boards: dict[str, dict[str, Any]]) -> None:
        """Billing Health Overview, Billing Invariant Monitor, Cron Job Health."""
        assert {key: b["title"] for key, b in boards.items()} == {
            "billing-health-overview": "Billing Health Overview",
            "billing-invariant-monitor": "Billing Invariant Monitor",
            "cron-job-health": "Cron Job Health",
        }
        assert len({b["uid"] for b in boards.values()}) == 3

    def test_dashboard_model(self, boards: dict[str, dict[str, Any]]) -> None:
        """Current schema version, a Prometheus data source variable, JSON round trip."""
        for board in boards.values():
            assert board["schemaVersion"] == SCHEMA_VERSION >= 39
            assert board["id"] is None
            assert all(len(uid) <= 40 for uid in [board["uid"]])
            [var] = board["templating"]["list"]
            assert (var["name"], var["type"], var["query"]) == (
                "datasource",
                "datasource",
                "prometheus",
            )
            assert json.loads(json.dumps(board)) == board

    def test_every_query_uses_the_datasource_variable(
        self, boards: dict[str, dict[str, Any]]
    ) -> None:
        """Panels and targets point at ${datasource}; queries use only Grafana's built-in
        interval variables."""
        for board in boards.values():
            for panel in data_panels(board):
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert panel["targets"], panel["title"]
                for target in panel["targets"]:
                    assert target["datasource"]["uid"] == "${datasource}"
            for _, expr in panel_queries(board):
                assert set(re.findall(r"\$\w+", expr)) <= set(GRAFANA_VARIABLES), expr

    def test_layout_fits_the_grid_without_overlaps(self, boards: dict[str, dict[str, Any]]) -> None:
        """Unique panel ids; every panel inside the 24 columns; no two panels overlap."""
        for board in boards.values():
            ids = [p["id"] for p in board["panels"]]
            assert len(ids) == len(set(ids))
            cells: set[tuple[int, int]] = set()
            for panel in board["panels"]:
                pos = panel["gridPos"]
                assert pos["x"] >= 0, panel["title"]
                assert pos["x"] + pos["w"] <= 24, panel["title"]
                area = {
                    (x, y)
                    for x in range(pos["x"], pos["x"] + pos["w"])
                    for y in range(pos["y"], pos["y"] + pos["h"])
                }
                assert not area & cells, f"{panel['title']} overlaps another panel"
                cells |= area


class TestGuideRequirements:
    """Dashboard Requirements: metadata and a description on every panel."""

    def test_metadata_where_grafana_shows_it(self, boards: dict[str, dict[str, Any]]) -> None:
        """owner, purpose, updated: in the description, the tags, the header panel and the
        documented ``invariantkit`` key."""
        for board in boards.values():
            meta = board["invariantkit"]
            assert set(meta) == {"owner", "purpose", "updated"}
            assert meta["updated"] == "2024-01-15"
            for value in meta.values():
                assert value in board["description"]
            assert f"owner:{meta['owner'].lstrip('@')}" in board["tags"]
            header = board["panels"][0]
            assert header["type"] == "text"
            for value in meta.values():
                assert value in header["options"]["content"]
        assert boards["billing-health-overview"]["invariantkit"]["owner"] == "@billing-team"

    def test_every_panel_is_described(self, boards: dict[str, dict[str, Any]]) -> None:
        """What it shows, what normal looks like, what to do, and a playbook link."""
        for board in boards.values():
            for panel in data_panels(board):
                description = panel["description"]
                positions = [description.index(s) for s in SECTIONS]
                assert positions == sorted(positions), panel["title"]
                assert re.search(r"\*\*Playbook:\*\* \[[^\]]+\]\([^)\s]+\)", description)
                fields = panel["invariantkit"]
                assert set(fields) == set(GUIDE_FIELDS)
                assert all(fields[f].strip() for f in GUIDE_FIELDS), panel["title"]
                assert fields["related_playbook"] in description

    def test_playbook_links_point_at_generated_playbooks(
        self, boards: dict[str, dict[str, Any]]
    ) -> None:
        """Every relative playbook link names a file the playbook generator writes."""
        books = playbooks(guide_catalog())
        for board in boards.values():
            for panel in data_panels(board):
                link = panel["invariantkit"]["related_playbook"]
                assert link.startswith("playbooks/"), link
                assert link.removeprefix("playbooks/") in books, link
            for link in board["links"]:
                assert link["url"].removeprefix("playbooks/") in books

    def test_billing_health_overview_panels(self, boards: dict[str, dict[str, Any]]) -> None:
        """Renewal success rate, failed renewals by reason, active subscriptions, MRR."""
        board = boards["billing-health-overview"]
        exprs = dict(panel_queries(board))
        assert {
            "Renewal success rate",
            "Failed renewals by reason",
            "Active subscriptions",
            "MRR",
        } <= set(titles(board))
        assert (
            "sum by (reason) (increase(billing_renewal_failures_total[1h]))"
            in exprs["Failed renewals by reason [A]"]
        )
        assert exprs["Active subscriptions [A]"] == "sum(billing_active_subscriptions)"
        assert "billing_mrr" in exprs["MRR [A]"]
        rate = exprs["Renewal success rate [A]"]
        assert 'event="subscription_renewal_success"' in rate
        assert 'event="subscription_renewal_failed"' in rate

    def test_invariant_monitor_has_a_should_be_zero_panel_per_invariant(
        self, boards: dict[str, dict[str, Any]]
    ) -> None:
        """The guide's three counts, the custom invariant, and the idempotent retry rate."""
        board = boards["billing-invariant-monitor"]
        names = titles(board)
        for title in (
            "Double charge count (should be 0)",
            "Canceled charge attempts (should be 0)",
            "Period advancement failures (should be 0)",
            "LEDGER_BALANCED violations (should be 0)",
            "Idempotent retry rate",
        ):
            assert title in names
        panel = next(
            p for p in board["panels"] if p["title"] == "Double charge count (should be 0)"
        )
        expr = panel["targets"][0]["expr"]
        assert 'invariant="NO_DOUBLE_CHARGE"' in expr
        assert 'test!="true"' in expr
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1] == {"color": "red", "value": 1}
        assert "NoDoubleChargeViolated" in panel["description"]

    def test_cron_job_health_has_the_guides_panels_per_cron(
        self, boards: dict[str, dict[str, Any]]
    ) -> None:
        """Last run, duration, status and processed per run, for each cron."""
        board = boards["cron-job-health"]
        rows = [p for p in board["panels"] if p["type"] == "row"]
        assert [r["title"] for r in rows] == ["subscription_renewal (every 24h, team billing)"]
        exprs = " ".join(e for _, e in panel_queries(board))
        for suffix in ("last_run_timestamp", "last_status", "duration_seconds", "processed"):
            assert f"cron_subscription_renewal_{suffix}" in exprs
        duration = next(p for p in board["panels"] if p["title"] == "Run duration")
        steps = duration["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1]["value"] == 300
        assert board["invariantkit"]["owner"] == "@billing-team"

    def test_no_cron_declared(self) -> None:
        """Cron Job Health says so instead of showing empty panels."""
        board = grafana_dashboards(Catalog(), updated="2024-01-15")["cron-job-health"]
        assert [p["title"] for p in board["panels"]] == [
            "About this dashboard",
            "No cron jobs declared",
        ]
        assert board["invariantkit"]["owner"] == "@platform-team"

    def test_options(self) -> None:
        """Owners, the date and the playbook base URL are configurable; a date object works."""
        boards = grafana_dashboards(
            guide_catalog(),
            owner="@payments",
            cron_owner="@sre",
            updated=dt.date(2025, 3, 1),
            runbook_base_url="https://runbooks.example.com/",
        )
        assert boards["billing-invariant-monitor"]["invariantkit"] == {
            "owner": "@payments",
            "purpose": boards["billing-invariant-monitor"]["invariantkit"]["purpose"],
            "updated": "2025-03-01",
        }
        assert boards["cron-job-health"]["invariantkit"]["owner"] == "@sre"
        panel = data_panels(boards["billing-invariant-monitor"])[0]
        assert panel["invariantkit"]["related_playbook"].startswith("https://runbooks.example.com/")

    def test_updated_defaults_to_today(self) -> None:
        """Without a date, the generation date."""
        board = grafana_dashboards(Catalog())["billing-health-overview"]
        assert board["invariantkit"]["updated"] == dt.date.today().isoformat()

    def test_bad_owner_fails_loudly(self) -> None:
        """An empty owner is rejected with the option's name."""
        with pytest.raises(ValueError, match="owner"):
            grafana_dashboards(Catalog(), owner=" ")
