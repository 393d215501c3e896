"""``examples/``: the billing service's own test suite, its cron script against a real
Pushgateway, its start-up check, its WSGI entry point, and the CLI run on it as a user would."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.servers import free_port, run_promtool, wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if k
    not in {
        "SENTRY_DSN",
        "POSTHOG_PROJECT_API_KEY",
        "POSTHOG_API_KEY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "PROMETHEUS_PUSHGATEWAY",
        "PYTEST_ADDOPTS",
    }
}


def _run_cron(server: Any, db: Path, pushgateway: Any) -> subprocess.CompletedProcess[str]:
    """renewal_cron.py against the example service, pushing to ``pushgateway``."""
    return _run(
        sys.executable,
        "renewal_cron.py",
        "--db",
        str(db),
        "--payments-url",
        server.url,
        "--pushgateway",
        pushgateway.address,
    )


def _run(
    *args: str, cwd: Path = EXAMPLES, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        cwd=cwd,
        env={**CLEAN_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_example_services_own_tests_pass() -> None:
    """examples/billing_service/tests, collected and run as the example's authors run them."""
    proc = _run(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "examples/billing_service/tests",
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


@pytest.fixture
def example_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Import the example in this process (for the server the cron script charges through)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    for name in [
        m for m in sys.modules if m == "billing_service" or m.startswith("billing_service.")
    ]:
        sys.modules.pop(name, None)


@pytest.fixture
def service(example_path: None, signals: Any, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """The example app on a database file, served on 127.0.0.1, with one subscription due."""
    from billing_service.app import Server, create_app

    db = tmp_path / "billing.db"
    app = create_app(str(db))
    with Server(app) as server:
        sub = app.billing.subscribe("user_7", "horoscope-plus")
        app.billing.conn.execute(
            "UPDATE subscriptions SET current_period_end = ? WHERE id = ?",
            (time.time() - 3600, sub["id"]),
        )
        yield server, db


@pytest.mark.slow
def test_the_renewal_cron_script_pushes_its_run_to_a_pushgateway(
    service: tuple[Any, Path], pushgateway: Any
) -> None:
    """renewal_cron.py, a short-lived process: its gauges reach the Pushgateway after it exits."""
    server, db = service
    proc = _run_cron(server, db, pushgateway)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"renewed": 1, "failed": 0}
    labels = {"job": "subscription_renewal"}
    assert pushgateway.metric_value("cron_subscription_renewal_last_status", labels) == 1
    assert pushgateway.metric_value("cron_subscription_renewal_processed", labels) == 1
    assert (
        pushgateway.metric_value("cron_subscription_renewal_last_run_timestamp", labels)
        > time.time() - 300
    )


@pytest.mark.slow
def test_a_failed_cron_run_is_pushed_as_failed(service: tuple[Any, Path], pushgateway: Any) -> None:
    server, db = service
    server.app.billing.processor.down = True
    proc = _run_cron(server, db, pushgateway)
    assert proc.returncode == 1
    assert "provider_unavailable" in proc.stderr
    assert (
        pushgateway.metric_value(
            "cron_subscription_renewal_last_status", {"job": "subscription_renewal"}
        )
        == 0
    )


def test_the_constraint_check_script_gates_a_deploy(
    example_path: None, signals: Any, tmp_path: Path
) -> None:
    """check_constraints.py exits 0 with the index, 1 once a migration dropped it."""
    from billing_service import db as billing_db

    path = tmp_path / "billing.db"
    billing_db.connect(str(path)).close()
    ok = _run(sys.executable, "check_constraints.py", "--db", str(path))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1]) == {
        "subscription_payment_events_idempotency_idx": True
    }
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX subscription_payment_events_idempotency_idx")
    conn.commit()
    conn.close()
    missing = _run(sys.executable, "check_constraints.py", "--db", str(path))
    assert missing.returncode == 1
    assert json.loads(missing.stdout.strip().splitlines()[-1]) == {
        "subscription_payment_events_idempotency_idx": False
    }


def test_the_wsgi_entry_point_serves_on_localhost(tmp_path: Path) -> None:
    """python -m billing_service.wsgi: the production entry point answers /healthz and /metrics."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "billing_service.wsgi"],
        cwd=EXAMPLES,
        env={**CLEAN_ENV, "PORT": str(port), "BILLING_DB": str(tmp_path / "billing.db")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until(healthy, 30.0, message="the example service is up")
        request = urllib.request.Request(
            url + "/subscriptions",
            data=b'{"tier": "horoscope-plus"}',
            headers={"X-User-Id": "user_1"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201
        with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'billing_operation_total{operation="subscribe",outcome="success"} 1.0' in metrics
        assert (
            'pg_constraint_exists{constraint="subscription_payment_events_idempotency_idx"} 1.0'
            in metrics
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_the_cli_on_the_example(tmp_path: Path) -> None:
    """As a user would: rules and their tests pass promtool, and verify passes on the example's
    set-up (routing, published playbooks, its database)."""
    cli = [sys.executable, "-m", "invariantkit.cli"]
    rules = _run(
        *cli,
        "rules",
        "-m",
        "billing_service.monitoring",
        "-o",
        str(tmp_path / "invariantkit-rules.yml"),
    )
    assert rules.returncode == 0, rules.stderr
    tests = _run(
        *cli, "rule-tests", "-m", "billing_service.monitoring", "-o", str(tmp_path / "tests.yml")
    )
    assert tests.returncode == 0, tests.stderr
    result = run_promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    playbooks = _run(
        *cli, "playbooks", "-m", "billing_service.monitoring", "-o", str(tmp_path / "playbooks")
    )
    assert playbooks.returncode == 0, playbooks.stderr
    (tmp_path / "am.yml").write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "platform",
                    "routes": [
                        {"receiver": "tests", "matchers": ['severity="test"']},
                        {"receiver": "billing", "matchers": ['team="billing"']},
                    ],
                },
                "receivers": [
                    {"name": name, "webhook_configs": [{"url": f"http://127.0.0.1:9/{name}"}]}
                    for name in ("platform", "tests", "billing")
                ],
            }
        )
    )
    db = tmp_path / "billing.db"
    init = _run(
        sys.executable, "-c", f"from billing_service import db; db.connect({str(db)!r}).close()"
    )
    assert init.returncode == 0, init.stderr
    verify = _run(
        *cli,
        "verify",
        "-m",
        "billing_service.monitoring",
        "--alertmanager-config",
        str(tmp_path / "am.yml"),
        "--playbooks",
        str(tmp_path / "playbooks"),
        "--dsn",
        str(db),
        "--json",
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    checks = {c["id"]: c["status"] for c in json.loads(verify.stdout)["checks"]}
    assert "fail" not in checks.values()
    assert checks["constraints"] == "pass"
    assert checks["alerts.routing"] == "pass"
