"""The demo: every seeded fault caught by every backend with one id, and the alerts it fires."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invariantkit._demo import run_demo
from invariantkit._demo._promql import (
    PromQLError,
    Rule,
    evaluate_rule,
    metric_names,
    parse,
    parse_duration,
    rules_from_yaml,
)
from invariantkit._demo._report import BACKENDS, DemoReport
from invariantkit._demo._timeline import Timeline, key
from support.servers import free_port, run_promtool, wait_until

SMALL = {"subscriptions": 30, "days": 10, "seed": 3}
FAULT_KEYS = [
    "retry_storm",
    "double_charge",
    "canceled_charge",
    "period_not_advanced",
    "cron_failure",
    "index_dropped",
    "backdoor_write",
]
EXPECTED_ALERTS = {
    "retry_storm": "ExcessiveIdempotentRetries",
    "double_charge": "NoDoubleChargeViolated",
    "canceled_charge": "CanceledNeverChargedViolated",
    "period_not_advanced": "PeriodMustAdvanceViolated",
    "cron_failure": "SubscriptionRenewalCronFailed",
    "index_dropped": "SubscriptionPaymentEventsIdempotencyIdxConstraintMissing",
    "backdoor_write": "CanceledNeverChargedViolated",
}
# Backends that must stay silent for a fault, by design.
SILENT = {("retry_storm", "sentry"), ("retry_storm", "posthog"), ("index_dropped", "posthog")}


@pytest.fixture(scope="module")
def report() -> DemoReport:
    """One small in-process run shared by the read-only tests below."""
    return run_demo(**SMALL, environ={})


def _fault(report: DemoReport, key_: str) -> Any:
    return next(f for f in report.faults if f.run.spec.key == key_)


class TestInProcess:
    def test_every_seeded_fault_is_caught_by_every_backend(self, report: DemoReport) -> None:
        """All seven faults ran, and every (fault, backend) cell did what the design says."""
        assert [f.run.spec.key for f in report.faults] == FAULT_KEYS
        for fault in report.faults:
            for backend in BACKENDS:
                cell = fault.cells[backend]
                assert cell.caught, (fault.run.spec.key, backend, cell.detail)
                assert cell.expected == ((fault.run.spec.key, backend) not in SILENT)
        assert report.ok

    def test_each_fault_has_one_id_in_every_backend_that_saw_it(self, report: DemoReport) -> None:
        """The fault's trace id is 32 hex and every backend that received it carries it."""
        for fault in report.faults:
            assert fault.run.trace_id is not None
            assert len(fault.run.trace_id) == 32
            int(fault.run.trace_id, 16)
            for backend, cell in fault.cells.items():
                if cell.expected and cell.correlated is not None:
                    assert cell.correlated, (fault.run.spec.key, backend)

    def test_violations_carry_the_user_and_the_exemplar(self, report: DemoReport) -> None:
        """A violation's Sentry event, PostHog event and log line name its user; the counter's
        exemplar is its trace id."""
        for key_ in ("double_charge", "canceled_charge", "period_not_advanced"):
            fault = _fault(report, key_)
            assert fault.run.user_id is not None
            assert fault.run.user_id.startswith("user_")
            assert "exemplar = trace id" in fault.cells["prometheus"].detail

    def test_each_fault_fires_its_generated_alert(self, report: DemoReport) -> None:
        """Evaluated on the simulated timeline, the generated rules fire one alert per fault."""
        assert report.rules_error is None
        for key_, alert in EXPECTED_ALERTS.items():
            assert alert in _fault(report, key_).alerts
        firing = {a.rule.alert for a in report.alerts if a.fires}
        assert "InvariantTestAlert" not in firing
        assert "InvariantkitSinkErrors" not in firing

    def test_the_backdoor_write_is_caught_at_rest_with_the_writers_trace(
        self, report: DemoReport
    ) -> None:
        """Only the at-rest check sees the row the support script wrote, and its violation
        carries the script's trace id."""
        fault = _fault(report, "backdoor_write")
        (writer,) = [
            r
            for r in fault.run.records
            if r.kind == "operation" and r.name == "support_charge_backfill"
        ]
        (violation,) = [r for r in fault.run.records if r.kind == "violation"]
        assert violation.attributes["check"] == "charges_on_canceled"
        assert violation.attributes["writer_trace_id"] == writer.trace_id
        assert violation.trace_id != writer.trace_id  # reported from the check's own run
        assert writer.trace_id in fault.run.detail

    def test_the_retry_storm_never_reaches_sentry(self, report: DemoReport) -> None:
        """Expected retries are counted and logged, never sent to Sentry."""
        storm = _fault(report, "retry_storm")
        assert storm.cells["sentry"].count == 0
        assert storm.cells["prometheus"].count == report.sim.stats["idempotent_retries"] > 6000

    def test_json_is_machine_readable(self, report: DemoReport) -> None:
        data = json.loads(report.to_json())
        assert data["ok"] is True
        assert [f["key"] for f in data["faults"]] == FAULT_KEYS
        assert all(set(f["backends"]) == set(BACKENDS) for f in data["faults"])
        fired = {a["alert"] for a in data["alerts"] if a["fires"]}
        assert set(EXPECTED_ALERTS.values()) <= fired


