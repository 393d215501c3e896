"""Sink behaviour: isolation of a failing sink, OtelMetrics through the SDK, JsonLogs lines,
OtelTraces span events, Memory."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import StatusCode

import invariantkit as ik
from invariantkit import billing
from invariantkit._record import Record
from invariantkit.sinks._otel_metrics import DURATION_BUCKETS
from invariantkit.testing import Signals, capture_signals

if TYPE_CHECKING:
    from collections.abc import Iterator


class Boom(RuntimeError):
    pass


class RaisingSink:
    """A sink whose backend is broken: every emit raises."""

    name: ClassVar[str] = "raising"
    deferred: ClassVar[bool] = False

    def __init__(self) -> None:
        self.calls = 0

    def emit(self, record: Record) -> None:
        if record.kind in ("declare", "sink_error", "sink_dropped"):
            return
        self.calls += 1
        raise Boom("backend exploded")

    def flush(self, timeout: float) -> bool:
        raise Boom("flush exploded")

    def shutdown(self, timeout: float) -> bool:
        raise Boom("shutdown exploded")


class RaisingDeferredSink(RaisingSink):
    name: ClassVar[str] = "raising_deferred"
    deferred: ClassVar[bool] = True


class PaymentDeclined(Exception):
    pass


# ------------------------------------------------------------------------------ isolation


class TestIsolation:
    @pytest.mark.parametrize("sink_class", [RaisingSink, RaisingDeferredSink])
    def test_a_raising_sink_is_counted_and_never_reaches_the_caller(
        self, sink_class: type[RaisingSink], caplog: pytest.LogCaptureFixture
    ) -> None:
        """Its failures are counted per sink, logged once; every other sink still gets each
        signal; the caller sees its own result and its own exception."""
        broken = sink_class()
        with capture_signals(extra_sinks=(broken,)) as signals:  # type: ignore[arg-type]

            @ik.billing_operation("renewal", user_facing=True)
            def renew(fail: bool) -> str:
                if fail:
                    raise PaymentDeclined("declined")
                return "ok"

            original: list[BaseException] = []
            with ik.identify("user_1"):
                assert renew(False) == "ok"
                try:
                    renew(True)
                except PaymentDeclined as exc:
                    original.append(exc)
                assert ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE) is False
            assert len(original) == 1
            assert str(original[0]) == "declined"
            assert signals.metric("invariantkit_sink_errors_total", sink=broken.name) == 5
            assert broken.calls == 5  # 2 starts, 2 ends, 1 violation
            # Every other sink got everything.
            assert len(signals.spans) == 3
            assert len(signals.sentry_events) == 2
            assert len(signals.posthog_events) == 3
            assert len(signals.logs) == 5
            assert signals.metric("billing_operation_total", operation="renewal") == 2
            signals.assert_correlated()
        warnings = [r for r in caplog.records if "sink 'raising" in r.getMessage()]
        assert len(warnings) == 1
        assert "Boom" in warnings[0].getMessage()

    def test_flush_and_shutdown_of_a_raising_sink_return_false(self) -> None:
        """``ik.flush`` never raises; it reports that not everything was handed over."""
        broken = RaisingSink()
        memory = ik.sinks.Memory()
        try:
            ik.configure(sinks=[broken, memory])
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
            assert ik.flush(1.0) is False
            # The violation the sink raised on is counted as dropped for it (reason "error").
            assert sorted(r.kind for r in memory.records) == [
                "sink_dropped",
                "sink_error",
                "sink_error",
                "violation",
            ]
        finally:
            assert ik.shutdown(1.0) is False

    def test_a_sink_that_raises_base_exception_subclasses_of_exception_only(self) -> None:
        """Isolation covers ``Exception`` from sinks; the business exception stays intact even
        when every sink fails on the failure path."""
        with capture_signals(
            traces=False, metrics=False, sentry=False, posthog=False, extra_sinks=(RaisingSink(),)
        ):

            @ik.billing_operation("renewal")
            def renew() -> None:
                raise PaymentDeclined("x")

            with pytest.raises(PaymentDeclined, match="x"):
                renew()


# ------------------------------------------------------------------------------ OtelMetrics


@pytest.fixture
def otel_metrics() -> Iterator[tuple[InMemoryMetricReader, MeterProvider]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        yield reader, provider
    finally:
        provider.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Metric name -> data points."""
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    if data is None:
        return out
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def point(points: list[Any], **labels: str) -> Any:
    [match] = [p for p in points if all(p.attributes.get(k) == v for k, v in labels.items())]
    return match


