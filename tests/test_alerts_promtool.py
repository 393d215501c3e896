"""The generated rules pass ``promtool check rules``, their generated unit tests pass
``promtool test rules``, and those tests fail when a rule loses what makes it sound."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import invariantkit as ik
from invariantkit import billing
from invariantkit._catalog import Catalog, CronDecl, IdempotentDecl
from invariantkit.alerts import alertmanager_config, prometheus_rule_tests, prometheus_rules
from support.catalogs import with_guarantees
from support.servers import run_amtool, run_promtool

pytestmark = pytest.mark.slow

RULES = "invariantkit-rules.yml"


def guide_catalog() -> Catalog:
    """The guide's three guarantees, one custom invariant and one cron (issue 6's "done
    when"), plus a constraint and an idempotent write."""
    catalog = with_guarantees()
    catalog.add(
        ik.Invariant(
            "REFUND_NOT_ABOVE_CHARGE",
            type="refund_above_charge",
            summary="A refund exceeded the charge it refunds",
        )
    )
    catalog.add(
        ik.monitor_cron("subscription_renewal", every=86400, max_runtime=300, team="billing").decl
    )
    catalog.add(ik.Constraint("subscription_payment_events_idempotency_idx"))
    catalog.add(IdempotentDecl("record_payment_event"))
    return catalog


def odd_catalog() -> Catalog:
    """Several teams, names and texts that need escaping, sub-second and weekly crons."""
    catalog = Catalog()
    catalog.add(billing.NO_DOUBLE_CHARGE)
    catalog.add(
        ik.Invariant(
            "LEDGER_BALANCED",
            type="ledger_imbalance",
            severity="warning",
            summary='Ledger {{ out }} of "balance" \\ or not',
            description="Debits != credits {{ $labels.invariant }}",
            team="ledger",
        )
    )
    catalog.add(
        ik.Invariant("TEST", type="probe", summary="A declared invariant named TEST", team="qa")
    )
    catalog.add(CronDecl("fast_sync", every=2.5, max_runtime=0.5, team="platform"))
    catalog.add(CronDecl("weekly_report", every=604800, max_runtime=3600, team="ledger"))
    catalog.add(ik.Constraint("public.payments$idx", team="ledger"))
    catalog.add(IdempotentDecl("ledger_write", team="ledger"))
    catalog.add(IdempotentDecl("record_payment_event"))
    return catalog


def write(tmp_path: Path, rules: str, tests: str) -> tuple[Path, Path]:
    rules_path = tmp_path / RULES
    tests_path = tmp_path / "invariantkit-rules.test.yml"
    rules_path.write_text(rules)
    tests_path.write_text(tests)
    return rules_path, tests_path


