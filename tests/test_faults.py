"""The fault matrix: each backend refusing connections, hanging, answering 500, or its SDK raising
inside our sink, with the real SDKs over real sockets on 127.0.0.1.

For every cell: the business function returns and raises exactly what it did before, the call
is not held by the network, the other backends still receive the signal, ``ik.shutdown(timeout=2)``
returns within 2.5 s, and what failed or was dropped is counted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sentry_sdk
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry

import invariantkit as ik
from invariantkit.sinks._posthog import bounded
from support.receivers import OTLPReceiver, PostHogReceiver, SentryReceiver, closed_port_url

BACKENDS = ("sentry", "posthog", "otlp")
FAULTS = ("refused", "hang", "error", "sdk_raises")
SINK_NAMES = {"sentry": "sentry", "posthog": "posthog", "otlp": "otel_traces"}
# "Not blocked on the network": generous, the backends hang forever.
CALL_BOUND = 1.0
SHUTDOWN_BOUND = 2.5


class CardDeclined(Exception):
    """The business exception the failing operation raises."""


class _Lines(logging.Handler):
    """Keeps the JSON log lines invariantkit writes."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.fields: list[dict[str, Any]] = []
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "invariantkit", None)
        if fields is not None:
            self.fields.append(fields)
        self.text.append(self.format(record))


@dataclass
class Pipeline:
    """Every real backend configured through ``ik.configure``, each pointed at a receiver (or at
    a closed port), plus a Prometheus registry and a memory sink to check the fan-out."""

    sentry: SentryReceiver | None
    posthog: PostHogReceiver | None
    otlp: OTLPReceiver | None
    registry: CollectorRegistry
    memory: ik.sinks.Memory
    sentry_client: Any
    posthog_sink: ik.sinks.PostHog
    provider: TracerProvider
    logs: _Lines
    extra: dict[str, Any] = field(default_factory=dict)

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def errors(self, sink: str) -> float:
        return self.metric("invariantkit_sink_errors_total", sink=sink)

    def dropped(self, sink: str) -> float:
        return self.metric("invariantkit_sink_dropped_total", sink=sink)

    def wait_for_metric(self, read: Callable[[], float], minimum: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        value = read()
        while value < minimum and time.monotonic() < deadline:
            time.sleep(0.05)
            value = read()
        return value


def _url(receiver: SentryReceiver | PostHogReceiver | OTLPReceiver | None, closed: str) -> str:
    return receiver.base_url if receiver is not None else closed


@contextlib.contextmanager
def pipeline(
    monkeypatch: pytest.MonkeyPatch,
    *,
    modes: dict[str, str] | None = None,
    sentry_options: dict[str, Any] | None = None,
    posthog_client: Any = None,
) -> Iterator[Pipeline]:
    """Receivers for Sentry, PostHog and OTLP in the given modes ("ok", "error", "hang", or
    "refused": no receiver, a closed port), and ``ik.configure`` with every real sink.

    Teardown waits (bounded) for the SDKs' background threads to give up, so that nothing they
    count later lands in another test's metrics.
    """
    modes = modes or {}
    with contextlib.ExitStack() as stack:
        receivers: dict[str, Any] = {}
        for name, cls in (
            ("sentry", SentryReceiver),
            ("posthog", PostHogReceiver),
            ("otlp", OTLPReceiver),
        ):
            mode = modes.get(name, "ok")
            receivers[name] = None if mode == "refused" else cls(mode)  # type: ignore[arg-type]
        closed = closed_port_url()
        port = closed.rsplit(":", 1)[1]
        sentry_dsn = (
            receivers["sentry"].start().dsn
            if receivers["sentry"] is not None
            else f"http://public@127.0.0.1:{port}/1"
        )
        for name in ("posthog", "otlp"):
            if receivers[name] is not None:
                receivers[name].start()

        options = {**ik.sinks.Sentry.recommended_options(), **(sentry_options or {})}
        client = sentry_sdk.Client(
            dsn=sentry_dsn,
            default_integrations=False,
            auto_enabling_integrations=False,
            **options,
        )
        scope = sentry_sdk.get_global_scope()
        previous_client = scope.client
        scope.set_client(client)

        def close_sentry() -> None:
            scope.set_client(previous_client)
            client.close(timeout=2.0)

        provider = TracerProvider()
        exporter = OTLPSpanExporter(endpoint=_url(receivers["otlp"], closed) + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))

        if posthog_client is None:
            monkeypatch.setenv("POSTHOG_PROJECT_API_KEY", "phc_faultmatrix")
            monkeypatch.setenv("POSTHOG_HOST", _url(receivers["posthog"], closed))
            posthog_sink = ik.sinks.PostHog()
        else:
            posthog_sink = ik.sinks.PostHog(posthog_client)

        registry = CollectorRegistry()
        memory = ik.sinks.Memory()
        lines = _Lines()
        logger = logging.getLogger("invariantkit")
        old_level = logger.level
        logger.addHandler(lines)
        logger.setLevel(logging.DEBUG)

        def restore_logger() -> None:
            logger.removeHandler(lines)
            logger.setLevel(old_level)

        # Teardown, in this order (ExitStack is LIFO): ik.shutdown, stop the receivers (hung
        # requests then fail at once), let the SDKs give up, restore the globals.
        def stop_tracing() -> None:
            # The exporter's shutdown ends its retry loop at once: otherwise it keeps retrying
            # a dead endpoint for up to 10 s (drawing jitter from the global random) into the
            # tests that run next.
            exporter.shutdown()
            bounded(provider.shutdown, 5.0, "test-otel-close")

        stack.callback(stop_tracing)
        stack.callback(restore_logger)
        stack.callback(close_sentry)
        if posthog_client is None:  # the client our sink built: wait until it gave up
            stack.callback(lambda: bounded(posthog_sink.client.shutdown, 10.0, "test-close"))
        for receiver in receivers.values():
            if receiver is not None:
                stack.callback(receiver.stop)
        stack.callback(ik.shutdown, 2.0)  # no-op when the test shut down already
        ik.configure(
            service="billing",
            environment="test",
            sinks=[
                ik.sinks.OtelTraces(provider),
                ik.sinks.PrometheusMetrics(registry),
                ik.sinks.Sentry(),
                posthog_sink,
                ik.sinks.JsonLogs(),
                memory,
            ],
        )
        yield Pipeline(
            sentry=receivers["sentry"],
            posthog=receivers["posthog"],
            otlp=receivers["otlp"],
            registry=registry,
            memory=memory,
            sentry_client=client,
            posthog_sink=posthog_sink,
            provider=provider,
            logs=lines,
        )