def test_the_same_seed_gives_the_same_run() -> None:
    """Counts, days and trace ids repeat with the seed; another seed changes them."""
    first = run_demo(subscriptions=20, days=8, seed=11, environ={}).as_dict()
    second = run_demo(subscriptions=20, days=8, seed=11, environ={}).as_dict()
    other = run_demo(subscriptions=20, days=8, seed=12, environ={}).as_dict()

    def shape(data: dict[str, Any]) -> list[Any]:
        return [(f["key"], f["day"], f["trace_id"], f["user_id"]) for f in data["faults"]]

    assert shape(first) == shape(second)
    assert first["stats"] == second["stats"]
    assert [f[2] for f in shape(first)] != [f[2] for f in shape(other)]


def test_a_missing_alert_rule_fails_the_run() -> None:
    """A rule file without the double-charge rule: that fault is not caught, the run fails."""
    from invariantkit._demo import generated_rules

    text, error = generated_rules()
    assert error is None
    assert text is not None
    data = yaml.safe_load(text)
    for group in data["groups"]:
        group["rules"] = [r for r in group["rules"] if r.get("alert") != "NoDoubleChargeViolated"]
    report = run_demo(subscriptions=20, days=8, seed=5, environ={}, rules=yaml.safe_dump(data))
    assert not report.ok
    assert not _fault(report, "double_charge").caught
    assert _fault(report, "canceled_charge").caught


def test_real_backends_receive_each_fault_with_its_id(
    sentry_receiver: Any, posthog_receiver: Any, otlp_receiver: Any, tmp_path: Path
) -> None:
    """With SENTRY_DSN, POSTHOG_* and OTEL_EXPORTER_OTLP_ENDPOINT set, the same ids arrive at
    real HTTP endpoints on 127.0.0.1 (and a log file)."""
    log_file = tmp_path / "demo.jsonl"
    env = {
        "SENTRY_DSN": sentry_receiver.dsn,
        "POSTHOG_PROJECT_API_KEY": "phc_demo_test",
        "POSTHOG_HOST": posthog_receiver.host,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
    }
    report = run_demo(subscriptions=20, days=8, seed=2, environ=env, log_file=str(log_file))
    assert report.ok
    assert report.destinations["Sentry"].startswith("http://127.0.0.1:")
    assert "public" not in json.dumps(report.as_dict())  # the DSN's key is never printed
    double = _fault(report, "double_charge").run.trace_id
    events = sentry_receiver.wait_for(1)
    assert any(
        e.get("message") == "NO_DOUBLE_CHARGE" and e["contexts"]["trace"]["trace_id"] == double
        for e in events
    )
    violated = [e for e in posthog_receiver.events if e.get("event") == "invariant_violated"]
    assert double in {e["properties"]["trace_id"] for e in violated}
    assert double in {s["trace_id"] for s in otlp_receiver.spans}
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(
        line.get("trace_id") == double and line.get("event") == "invariant.violated"
        for line in lines
    )
    assert "spans exported, 0 failed" in report.delivery["trace"]