class TestOtelMetrics:
    def test_operations_violations_and_zero_series(
        self, otel_metrics: tuple[InMemoryMetricReader, MeterProvider]
    ) -> None:
        """Counts, error types, the duration histogram in seconds, series at zero when declared."""
        reader, provider = otel_metrics
        with capture_signals(extra_sinks=(ik.sinks.OtelMetrics(provider),)):

            @ik.billing_operation("renewal")
            def renew(fail: bool) -> None:
                if fail:
                    raise PaymentDeclined

            @ik.billing_operation("declared_only")
            def declared_only() -> None:
                return None

            renew(False)
            renew(False)
            with pytest.raises(PaymentDeclined):
                renew(True)
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
            metrics = collect(reader)
        ops = metrics["billing_operation"]
        assert point(ops, operation="renewal", outcome="success").value == 2
        assert point(ops, operation="renewal", outcome="failure").value == 1
        assert point(ops, operation="declared_only", outcome="success").value == 0
        errors = metrics["billing_operation_errors"]
        [declined] = [p for p in errors if p.attributes.get("error.type") == "PaymentDeclined"]
        assert declined.value == 1  # OTel semconv's attribute name
        hist = point(metrics["billing_operation_duration"], operation="renewal", outcome="success")
        assert tuple(hist.explicit_bounds) == DURATION_BUCKETS
        assert hist.count == 2
        violations = metrics["billing_invariant_violation"]
        assert point(violations, invariant="NO_DOUBLE_CHARGE", test="false").value == 1
        assert point(violations, invariant="CANCELED_NEVER_CHARGED").value == 0

    def test_durations_are_bucketed_in_seconds(
        self, otel_metrics: tuple[InMemoryMetricReader, MeterProvider]
    ) -> None:
        """3 ms, 30 ms and 2 s land in the Prometheus sink's buckets (not the SDK's ms ones)."""
        reader, provider = otel_metrics
        sink = ik.sinks.OtelMetrics(provider)
        for duration in (0.003, 0.03, 2.0):
            sink.emit(Record("operation", "renewal", "success", "", "", None, 0.0, duration))
        [hist] = collect(reader)["billing_operation_duration"]
        counts = dict(zip((*DURATION_BUCKETS, float("inf")), hist.bucket_counts, strict=True))
        assert {bound for bound, count in counts.items() if count} == {0.005, 0.05, 2.5}

    def test_sink_errors_and_constraints(
        self, otel_metrics: tuple[InMemoryMetricReader, MeterProvider]
    ) -> None:
        """Sink errors are counted per sink; constraint checks set the gauge."""
        reader, provider = otel_metrics
        sink = ik.sinks.OtelMetrics(provider)
        now = time.time()
        sink.emit(
            Record("sink_error", "posthog", "error", "", "", None, now, attributes={"count": 2})
        )
        sink.emit(Record("constraint", "payments_idx", "present", "", "", None, now))
        sink.emit(Record("constraint", "refunds_idx", "missing", "", "", None, now))
        metrics = collect(reader)
        assert point(metrics["invariantkit_sink_errors"], sink="posthog").value == 2
        gauge = metrics["pg_constraint_exists"]
        assert point(gauge, constraint="payments_idx").value == 1
        assert point(gauge, constraint="refunds_idx").value == 0

    def test_error_types_are_bounded(
        self, otel_metrics: tuple[InMemoryMetricReader, MeterProvider]
    ) -> None:
        """More than 100 exception classes fold into ``other``: series stay bounded."""
        reader, provider = otel_metrics
        sink = ik.sinks.OtelMetrics(provider)
        for i in range(150):
            exc = type(f"Error{i}", (Exception,), {})()
            sink.emit(
                Record("operation", "renewal", "failure", "", "", None, 0.0, 0.1, exception=exc)
            )
        points = collect(reader)["billing_operation_errors"]
        assert len(points) == 101
        [other] = [p for p in points if p.attributes.get("error.type") == "other"]
        assert other.value == 50

    def test_configure_twice_with_one_provider_reuses_instruments(
        self,
        otel_metrics: tuple[InMemoryMetricReader, MeterProvider],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Reconfiguring creates no duplicate instrument (no SDK conflict warning) and counts on."""
        reader, provider = otel_metrics

        @ik.billing_operation("renewal")
        def renew() -> None:
            return None

        try:
            for _ in range(3):
                ik.configure(sinks=[ik.sinks.OtelMetrics(provider)])
                renew()
        finally:
            ik.shutdown()
        assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]
        ops = collect(reader)["billing_operation"]
        assert point(ops, operation="renewal", outcome="success").value == 3


# ------------------------------------------------------------------------------ JsonLogs


@pytest.fixture
def json_stream() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through ``ik.JsonFormatter`` to a stream, as a service would set it up."""
    logger = logging.getLogger("invariantkit.test_sinks")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ik.JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestJsonLogs:
    def test_operation_lines(self, json_stream: tuple[logging.Logger, io.StringIO]) -> None:
        """Start at debug, end at info (error on failure), one JSON object per line."""
        logger, stream = json_stream
        with capture_signals(extra_sinks=(ik.sinks.JsonLogs(logger),)) as signals:

            @ik.billing_operation("renewal", attributes={"tier": "plus"})
            def renew(fail: bool) -> None:
                if fail:
                    raise PaymentDeclined("card 4242 4242 4242 4242 declined")

            with ik.identify("user_42"):
                renew(False)
                with pytest.raises(PaymentDeclined):
                    renew(True)
            ok_span, failed_span = signals.spans
        start, end, fstart, fend = lines(stream)
        ok_tid = format(ok_span.context.trace_id, "032x")
        assert start == {
            "timestamp": start["timestamp"],
            "level": "debug",
            "logger": "invariantkit",
            "event": "operation.start",
            "service": "test",
            "environment": "test",
            "trace_id": ok_tid,
            "span_id": format(ok_span.context.span_id, "016x"),
            "user_id": "user_42",
            "operation": "renewal",
            "domain": "billing",
            "attributes": {"tier": "plus"},
        }
        assert start["timestamp"].endswith("+00:00")
        assert (end["level"], end["event"], end["outcome"]) == ("info", "operation.end", "success")
        assert end["trace_id"] == ok_tid
        assert isinstance(end["duration_ms"], float)
        assert (fstart["level"], fend["level"], fend["outcome"]) == ("debug", "error", "failure")
        assert fend["trace_id"] == format(failed_span.context.trace_id, "032x")
        assert fend["error_type"] == "PaymentDeclined"
        assert "4242" not in fend["error_message"]  # card numbers never leave the process
        assert fend["error_message"].startswith("card ")

    def test_violation_line(self, json_stream: tuple[logging.Logger, io.StringIO]) -> None:
        """Violations are CRITICAL (WARNING in alert test mode) with the invariant's fields."""
        logger, stream = json_stream
        with capture_signals(extra_sinks=(ik.sinks.JsonLogs(logger),)):
            ik.assert_invariant(
                False,
                billing.NO_DOUBLE_CHARGE,
                tags={"subscription_id": "sub_1"},
                extra={"charges_today": 2},
            )
        [line] = lines(stream)
        assert line["level"] == "critical"
        assert line["event"] == "invariant.violated"
        assert line["invariant"] == "NO_DOUBLE_CHARGE"
        assert line["type"] == "double_charge"
        assert line["severity"] == "critical"
        assert line["team"] == "billing"
        assert line["tags"] == {"subscription_id": "sub_1"}
        assert line["extra"] == {"charges_today": 2}
        # Alert test mode never relabels a real violation; a test alert is a warning, marked.
        with capture_signals(test_mode=True, extra_sinks=(ik.sinks.JsonLogs(logger),)):
            ik.report_violation(billing.NO_DOUBLE_CHARGE)
            ik.fire_test_alert(billing.NO_DOUBLE_CHARGE)
        real, test = lines(stream)[1:]
        assert (real["level"], "test" in real) == ("critical", False)
        assert (test["level"], test["test"]) == ("warning", True)

    def test_logger_level_filters_lines(
        self, json_stream: tuple[logging.Logger, io.StringIO]
    ) -> None:
        """At INFO the debug start line is not even built; end lines still are."""
        logger, stream = json_stream
        logger.setLevel(logging.INFO)
        with capture_signals(traces=False, extra_sinks=(ik.sinks.JsonLogs(logger),)):

            @ik.billing_operation("renewal")
            def renew() -> None:
                return None

            renew()
        assert [line["event"] for line in lines(stream)] == ["operation.end"]

    def test_structured_fields_on_the_log_record(self) -> None:
        """Structured handlers read ``record.invariantkit``; the message is the same JSON. The
        log record holds what ``makeRecord`` would have put there (the thread that wrote it,
        the process, the level, the time of the signal), and a record factory the service
        installed (to add its own fields) is still used."""
        seen: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record)

        logger = logging.getLogger("invariantkit.test_structured")
        logger.addHandler(Keep())
        logger.setLevel(logging.INFO)
        sink = ik.sinks.JsonLogs(logger)
        record = Record("event", "subscription_started", "tracked", "ab" * 16, "cd" * 8, "u1", 1e9)
        sink.emit(record)
        [log_record] = seen
        fields = log_record.invariantkit  # type: ignore[attr-defined]
        assert json.loads(log_record.getMessage()) == fields
        assert fields["event"] == "product.event"
        assert fields["name"] == "subscription_started"
        assert log_record.created == 1e9
        assert log_record.levelno == logging.INFO
        made = logging.LogRecord(logger.name, logging.INFO, "invariantkit", 0, "x", (), None)
        for name in ("thread", "threadName", "process", "processName", "module", "funcName"):
            assert getattr(log_record, name) == getattr(made, name), name
        factory = logging.getLogRecordFactory()

        def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
            tagged_record = factory(*args, **kwargs)
            tagged_record.deployment = "blue"
            return tagged_record

        logging.setLogRecordFactory(tagged)
        try:
            sink.emit(record)
        finally:
            logging.setLogRecordFactory(factory)
        assert seen[-1].deployment == "blue"  # type: ignore[attr-defined]
        assert seen[-1].created == 1e9

    def test_formatter_renders_other_records_as_json(self) -> None:
        """``JsonFormatter`` on a record that is not ours still writes one JSON line."""
        formatter = ik.JsonFormatter()
        try:
            raise ValueError("bad")
        except ValueError:
            import sys

            record = logging.LogRecord(
                "app", logging.ERROR, __file__, 1, "hello %s", ("world",), sys.exc_info()
            )
        fields = json.loads(formatter.format(record))
        assert fields["message"] == "hello world"
        assert fields["level"] == "error"
        assert fields["logger"] == "app"
        assert "ValueError: bad" in fields["exception"]

    def test_lines_drained_at_shutdown_keep_the_service(self) -> None:
        """Lines still queued when ``ik.shutdown`` runs carry the configured service name."""
        kept: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                kept.append(record.getMessage())

        logger = logging.getLogger("invariantkit.test_shutdown")
        handler = Keep()
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        release = threading.Event()

        class Slow:
            name: ClassVar[str] = "slow"
            deferred: ClassVar[bool] = True

            def emit(self, record: Record) -> None:
                release.wait(5)

            def flush(self, timeout: float) -> bool:
                return True

            def shutdown(self, timeout: float) -> bool:
                return True

        try:
            ik.configure(service="billing-api", sinks=[Slow(), ik.sinks.JsonLogs(logger)])
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
            release.set()
            ik.shutdown(5.0)
        finally:
            logger.removeHandler(handler)
        [line] = [json.loads(x) for x in kept]
        assert line["service"] == "billing-api"

    def test_bad_logger_argument(self) -> None:
        """A logger must be a name or a ``logging.Logger``."""
        with pytest.raises(TypeError, match=r"must be a logger name or a logging\.Logger"):
            ik.sinks.JsonLogs(logger=42)  # type: ignore[arg-type]


