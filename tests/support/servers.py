"""Real Debian servers for tests: Prometheus, Alertmanager, Pushgateway and PostgreSQL 15.

Every server listens on 127.0.0.1 on a free port, keeps its state in a temporary directory,
is ready (or has failed with its log) within ``START_TIMEOUT`` seconds, and is always stopped
(terminate, then kill after ``STOP_GRACE`` seconds) when its context manager exits. A missing
binary fails the test with the Debian package to install: CI must install them, never skip.

Example::

    with Pushgateway() as pgw, Prometheus(scrape_targets=[pgw.address]) as prom:
        prom.wait_for(lambda: prom.query('up{job="app"} == 1'))
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import pytest
import yaml

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

__all__ = [
    "PG_BIN",
    "START_TIMEOUT",
    "STOP_GRACE",
    "Alertmanager",
    "Postgres",
    "Prometheus",
    "Pushgateway",
    "alertmanager_config",
    "free_port",
    "http_json",
    "http_text",
    "prometheus_config",
    "require_binary",
    "run_amtool",
    "run_promtool",
    "serve_metrics",
    "wait_until",
]

T = TypeVar("T")

START_TIMEOUT = 15.0
STOP_GRACE = 5.0
TOOL_TIMEOUT = 30.0
PG_BIN = Path("/usr/lib/postgresql/15/bin")

_PACKAGES: dict[str, str] = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "prometheus-pushgateway": "prometheus-pushgateway",
    str(PG_BIN / "initdb"): "postgresql-15",
    str(PG_BIN / "pg_ctl"): "postgresql-15",
}

# Servers still running at interpreter exit (a crashed fixture, a Ctrl-C at the wrong time).
_LIVE: set[_ServerProcess | Postgres] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require_binary(name: str) -> str:
    """Return the path of ``name``, or fail the test naming the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        package = _PACKAGES.get(name, "?")
        pytest.fail(
            f"{name} not found: install the Debian package {package!r} "
            "(`bash scripts/test.sh` installs it)",
            pytrace=False,
        )
    return path


@contextlib.contextmanager
def serve_metrics(registry: Any) -> Iterator[int]:
    """Expose a prometheus-client ``registry`` on 127.0.0.1 (what a service using invariantkit
    does); yields the port, stops the server on exit."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.1,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Exceptions raised by ``predicate`` count as "not yet" (a server may still be starting);
    the last one is reported if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except Exception as exc:
            last_error = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"{message} not met within {timeout}s{detail}")
        time.sleep(interval)


def http_text(
    url: str,
    *,
    method: str = "GET",
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> str:
    """Make an HTTP request and return the body as text (raises ``HTTPError`` on >= 400)."""
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode()


def http_json(url: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0) -> Any:
    """Make an HTTP request with an optional JSON body and return the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    return json.loads(http_text(url, method=method, data=data, headers=headers, timeout=timeout))


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            status: int = response.status
            return status == 200
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _to_yaml(config: str | Mapping[str, Any]) -> str:
    if isinstance(config, str):
        return config
    return yaml.safe_dump(dict(config), sort_keys=False)


def _run_tool(binary: str, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary(binary), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,  # callers inspect returncode themselves
    )


