"""Two services, two processes, one trace: service A (a WSGI app) identifies the user, runs a
billing operation and calls service B (an ``http.server`` app) over HTTP with ``ik.inject``;
B continues with ``ik.extract(self.headers)`` and runs an operation that reports a violation and
fails (enforce mode). Each process has the real SDKs, sending to receivers on 127.0.0.1: OTLP
spans through a ``BatchSpanProcessor``, ``sentry_sdk.init(dsn=...)`` with its default
integrations, ``posthog.Posthog(host=...)``, and JSON log lines to its own file.

The test proves that the trace id of A's span is the trace id of B's span (whose parent is A's
span), of B's Sentry event, of B's PostHog events and of B's log lines, all with user ``user_42``.
Each service calls ``ik.shutdown()`` (every sink flushed) before it exits, and the test reads the
receivers only after both processes exited.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.receivers import OTLPReceiver, PostHogReceiver, SentryReceiver

USER = "user_42"
START_TIMEOUT = 60.0  # seconds for a service to import the SDKs and listen (shared machine)
STOP_TIMEOUT = 60.0  # seconds for a service to flush every sink and exit

SERVICE = textwrap.dedent(
    '''
    """One service of the two-service test: ``service.py a|b DSN POSTHOG OTLP LOG DOWNSTREAM``.

    Prints its port, serves until stdin closes, then shuts invariantkit down (every sink
    flushed), closes the SDKs and prints what the shutdown returned.
    """
    import json
    import logging
    import socketserver
    import sys
    import threading
    import urllib.error
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import posthog
    import sentry_sdk
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import invariantkit as ik
    from invariantkit import billing

    role, sentry_dsn, posthog_host, otlp_endpoint, log_path, downstream = sys.argv[1:7]
    service = f"service-{role}"

    # The SDKs as the service would set them up (Sentry with its default integrations).
    sentry_sdk.init(dsn=sentry_dsn, server_name=service, environment="test", release="2.0.0")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint + "/v1/traces", timeout=5))
    )
    posthog_client = posthog.Posthog(
        f"phc_{role}",
        host=posthog_host,
        on_error=ik.sinks.PostHog.count_failed_batch,
        **ik.sinks.PostHog.CLIENT_DEFAULTS,
    )
    handler = logging.FileHandler(log_path)
    handler.setFormatter(ik.JsonFormatter())
    signals = logging.getLogger("billing.signals")
    signals.addHandler(handler)
    signals.setLevel(logging.DEBUG)
    signals.propagate = False
    ik.configure(
        service=service,
        environment="test",
        mode="enforce" if role == "b" else "report",
        sinks=[
            ik.sinks.OtelTraces(provider),
            ik.sinks.Sentry(),
            ik.sinks.PostHog(posthog_client),
            ik.sinks.JsonLogs(signals),
        ],
    )


    class DownstreamFailed(Exception):
        pass


    # --- service A: a WSGI app --------------------------------------------------------------


    def checkout_app(environ, start_response):
        with ik.identify("user_42"):  # what an authentication middleware does
            trace_id = None
            try:
                with ik.billing_operation("checkout"):
                    trace_id = ik.correlation_id()
                    request = urllib.request.Request(
                        downstream + "/charge",
                        data=b"{}",
                        headers=ik.inject({"Content-Type": "application/json"}),
                    )
                    try:
                        with urllib.request.urlopen(request, timeout=30) as response:
                            downstream_status = response.status
                    except urllib.error.HTTPError as exc:
                        exc.close()
                        raise DownstreamFailed(f"charge answered {exc.code}") from None
                status = "200 OK"
            except DownstreamFailed as exc:
                downstream_status = int(str(exc).rsplit(" ", 1)[1])
                status = "502 Bad Gateway"
        body = json.dumps({"trace_id": trace_id, "downstream": downstream_status}).encode()
        start_response(status, [("Content-Type", "application/json")])
        return [body]


    class QuietWSGIHandler(WSGIRequestHandler):
        def log_message(self, format, *args):
            pass


    class LocalWSGIServer(WSGIServer):
        def server_bind(self):  # no FQDN lookup of 127.0.0.1
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = "127.0.0.1", self.server_address[1]
            self.setup_environ()


    # --- service B: an http.server app --------------------------------------------------------


    @ik.billing_operation("charge", user_facing=True)
    def charge(subscription_id):
        charges_today = 2  # the double charge that nothing before layer 5 prevented
        ik.assert_invariant(
            charges_today <= 1, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": subscription_id}
        )
        return "charged"


    class ChargeHandler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with ik.extract(self.headers):
                try:
                    charge("sub_1")
                    status = 200
                except ik.InvariantViolation:
                    status = 409
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *args):
            pass


    class LocalHTTPServer(ThreadingHTTPServer):
        daemon_threads = True

        def server_bind(self):  # no FQDN lookup of 127.0.0.1
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = "127.0.0.1", self.server_address[1]


    if role == "a":
        server = make_server(
            "127.0.0.1", 0, checkout_app, LocalWSGIServer, handler_class=QuietWSGIHandler
        )
    else:
        server = LocalHTTPServer(("127.0.0.1", 0), ChargeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # serve until the test closes stdin
    server.shutdown()
    server.server_close()
    flushed = ik.shutdown(20.0)  # every sink flushed: spans exported, Sentry and PostHog sent
    posthog_client.shutdown()
    provider.shutdown()
    sentry_sdk.get_client().close(timeout=5.0)
    handler.close()
    print(json.dumps({"flushed": flushed}), flush=True)
    '''
)


@dataclass
class Service:
    """A service process: its port, its log file and its stderr file."""

    name: str
    proc: subprocess.Popen[str]
    port: int
    log_path: Path
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def diagnostics(self) -> str:
        return f"{self.name} stderr:\n{self.stderr_path.read_text()[-4000:]}"

    def stop(self) -> dict[str, Any]:
        """Close stdin (the service shuts down and flushes), wait; return its final report."""
        try:
            out, _ = self.proc.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not stop\n{self.diagnostics()}") from None
        assert self.proc.returncode == 0, self.diagnostics()
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return report

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


@contextlib.contextmanager
def service(
    tmp_path: Path,
    role: str,
    sentry: SentryReceiver,
    posthog: PostHogReceiver,
    otlp: OTLPReceiver,
    downstream: str = "",
) -> Iterator[Service]:
    """Start ``service.py role`` on 127.0.0.1; always stopped (killed if it does not exit)."""
    script = tmp_path / "service.py"
    if not script.exists():
        script.write_text(SERVICE)
    log_path, stderr_path = tmp_path / f"{role}.jsonl", tmp_path / f"{role}.stderr"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INVARIANTKIT_", "OTEL_", "SENTRY_", "POSTHOG_", "ALERT_TEST"))
    }
    args = [role, sentry.dsn, posthog.host, otlp.endpoint, str(log_path), downstream]
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    try:
        line = _readline(proc, START_TIMEOUT)
        name = f"service {role.upper()}"
        assert line.strip().isdigit(), f"{name} did not start\n{stderr_path.read_text()[-4000:]}"
        yield Service(name, proc, int(line), log_path, stderr_path)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _call(url: str) -> tuple[int, dict[str, Any]]:
    """POST to ``url``; the status and the JSON body, whatever the status."""
    request = urllib.request.Request(url, data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def _by(items: list[dict[str, Any]], key: Any) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        grouped.setdefault(key(item), []).append(item)
    return grouped


def test_one_trace_id_and_user_across_two_services(
    tmp_path: Path,
    sentry_receiver: SentryReceiver,
    posthog_receiver: PostHogReceiver,
    otlp_receiver: OTLPReceiver,
) -> None:
    receivers = (sentry_receiver, posthog_receiver, otlp_receiver)
    with service(tmp_path, "b", *receivers) as b:
        with service(tmp_path, "a", *receivers, downstream=b.url) as a:
            status, body = _call(a.url + "/checkout")
            assert (status, body["downstream"]) == (502, 409), (body, a.diagnostics())
            report_a = a.stop()
        report_b = b.stop()
    # Each process flushed every sink before exiting: nothing is left to wait for.
    assert report_a == report_b == {"flushed": True}
    tid = body["trace_id"]
    assert len(tid) == 32
    assert int(tid, 16)

    # Traces: A's span and B's span, one trace; B's span is a child of A's.
    spans = _by(otlp_receiver.wait_for(2), lambda s: s["resource"]["service.name"])
    [span_a] = spans["service-a"]
    [span_b] = spans["service-b"]
    assert (span_a["name"], span_b["name"]) == ("billing.checkout", "billing.charge")
    assert span_a["trace_id"] == span_b["trace_id"] == tid
    assert span_a["parent_span_id"] is None
    assert span_b["parent_span_id"] == span_a["span_id"]
    assert span_a["attributes"]["enduser.id"] == span_b["attributes"]["enduser.id"] == USER
    assert "invariant.violated" in span_b["events"]
    assert span_a["status_code"] == span_b["status_code"] == 2  # ERROR

    # Sentry: B's violation is one event (enforce mode: the failure is not sent again), with
    # A's trace id and user; A's own failure is in the same trace.
    events = _by(sentry_receiver.wait_for(2), lambda e: e["server_name"])
    [event_b] = events["service-b"]
    assert event_b["level"] == "fatal"
    assert event_b["tags"]["invariant"] == "NO_DOUBLE_CHARGE"
    assert event_b["tags"]["subscription_id"] == "sub_1"
    assert event_b["contexts"]["trace"]["trace_id"] == event_b["tags"]["trace_id"] == tid
    assert event_b["user"]["id"] == USER
    [event_a] = events["service-a"]
    assert event_a["exception"]["values"][-1]["type"] == "DownstreamFailed"
    assert (event_a["contexts"]["trace"]["trace_id"], event_a["user"]["id"]) == (tid, USER)

    # PostHog: B's violation and its user-facing failure, user_42's, with the trace id; A sends
    # none (its operation is not user-facing). Events are told apart by project key.
    posthog_receiver.wait_for(2)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for body in posthog_receiver.bodies:  # one batch or several, depending on timing
        by_key.setdefault(body["api_key"], []).extend(body["batch"])
    assert set(by_key) == {"phc_b"}
    assert sorted(m["event"] for m in by_key["phc_b"]) == [
        "billing_charge_failure",
        "invariant_violated",
    ]
    for message in by_key["phc_b"]:
        assert (message["distinct_id"], message["properties"]["trace_id"]) == (USER, tid)

    # Log lines: B's file has the start, the violation and the failure, each with the trace id
    # and the user; so has A's.
    lines_b = b.log_lines()
    assert [line["event"] for line in lines_b if line["level"] == "critical"] == [
        "invariant.violated"
    ]
    assert {line["operation"] for line in lines_b if "operation" in line} == {"charge"}
    assert {(line["trace_id"], line["user_id"]) for line in lines_b} == {(tid, USER)}
    lines_a = a.log_lines()
    assert lines_a
    assert {(line["trace_id"], line["user_id"]) for line in lines_a} == {(tid, USER)}
