"""The generated Prometheus rules: one per declaration, the labels and annotations the guide
requires, names and label values escaped (promtool runs are in test_alerts_promtool.py)."""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import invariantkit as ik
from invariantkit._catalog import Catalog, CronDecl, IdempotentDecl
from invariantkit.alerts import _common as common
from invariantkit.alerts import alertmanager_config, prometheus_rules
from support.catalogs import with_guarantees


def guide_catalog() -> Catalog:
    """The guide's three guarantees, one custom invariant (another team), one cron, one
    constraint and one idempotent write."""
    catalog = with_guarantees()
    catalog.add(
        ik.Invariant(
            "LEDGER_BALANCED",
            type="ledger_imbalance",
            severity="warning",
            summary="Ledger out of balance",
            team="ledger",
        )
    )
    catalog.add(CronDecl("subscription_renewal", every=86400, max_runtime=300, team="billing"))
    catalog.add(ik.Constraint("subscription_payment_events_idempotency_idx"))
    catalog.add(IdempotentDecl("record_payment_event"))
    return catalog


def rules_of(text: str) -> dict[str, list[dict[str, Any]]]:
    """Alert name -> the rules with that name (test alerts and retries: one per team)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for group in yaml.safe_load(text)["groups"]:
        for rule in group["rules"]:
            out.setdefault(rule["alert"], []).append({**rule, "group": group["name"]})
    return out


class TestRuleSet:
    """What one catalog generates."""

    def test_every_declaration_has_its_rules(self) -> None:
        """Each invariant, cron and constraint gets its rules, plus the fixed ones."""
        rules = rules_of(prometheus_rules(guide_catalog()))
        assert set(rules) == {
            "NoDoubleChargeViolated",
            "CanceledNeverChargedViolated",
            "PeriodMustAdvanceViolated",
            "LedgerBalancedViolated",
            "ExcessiveIdempotentRetries",
            "RenewalFailureSpike",
            "CancellationSpike",
            "SubscriptionRenewalCronMissing",
            "SubscriptionRenewalCronFailed",
            "SubscriptionRenewalCronSlow",
            "SubscriptionPaymentEventsIdempotencyIdxConstraintMissing",
            "InvariantkitSinkErrors",
            "InvariantkitSignalsDropped",
            "InvariantTestAlert",
        }

    def test_every_rule_has_the_required_labels_and_annotations(self) -> None:
        """severity and team labels; summary, description and runbook_url annotations."""
        for name, rules in rules_of(prometheus_rules(guide_catalog())).items():
            for rule in rules:
                assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, name
                assert rule["labels"]["severity"] in {"critical", "error", "warning", "test"}
                assert rule["labels"]["team"], name
                for key in ("summary", "description", "runbook_url"):
                    assert rule["annotations"][key].strip(), (name, key)

    def test_invariant_rules_fire_at_once_exclude_test_series_and_link_sentry(self) -> None:
        """Invariant rules: for 0m, their own series only, never test="true"."""
        rules = rules_of(prometheus_rules(guide_catalog()))
        rule = rules["NoDoubleChargeViolated"][0]
        assert rule["for"] == "0m"
        assert rule["labels"] == {"severity": "critical", "team": "billing"}
        assert 'invariant="NO_DOUBLE_CHARGE"' in rule["expr"]
        assert 'test!="true"' in rule["expr"]
        assert rule["annotations"]["sentry_url"] == (
            "https://sentry.io/issues/?query=invariant%3ANO_DOUBLE_CHARGE"
        )
        assert rule["annotations"]["runbook_url"] == "playbooks/no-double-charge.md"
        assert rules["PeriodMustAdvanceViolated"][0]["labels"]["severity"] == "error"
        assert rules["LedgerBalancedViolated"][0]["labels"]["team"] == "ledger"

    def test_invariant_expression_sees_series_that_appear_above_zero(self) -> None:
        """increase() misses a counter whose first scrape is already 1; the rule adds a
        clause for series that did not exist a window ago."""
        expr = rules_of(prometheus_rules(guide_catalog()))["NoDoubleChargeViolated"][0]["expr"]
        assert "increase(billing_invariant_violation_total{" in expr
        assert re.search(r"unless billing_invariant_violation_total\{[^}]*\} offset 5m", expr)

    def test_test_alerts_route_per_team_and_never_page(self) -> None:
        """One InvariantTestAlert per team with severity test; the default team takes the
        rest (undeclared invariants included)."""
        tests = rules_of(prometheus_rules(guide_catalog()))["InvariantTestAlert"]
        by_team = {rule["labels"]["team"]: rule for rule in tests}
        assert set(by_team) == {"billing", "ledger"}
        assert {rule["labels"]["severity"] for rule in tests} == {"test"}
        assert 'invariant=~"LEDGER_BALANCED"' in by_team["ledger"]["expr"]
        assert 'invariant!~"LEDGER_BALANCED"' in by_team["billing"]["expr"]
        assert all('test="true"' in rule["expr"] for rule in tests)

    def test_cron_rules_follow_the_guide(self) -> None:
        """A daily cron: missing after 25 h (the guide's 90000 s) for 5m, failed at once,
        slow above max_runtime."""
        rules = rules_of(prometheus_rules(guide_catalog()))
        missing = rules["SubscriptionRenewalCronMissing"][0]
        # The guide's absent() / 90000 s, over a 26 h window so a restarted scheduler's lost
        # gauge does not page while its last run is still recent.
        assert missing["expr"].split() == [
            "absent_over_time(cron_subscription_renewal_last_run_timestamp[93600s])",
            "or",
            "(time()",
            "-",
            "max(max_over_time(cron_subscription_renewal_last_run_timestamp[93600s])))",
            ">",
            "90000",
        ]
        assert missing["for"] == "5m"
        assert rules["SubscriptionRenewalCronFailed"][0]["expr"].strip() == (
            "cron_subscription_renewal_last_status != 1"
        )
        assert rules["SubscriptionRenewalCronFailed"][0]["labels"]["severity"] == "critical"
        assert rules["SubscriptionRenewalCronSlow"][0]["expr"].strip() == (
            "cron_subscription_renewal_duration_seconds > 300"
        )

    def test_constraint_rule_follows_the_guide(self) -> None:
        """pg_constraint_exists != 1 for 5m, critical, team platform."""
        rule = rules_of(prometheus_rules(guide_catalog()))[
            "SubscriptionPaymentEventsIdempotencyIdxConstraintMissing"
        ][0]
        assert (
            'pg_constraint_exists{constraint="subscription_payment_events_idempotency_idx"}'
            in (rule["expr"])
        )
        assert rule["for"] == "5m"
        assert rule["labels"] == {"severity": "critical", "team": "platform"}

    def test_spike_rules_compare_with_the_7_day_average(self) -> None:
        """Issue 11's spike rules watch our counters."""
        rules = rules_of(prometheus_rules(guide_catalog()))
        renewal = rules["RenewalFailureSpike"][0]["expr"]
        assert "increase(billing_renewal_failures_total[24h])" in renewal
        assert "increase(billing_renewal_failures_total[7d] offset 24h)" in renewal
        cancel = rules["CancellationSpike"][0]["expr"]
        assert 'billing_subscription_events_total{event="subscription_canceled"}' in cancel
        assert ">= 3" in cancel

    def test_options_change_links_and_teams(self) -> None:
        """The runbook base URL, the Sentry URL and the platform team are configurable."""
        text = prometheus_rules(
            guide_catalog(),
            runbook_base_url="https://docs.example.com/runbooks",
            sentry_url="https://acme.sentry.io/issues/?project=4",
            platform_team="sre",
        )
        rules = rules_of(text)
        rule = rules["NoDoubleChargeViolated"][0]
        assert rule["annotations"]["runbook_url"] == (
            "https://docs.example.com/runbooks/no-double-charge.md"
        )
        assert rule["annotations"]["sentry_url"] == (
            "https://acme.sentry.io/issues/?project=4&query=invariant%3ANO_DOUBLE_CHARGE"
        )
        assert rules["InvariantkitSinkErrors"][0]["labels"]["team"] == "sre"

    def test_declared_runbook_url_wins(self) -> None:
        """An invariant's own runbook_url replaces the generated playbook's."""
        catalog = Catalog()
        catalog.add(
            ik.Invariant(
                "REFUND_NOT_ABOVE_CHARGE",
                type="refund_above_charge",
                summary="A refund exceeded its charge",
                runbook_url="https://wiki.example.com/refunds",
            )
        )
        rule = rules_of(prometheus_rules(catalog))["RefundNotAboveChargeViolated"][0]
        assert rule["annotations"]["runbook_url"] == "https://wiki.example.com/refunds"

    def test_default_catalog_is_the_process_wide_one(self) -> None:
        """Without a catalog, what was declared in the process is used."""
        ik.Invariant("SOMETHING_ELSE_HOLDS", type="something_else", summary="It broke")
        assert "SomethingElseHoldsViolated" in rules_of(prometheus_rules())

    def test_output_is_stable(self) -> None:
        """Same declarations, same file (sorted by name, not by import order)."""
        one = guide_catalog()
        two = Catalog()
        for decl in reversed(list(one)):
            two.add(decl)
        assert prometheus_rules(one) == prometheus_rules(two)


#: Identifier characters and every RE2 metacharacter.
NAME_CHARS = "aZ09_-.$+*?()|[]{}^\\/ "


class TestEscaping:
    """User text and names never break the rule file."""

    def test_template_braces_in_summaries_stay_literal(self) -> None:
        """A '{{' in a summary is written as a template literal, not a template action."""
        catalog = Catalog()
        catalog.add(
            ik.Invariant(
                "BRACES_OK", type="braces", summary="Saw {{ $value }} and 'quotes' \"too\""
            )
        )
        rule = rules_of(prometheus_rules(catalog))["BracesOkViolated"][0]
        assert rule["annotations"]["summary"] == ('Saw {{ "{{" }} $value }} and \'quotes\' "too"')
        assert common.render_template(rule["annotations"]["summary"], {}) == (
            "Saw {{ $value }} and 'quotes' \"too\""
        )

    @given(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
    )
    def test_promql_string_round_trips(self, value: str) -> None:
        """A label value in a matcher decodes back to itself (Go and Python agree on these
        escapes)."""
        assert ast.literal_eval(common.promql_string(value)) == value

    @given(
        st.lists(st.text(NAME_CHARS, min_size=1, max_size=12), min_size=1, max_size=5, unique=True),
        st.text(NAME_CHARS, max_size=12),
    )
    def test_promql_regex_matches_exactly_its_values(self, values: list[str], other: str) -> None:
        """The alternation of escaped names matches each name and nothing else (anchored, as
        PromQL anchors regex matchers)."""
        pattern = ast.literal_eval(common.promql_regex(values))
        for value in values:
            assert re.fullmatch(pattern, value, re.DOTALL)
        assert (re.fullmatch(pattern, other, re.DOTALL) is not None) == (other in values)

    def test_clashing_alert_names_fail_loudly(self) -> None:
        """Two declarations that would make the same alert name are rejected, naming both."""
        catalog = Catalog()
        catalog.add(CronDecl("nightly_export", every=86400, max_runtime=60))
        catalog.add(CronDecl("nightly__export", every=86400, max_runtime=60))
        with pytest.raises(
            ValueError, match=r"nightly__export.*nightly_export|nightly_export.*nightly__export"
        ):
            prometheus_rules(catalog)

    @pytest.mark.parametrize(
        ("decl", "message"),
        [
            (
                CronDecl("nightly-export", every=60, max_runtime=5),
                "name must be usable in a metric",
            ),
            (CronDecl("nightly", every=0, max_runtime=5), "every=0 must be positive"),
            (CronDecl("nightly", every=60, max_runtime=5, team='bad"team'), "team="),
        ],
    )
    def test_bad_cron_declarations_fail_loudly(self, decl: CronDecl, message: str) -> None:
        """A cron whose name cannot be a metric name, or with a bad schedule or team."""
        catalog = Catalog()
        catalog.add(decl)
        with pytest.raises(ValueError, match=re.escape(message)):
            prometheus_rules(catalog)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"runbook_base_url": "has space/"}, "runbook_base_url"),
            ({"sentry_url": "ftp://sentry"}, "sentry_url"),
            ({"platform_team": ""}, "platform_team"),
            ({"spike_min_count": 0}, "spike_min_count"),
        ],
    )
    def test_bad_options_fail_loudly(self, kwargs: dict[str, Any], message: str) -> None:
        """Options are checked, with the option's name in the message."""
        with pytest.raises(ValueError, match=message):
            prometheus_rules(Catalog(), **kwargs)

    def test_catalog_must_be_a_catalog(self) -> None:
        """Passing something else is a TypeError, not an AttributeError deep inside."""
        with pytest.raises(TypeError, match="Catalog"):
            prometheus_rules({"invariants": {}})  # type: ignore[arg-type]