def run_promtool(*args: str, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS`` (e.g. ``"check", "rules", path``); inspect ``returncode`` yourself."""
    return _run_tool("promtool", args, timeout)


def run_amtool(*args: str, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``amtool ARGS`` (e.g. ``"check-config", path``); inspect ``returncode`` yourself."""
    return _run_tool("amtool", args, timeout)


# --------------------------------------------------------------------------- config builders


def prometheus_config(
    *,
    scrape_targets: Sequence[str] | Mapping[str, Sequence[str]] = (),
    alertmanagers: Sequence[str] = (),
    honor_labels: bool = True,
    interval: str = "1s",
    metrics_path: str = "/metrics",
    self_target: str | None = None,
) -> dict[str, Any]:
    """Build a Prometheus config with fast (1 s) scrape and evaluation intervals.

    ``scrape_targets`` are ``"127.0.0.1:PORT"`` addresses: a sequence becomes job ``app``, a
    mapping gives one job per key. ``alertmanagers`` are addresses too. ``self_target`` adds a
    ``prometheus`` job scraping Prometheus itself.
    """
    jobs: dict[str, list[str]]
    if isinstance(scrape_targets, Mapping):
        jobs = {job: list(targets) for job, targets in scrape_targets.items()}
    else:
        jobs = {"app": list(scrape_targets)} if scrape_targets else {}
    scrape_configs: list[dict[str, Any]] = []
    if self_target is not None:
        scrape_configs.append(
            {"job_name": "prometheus", "static_configs": [{"targets": [self_target]}]}
        )
    for job, targets in jobs.items():
        for target in targets:
            if "/" in target:
                raise ValueError(f"scrape target must be host:port, got {target!r}")
        scrape_configs.append(
            {
                "job_name": job,
                "honor_labels": honor_labels,
                "metrics_path": metrics_path,
                "static_configs": [{"targets": targets}],
            }
        )
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,  # must not exceed the interval (default is 10s)
            "evaluation_interval": interval,
        },
        "scrape_configs": scrape_configs,
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": alertmanagers}]}]}
    return config