NO_DOUBLE_CHARGE_FAULT = "FAULT_NO_DOUBLE_CHARGE"


@dataclass
class Outcome:
    result: Any
    raised: BaseException | None
    original: BaseException
    elapsed: float


def run_billing_code() -> Outcome:
    """A billing function under instrumentation: one success with a violation inside, one
    failure. Returns what it returned and raised, and how long the calls took."""
    invariant = ik.Invariant(
        NO_DOUBLE_CHARGE_FAULT, type="double_charge", summary="A subscription was charged twice"
    )
    original = CardDeclined("card declined")

    @ik.billing_operation("fault_charge", user_facing=True)
    def charge(amount: int) -> int:
        ik.assert_invariant(False, invariant, tags={"subscription_id": "sub_1"})
        return amount * 2

    @ik.billing_operation("fault_refund", user_facing=True)
    def refund() -> None:
        raise original

    start = time.monotonic()
    with ik.identify("user_1"):
        result = charge(21)
        raised: BaseException | None = None
        try:
            refund()
        except CardDeclined as exc:
            raised = exc
    return Outcome(result, raised, original, time.monotonic() - start)


def assert_business_unchanged(outcome: Outcome) -> None:
    assert outcome.result == 42
    assert outcome.raised is outcome.original
    assert outcome.raised.__traceback__ is not None
    assert outcome.elapsed < CALL_BOUND, f"the calls took {outcome.elapsed:.2f}s"


def assert_delivered(p: Pipeline, backend: str) -> None:
    """The healthy ``backend`` received the violation and both outcomes."""
    if backend == "sentry":
        assert p.sentry is not None
        events = p.sentry.wait_for(2, timeout=10)
        messages = [e.get("message") or e.get("logentry", {}).get("message") for e in events]
        assert NO_DOUBLE_CHARGE_FAULT in messages
        types = [v["type"] for e in events for v in e.get("exception", {}).get("values", [])]
        assert "CardDeclined" in types
    elif backend == "posthog":
        assert p.posthog is not None
        p.posthog.wait_until(
            lambda: (
                {
                    "invariant_violated",
                    "billing_fault_charge_success",
                    "billing_fault_refund_failure",
                }
                <= {e["event"] for e in p.posthog._events}
            ),
            timeout=10,
            message="the three PostHog events",
        )
    elif backend == "otlp":
        assert p.otlp is not None
        p.otlp.wait_until(
            lambda: (
                {"billing.fault_charge", "billing.fault_refund"}
                <= {s["name"] for s in p.otlp._spans}
            ),
            timeout=10,
            message="both spans",
        )