def check_and_test(tmp_path: Path, rules: str, tests: str) -> None:
    rules_path, tests_path = write(tmp_path, rules, tests)
    checked = run_promtool("check", "rules", str(rules_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", str(tests_path), timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_guide_rules_pass_promtool(tmp_path: Path) -> None:
    """The guide's module: check rules and the generated unit tests both pass."""
    catalog = guide_catalog()
    check_and_test(
        tmp_path, prometheus_rules(catalog), prometheus_rule_tests(catalog, rule_file=RULES)
    )


def test_odd_names_and_teams_pass_promtool(tmp_path: Path) -> None:
    """Escaped texts and names, one test rule per team, fractional and weekly crons, custom
    links and a spike minimum of 1."""
    catalog = odd_catalog()
    options = {
        "runbook_base_url": "https://runbooks.example.com/billing",
        "sentry_url": "https://acme.sentry.io/issues/?project=42",
        "default_team": "billing",
        "platform_team": "sre",
        "spike_min_count": 1,
    }
    rules = prometheus_rules(catalog, **options)  # type: ignore[arg-type]
    tests = prometheus_rule_tests(catalog, rule_file=RULES, **options)  # type: ignore[arg-type]
    check_and_test(tmp_path, rules, tests)


def _only(tests: str, prefix: str) -> str:
    """The test file with only the groups whose name starts with ``prefix``."""
    document = yaml.safe_load(tests)
    document["tests"] = [g for g in document["tests"] if g["name"].startswith(prefix)]
    assert document["tests"]
    return yaml.safe_dump(document, sort_keys=False)


def _mutate(rules: str, alert: str, change: Callable[[str], str]) -> str:
    document = yaml.safe_load(rules)
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                changed = change(rule["expr"])
                assert changed != rule["expr"]
                rule["expr"] = changed
    return yaml.safe_dump(document, sort_keys=False)


@pytest.mark.parametrize(
    ("what", "change", "failing_group"),
    [
        (
            "with increase() alone (the guide's expression)",
            lambda expr: expr.split("\nor\n")[0],
            "violation came before the first scrape",
        ),
        (
            "counting test-mode series",
            lambda expr: expr.replace(',test!="true"', ""),
            "test-mode violations never fire it",
        ),
        (
            "with a window too short to hold two scrapes",
            lambda expr: expr.replace("[5m]", "[30s]").replace("offset 5m", "offset 30s"),
            "first violation after a process start",
        ),
    ],
)
def test_generated_tests_catch_an_unsound_rule(
    tmp_path: Path, what: str, change: Callable[[str], str], failing_group: str
) -> None:
    """Break NoDoubleChargeViolated the way a hand-written rule often is: its generated
    tests fail, in the group that covers that case."""
    catalog = guide_catalog()
    rules = _mutate(prometheus_rules(catalog), "NoDoubleChargeViolated", change)
    tests = _only(prometheus_rule_tests(catalog, rule_file=RULES), "NoDoubleChargeViolated")
    _, tests_path = write(tmp_path, rules, tests)
    result = run_promtool("test", "rules", str(tests_path))
    assert result.returncode != 0, f"rule {what} still passed:\n{result.stdout}"
    assert failing_group in result.stdout + result.stderr


def test_alertmanager_config_passes_amtool(tmp_path: Path) -> None:
    """The example routing config is a valid Alertmanager config, and routes as promised."""
    catalog = guide_catalog()
    config = alertmanager_config(
        catalog,
        receivers={
            "billing": "http://127.0.0.1:9/billing",
            "platform": "http://127.0.0.1:9/platform",
        },
        test_receiver="http://127.0.0.1:9/test",
    )
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    checked = run_amtool("check-config", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for labels, receiver in (
        (["team=billing", "severity=critical"], "team-billing"),
        (["team=billing", "severity=test"], "invariantkit-test"),
        (["team=platform", "severity=warning"], "team-platform"),
        (["team=unknown", "severity=critical"], "invariantkit-unrouted"),
    ):
        routed = run_amtool("config", "routes", "test", f"--config.file={path}", *labels)
        assert routed.returncode == 0, routed.stdout + routed.stderr
        assert routed.stdout.strip() == receiver, (labels, routed.stdout)


def test_a_restarted_scheduler_does_not_page_while_its_last_run_is_recent(tmp_path: Path) -> None:
    """A scheduler inside a long-running service loses its gauges on restart: the Missing alert
    looks back over a window, so it stays silent until the last run is really too old."""
    catalog = Catalog()
    catalog.add(CronDecl("nightly_export", every=86400.0, max_runtime=600.0, team="billing"))
    (tmp_path / RULES).write_text(prometheus_rules(catalog))
    ts = "cron_nightly_export_last_run_timestamp"
    tests = {
        "rule_files": [RULES],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                # One run at t=0 reported for 10 minutes, then the process restarted: no samples.
                "input_series": [{"series": ts, "values": "0x10 _x60"}],
                "alert_rule_test": [
                    {"eval_time": "30m", "alertname": "NightlyExportCronMissing", "exp_alerts": []},
                    {"eval_time": "70m", "alertname": "NightlyExportCronMissing", "exp_alerts": []},
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = run_promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