class TestHelpers:
    """Durations and names."""

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [(0, "0s"), (2, "2s"), (2.5, "2500ms"), (300, "5m"), (330, "5m30s"), (90000, "25h")],
    )
    def test_duration(self, seconds: float, text: str) -> None:
        """Prometheus durations, compact."""
        assert common.duration(seconds) == text

    @pytest.mark.parametrize(
        ("every", "after"), [(86400, 90000), (3600, 3960), (60, 120), (2, 4), (604800, 608400)]
    )
    def test_cron_missing_after(self, every: float, after: float) -> None:
        """every plus a tenth of it, at least min(every, 1 minute), at most 1 hour."""
        assert common.cron_missing_after(CronDecl("job", every=every, max_runtime=1)) == after

    def test_cron_margin_matches_sentry_crons(self) -> None:
        """The Missing alert and Sentry's check-in margin agree for every interval."""
        from invariantkit.sinks._sentry_crons import checkin_margin_seconds

        for every in (2, 30, 60, 599, 600, 3600, 86400, 604800):
            decl = CronDecl("job", every=every, max_runtime=1)
            assert common.cron_missing_after(decl) == every + checkin_margin_seconds(every)

    @pytest.mark.parametrize(
        ("name", "camel"),
        [
            ("NO_DOUBLE_CHARGE", "NoDoubleCharge"),
            ("subscription_renewal", "SubscriptionRenewal"),
            ("_1idx", "X1idx"),
            ("public.idx$2", "PublicIdx2"),
        ],
    )
    def test_camel(self, name: str, camel: str) -> None:
        """Alert names always start with a letter."""
        assert common.camel(name) == camel


