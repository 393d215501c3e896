"""The ``invariantkit`` command: generators on a user's module, clear errors, the demo's exit
code, fire-test-alert through real backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.cli import module_writer, run
from support.servers import run_promtool

COMMANDS = [
    "demo",
    "rules",
    "rule-tests",
    "dashboards",
    "sentry-rules",
    "posthog-alerts",
    "playbooks",
    "verify",
    "fire-test-alert",
]

APP = """
import invariantkit as ik
from invariantkit import billing

REFUND_LIMIT = ik.Invariant(
    "REFUND_NOT_ABOVE_CHARGE",
    type="refund_above_charge",
    summary="A refund exceeded the charge it refunds",
    team="payments",
)
IDEMPOTENCY = ik.Constraint("subscription_payment_events_idempotency_idx")
RENEWAL = ik.monitor_cron("subscription_renewal", every=86400, max_runtime=300, team="billing")
"""


BACKEND_ENV = (
    "SENTRY_DSN",
    "POSTHOG_PROJECT_API_KEY",
    "POSTHOG_API_KEY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def clear_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real backend from the environment: the command uses in-process pipelines."""
    for var in BACKEND_ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write an application module into a fresh directory (the cwd); return its unique name.

    Each module starts from an empty catalog, as in a fresh process: ``invariantkit.billing`` is
    imported once per session, so a module that imports it gets its invariants declared again.
    (The autouse fixture of conftest.py puts the catalog back after the test.)
    """
    from invariantkit import billing
    from invariantkit._catalog import get_catalog

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with module_writer(tmp_path, "app") as write:

        def make(source: str) -> str:
            get_catalog().restore(({}, {}, {}, {}, {}))
            if "from invariantkit import billing" in source:
                for invariant in (
                    billing.NO_DOUBLE_CHARGE,
                    billing.CANCELED_NEVER_CHARGED,
                    billing.PERIOD_MUST_ADVANCE,
                ):
                    get_catalog().add(invariant)
            return write(source)

        yield make


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert "Usage" in out
    assert command in out


def test_no_command_shows_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert "demo" in out + err
    assert "verify" in out + err
    assert code in (0, 2)


class TestGenerators:
    def test_rules_for_a_users_module_pass_promtool(
        self, make_module: Callable[[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        name = make_module(APP)
        target = tmp_path / "out" / "rules.yml"
        code, _, err = run(capsys, "rules", "-m", name, "-o", str(target))
        assert code == 0, err
        assert f"wrote alert rules to {target}" in err
        rules = [r for g in yaml.safe_load(target.read_text())["groups"] for r in g["rules"]]
        refund = next(r for r in rules if r["alert"] == "RefundNotAboveChargeViolated")
        assert refund["labels"]["team"] == "payments"
        assert any(r["alert"] == "SubscriptionRenewalCronFailed" for r in rules)
        checked = run_promtool("check", "rules", str(target))
        assert checked.returncode == 0, checked.stdout + checked.stderr

    def test_rules_go_to_stdout_without_output(
        self, make_module: Callable[[str], str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = run(
            capsys, "rules", "-m", make_module(APP), "--runbook-base-url", "https://wiki/runbooks/"
        )
        assert code == 0
        rules = [r for g in yaml.safe_load(out)["groups"] for r in g["rules"]]
        assert all(
            r["annotations"]["runbook_url"].startswith("https://wiki/runbooks/") for r in rules
        )

    def test_rule_tests_prove_every_rule_with_promtool(
        self, make_module: Callable[[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        name = make_module(APP)
        assert run(capsys, "rules", "-m", name, "-o", str(tmp_path / "my-rules.yml"))[0] == 0
        code, _, err = run(
            capsys,
            "rule-tests",
            "-m",
            name,
            "--rule-file",
            "my-rules.yml",
            "-o",
            str(tmp_path / "tests.yml"),
        )
        assert code == 0, err
        result = run_promtool("test", "rules", str(tmp_path / "tests.yml"))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_dashboards_one_json_file_each(
        self, make_module: Callable[[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(
            capsys,
            "dashboards",
            "-m",
            make_module(APP),
            "-o",
            str(tmp_path / "d"),
            "--owner",
            "@payments",
            "--cron-owner",
            "@sre",
        )
        assert code == 0, err
        files = sorted((tmp_path / "d").glob("*.json"))
        assert len(files) == 3
        owners = set()
        for path in files:
            board = json.loads(path.read_text())
            board = board.get("dashboard", board)
            assert board["panels"]
            owners |= {o for o in ("@payments", "@sre") if o in board["description"]}
        assert owners == {"@payments", "@sre"}

    def test_playbooks_one_markdown_file_each(
        self, make_module: Callable[[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, _ = run(capsys, "playbooks", "-m", make_module(APP), "-o", str(tmp_path / "p"))
        assert code == 0
        names = {p.name for p in (tmp_path / "p").glob("*.md")}
        assert {"refund-not-above-charge.md", "no-double-charge.md"} <= names

    def test_sentry_rules_and_posthog_alerts_are_json(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = run(capsys, "sentry-rules", "--channel", "#payments-alerts")
        assert code == 0
        payloads = json.loads(out)
        assert len(payloads) == 3
        assert "#payments-alerts" in out
        code, out, _ = run(capsys, "posthog-alerts")
        assert code == 0
        assert isinstance(json.loads(out), list)


BAD_INPUT = {
    "missing module": ("-m", "no_such_app_module", "cannot import module 'no_such_app_module'"),
    "missing file": ("-m", "nowhere/app.py", "no such file"),
    "not a module name": ("-m", "app-billing", "not a module name"),
}


class TestBadInput:
    def _assert_one_line(self, code: int, err: str, expected: str) -> None:
        assert code == 2
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert lines[0].startswith("invariantkit: error:")
        assert expected in lines[0]
        assert "Traceback" not in err

    @pytest.mark.parametrize("case", sorted(BAD_INPUT))
    def test_bad_module_arguments(
        self, case: str, make_module: Callable[[str], str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        option, value, expected = BAD_INPUT[case]
        code, _, err = run(capsys, "rules", option, value)
        self._assert_one_line(code, err, expected)

    @pytest.mark.parametrize(
        ("source", "expected"),
        [
            ("def broken(:\n    pass\n", "syntax error in"),
            (
                "raise RuntimeError('no database configured')\n",
                "raised RuntimeError: no database configured",
            ),
            (
                "import not_installed_dependency_xyz\n",
                "No module named 'not_installed_dependency_xyz'",
            ),
            ("import invariantkit as ik\n", "nothing declared"),
        ],
        ids=["syntax error", "raises at import", "missing dependency", "empty catalog"],
    )
    @pytest.mark.parametrize("command", ["rules", "dashboards", "playbooks", "verify"])
    def test_a_module_that_cannot_be_used(
        self,
        command: str,
        source: str,
        expected: str,
        make_module: Callable[[str], str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        code, _, err = run(capsys, command, "-m", make_module(source))
        self._assert_one_line(code, err, expected)

    def test_no_module(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = run(capsys, "rules")
        self._assert_one_line(code, err, "no module given")

    def test_output_is_a_directory(
        self, make_module: Callable[[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(capsys, "rules", "-m", make_module(APP), "-o", str(tmp_path))
        self._assert_one_line(code, err, "is a directory")

    def test_a_bad_generator_option(
        self, make_module: Callable[[str], str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(
            capsys, "rules", "-m", make_module(APP), "--runbook-base-url", "not a url"
        )
        self._assert_one_line(code, err, "runbook_base_url")

    def test_a_py_file_path_works_like_a_module(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        name = f"app_{uuid.uuid4().hex[:10]}"
        (tmp_path / "svc").mkdir()
        (tmp_path / "svc" / f"{name}.py").write_text(textwrap.dedent(APP))
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path / "svc"))
        try:
            code, out, _ = run(capsys, "rules", "-m", f"svc/{name}.py")
        finally:
            sys.modules.pop(name, None)
        assert code == 0
        assert "RefundNotAboveChargeViolated" in out


class TestDemo:
    def test_json_and_exit_code_zero(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        clear_backend_env(monkeypatch)
        code, out, _ = run(capsys, "demo", "-n", "20", "-d", "8", "--seed", "9", "--json")
        assert code == 0
        data = json.loads(out)
        assert data["ok"] is True
        assert data["seed"] == 9
        assert len(data["faults"]) == 7

    def test_tables(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("COLUMNS", "220")
        clear_backend_env(monkeypatch)
        code, out, _ = run(capsys, "demo", "-n", "20", "-d", "8")
        assert code == 0
        for text in (
            "Seeded faults",
            "Double charge",
            "Follow one id",
            "NoDoubleChargeViolated",
            "caught by every backend",
        ):
            assert text in out

    def test_exit_code_one_when_a_fault_is_missed(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Your own rule file without an invariant's rule: that fault fires nothing, exit 1."""
        clear_backend_env(monkeypatch)
        rules = tmp_path / "rules.yml"
        rules.write_text(
            "groups:\n- name: mine\n  rules:\n  - alert: AnyViolation\n"
            '    expr: increase(billing_invariant_violation_total{invariant!="NO_DOUBLE_CHARGE"}[5m]) > 0\n'
        )
        code, out, _ = run(capsys, "demo", "-n", "20", "-d", "8", "--json", "--rules", str(rules))
        assert code == 1
        data = json.loads(out)
        caught = {f["key"]: f["caught"] for f in data["faults"]}
        assert caught["double_charge"] is False
        assert caught["canceled_charge"] is True

    def test_write_rules_for_a_prometheus_scraping_serve(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--write-rules: the rules the demo evaluates, valid for promtool, cron and constraint
        included."""
        clear_backend_env(monkeypatch)
        target = tmp_path / "invariantkit-rules.yml"
        code, out, _ = run(
            capsys, "demo", "-n", "20", "-d", "8", "--json", "--write-rules", str(target)
        )
        assert code == 0
        evaluated = {a["alert"] for a in json.loads(out)["alerts"]}
        written = {
            r["alert"] for g in yaml.safe_load(target.read_text())["groups"] for r in g["rules"]
        }
        assert written == evaluated
        assert {"SubscriptionRenewalCronFailed", "NoDoubleChargeViolated"} <= written
        checked = run_promtool("check", "rules", str(target))
        assert checked.returncode == 0, checked.stdout + checked.stderr

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["-d", "3"], "--days"),
            (["-n", "2"], "--subscriptions"),
            (["--serve", "70000"], "--serve"),
        ],
    )
    def test_out_of_range_options(
        self, args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(capsys, "demo", *args)
        assert code == 2
        assert expected in err
        assert "Traceback" not in err


class TestFireTestAlert:
    def test_through_real_backends(
        self,
        make_module: Callable[[str], str],
        sentry_receiver: Any,
        posthog_receiver: Any,
        otlp_receiver: Any,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """SENTRY_DSN, POSTHOG_* and OTEL_EXPORTER_OTLP_ENDPOINT: one labelled test violation per
        invariant reaches each, with the printed trace id."""
        monkeypatch.setenv("SENTRY_DSN", sentry_receiver.dsn)
        monkeypatch.setenv("POSTHOG_PROJECT_API_KEY", "phc_test_alert")
        monkeypatch.setenv("POSTHOG_HOST", posthog_receiver.host)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.endpoint)
        name = make_module(APP)
        code, out, err = run(
            capsys, "fire-test-alert", "-m", name, "-i", "NO_DOUBLE_CHARGE", "--json"
        )
        assert code == 0, err
        result = json.loads(out)
        trace_id = result["sent"]["NO_DOUBLE_CHARGE"]
        assert list(result["sent"]) == ["NO_DOUBLE_CHARGE"]
        assert {"sentry", "posthog", "otel_traces", "prometheus", "json_logs"} <= set(
            result["sinks"]
        )
        (event,) = sentry_receiver.wait_for(1)
        assert event["level"] == "warning"
        assert event["tags"]["test"] == "true"
        assert event["tags"]["trace_id"] == trace_id
        (captured,) = posthog_receiver.wait_for(1)
        assert captured["event"] == "invariant_violated"
        assert captured["properties"]["trace_id"] == trace_id
        assert captured["properties"]["test"] is True
        assert trace_id in {s["trace_id"] for s in otlp_receiver.wait_for(1)}
        assert json.loads(err.splitlines()[0])["trace_id"] == trace_id  # the JSON log line

    def test_every_declared_invariant_by_default(
        self,
        make_module: Callable[[str], str],
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        clear_backend_env(monkeypatch)
        code, out, _ = run(capsys, "fire-test-alert", "-m", make_module(APP))
        assert code == 0
        for name in (
            "NO_DOUBLE_CHARGE",
            "CANCELED_NEVER_CHARGED",
            "PERIOD_MUST_ADVANCE",
            "REFUND_NOT_ABOVE_CHARGE",
        ):
            assert name in out

    def test_an_undeclared_invariant_is_an_error(
        self, make_module: Callable[[str], str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, err = run(capsys, "fire-test-alert", "-m", make_module(APP), "-i", "NOPE")
        assert code == 2  # bad input, as docs/cli.md says
        assert "'NOPE' is not declared" in out + err

    def test_an_unreachable_sentry_fails(
        self,
        make_module: Callable[[str], str],
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """SENTRY_DSN on a closed port: the test event is lost, the command exits 1."""
        from support.receivers import closed_port_url

        clear_backend_env(monkeypatch)
        monkeypatch.setenv("SENTRY_DSN", closed_port_url().replace("http://", "http://k@") + "/1")
        code, out, _ = run(
            capsys, "fire-test-alert", "-m", make_module(APP), "-i", "NO_DOUBLE_CHARGE"
        )
        assert code == 1
        assert "Sentry did not take the test event" in out

    def test_uses_the_modules_own_configuration(
        self, make_module: Callable[[str], str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        name = make_module(APP + "\nMEMORY = ik.sinks.Memory()\nik.configure(sinks=[MEMORY])\n")
        code, out, _ = run(
            capsys, "fire-test-alert", "-m", name, "-i", "REFUND_NOT_ABOVE_CHARGE", "--json"
        )
        assert code == 0
        result = json.loads(out)
        assert result["sinks"] == ["memory"]
        assert "your module" in result["source"]
        (record,) = [r for r in sys.modules[name].MEMORY.records if r.kind == "violation"]
        assert record.test is True
        assert record.trace_id == result["sent"]["REFUND_NOT_ABOVE_CHARGE"]

    @pytest.mark.slow
    def test_pushes_the_test_counter_to_a_pushgateway(
        self,
        make_module: Callable[[str], str],
        pushgateway: Any,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A CLI process is never scraped: the test counter is pushed."""
        clear_backend_env(monkeypatch)
        code, out, err = run(
            capsys,
            "fire-test-alert",
            "-m",
            make_module(APP),
            "-i",
            "NO_DOUBLE_CHARGE",
            "--pushgateway",
            pushgateway.address,
            "--json",
        )
        assert code == 0, err
        assert json.loads(out)["pushed"]
        value = pushgateway.metric_value(
            "billing_invariant_violation_total", {"invariant": "NO_DOUBLE_CHARGE", "test": "true"}
        )
        assert value == 1

    def test_an_unreachable_pushgateway_fails(
        self, make_module: Callable[[str], str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        from support.receivers import closed_port_url

        code, out, _ = run(
            capsys,
            "fire-test-alert",
            "-m",
            make_module(APP),
            "-i",
            "NO_DOUBLE_CHARGE",
            "--pushgateway",
            closed_port_url(),
        )
        assert code == 1
        assert "push to the Pushgateway" in out


@pytest.mark.parametrize("missing", ["typer"])
def test_a_bare_install_names_the_extra(missing: str, tmp_path: Path) -> None:
    """Without the [cli] extra, the ``invariantkit`` command prints the pip command for it and
    exits 2, never a ModuleNotFoundError traceback."""
    script = tmp_path / "invariantkit"
    script.write_text(
        "import sys\n"
        f"sys.modules[{missing!r}] = None\n"
        "from invariantkit.cli import main\n"
        "sys.exit(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "pip install 'invariantkit[cli]'" in result.stderr
    assert "Traceback" not in result.stderr