def assert_fanned_out(p: Pipeline) -> None:
    """The in-process sinks got every signal."""
    kinds = [(r.kind, r.name, r.status) for r in p.memory.records]
    assert ("violation", NO_DOUBLE_CHARGE_FAULT, "violated") in kinds
    assert ("operation", "fault_charge", "success") in kinds
    assert ("operation", "fault_refund", "failure") in kinds
    assert p.metric("billing_invariant_violation_total", invariant=NO_DOUBLE_CHARGE_FAULT) == 1
    assert (
        p.metric(
            "billing_operation_errors_total", operation="fault_refund", error_type="CardDeclined"
        )
        == 1
    )
    events = {line["event"] for line in p.logs.fields}
    assert {"invariant.violated", "operation.end"} <= events


def _break_sdk(backend: str, p: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the SDK broke (injected by the test)")

    if backend == "sentry":
        monkeypatch.setattr(p.sentry_client, "capture_event", boom)
    elif backend == "posthog":
        monkeypatch.setattr(p.posthog_sink.client, "capture", boom)
    elif backend == "otlp":
        # Only the call our sink makes (the violation's span event); see
        # test_span_sdk_raising_on_the_call_path for the SDK failing everywhere.
        real_add_event = SdkSpan.add_event

        def add_event(self: SdkSpan, name: str, *args: Any, **kwargs: Any) -> None:
            if name == "invariant.violated":
                boom()
            real_add_event(self, name, *args, **kwargs)

        monkeypatch.setattr(SdkSpan, "add_event", add_event)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fault_matrix(backend: str, fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend refusing, hanging, answering 500 or raising changes nothing for billing code,
    the other backends still receive every signal, shutdown stays bounded, failures are counted."""
    mode = {"refused": "refused", "hang": "hang", "error": "error", "sdk_raises": "ok"}[fault]
    with pipeline(monkeypatch, modes={backend: mode}) as p:
        if fault == "sdk_raises":
            _break_sdk(backend, p, monkeypatch)

        outcome = run_billing_code()
        assert_business_unchanged(outcome)

        for other in BACKENDS:
            if other != backend:
                assert_delivered(p, other)
        assert_fanned_out(p)

        sink = SINK_NAMES[backend]
        if fault == "sdk_raises":
            # PostHog: the violation, the charge's success and the refund's failure; OTLP: the
            # violation's span event. Sentry: the violation; the refund's exception is not
            # counted, because sentry_sdk's Scope.capture_exception swallows what
            # capture_event raises (capture_internal_exception) before it reaches our sink.
            expected = {"posthog": 3, "otel_traces": 1}.get(sink)
            if expected is None:
                assert p.wait_for_metric(lambda: p.errors(sink), 1, timeout=5) >= 1
            else:
                assert p.wait_for_metric(lambda: p.errors(sink), expected, timeout=5) == expected
            # Each record the sink raised on did not reach its SDK: counted as dropped too.
            assert p.dropped(sink) == p.errors(sink)
        else:
            receiver = getattr(p, backend)
            if receiver is not None:  # the SDK did try to deliver
                receiver.wait_until(lambda: receiver.received, timeout=10, message="a request")
            assert p.errors(sink) == 0  # nothing raised into our sink: the SDK queued it
            if fault in ("refused", "error") and backend in ("sentry", "posthog"):
                # The SDK gave up on the batch: the loss is counted, not silent.
                assert p.wait_for_metric(lambda: p.dropped(sink), 1, timeout=15) >= 1
            if fault == "hang" and backend == "posthog":
                # Our client's 2 s timeout and single retry bound the hang: the batch fails and
                # is counted within seconds, not after a minute.
                assert p.wait_for_metric(lambda: p.dropped(sink), 1, timeout=15) >= 1

        start = time.monotonic()
        ik.shutdown(timeout=2)
        took = time.monotonic() - start
        assert took < SHUTDOWN_BOUND, f"ik.shutdown(timeout=2) took {took:.2f}s"


def test_all_backends_down_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dead Sentry, hanging PostHog and dead OTLP endpoint together: same results, fast calls,
    bounded shutdown, metrics and logs still complete."""
    with pipeline(
        monkeypatch, modes={"sentry": "refused", "posthog": "hang", "otlp": "refused"}
    ) as p:
        outcomes = [run_billing_code() for _ in range(20)]
        for outcome in outcomes:
            assert_business_unchanged(outcome)
        assert p.metric("billing_invariant_violation_total", invariant=NO_DOUBLE_CHARGE_FAULT) == 20
        assert p.wait_for_metric(lambda: p.dropped("sentry"), 1, timeout=15) >= 1
        start = time.monotonic()
        ik.shutdown(timeout=2)
        assert time.monotonic() - start < SHUTDOWN_BOUND
        violations = [line for line in p.logs.fields if line["event"] == "invariant.violated"]
        assert len(violations) == 20


def test_sentry_queue_overflow_under_a_hang_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """With Sentry hanging and a small transport queue, the events Sentry's transport cannot hold
    are counted in ``invariantkit_sink_dropped_total{sink="sentry"}``, never lost silently."""
    with pipeline(
        monkeypatch, modes={"sentry": "hang"}, sentry_options={"transport_queue_size": 10}
    ) as p:
        invariant = ik.Invariant("FAULT_OVERFLOW", type="overflow", summary="overflow")
        assert p.sentry is not None
        ik.report_violation(invariant, tags={"n": "0"})
        p.sentry.wait_until(lambda: p.sentry.received, timeout=10, message="the first envelope")
        start = time.monotonic()
        for i in range(1, 50):
            ik.report_violation(invariant, tags={"n": str(i)})
        assert time.monotonic() - start < CALL_BOUND
        # One envelope hangs in flight and 10 wait in the queue: the other 39 are dropped (the
        # sink hands events to Sentry on its own worker, so the count arrives shortly after).
        assert p.wait_for_metric(lambda: p.dropped("sentry"), 39, timeout=10) == 39
        assert p.metric("billing_invariant_violation_total", invariant="FAULT_OVERFLOW") == 50
        start = time.monotonic()
        ik.shutdown(timeout=2)
        assert time.monotonic() - start < SHUTDOWN_BOUND


def test_posthog_client_built_by_the_user_with_recommended_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client the user builds with the options docs/guarantees.md recommends is bounded too:
    a hanging host costs a counted batch, not a blocked shutdown, and the client stays open."""
    import posthog

    with PostHogReceiver("hang") as receiver:
        client = posthog.Posthog(
            "phc_user_client",
            host=receiver.host,
            on_error=ik.sinks.PostHog.count_failed_batch,
            **ik.sinks.PostHog.CLIENT_DEFAULTS,
        )
        try:
            with pipeline(monkeypatch, posthog_client=client) as p:
                outcome = run_billing_code()
                assert_business_unchanged(outcome)
                assert_delivered(p, "sentry")
                assert p.wait_for_metric(lambda: p.dropped("posthog"), 1, timeout=15) >= 1
                start = time.monotonic()
                ik.shutdown(timeout=2)
                assert time.monotonic() - start < SHUTDOWN_BOUND
                # invariantkit flushed the user's client but did not shut it down.
                assert client.capture("still_open", distinct_id="u") is not None
        finally:
            receiver.stop()
            bounded(client.shutdown, 10.0, "test-posthog-close")


def test_posthog_defaults_would_block_without_our_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostHog's own defaults (15 s timeout, 3 retries) on a hanging host: its ``flush()`` would
    block for seconds; through invariantkit, ``ik.flush`` and ``ik.shutdown`` keep their bound."""
    import posthog

    with PostHogReceiver("hang") as receiver:
        client = posthog.Posthog("phc_defaults", host=receiver.host)
        try:
            with pipeline(monkeypatch, posthog_client=client) as p:
                assert_business_unchanged(run_billing_code())
                start = time.monotonic()
                assert ik.flush(timeout=1) is False  # not delivered: said so, within the bound
                assert time.monotonic() - start < 2.5  # vs PostHog's own 7 s, OTel's 10 s
                receiver.wait_until(lambda: receiver.received, timeout=10, message="a batch")
                start = time.monotonic()
                ik.shutdown(timeout=2)
                assert time.monotonic() - start < SHUTDOWN_BOUND
                assert p.errors("posthog") == 0
        finally:
            receiver.stop()
            # PostHog's defaults retry for seconds more: let its daemon threads finish alone
            # (this client counts nothing, so nothing can land in another test's metrics).
            bounded(client.shutdown, 0.5, "test-posthog-close")


def test_otel_force_flush_ignoring_its_timeout_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's ``BatchSpanProcessor.force_flush`` ignores its timeout and exports inline; with
    a hanging OTLP endpoint (exporter timeout 10 s) ``ik.flush(timeout=1)`` still returns in time
    and the other sinks are flushed meanwhile."""
    with pipeline(monkeypatch, modes={"otlp": "hang"}) as p:
        assert_business_unchanged(run_billing_code())
        assert p.otlp is not None
        p.otlp.wait_until(lambda: p.otlp.received, timeout=10, message="an export")
        with ik.identify("user_2"):
            assert_business_unchanged(run_billing_code())
        start = time.monotonic()
        assert ik.flush(timeout=1) is False
        assert time.monotonic() - start < 2.5  # vs PostHog's own 7 s, OTel's 10 s
        assert_delivered(p, "sentry")
        assert_delivered(p, "posthog")


def test_span_sdk_raising_on_the_call_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracing SDK raising on every span call: the other backends still get every signal."""
    with pipeline(monkeypatch) as p:

        def boom(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("the tracing SDK broke (injected by the test)")

        monkeypatch.setattr(SdkSpan, "add_event", boom)
        monkeypatch.setattr(SdkSpan, "record_exception", boom)
        assert_business_unchanged(run_billing_code())
        ik.flush(timeout=5)  # log lines are written on the worker
        assert_fanned_out(p)
        assert_delivered(p, "sentry")
        assert_delivered(p, "posthog")


# -- Pushgateway: cron runs push their metrics when they end ------------------------------------

PUSH_TIMEOUT = 0.5


def _cron_pipeline(monkeypatch: pytest.MonkeyPatch, address: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    memory = ik.sinks.Memory()
    ik.configure(
        service="billing",
        sinks=[
            ik.sinks.PrometheusMetrics(registry, pushgateway=address, push_timeout=PUSH_TIMEOUT),
            ik.sinks.JsonLogs(),
            memory,
        ],
    )
    return registry


def _run_cron() -> tuple[Any, BaseException | None, float]:
    cron = ik.monitor_cron("fault_renewal", every=3600, max_runtime=60)
    original = CardDeclined("provider down")
    start = time.monotonic()
    with cron as run:
        run.processed += 3
        result = "done"
    raised: BaseException | None = None
    try:
        with cron:
            raise original
    except CardDeclined as exc:
        raised = exc
    assert raised is original
    elapsed = time.monotonic() - start
    ik.flush(timeout=5)  # the pushes happen on the sink's export worker
    return result, raised, elapsed


def _cron_metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return sum(
        s.value
        for f in registry.collect()
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.mark.slow
def test_pushgateway_ok_receives_the_run(monkeypatch: pytest.MonkeyPatch, pushgateway: Any) -> None:
    """The healthy column: a real Pushgateway has the cron's gauges after the run ends."""
    _cron_pipeline(monkeypatch, pushgateway.address)
    result, _, _ = _run_cron()
    assert result == "done"
    assert pushgateway.metric_value("cron_fault_renewal_last_status") == 0
    assert pushgateway.metric_value("cron_fault_renewal_processed") == 0
    start = time.monotonic()
    ik.shutdown(timeout=2)
    assert time.monotonic() - start < SHUTDOWN_BOUND


@pytest.mark.parametrize("fault", FAULTS)
def test_pushgateway_fault(fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pushgateway refusing, hanging, answering 500 or the client raising: the cron's result and
    exception are unchanged, the job never waits on the push (it runs on the sink's export
    worker, which flush/shutdown/the exit drain wait for within their bound), the in-process
    metrics and logs have the run, the lost push is counted, shutdown is bounded."""
    import prometheus_client

    from support.receivers import WebhookReceiver

    with contextlib.ExitStack() as stack:
        if fault == "refused":
            address = closed_port_url()
        else:
            receiver = stack.enter_context(
                WebhookReceiver("ok" if fault == "sdk_raises" else fault)
            )  # type: ignore[arg-type]
            address = receiver.base_url
        if fault == "sdk_raises":

            def boom(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError("the Prometheus client broke (injected by the test)")

            monkeypatch.setattr(prometheus_client, "pushadd_to_gateway", boom)
        registry = _cron_pipeline(monkeypatch, address)
        result, raised, elapsed = _run_cron()
        assert result == "done"
        assert isinstance(raised, CardDeclined)
        # Two runs; neither waits on its push, even against a Pushgateway that hangs.
        assert elapsed < CALL_BOUND
        assert _cron_metric(registry, "cron_fault_renewal_last_status") == 0
        assert _cron_metric(registry, "invariantkit_sink_dropped_total", sink="prometheus") == 2
        start = time.monotonic()
        ik.shutdown(timeout=2)
        assert time.monotonic() - start < SHUTDOWN_BOUND