class _Counting(io.StringIO):
    """A stream that counts the writes and flushes it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


class _Failing(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("disk full")


def _operation(i: int, status: str = "success", **kw: Any) -> Record:
    decl = ik.operation("batched_renewal")
    values: dict[str, Any] = {
        "kind": "operation",
        "name": "batched_renewal",
        "status": status,
        "trace_id": f"{i:032x}",
        "span_id": f"{i:016x}",
        "user_id": f"user_{i}",
        "timestamp": 1.7e9 + i,
        "duration": 0.004,
        "declaration": decl,
    }
    values.update(kw)
    return Record(**values)


def _writer_logger(name: str, stream: io.StringIO, level: int = logging.DEBUG) -> logging.Logger:
    logger = logging.getLogger(name)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ik.JsonFormatter())
    handler.setLevel(level)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


class TestJsonLogsBatch:
    """The worker hands the sink a batch: the lines a stream handler would have written one by
    one, in one write, and every other handler still gets its ``LogRecord``."""

    def test_a_stream_handler_gets_the_batch_in_one_write_and_one_flush(self) -> None:
        stream = _Counting()
        logger = _writer_logger("invariantkit.test_batch_one_write", stream)
        ik.sinks.JsonLogs(logger).emit_batch([_operation(i) for i in range(50)])
        assert (stream.writes, stream.flushes) == (1, 1)
        docs = [_strict_loads(line) for line in stream.getvalue().splitlines()]
        assert [d["trace_id"] for d in docs] == [f"{i:032x}" for i in range(50)]
        assert docs[7]["user_id"] == "user_7"
        assert docs[7]["duration_ms"] == 4.0
        assert docs[7]["operation"] == "batched_renewal"

    def test_the_lines_are_the_bytes_handle_would_have_written(self) -> None:
        """Byte for byte what the stdlib's handle() writes, line by line (a subclass of
        StreamHandler takes that path), including a record only the generic path encodes."""
        records = [
            _operation(1),
            _operation(2, attributes={"plan": "pro", "seats": 3}),
            _operation(3, status="failure", exception=ValueError("declined")),
            _operation(4, duration=float("nan")),
            Record(
                "violation",
                "NO_DOUBLE_CHARGE",
                "violated",
                "ab" * 16,
                "cd" * 8,
                None,
                1e9,
                attributes={"ratio": float("inf")},
                declaration=billing.NO_DOUBLE_CHARGE,
            ),
            Record("event", "subscription_started", "tracked", "ab" * 16, "cd" * 8, "u1", 1e9),
        ]

        class OneByOne(logging.StreamHandler):  # type: ignore[type-arg]
            """Not the stdlib's own class: each line goes through handle()."""

        fast, slow = io.StringIO(), io.StringIO()
        _writer_logger("invariantkit.test_batch_fast", fast)
        slow_logger = logging.getLogger("invariantkit.test_batch_slow")
        handler = OneByOne(slow)
        handler.setFormatter(ik.JsonFormatter())
        slow_logger.handlers[:] = [handler]
        slow_logger.setLevel(logging.DEBUG)
        slow_logger.propagate = False
        context = ik.sinks.SinkContext(service="billing-api")
        for name in ("invariantkit.test_batch_fast", "invariantkit.test_batch_slow"):
            sink = ik.sinks.JsonLogs(name)
            sink.bind(context)
            sink.emit_batch(records)
        assert fast.getvalue() == slow.getvalue()
        assert len(fast.getvalue().splitlines()) == len(records)
        for line in fast.getvalue().splitlines():
            assert _strict_loads(line)["service"] == "billing-api"

    def test_other_handlers_on_the_way_still_get_a_log_record_each(self) -> None:
        seen: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record)

        parent = logging.getLogger("invariantkit.test_batch_parent")
        keep = Keep()
        parent.handlers[:] = [keep]
        stream = _Counting()
        child = _writer_logger("invariantkit.test_batch_parent.child", stream)
        child.propagate = True
        try:
            ik.sinks.JsonLogs(child).emit_batch([_operation(i) for i in range(5)])
        finally:
            parent.handlers[:] = []
        assert stream.writes == 1
        assert [r.invariantkit["trace_id"] for r in seen] == [f"{i:032x}" for i in range(5)]  # type: ignore[attr-defined]
        assert [json.loads(r.getMessage()) for r in seen] == lines(stream)

    def test_handler_levels_and_filters_still_apply(self) -> None:
        warnings_only = io.StringIO()
        logger = _writer_logger("invariantkit.test_batch_levels", warnings_only, logging.WARNING)
        filtered = io.StringIO()
        handler = logging.StreamHandler(filtered)
        handler.setFormatter(ik.JsonFormatter())
        handler.addFilter(lambda record: "user_3" not in record.getMessage())
        logger.addHandler(handler)
        violation = Record(
            "violation",
            "NO_DOUBLE_CHARGE",
            "violated",
            "ab" * 16,
            "cd" * 8,
            "user_9",
            1e9,
            declaration=billing.NO_DOUBLE_CHARGE,
        )
        ik.sinks.JsonLogs(logger).emit_batch([_operation(i) for i in range(5)] + [violation])
        assert [d["event"] for d in lines(warnings_only)] == ["invariant.violated"]
        assert [d["user_id"] for d in lines(filtered)] == [
            "user_0",
            "user_1",
            "user_2",
            "user_4",
            "user_9",
        ]

    def test_a_failing_stream_goes_to_handle_error_and_the_others_still_get_their_lines(
        self,
    ) -> None:
        errors: list[logging.LogRecord] = []
        logger = _writer_logger("invariantkit.test_batch_failing", _Failing())
        logger.handlers[0].handleError = errors.append  # type: ignore[method-assign]
        good = io.StringIO()
        handler = logging.StreamHandler(good)
        handler.setFormatter(ik.JsonFormatter())
        logger.addHandler(handler)
        ik.sinks.JsonLogs(logger).emit_batch([_operation(i) for i in range(3)])
        assert len(errors) == 1
        assert len(lines(good)) == 3

    def test_a_record_that_cannot_be_written_is_counted_and_the_rest_are_written(self) -> None:
        class BrokenDecl:
            @property
            def domain(self) -> str:
                raise RuntimeError("broken declaration")

        dropped: list[tuple[str, int, str]] = []
        stream = io.StringIO()
        sink = ik.sinks.JsonLogs(_writer_logger("invariantkit.test_batch_broken", stream))
        sink.bind(
            ik.sinks.SinkContext(count_dropped=lambda *args: dropped.append(args))  # type: ignore[arg-type]
        )
        sink.emit_batch([_operation(1), _operation(2, declaration=BrokenDecl()), _operation(3)])
        assert [d["user_id"] for d in lines(stream)] == ["user_1", "user_3"]
        assert dropped == [("json_logs", 1, "error")]

    def test_a_success_line_is_written_out_directly(self) -> None:
        """The common lines take the direct path (else the benchmark's figures are not ours)."""
        from invariantkit.sinks._logs import _level_and_event, quick_line

        for record in (_operation(1), _operation(2, kind="operation_start", status="started")):
            level, event = _level_and_event(record)
            assert quick_line(record, level, event) is not None

    @given(
        kind=st.sampled_from(["operation", "operation_start", "violation", "event"]),
        name=st.text(max_size=20),
        status=st.sampled_from(["success", "failure", "cancelled", "violated", "started"]),
        user=st.none() | st.text(max_size=20),
        timestamp=st.floats(min_value=0, max_value=4e9),
        duration=st.none() | st.floats(),
        values=st.dictionaries(
            st.text(max_size=5),
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
            max_size=3,
        ),
        test=st.booleans(),
        declared=st.booleans(),
        service=st.text(min_size=1, max_size=10),
    )
    def test_the_direct_line_is_the_generic_line(
        self,
        kind: Any,
        name: str,
        status: str,
        user: str | None,
        timestamp: float,
        duration: float | None,
        values: dict[str, Any],
        test: bool,
        declared: bool,
        service: str,
    ) -> None:
        """Whatever the record, the line written out directly is the generic path's, byte for
        byte, or the direct path declines it."""
        from invariantkit.sinks._logs import (
            _level_and_event,
            encode_line,
            quick_line,
            record_fields,
        )

        decl: Any = None
        if declared:
            decl = billing.NO_DOUBLE_CHARGE if kind == "violation" else ik.operation("direct_op")
        record = Record(
            kind,
            name,
            status,
            "ab" * 16,
            "cd" * 8,
            user,
            timestamp,
            duration,
            attributes=values,
            extra=values,
            declaration=decl,
            test=test,
        )
        context = ik.sinks.SinkContext(service=service, environment="staging")
        level, event = _level_and_event(record)
        quick = quick_line(record, level, event, context)
        if quick is not None:
            assert quick == encode_line(record_fields(record, level, event, context))

    @given(st.floats(min_value=-1e10, max_value=1e10))
    def test_timestamps_are_datetimes_isoformat(self, created: float) -> None:
        from invariantkit.sinks._logs import _timestamp

        expected = dt.datetime.fromtimestamp(created, dt.timezone.utc)
        assert _timestamp(created) == expected.isoformat(timespec="microseconds")


