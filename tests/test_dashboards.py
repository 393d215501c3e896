"""The generated Grafana dashboards: the guide's three, with owner/purpose/updated and every
panel described, in Grafana's dashboard model (their queries run in test_alerts_e2e.py)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import invariantkit as ik
from invariantkit._catalog import Catalog, CronDecl
from invariantkit.alerts import grafana_dashboards, playbooks
from invariantkit.alerts._grafana import GRAFANA_VARIABLES, SCHEMA_VERSION, panel_queries
from support.catalogs import with_guarantees

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


def board_meta(board: dict[str, Any]) -> dict[str, str]:
    """The guide's owner, purpose and updated, read back from the fields Grafana keeps."""
    tags = dict(t.split(":", 1) for t in board["tags"] if ":" in t)
    return {
        "owner": "@" + tags["owner"],
        "purpose": board["description"].split(". Owner: ")[0],
        "updated": tags["updated"],
    }


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
            # A valid value: Grafana's default data source until the user picks one.
            assert var["current"] == {"selected": False, "text": "default", "value": "default"}

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
        """owner, purpose, updated: in the description, the tags and the header panel, fields
        Grafana keeps."""
        for board in boards.values():
            meta = board_meta(board)
            assert "invariantkit" not in board  # Grafana drops unknown keys on save
            assert meta["updated"] == "2024-01-15"
            for value in meta.values():
                assert value in board["description"]
            assert f"owner:{meta['owner'].lstrip('@')}" in board["tags"]
            header = board["panels"][0]
            assert header["type"] == "text"
            for value in meta.values():
                assert value in header["options"]["content"]
        assert board_meta(boards["billing-health-overview"])["owner"] == "@billing-team"

    def test_every_panel_is_described(self, boards: dict[str, dict[str, Any]]) -> None:
        """What it shows, what normal looks like, what to do, and a playbook link."""
        for board in boards.values():
            for panel in data_panels(board):
                description = panel["description"]
                positions = [description.index(s) for s in SECTIONS]
                assert positions == sorted(positions), panel["title"]
                assert re.search(r"\*\*Playbook:\*\* \[[^\]]+\]\([^)\s]+\)", description)
                assert "invariantkit" not in panel
                [link] = panel["links"]
                assert link["url"] in description

    def test_playbook_links_point_at_generated_playbooks(
        self, boards: dict[str, dict[str, Any]]
    ) -> None:
        """Every relative playbook link names a file the playbook generator writes."""
        books = playbooks(guide_catalog())
        for board in boards.values():
            for panel in data_panels(board):
                link = panel["links"][0]["url"]
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
        assert board_meta(board)["owner"] == "@billing-team"

    def test_no_cron_declared(self) -> None:
        """Cron Job Health says so instead of showing empty panels."""
        board = grafana_dashboards(Catalog(), updated="2024-01-15")["cron-job-health"]
        assert [p["title"] for p in board["panels"]] == [
            "About this dashboard",
            "No cron jobs declared",
        ]
        assert board_meta(board)["owner"] == "@platform-team"

    def test_options(self) -> None:
        """Owners, the date and the playbook base URL are configurable; a date object works."""
        boards = grafana_dashboards(
            guide_catalog(),
            owner="@payments",
            cron_owner="@sre",
            updated=dt.date(2025, 3, 1),
            runbook_base_url="https://runbooks.example.com/",
        )
        assert board_meta(boards["billing-invariant-monitor"]) == {
            "owner": "@payments",
            "purpose": board_meta(boards["billing-invariant-monitor"])["purpose"],
            "updated": "2025-03-01",
        }
        assert board_meta(boards["cron-job-health"])["owner"] == "@sre"
        panel = data_panels(boards["billing-invariant-monitor"])[0]
        assert panel["links"][0]["url"].startswith("https://runbooks.example.com/")

    def test_updated_defaults_to_today(self) -> None:
        """Without a date, the generation date."""
        board = grafana_dashboards(Catalog())["billing-health-overview"]
        assert board_meta(board)["updated"] == dt.date.today().isoformat()

    def test_bad_owner_fails_loudly(self) -> None:
        """An empty owner is rejected with the option's name."""
        with pytest.raises(ValueError, match="owner"):
            grafana_dashboards(Catalog(), owner=" ")


# -- Grafana's published dashboard schema -------------------------------------------------------

#: Where scripts/test.sh installs the pinned npm packages (@grafana/schema, typescript).
NPM_DIR = Path(
    os.environ.get("INVARIANTKIT_NPM_DIR", Path.home() / ".cache" / "invariantkit" / "npm")
)
PRELUDE = Path(__file__).parent / "support" / "grafana_schema_prelude.ts"


def _typecheck(
    tmp_path: Path, boards: dict[str, dict[str, Any]]
) -> subprocess.CompletedProcess[str]:
    """``tsc --noEmit --strict`` on a file assigning each board to Grafana's Dashboard type."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: scripts/test.sh installs nodejs and npm")
    tsc = NPM_DIR / "node_modules" / "typescript" / "bin" / "tsc"
    if not tsc.exists() or not (NPM_DIR / "node_modules" / "@grafana" / "schema").exists():
        pytest.fail(
            f"@grafana/schema and typescript are not installed in {NPM_DIR}: run "
            "`bash scripts/test.sh` (it installs the pinned versions) or set INVARIANTKIT_NPM_DIR",
            pytrace=False,
        )
    (tmp_path / "node_modules").symlink_to(NPM_DIR / "node_modules")
    source = PRELUDE.read_text()
    for name, board in boards.items():
        source += f"export const {name}: GrafanaDashboard = {json.dumps(board, indent=1)};\n"
    (tmp_path / "dashboards.ts").write_text(source)
    return subprocess.run(
        [
            node,
            str(tsc),
            "--noEmit",
            "--strict",
            "--module",
            "nodenext",
            "--moduleResolution",
            "nodenext",
            "--skipLibCheck",
            "dashboards.ts",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestGrafanaSchema:
    def test_every_dashboard_is_a_grafana_dashboard(
        self, boards: dict[str, dict[str, Any]], tmp_path: Path
    ) -> None:
        """Each generated dashboard type-checks against @grafana/schema's Dashboard; the same
        check rejects a custom key on the dashboard or a panel and an empty data source value."""
        board = boards["billing-invariant-monitor"]
        custom_key = {**copy.deepcopy(board), "invariantkit": {"owner": "@billing-team"}}
        panel_key = copy.deepcopy(board)
        panel_key["panels"][1]["invariantkit"] = {"what_it_shows": "x"}
        no_current = copy.deepcopy(board)
        no_current["templating"]["list"][0]["current"] = {}
        checked = {name.replace("-", "_"): b for name, b in boards.items()}
        bad = {"custom_key": custom_key, "panel_key": panel_key, "no_current": no_current}
        result = _typecheck(tmp_path, {**checked, **bad})
        errors = (result.stdout + result.stderr).strip().splitlines()
        lines = (tmp_path / "dashboards.ts").read_text().splitlines()
        starts = {
            n: next(i for i, text in enumerate(lines, 1) if f"const {n}:" in text)
            for n in {**checked, **bad}
        }

        def const_of(error: str) -> str:
            found = re.match(r"dashboards\.ts\((\d+),", error)
            assert found is not None, error
            line = int(found[1])
            return max((s, n) for n, s in starts.items() if s <= line)[1]

        assert result.returncode != 0
        assert {const_of(e) for e in errors if e.startswith("dashboards.ts(")} == set(bad), errors