class TestAlertmanagerConfig:
    """The example routing config."""

    def test_routes_by_team_with_a_test_route_first(self) -> None:
        """severity=test is matched first and stops; then one route per team."""
        config = alertmanager_config(
            guide_catalog(),
            receivers={"billing": "http://127.0.0.1:9/billing"},
            test_receiver="http://127.0.0.1:9/test",
        )
        routes = config["route"]["routes"]
        assert routes[0] == {
            "receiver": "invariantkit-test",
            "matchers": ['severity="test"'],
            "continue": False,
        }
        assert [r["matchers"] for r in routes[1:]] == [
            ['team="billing"'],
            ['team="ledger"'],
            ['team="platform"'],
        ]
        receivers = {r["name"]: r for r in config["receivers"]}
        assert (
            receivers["team-billing"]["webhook_configs"][0]["url"] == "http://127.0.0.1:9/billing"
        )
        assert receivers["team-ledger"] == {"name": "team-ledger"}

    def test_receiver_bodies_pass_through(self) -> None:
        """A mapping is used as the receiver's body (Slack, PagerDuty...)."""
        body = {"slack_configs": [{"channel": "#billing-alerts", "api_url": "https://hooks"}]}
        config = alertmanager_config(Catalog(), receivers={"billing": body})
        receivers = {r["name"]: r for r in config["receivers"]}
        assert receivers["team-billing"] == {"name": "team-billing", **body}

    def test_bad_receivers_fail_loudly(self) -> None:
        """Receivers must be URLs or mappings."""
        with pytest.raises(ValueError, match="webhook URL"):
            alertmanager_config(Catalog(), receivers={"billing": "not a url"})
        with pytest.raises(ValueError, match="group_wait"):
            alertmanager_config(Catalog(), group_wait="soon")