# ------------------------------------------------------------------------------ OtelTraces


class TestOtelTraces:
    def test_violation_inside_an_operation_marks_its_span(self, signals: Signals) -> None:
        """``invariant.violated`` event with the tags, span status ERROR, one span."""

        @ik.billing_operation("renewal")
        def renew() -> None:
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE, tags={"subscription_id": "s1"})

        renew()
        [span] = signals.spans
        assert span.name == "billing.renewal"
        [event] = [e for e in span.events if e.name == "invariant.violated"]
        assert (event.attributes or {})["invariant.name"] == "NO_DOUBLE_CHARGE"
        assert (event.attributes or {})["invariant.tag.subscription_id"] == "s1"
        assert span.status.status_code is StatusCode.ERROR

    def test_track_adds_a_span_event(self, signals: Signals) -> None:
        """Product events are span events of the current operation too."""

        @ik.billing_operation("signup")
        def signup() -> None:
            ik.track("subscription_started", tier="plus", amount=5.0)

        signup()
        [span] = signals.spans
        [event] = [e for e in span.events if e.name == "subscription_started"]
        assert dict(event.attributes or {}) == {"tier": "plus", "amount": 5.0}

    def test_tracing_configured(self) -> None:
        """An SDK provider counts as tracing; the API's no-op ones do not."""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        from invariantkit.sinks._otel import tracing_configured

        assert tracing_configured(TracerProvider())
        assert not tracing_configured(trace.NoOpTracerProvider())
        assert not tracing_configured(trace.ProxyTracerProvider())


