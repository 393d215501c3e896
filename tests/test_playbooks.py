"""Generated playbooks: one per invariant, cron and constraint (and per alert without a
declaration), in the guide's structure, and every rule's runbook_url pointing at one."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import invariantkit as ik
from invariantkit._catalog import Catalog, CronDecl, IdempotentDecl
from invariantkit.alerts import playbooks, prometheus_rules
from support.catalogs import with_guarantees

SECTIONS = (
    "## 1. Immediate (< 5 min)",
    "## 2. Investigation (< 30 min)",
    "## 3. Mitigation",
    "## 4. Follow-up",
)


def guide_catalog() -> Catalog:
    catalog = with_guarantees()
    catalog.add(
        ik.Invariant(
            "REFUND_NOT_ABOVE_CHARGE",
            type="refund_above_charge",
            severity="error",
            summary="A refund exceeded the charge it refunds",
            description="The refunded amount is larger than the original charge.",
            team="payments",
        )
    )
    catalog.add(CronDecl("subscription_renewal", every=86400, max_runtime=300, team="billing"))
    catalog.add(CronDecl("ledger_export", every=3600, max_runtime=120, team="ledger"))
    catalog.add(ik.Constraint("subscription_payment_events_idempotency_idx"))
    catalog.add(IdempotentDecl("record_payment_event"))
    return catalog


def test_one_playbook_per_declaration_and_per_other_alert() -> None:
    """Invariants, crons, constraints, then the alerts that belong to no declaration."""
    assert list(playbooks(guide_catalog())) == [
        "canceled-never-charged.md",
        "no-double-charge.md",
        "period-must-advance.md",
        "refund-not-above-charge.md",
        "cron-ledger-export.md",
        "cron-subscription-renewal.md",
        "constraint-subscription-payment-events-idempotency-idx.md",
        "idempotent-retries.md",
        "invariantkit-sinks.md",
        "renewal-failure-spike.md",
        "cancellation-spike.md",
        "test-alert.md",
        "README.md",
    ]


def test_every_playbook_follows_the_guides_structure() -> None:
    """A title, a severity, then Immediate, Investigation, Mitigation and Follow-up, each
    with at least one step."""
    for name, text in playbooks(guide_catalog()).items():
        if name == "README.md":
            continue
        assert text.startswith("# Playbook: "), name
        assert "**Severity:** " in text, name
        positions = [text.index(section) for section in SECTIONS]
        assert positions == sorted(positions), name
        for section in SECTIONS:
            body = text.split(section, 1)[1].lstrip("\n")
            assert body.startswith("- "), (name, section)


def test_double_charge_is_the_guides_playbook() -> None:
    """The guide's Double Charge Detected playbook, with the invariant's Sentry search."""
    text = playbooks(guide_catalog())["no-double-charge.md"]
    for step in (
        "# Playbook: Double Charge Detected",
        "**Severity:** CRITICAL - Customer impact, potential refund needed",
        "- Acknowledge alert",
        "- Identify affected subscription(s)",
        "- Pull payment events from DB for affected subscription",
        "Identify if idempotency constraint was bypassed (how?)",
        "- If customer was charged twice: Initiate refund",
        "- If cron bug: Disable cron, deploy fix",
        "- If constraint missing: Restore constraint immediately",
        "- Root cause analysis",
        "- Update guarantee hierarchy if needed",
        "https://sentry.io/issues/?query=invariant%3ANO_DOUBLE_CHARGE",
        "`NoDoubleChargeViolated`",
    ):
        assert step in text


def test_renewal_cron_is_the_guides_playbook() -> None:
    """The guide's Renewal Cron Failed playbook, covering its three alerts."""
    text = playbooks(guide_catalog())["cron-subscription-renewal.md"]
    for step in (
        "# Playbook: Renewal Cron Failed",
        "**Severity:** HIGH - Subscriptions won't renew, revenue impact",
        "- Check Sentry for exception",
        "- Check Grafana logs for cron output",
        "- Was it a transient error (Base Pay down)?",
        "- If transient: Wait and monitor next run",
        "- If bug: Fix and manually trigger renewal for missed subscriptions",
        "- If Base Pay down: Wait for recovery, then catch up",
        "`SubscriptionRenewalCronMissing`",
        "`SubscriptionRenewalCronFailed`",
        "`SubscriptionRenewalCronSlow`",
        "every 24h, max runtime 5m",
    ):
        assert step in text
    assert "Base Pay" not in playbooks(guide_catalog())["cron-ledger-export.md"]


def test_custom_invariant_playbook_uses_its_declaration() -> None:
    """Severity, team, description and Sentry search come from the declaration."""
    text = playbooks(guide_catalog())["refund-not-above-charge.md"]
    assert text.startswith("# Playbook: REFUND_NOT_ABOVE_CHARGE violated")
    assert "**Severity:** HIGH" in text
    assert "team `payments`" in text
    assert "The refunded amount is larger than the original charge." in text
    assert "invariant%3AREFUND_NOT_ABOVE_CHARGE" in text
    assert 's.assert_violation("REFUND_NOT_ABOVE_CHARGE")' in text


def test_every_rules_default_runbook_is_a_generated_playbook() -> None:
    """runbook_url defaults to the generated playbook: each one exists and names its alert."""
    catalog = guide_catalog()
    books = playbooks(catalog)
    document = yaml.safe_load(prometheus_rules(catalog))
    for group in document["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"]["runbook_url"]
            assert url.startswith("playbooks/"), url
            book = books[url.removeprefix("playbooks/")]
            assert f"`{rule['alert']}`" in book, (rule["alert"], url)


def test_index_links_every_playbook() -> None:
    """README.md lists every playbook with its alerts; links resolve."""
    books = playbooks(guide_catalog())
    index = books["README.md"]
    links = re.findall(r"\]\(([^)]+)\)", index)
    assert sorted(links) == sorted(n for n in books if n != "README.md")
    assert "`ExcessiveIdempotentRetries`" in index


def test_written_out_they_are_what_the_rules_point_at(tmp_path: Path) -> None:
    """Written to a directory (what `invariantkit playbooks -o` does), the rules' runbook
    URLs under that base resolve to files."""
    catalog = guide_catalog()
    base = tmp_path / "runbooks"
    base.mkdir()
    for name, text in playbooks(catalog).items():
        (base / name).write_text(text)
    document = yaml.safe_load(prometheus_rules(catalog, runbook_base_url=f"{base}/"))
    for group in document["groups"]:
        for rule in group["rules"]:
            assert Path(rule["annotations"]["runbook_url"]).is_file()


def test_deterministic() -> None:
    """Same declarations, same text (the CLI compares committed playbooks with them)."""
    assert playbooks(guide_catalog()) == playbooks(guide_catalog())


def test_playbooks_name_the_teams_the_rules_were_generated_with() -> None:
    """Given the teams passed to prometheus_rules(), the playbooks name the same owners."""
    books = playbooks(with_guarantees(), default_team="money", platform_team="sre")
    assert "(warning, team `money`)" in books["renewal-failure-spike.md"]
    assert "(warning, team `sre`)" in books["invariantkit-sinks.md"]
    assert "team `billing`" not in books["renewal-failure-spike.md"]