@pytest.mark.slow
def test_serve_fires_the_alerts_in_a_real_prometheus_routed_by_team(
    prometheus_factory: Any, alertmanager_factory: Any, webhook_receiver: Any, tmp_path: Path
) -> None:
    """`demo --serve`: a real Prometheus scraping it fires the generated alerts, and a real
    Alertmanager routes them by team."""
    from invariantkit._demo import generated_rules

    rules, error = generated_rules()
    assert rules is not None, error
    port = free_port()
    am = alertmanager_factory(
        {
            "route": {
                "receiver": "nobody",
                "group_by": ["alertname", "team"],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "1h",
                "routes": [{"receiver": "billing", "matchers": ['team="billing"']}],
            },
            "receivers": [
                {"name": "nobody"},
                {"name": "billing", "webhook_configs": [{"url": webhook_receiver.url}]},
            ],
        }
    )
    prometheus_factory(
        rule_files={"invariantkit-rules.yml": rules},
        scrape_targets=[f"127.0.0.1:{port}"],
        alertmanagers=[am.address],
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "invariantkit.cli",
            "demo",
            "--serve",
            str(port),
            "-n",
            "20",
            "-d",
            "8",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    stderr: list[str] = []
    reader = threading.Thread(
        target=lambda: stderr.extend(iter(proc.stderr.readline, "")), daemon=True
    )  # type: ignore[union-attr]
    reader.start()
    try:
        wait_until(
            lambda: any("Still serving" in line for line in stderr) or proc.poll() is not None,
            120.0,
            message="the demo finished its run",
        )
        assert proc.poll() is None, "".join(stderr)
        wanted = {
            "NoDoubleChargeViolated",
            "CanceledNeverChargedViolated",
            "PeriodMustAdvanceViolated",
            "SubscriptionRenewalCronFailed",
        }

        def routed() -> set[str] | None:
            names = {
                a["labels"]["alertname"]
                for a in webhook_receiver.alerts()
                if a["labels"].get("team") == "billing"
            }
            return names if wanted <= names else None

        wait_until(routed, 60.0, message="billing alerts routed to the billing receiver")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        reader.join(5)
    assert proc.returncode == 0, "".join(stderr)
    result = json.loads(out)
    assert result["ok"] is True
    # Platform alerts (the dropped index) matched no route for billing: they went to "nobody".
    assert all(a["labels"].get("team") == "billing" for a in webhook_receiver.alerts())


# -- the PromQL evaluator -----------------------------------------------------------------------


class _Registry:
    """A stand-in registry for Timeline tests: scrapes what ``values`` holds right now."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def collect(self) -> Any:
        from prometheus_client.samples import Sample

        family = type("Family", (), {})()
        family.samples = [
            Sample(name, dict(labels), value) for (name, labels), value in self.values.items()
        ]
        return [family]

    def restricted_registry(self, names: list[str]) -> Any:
        return self


def _timeline(
    points: list[tuple[float, dict[tuple[str, tuple[tuple[str, str], ...]], float]]],
) -> Timeline:
    registry = _Registry()
    timeline = Timeline(registry)
    for t, values in points:
        registry.values = dict(values)
        timeline.take(t)
    return timeline


V = key("billing_invariant_violation_total", invariant="X", test="false", type="x")


class TestPromQL:
    def test_durations(self) -> None:
        assert parse_duration("5m") == 300
        assert parse_duration("1h30m") == 5400
        assert parse_duration("0s") == 0
        with pytest.raises(PromQLError):
            parse_duration("5 minutes")

    def test_unsupported_is_an_error_not_a_guess(self) -> None:
        """An unsupported function or an invalid expression is reported, never guessed."""
        empty = _timeline([(0, {})])
        state = evaluate_rule(Rule("A", "histogram_quantile(0.9, rate(x[5m])) > 1"), empty, 0)
        assert state.error is not None
        assert "histogram_quantile" in state.error
        assert not state.fires
        assert evaluate_rule(Rule("B", "up{"), empty, 0).error is not None
        with pytest.raises(PromQLError):
            parse("x offset")

    def test_metric_names(self) -> None:
        node = parse('absent(a) or (time() - max(b{x="1"})) > 3 and sum by (k) (rate(c[5m]))')
        assert metric_names(node) == {"a", "b", "c"}

    def test_increase_sees_the_first_violation_of_a_counter_born_at_zero(self) -> None:
        timeline = _timeline([(0, {V: 0}), (60, {V: 0}), (120, {V: 1}), (900, {V: 1})])
        state = evaluate_rule(
            Rule("A", "increase(billing_invariant_violation_total[5m]) > 0"), timeline, 900
        )
        assert [when for when, _, _ in state.fired] == [120]
        assert state.firing_at_end == []

    def test_a_counter_born_at_one_needs_the_unless_offset_form(self) -> None:
        """The design's trap: plain increase() never sees a series that appears at 1."""
        timeline = _timeline([(0, {}), (60, {V: 1}), (600, {V: 1})])
        plain = evaluate_rule(
            Rule("A", "increase(billing_invariant_violation_total[5m]) > 0"), timeline, 600
        )
        assert not plain.fires
        guarded = evaluate_rule(
            Rule(
                "B",
                "sum by (invariant) (increase(billing_invariant_violation_total[5m])) > 0 or "
                "sum by (invariant) (billing_invariant_violation_total unless "
                "billing_invariant_violation_total offset 5m) > 0",
            ),
            timeline,
            600,
        )
        assert [dict(labels) for _, labels, _ in guarded.fired] == [{"invariant": "X"}]

    def test_for_needs_the_condition_to_hold_that_long(self) -> None:
        gauge = key("cron_job_last_status")
        short = _timeline([(0, {gauge: 1}), (60, {gauge: 0}), (120, {gauge: 1}), (900, {gauge: 1})])
        held = _timeline([(0, {gauge: 1}), (60, {gauge: 0}), (900, {gauge: 0})])
        rule = Rule("F", "cron_job_last_status != 1", for_=300)
        assert not evaluate_rule(rule, short, 900).fires
        fired = evaluate_rule(rule, held, 900)
        assert [when for when, _, _ in fired.fired] == [360]
        assert fired.firing_at_end == [()]

    def test_absent_and_time(self) -> None:
        ts = key("cron_job_last_run_timestamp")
        timeline = _timeline([(0, {}), (1000, {ts: 1.0}), (5000, {ts: 1.0})])
        rule = Rule(
            "M",
            "absent(cron_job_last_run_timestamp) or (time() - max(cron_job_last_run_timestamp)) > 3000",
            for_=60,
        )
        state = evaluate_rule(rule, timeline, 5000)
        when = [w for w, _, _ in state.fired]
        assert when[0] == 60  # absent from the start, for one minute
        assert any(w > 4000 for w in when[1:]) or state.firing_at_end

    def test_rules_from_yaml_skips_recording_rules(self) -> None:
        text = (
            "groups:\n- name: g\n  rules:\n  - record: r\n    expr: up\n"
            "  - alert: A\n    expr: up == 0\n    for: 2m\n    labels: {team: t, severity: warning}\n"
        )
        (rule,) = rules_from_yaml(text)
        assert (rule.alert, rule.for_, rule.labels["team"]) == ("A", 120, "t")


# Prometheus itself decides: for random counter and gauge histories, the alerts this evaluator
# says fire (and when) are exactly the ones promtool's rule engine fires.
_RULES = {
    "groups": [
        {
            "name": "g",
            "rules": [
                {
                    "alert": "First",
                    "expr": "sum by (invariant) (increase(v_total[5m])) > 0 or sum by (invariant) "
                    "(v_total unless v_total offset 5m) > 0",
                    "for": "0m",
                },
                {"alert": "Down", "expr": "g != 1", "for": "2m"},
                {"alert": "Missing", "expr": "absent(g)", "for": "1m"},
            ],
        }
    ]
}


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    counter=st.lists(st.integers(0, 3), min_size=12, max_size=12),
    counter_born=st.integers(0, 12),
    gauge=st.lists(st.sampled_from([0, 1]), min_size=12, max_size=12),
    gauge_born=st.integers(0, 12),
)
def test_the_evaluator_agrees_with_promtool(
    tmp_path_factory: Any, counter: list[int], counter_born: int, gauge: list[int], gauge_born: int
) -> None:
    """Minute by minute over 12 minutes: a counter (no series before ``counter_born``, then
    increments) and a gauge (absent before ``gauge_born``) give the same firing alerts here and
    in promtool's rule engine, minute by minute."""
    running = 0
    c_values: list[str] = []
    g_values: list[str] = []
    points = []
    for minute in range(12):
        values: dict[Any, float] = {}
        if minute >= counter_born:
            running += counter[minute]
            values[key("v_total", invariant="X")] = running
            c_values.append(str(running))
        else:
            c_values.append("_")
        if minute >= gauge_born:
            values[key("g")] = gauge[minute]
            g_values.append(str(gauge[minute]))
        else:
            g_values.append("_")
        points.append((minute * 60.0, values))
    timeline = _timeline(points)
    end = 11 * 60.0
    tests = []
    for rule in rules_from_yaml(yaml.safe_dump(_RULES)):
        state = evaluate_rule(rule, timeline, end)
        for minute in range(12):
            t = minute * 60.0
            firing = _firing_at(rule, timeline, t)
            tests.append(
                {
                    "eval_time": f"{minute}m",
                    "alertname": rule.alert,
                    "exp_alerts": [{"exp_labels": dict(labels)} for labels in firing],
                }
            )
        assert state.error is None
    directory = tmp_path_factory.mktemp("promtool")
    (directory / "rules.yml").write_text(yaml.safe_dump(_RULES))
    (directory / "tests.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yml"],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [
                            {"series": 'v_total{invariant="X"}', "values": " ".join(c_values)},
                            {"series": "g", "values": " ".join(g_values)},
                        ],
                        "alert_rule_test": tests,
                    }
                ],
            }
        )
    )
    result = run_promtool("test", "rules", str(directory / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def _firing_at(rule: Rule, timeline: Timeline, t: float) -> list[tuple[tuple[str, str], ...]]:
    """The series of ``rule`` firing at ``t``."""
    state = evaluate_rule(rule, timeline, t, until=t)
    assert state.error is None
    return state.firing_at_end


def test_demo_command_runs_as_a_module(tmp_path: Path) -> None:
    """`python -m invariantkit.cli demo --json` in a fresh process: exit 0, valid JSON."""
    env = {**os.environ, "COLUMNS": "120"}
    for name in (
        "SENTRY_DSN",
        "POSTHOG_PROJECT_API_KEY",
        "POSTHOG_API_KEY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ):
        env.pop(name, None)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "invariantkit.cli", "demo", "-n", "20", "-d", "8", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    del started
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True


def test_a_backend_that_is_down_fails_the_run(tmp_path: Path) -> None:
    """Sentry configured but unreachable: the signals were built, not delivered; not ok."""
    from support.receivers import closed_port_url

    dsn = closed_port_url().replace("http://", "http://public@") + "/1"
    report = run_demo(subscriptions=20, days=8, seed=4, environ={"SENTRY_DSN": dsn})
    assert all(f.caught for f in report.faults)  # handed to the SDK with the right ids...
    assert not report.delivered  # ...but never delivered
    assert not report.ok
    assert "dropped" in report.delivery["Sentry"]