class TestMemory:
    def test_keeps_records_but_not_declarations(self) -> None:
        """Declarations are noise for assertions; everything else is kept in order."""
        sink = ik.sinks.Memory()
        sink.emit(Record("declare", "X", "declared", "", "", None, 0.0))
        sink.emit(Record("event", "e", "tracked", "", "", None, 0.0))
        assert [r.kind for r in sink.records] == ["event"]
        sink.clear()
        assert sink.records == []
        assert sink.flush(0)
        assert sink.shutdown(0)
        assert isinstance(sink, ik.sinks.Sink)


def _strict_loads(line: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")

    __repr__ = __str__


class TestJsonLine:
    """The JSON log line is strict JSON and never lost."""

    def test_nan_infinity_huge_ints_and_unprintable_objects_become_strings(self) -> None:
        """Values strict JSON cannot hold become strings; every other field is kept as is."""
        from invariantkit.sinks._logs import encode_line

        fields = {
            "event": "invariant.violated",
            "tags": {"ratio": float("nan"), "ok": 1.5, "top": float("-inf")},
            "extra": {"huge": 10**5000, "small": 7, "obj": _Unprintable()},
            "duration_ms": float("inf"),
        }
        doc = _strict_loads(encode_line(fields))
        assert doc["event"] == "invariant.violated"
        assert doc["tags"] == {"ratio": "nan", "ok": 1.5, "top": "-inf"}
        assert doc["extra"]["huge"] == f"<int of {(10**5000).bit_length()} bits>"
        assert doc["extra"]["small"] == 7
        assert isinstance(doc["extra"]["obj"], str)
        assert doc["duration_ms"] == "inf"

    @given(
        st.dictionaries(
            st.text(max_size=5),
            st.recursive(
                st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=3)
                ),
                max_leaves=10,
            ),
            max_size=5,
        )
    )
    def test_any_fields_give_one_strict_json_document(self, fields: dict[str, Any]) -> None:
        """Whatever the values, the line parses as strict JSON with the same keys."""
        from invariantkit.sinks._logs import encode_line

        assert set(_strict_loads(encode_line(fields))) == set(fields)