def alertmanager_config(
    webhook_url: str | None = None,
    *,
    group_wait: str = "0s",
    group_interval: str = "1s",
    repeat_interval: str = "1h",
    group_by: Sequence[str] = ("alertname",),
) -> dict[str, Any]:
    """Build an Alertmanager config routing everything at once to ``webhook_url`` (if given)."""
    receiver: dict[str, Any] = {"name": "default"}
    if webhook_url is not None:
        receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
    return {
        "route": {
            "receiver": "default",
            "group_by": list(group_by),
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [receiver],
    }


# --------------------------------------------------------------------------- processes


class _ServerProcess:
    """A server binary on 127.0.0.1:port with a temp dir, ready when ``/-/ready`` answers 200."""

    binary: str = ""

    def __init__(self) -> None:
        self.executable = require_binary(self.binary)
        self.port = free_port()
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"ik-{self.binary}-"))
        self.log_path = self.tmpdir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the form Prometheus targets and ``push_to_gateway`` take."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.address}"

    def _args(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        return _http_ok(self.url + "/-/ready")

    def log_text(self) -> str:
        """The server's combined stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Start the server and wait until it is ready, or stop it and raise with its log."""
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [self.executable, *self._args()],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.tmpdir,
        )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while not self._ready():
            code = self._proc.poll()
            if code is not None or time.monotonic() >= deadline:
                self.stop(cleanup=False)
                reason = f"exited with {code}" if code is not None else f"not ready in {timeout}s"
                log = _tail(self.log_path)
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                raise RuntimeError(f"{self.binary} on {self.address} {reason}; log:\n{log}")
            time.sleep(0.05)
        return self

    def stop(self, *, cleanup: bool = True) -> None:
        """Terminate (then kill after ``STOP_GRACE`` s) and remove the temp dir. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_GRACE)
        if self._log is not None:
            self._log.close()
            self._log = None
        _LIVE.discard(self)
        if cleanup:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_for(
        self, predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.1
    ) -> T:
        """Poll ``predicate`` until truthy (exceptions mean "not yet"); return its value."""
        return wait_until(predicate, timeout, interval, message=f"{type(self).__name__} predicate")

    def _api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return http_json(f"{self.url}{path}{query}")


class Prometheus(_ServerProcess):
    """A real Prometheus (2.42 on Debian 12) with lifecycle API enabled.

    Without ``config`` it scrapes itself (job ``prometheus``) and ``scrape_targets`` (job ``app``
    for a sequence, one job per key for a mapping) every second, evaluates rules every second and
    sends alerts to ``alertmanagers``. ``config`` may be YAML text or a dict (see
    ``prometheus_config``). ``rule_files`` maps file names to rule YAML; they are written to the
    temp dir and added to the config's ``rule_files``.

    Prometheus applies discovered targets and Alertmanagers only on a 5 s tick: the first scrape
    comes 5-10 s after start. Call ``wait_for_targets_up()`` before measuring anything. Alerts
    are re-sent every ``alert_resend_delay`` (1 s, default 1 m) so that an alert that fired
    before the Alertmanager was discovered still reaches it.
    """

    binary = "prometheus"

    def __init__(
        self,
        config: str | Mapping[str, Any] | None = None,
        rule_files: Mapping[str, str] | None = None,
        *,
        scrape_targets: Sequence[str] | Mapping[str, Sequence[str]] = (),
        alertmanagers: Sequence[str] = (),
        honor_labels: bool = True,
        interval: str = "1s",
        alert_resend_delay: str = "1s",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.alert_resend_delay = alert_resend_delay
        if config is None:
            built = prometheus_config(
                scrape_targets=scrape_targets,
                alertmanagers=alertmanagers,
                honor_labels=honor_labels,
                interval=interval,
                self_target=self.address,
            )
        elif isinstance(config, str):
            built = yaml.safe_load(config) or {}
        else:
            built = dict(config)
        self.rule_paths: dict[str, Path] = {}
        if rule_files:
            rules_dir = self.tmpdir / "rules"
            rules_dir.mkdir()
            for name, text in rule_files.items():
                path = rules_dir / name
                path.write_text(text)
                self.rule_paths[name] = path
            built["rule_files"] = [
                *built.get("rule_files", []),
                *map(str, self.rule_paths.values()),
            ]
        self.config: dict[str, Any] = built
        self.config_path = self.tmpdir / "prometheus.yml"
        self.config_path.write_text(_to_yaml(built))
        self.extra_args = list(extra_args)

    def _args(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.tmpdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--web.enable-lifecycle",
            f"--rules.alert.resend-delay={self.alert_resend_delay}",
            *self.extra_args,
        ]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns ``data.result`` (vector samples: ``metric`` and ``value``)."""
        answer = self._api("/api/v1/query", query=promql)
        if answer.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {answer}")
        data = answer["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_value(self, promql: str) -> float | None:
        """The value of the first sample of an instant query, or ``None`` if it is empty."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict[str, Any]]:
        """``/api/v1/alerts``: active alerts (``labels``, ``state`` pending/firing, ...)."""
        alerts: list[dict[str, Any]] = self._api("/api/v1/alerts")["data"]["alerts"]
        return alerts

    def rules(self) -> list[dict[str, Any]]:
        """``/api/v1/rules``: rule groups as loaded."""
        groups: list[dict[str, Any]] = self._api("/api/v1/rules")["data"]["groups"]
        return groups

    def targets(self) -> list[dict[str, Any]]:
        """``/api/v1/targets``: active targets with ``health`` and ``lastError``."""
        targets: list[dict[str, Any]] = self._api("/api/v1/targets")["data"]["activeTargets"]
        return targets

    def reload(self) -> None:
        """Re-read the config file and rule files (``POST /-/reload``)."""
        http_text(self.url + "/-/reload", method="POST", data=b"")

    def wait_for_targets_up(self, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until every active target has been scraped successfully at least once."""

        def all_up() -> list[dict[str, Any]] | None:
            targets = self.targets()
            return targets if targets and all(t["health"] == "up" for t in targets) else None

        return wait_until(all_up, timeout, message="all Prometheus targets up")

    def wait_for_alert(
        self, name: str, state: str = "firing", timeout: float = 10.0
    ) -> dict[str, Any]:
        """Wait until alert ``name`` is in ``state``; return it."""

        def find() -> dict[str, Any] | None:
            for alert in self.alerts():
                if alert["labels"].get("alertname") == name and alert["state"] == state:
                    return alert
            return None

        return wait_until(find, timeout, message=f"alert {name} {state}")


class Alertmanager(_ServerProcess):
    """A real Alertmanager (0.25 on Debian 12), clustering off (empty cluster address).

    ``config`` is YAML text or a dict; without it, everything routes immediately
    (``group_wait: 0s``) to ``webhook_url`` if given (see ``alertmanager_config``).
    """

    binary = "prometheus-alertmanager"

    def __init__(
        self, config: str | Mapping[str, Any] | None = None, *, webhook_url: str | None = None
    ) -> None:
        super().__init__()
        self.config_path = self.tmpdir / "alertmanager.yml"
        self.config_path.write_text(
            _to_yaml(alertmanager_config(webhook_url) if config is None else config)
        )

    def _args(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={self.tmpdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",  # empty: no gossip listener on all interfaces
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``."""
        alerts: list[dict[str, Any]] = self._api("/api/v2/alerts")
        return alerts

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """``POST /api/v2/alerts`` (each alert needs at least ``labels``)."""
        http_text(
            self.url + "/api/v2/alerts",
            method="POST",
            data=json.dumps(list(alerts)).encode(),
            headers={"Content-Type": "application/json"},
        )

    def status(self) -> dict[str, Any]:
        """``GET /api/v2/status`` (``cluster.status`` is ``disabled`` here)."""
        status: dict[str, Any] = self._api("/api/v2/status")
        return status


class Pushgateway(_ServerProcess):
    """A real Pushgateway (1.5 on Debian 12), in memory only, admin API on (``wipe``)."""

    binary = "prometheus-pushgateway"

    def _args(self) -> list[str]:
        return [
            f"--web.listen-address={self.address}",
            "--persistence.file=",  # empty: keep metrics in memory only
            "--web.enable-admin-api",
        ]

    def metrics_text(self) -> str:
        """The exposition text at ``/metrics``."""
        return http_text(self.url + "/metrics")

    def metric_value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """Value of the first sample ``name`` whose labels include ``labels``, else ``None``."""
        from prometheus_client.parser import text_string_to_metric_families

        wanted = dict(labels or {})
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and wanted.items() <= sample.labels.items():
                    return float(sample.value)
        return None

    def wipe(self) -> None:
        """Delete every pushed group (``PUT /api/v1/admin/wipe``)."""
        http_text(self.url + "/api/v1/admin/wipe", method="PUT", data=b"")


class Postgres:
    """A real PostgreSQL 15 cluster on 127.0.0.1, trust auth, fsync off, user ``postgres``.

    As root, the data dir belongs to the ``postgres`` user and ``initdb``/``pg_ctl`` run through
    ``runuser``; otherwise they run as the current user.
    """

    def __init__(self) -> None:
        self.initdb = require_binary(str(PG_BIN / "initdb"))
        self.pg_ctl = require_binary(str(PG_BIN / "pg_ctl"))
        self.port = free_port()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="ik-postgres-"))
        self.datadir = self.tmpdir / "data"
        self.log_path = self.tmpdir / "postgres.log"
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.tmpdir, user.pw_uid, user.pw_gid)
            self._prefix = [require_binary("runuser"), "-u", "postgres", "--"]
        self._running = False

    @property
    def dsn(self) -> str:
        """DSN of the ``postgres`` database."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """DSN of ``database`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self._prefix, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmpdir,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout}"
                f"{result.stderr}\nlog:\n{_tail(self.log_path)}"
            )
        return result

    def start(self) -> Self:
        """``initdb`` then ``pg_ctl -w start`` (bounded by ``START_TIMEOUT``)."""
        self._run(
            self.initdb,
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.tmpdir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        _LIVE.add(self)
        self._running = True
        try:
            self._run(
                self.pg_ctl,
                "-D",
                str(self.datadir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "-o",
                options,
                "start",
                timeout=START_TIMEOUT + 5,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """``pg_ctl stop -m immediate``; SIGKILL the postmaster if that fails. Idempotent."""
        if self._running:
            self._running = False
            try:
                self._run(
                    self.pg_ctl, "-D", str(self.datadir), "-m", "immediate", "-w", "stop",
                    timeout=STOP_GRACE + 5,
                )  # fmt: skip
            except (RuntimeError, subprocess.TimeoutExpired):
                self._kill_postmaster()
        _LIVE.discard(self)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str) -> str:
        """Create database ``name`` (an identifier we chose) and return its DSN."""
        self._admin(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, disconnecting whoever is still connected."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
