"""At-rest checks in the generated artifacts: ``<Check>Stale`` and ``<Check>Failing`` pass
promtool and their generated tests prove they fire (and fail when a rule loses what makes it
sound); dashboards, playbooks and ``verify`` cover every check."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import invariantkit as ik
from invariantkit import billing
from invariantkit._catalog import Catalog
from invariantkit._verify import run_checks as verify_checklist
from invariantkit.alerts import (
    grafana_dashboards,
    playbooks,
    prometheus_rule_tests,
    prometheus_rules,
)
from support.catalogs import with_guarantees
from support.servers import run_promtool

RULES = "invariantkit-rules.yml"


def catalog_with_checks() -> Catalog:
    catalog = with_guarantees()
    sql = "SELECT 1 AS subscription_id"
    for invariant, name, every in (
        (billing.NO_DOUBLE_CHARGE, "double_charges", 3600),
        (billing.CANCELED_NEVER_CHARGED, "fast_check", 30),
    ):
        catalog.add(ik.Check(invariant, name=name, sql=sql, key="subscription_id", every=every))
    return catalog


def _promtool(tmp_path: Path, rules: str, tests: str) -> tuple[int, str]:
    (tmp_path / RULES).write_text(rules)
    tests_path = tmp_path / "tests.yml"
    tests_path.write_text(tests)
    checked = run_promtool("check", "rules", str(tmp_path / RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", str(tests_path), timeout=120)
    return tested.returncode, tested.stdout + tested.stderr


class TestRules:
    def test_rules_per_check(self) -> None:
        """Each check has Stale (absent series included) and Failing, with the invariant's team."""
        doc = yaml.safe_load(prometheus_rules(catalog_with_checks()))
        rules = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
        stale = rules["DoubleChargesStale"]
        assert "absent_over_time(invariant_check_last_run_timestamp_seconds" in stale["expr"]
        assert "> 7200" in stale["expr"]
        assert stale["labels"] == {"severity": "warning", "team": "billing"}
        assert stale["annotations"]["runbook_url"] == "playbooks/check-double-charges.md"
        failing = rules["DoubleChargesFailing"]
        assert 'outcome="error"' in failing["expr"]
        assert rules["FastCheckStale"]["for"] == "30s"

    @pytest.mark.slow
    def test_promtool_proves_they_fire(self, tmp_path: Path) -> None:
        """promtool: Stale fires 2x every after the last completed run and when the check never
        reported; Failing fires on the first failed run; all silent when healthy."""
        catalog = catalog_with_checks()
        tests = prometheus_rule_tests(catalog, rule_file=RULES)
        assert "DoubleChargesStale" in tests
        code, out = _promtool(tmp_path, prometheus_rules(catalog), tests)
        assert code == 0, out

    @pytest.mark.slow
    @pytest.mark.parametrize(
        ("broken", "why"),
        [
            ("absent_over_time(invariant_check_last_run_timestamp_seconds", "absent"),
            ("> 7200", "threshold"),
        ],
    )
    def test_generated_tests_catch_a_broken_rule(
        self, tmp_path: Path, broken: str, why: str
    ) -> None:
        """A Stale rule that loses its absent() branch or its threshold fails the tests."""
        catalog = catalog_with_checks()
        rules = prometheus_rules(catalog)
        assert broken in rules
        if why == "absent":
            rules = rules.replace(broken, "absent_over_time(nothing_at_all", 1)
        else:
            rules = rules.replace(broken, "> 720000", 1)
        code, out = _promtool(tmp_path, rules, prometheus_rule_tests(catalog, rule_file=RULES))
        assert code != 0
        assert "DoubleChargesStale" in out


class TestDashboardsPlaybooksVerify:
    def test_panels_and_playbooks(self) -> None:
        """The invariant dashboard has each check's panels, described; each check a playbook."""
        catalog = catalog_with_checks()
        board = grafana_dashboards(catalog)["billing-invariant-monitor"]
        titles = {p["title"]: p for p in board["panels"]}
        panel = titles["double_charges: violating entities"]
        assert "invariant_check_violating_entities" in panel["targets"][0]["expr"]
        assert "**What to do:** Any value" in panel["description"]
        assert "double_charges: since last completed run" in titles
        assert "At-rest check runs by outcome" in titles
        books = playbooks(catalog)
        text = books["check-double-charges.md"]
        assert "`DoubleChargesStale`" in text
        assert "`DoubleChargesFailing`" in text
        assert "check-double-charges.md" in books["README.md"]

    def test_verify_item(self) -> None:
        """verify: passes with checks alerted and runbooks; fails when the invariant of a check
        is not in the catalog (its findings would page nobody)."""
        catalog = catalog_with_checks()
        items = verify_checklist(catalog=catalog, amtool=False, promtool=False)
        (item,) = [i for i in items if i.id == "checks.at_rest"]
        assert item.status == "pass", item
        del catalog.invariants["NO_DOUBLE_CHARGE"]
        items = verify_checklist(catalog=catalog, amtool=False, promtool=False)
        (item,) = [i for i in items if i.id == "checks.at_rest"]
        assert item.status == "fail"
        assert "invariant NO_DOUBLE_CHARGE is not declared" in " ".join(
            [item.reason, *item.details]
        )

    def test_no_checks_no_item(self) -> None:
        """Without checks, verify adds no item."""
        items = verify_checklist(catalog=with_guarantees(), amtool=False, promtool=False)
        assert not [i for i in items if i.id == "checks.at_rest"]