def test_json_log_lines_never_reach_sentrys_logging_integration() -> None:
    """With Sentry's default logging integration active (it patches ``Logger.callHandlers``),
    an ERROR JSON line of a failed operation reaches the logger's handlers but never becomes a
    Sentry event, even when the logger is not on Sentry's ignore list."""
    import sentry_sdk
    from sentry_sdk.transport import Transport

    class Keeping(Transport):
        def __init__(self) -> None:
            super().__init__(None)
            self.envelopes: list[Any] = []

        def capture_envelope(self, envelope: Any) -> None:
            self.envelopes.append(envelope)

    transport = Keeping()
    client = sentry_sdk.Client(dsn="http://public@127.0.0.1:9/1", transport=transport)
    assert "logging" in client.integrations  # the default integrations are on
    scope = sentry_sdk.get_global_scope()
    scope.set_client(client)  # the autouse fixture restores the previous client
    lines: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record)

    log = logging.getLogger("test.sinks.not_ignored_by_sentry")
    log.handlers[:] = [Keep()]
    log.setLevel(logging.INFO)
    log.propagate = False
    ik.configure(sinks=[ik.sinks.JsonLogs(log)])  # no Sentry sink: nothing ignores this logger

    @ik.billing_operation("logs_not_in_sentry")
    def charge() -> None:
        raise RuntimeError("card declined")

    with pytest.raises(RuntimeError):
        charge()
    assert ik.flush(2)
    client.flush(timeout=2)
    assert [json.loads(r.getMessage())["outcome"] for r in lines] == ["failure"]
    assert transport.envelopes == []


