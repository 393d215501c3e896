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

from invariantkit._demo import run_demo
from invariantkit._demo._promtool import evaluate, input_series, rules_from_yaml
from invariantkit._demo._report import BACKENDS, DemoReport
from invariantkit._demo._timeline import Timeline, key
from support.servers import free_port, require_binary, wait_until

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


#: A promtool that does not exist: runs where the alerts are not under test skip their evaluation.
NO_PROMTOOL = "/nonexistent/promtool"


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
        assert report.as_dict()["evaluated_by"] == "promtool test rules"
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
    # The alerts are under test elsewhere: no promtool here (each evaluation takes seconds).
    quick = {"subscriptions": 20, "days": 8, "environ": {}, "promtool": NO_PROMTOOL}
    first = run_demo(seed=11, **quick).as_dict()
    second = run_demo(seed=11, **quick).as_dict()
    other = run_demo(seed=12, **quick).as_dict()

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
    report = run_demo(
        subscriptions=20,
        days=8,
        seed=2,
        environ=env,
        log_file=str(log_file),
        promtool=NO_PROMTOOL,  # the backends are under test here, not the alerts
    )
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


# -- promtool evaluates the rules ---------------------------------------------------------------


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
T0 = 1_700_000_000.0
_PLAIN = "increase(billing_invariant_violation_total[5m]) > 0"
_GUARDED = (
    "sum by (invariant) (increase(billing_invariant_violation_total[5m])) > 0 or "
    "sum by (invariant) (billing_invariant_violation_total unless "
    "billing_invariant_violation_total offset 5m) > 0"
)


def _rules(**alerts: str) -> str:
    rules = [
        {"alert": name, "expr": expr, "labels": {"severity": "critical"}}
        for name, expr in alerts.items()
    ]
    return yaml.safe_dump({"groups": [{"name": "g", "rules": rules}]})


class TestPromtool:
    def test_a_counter_born_at_one_needs_the_unless_offset_form(self) -> None:
        """promtool's engine on our timeline: plain increase() never sees a series that appears
        at 1; the generated rule's ``unless ... offset`` clause fires, at the time it appeared."""
        require_binary("promtool")
        timeline = _timeline([(T0, {}), (T0 + 600, {V: 1}), (T0 + 3600, {V: 1})])
        states = {
            s.rule.alert: s
            for s in evaluate(_rules(Plain=_PLAIN, Guarded=_GUARDED), timeline, T0, T0 + 3600)
        }
        assert not states["Plain"].fires
        assert states["Guarded"].fired == [(T0 + 600, (("invariant", "X"),))]
        assert states["Guarded"].firing_at_end == []

    def test_timestamps_shift_to_the_start_and_gaps_stay_gaps(self) -> None:
        """Series start at promtool's time 0; Unix-time gauges move with them; before a series
        exists promtool sees no sample (``_``), and runs of one value are compressed."""
        ts = key("cron_job_last_run_timestamp")
        timeline = _timeline([(T0, {V: 0}), (T0 + 120, {V: 0, ts: T0 + 120})])
        series = {s["series"]: s["values"] for s in input_series(timeline, T0, T0 + 600)}
        assert series["cron_job_last_run_timestamp"] == "_x2 120x8"
        assert (
            series['billing_invariant_violation_total{invariant="X",test="false",type="x"}']
            == "0x10"
        )

    def test_a_rule_file_promtool_rejects_is_an_error(self) -> None:
        """promtool's own message comes back, nothing is guessed."""
        require_binary("promtool")
        timeline = _timeline([(T0, {V: 0})])
        with pytest.raises(ValueError, match="promtool"):
            evaluate(_rules(Bad="rate(x[5m]"), timeline, T0, T0 + 600)

    def test_rules_from_yaml_skips_recording_rules(self) -> None:
        text = (
            "groups:\n- name: g\n  rules:\n  - record: r\n    expr: up\n"
            "  - alert: A\n    expr: up == 0\n    for: 2m\n    labels: {team: t, severity: warning}\n"
        )
        (rule,) = rules_from_yaml(text)
        assert (rule.alert, rule.labels["team"]) == ("A", "t")

    def test_without_promtool_the_demo_says_how_and_still_checks_every_backend(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No promtool on PATH: the report names the Debian package, every backend cell is
        still checked, and no alert is claimed."""
        monkeypatch.setenv("PATH", "/nonexistent")
        report = run_demo(subscriptions=20, days=8, seed=5, environ={})
        assert report.rules_error is not None
        assert "apt-get install prometheus" in report.rules_error
        assert all(cell.caught for f in report.faults for cell in f.cells.values())
        assert report.alerts == []
        assert report.as_dict()["evaluated_by"] is None


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
    report = run_demo(
        subscriptions=20, days=8, seed=4, environ={"SENTRY_DSN": dsn}, promtool=NO_PROMTOOL
    )
    assert all(f.caught for f in report.faults)  # handed to the SDK with the right ids...
    assert not report.delivered  # ...but never delivered
    assert not report.ok
    assert "dropped" in report.delivery["Sentry"]