def test_one_registry_builds_every_backend_by_its_sink_name() -> None:
    """Auto-detection, capture_signals, verify and the demo build sinks from one registry:
    each entry builds the sink whose ``name`` is its key, and JSON logs are always detected."""
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from invariantkit.sinks._registry import BACKENDS, auto_sinks, build

    built = {
        "otel_traces": build("otel_traces", provider=TracerProvider()),
        "prometheus": build("prometheus", registry=CollectorRegistry()),
        "sentry": build("sentry"),
        "posthog": build("posthog", client=_posthog_client()),
        "json_logs": build("json_logs", logger="test.registry"),
    }
    assert set(built) == set(BACKENDS)
    for name, sink in built.items():
        assert sink.name == name
        assert isinstance(sink, ik.sinks.Sink)
    assert "json_logs" in [sink.name for sink in auto_sinks()]


def test_registry_builds_each_backend_with_its_client() -> None:
    """Per backend, the registry also builds the SDK client: ``capture`` on the real SDK with
    in-memory delivery (what capture_signals reads), ``from_env`` from the environment
    variables that name the backend (None when they name none); ``close`` releases it."""
    from invariantkit.sinks._registry import BACKENDS, capture, from_env

    for name in BACKENDS:
        built = capture(name, service="svc", environment="test")
        assert built.sink.name == name
        built.close()
        assert from_env(name, {}) is None or name == "prometheus"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "SENTRY_DSN": "http://public@127.0.0.1:9/1",
        "POSTHOG_PROJECT_API_KEY": "phc_registry",
        "POSTHOG_HOST": "http://127.0.0.1:9",
    }
    for name in ("otel_traces", "sentry", "posthog"):
        from_environ = from_env(name, env)
        assert from_environ is not None
        assert from_environ.sink.name == name
        from_environ.sink.shutdown(0.5)
        from_environ.close()
    # The captures are the real SDKs: a Sentry event becomes an envelope in the transport.
    sentry = capture("sentry", service="svc", environment="test")
    sentry.client.capture_event({"message": "kept"})
    assert [e.get_event()["message"] for e in sentry.store.envelopes] == ["kept"]
    sentry.close()


def _posthog_client() -> Any:
    import posthog

    return posthog.Posthog("phc_registry", host="http://127.0.0.1:9", send=False)
