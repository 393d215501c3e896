"""Prometheus metrics through prometheus-client: the guide's metric names, children at zero.

Short-lived processes (cron jobs) are never scraped: at the end of each cron run the sink pushes
invariantkit's metrics to a Pushgateway and/or writes the cron's gauges to a node-exporter
textfile. Multi-process servers (``PROMETHEUS_MULTIPROC_DIR``) work as prometheus-client's
multiprocess mode does: counters and histograms add up across workers, the gauges use
``mostrecent`` (the value the latest process set wins, also after that worker exited).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from invariantkit import _semconv as sc
from invariantkit._semconv import DURATION_BUCKETS, LABEL_VALUE_CAP
from invariantkit.sinks._base import Bound, SinkUnavailable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric

    from invariantkit._record import Record

__all__ = ["DURATION_BUCKETS", "LABEL_VALUE_CAP", "PrometheusMetrics"]

logger = logging.getLogger("invariantkit")

#: Bound on one Pushgateway push at the end of a cron run (seconds).
PUSH_TIMEOUT = 2.0
_OTHER = "\x00other"  # the folded operations' key: never a valid operation name
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


@dataclass
class _Families:
    operation_total: Counter
    operation_duration: Histogram
    operation_errors: Counter
    violations: Counter
    retries: Counter
    constraint_exists: Gauge
    sink_errors: Counter
    sink_dropped: Counter
    subscription_events: Counter
    renewal_failures: Counter
    check_runs: Counter
    check_violating: Gauge
    check_last_run: Gauge
    check_duration: Gauge
    extra: dict[str, Any]

    def shared(self) -> list[Any]:
        """The families every process has (not the per-cron gauges)."""
        return [
            self.operation_total,
            self.operation_duration,
            self.operation_errors,
            self.violations,
            self.retries,
            self.constraint_exists,
            self.sink_errors,
            self.sink_dropped,
            self.subscription_events,
            self.renewal_failures,
            self.check_runs,
            self.check_violating,
            self.check_last_run,
            self.check_duration,
        ]

    def crons(self) -> dict[str, _CronGauges]:
        """The cron gauges created so far (one entry per cron that ended a run here)."""
        with _FAMILIES_LOCK:
            return {key[5:]: value for key, value in self.extra.items() if key.startswith("cron:")}


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_FAMILIES_LOCK = threading.Lock()


def _make(spec: sc.Metric, registry: CollectorRegistry | None) -> Any:
    """The prometheus-client family of ``spec``; gauges use ``mostrecent`` in multiprocess mode
    (the value the latest process set wins)."""
    from prometheus_client import Counter, Gauge, Histogram

    if spec.kind == "counter":
        return Counter(spec.name, spec.help, spec.labels, registry=registry)
    if spec.kind == "histogram":
        return Histogram(
            spec.name, spec.help, spec.labels, buckets=DURATION_BUCKETS, registry=registry
        )
    return Gauge(
        spec.name, spec.help, spec.labels, registry=registry, multiprocess_mode="mostrecent"
    )


def _families(registry: CollectorRegistry) -> _Families:
    """The invariantkit metric families of ``registry``, registered once per registry."""
    with _FAMILIES_LOCK:
        fams = _FAMILIES.get(registry)
        if fams is None:
            fams = _Families(
                operation_total=_make(sc.OPERATIONS, registry),
                operation_duration=_make(sc.OPERATION_DURATION, registry),
                operation_errors=_make(sc.OPERATION_ERRORS, registry),
                violations=_make(sc.VIOLATIONS, registry),
                retries=_make(sc.RETRIES, registry),
                constraint_exists=_make(sc.CONSTRAINT_EXISTS, registry),
                sink_errors=_make(sc.SINK_ERRORS, registry),
                sink_dropped=_make(sc.SINK_DROPPED, registry),
                subscription_events=_make(sc.SUBSCRIPTION_EVENTS, registry),
                renewal_failures=_make(sc.RENEWAL_FAILURES, registry),
                check_runs=_make(sc.CHECK_RUNS, registry),
                check_violating=_make(sc.CHECK_VIOLATING, registry),
                check_last_run=_make(sc.CHECK_LAST_RUN, registry),
                check_duration=_make(sc.CHECK_DURATION, registry),
                extra={},
            )
            # Spike alerts use increase(): every series must exist at zero before its first event.
            from invariantkit._semconv import LIFECYCLE_EVENTS, RENEWAL_FAILURE_REASONS

            for event in LIFECYCLE_EVENTS:
                fams.subscription_events.labels(event)
            for reason in sorted(RENEWAL_FAILURE_REASONS):
                fams.renewal_failures.labels(reason)
            _FAMILIES[registry] = fams
        return fams


@dataclass
class _CronGauges:
    """The guide's four gauges of one cron job (metric names embed the job's name)."""

    last_run_timestamp: Gauge
    last_status: Gauge
    duration_seconds: Gauge
    processed: Gauge

    def all(self) -> list[Gauge]:
        return [self.last_run_timestamp, self.last_status, self.duration_seconds, self.processed]


def _cron_gauges(fams: _Families, registry: CollectorRegistry, name: str) -> _CronGauges:
    """Create (once per registry) the four gauges of cron ``name``.

    They are created when the first run ends, never at declaration: an unlabelled gauge is
    exposed at 0 as soon as it exists, and ``last_run_timestamp 0`` or ``last_status 0`` from a
    process that merely imported the job would fire the Missing and Failed alerts. In
    multiprocess mode they use ``mostrecent``: the latest run wins, even from an exited worker.
    """
    key = "cron:" + name
    with _FAMILIES_LOCK:
        gauges: _CronGauges | None = fams.extra.get(key)
        if gauges is None:
            gauges = _CronGauges(*(_make(spec, registry) for spec in sc.cron_gauges(name)))
            fams.extra[key] = gauges
        return gauges


class _View:
    """A collector exposing some of the sink's metric objects (what is pushed or written)."""

    __slots__ = ("_collectors",)

    def __init__(self, collectors: Iterable[Any]) -> None:
        self._collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


def _redacted(url: str) -> str:
    """``url`` without credentials, for log lines."""
    try:
        parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<invalid url>"


class _OpChildren:
    __slots__ = (
        "cancel_count",
        "cancel_hist",
        "errors",
        "fail_count",
        "fail_hist",
        "label",
        "ok_count",
        "ok_hist",
    )

    def __init__(self, fams: _Families, name: str) -> None:
        self.label = name
        self.ok_count = fams.operation_total.labels(name, "success")
        self.fail_count = fams.operation_total.labels(name, "failure")
        self.ok_hist = fams.operation_duration.labels(name, "success")
        self.fail_hist = fams.operation_duration.labels(name, "failure")
        # Made at the first cancellation: most operations are never cancelled, and a child at
        # zero for each would only add series.
        self.cancel_count: Any = None
        self.cancel_hist: Any = None
        self.errors: dict[str, Any] = {}


class PrometheusMetrics(Bound):
    """The guide's Prometheus metrics, in ``registry`` (default: prometheus-client's global one).

    Every declared invariant, operation and idempotent write gets its label children at zero
    when declared, so ``increase()`` sees the first violation after a start. Ids never become
    labels: only ``type``, ``invariant``, ``operation``, ``outcome``, ``error_type``,
    ``constraint``, ``sink`` and ``test``.

    Cron runs (``ik.monitor_cron``) set ``cron_<name>_last_run_timestamp``, ``_last_status``,
    ``_duration_seconds`` and ``_processed`` when they end. A cron process exits before any
    scrape, so give the sink a Pushgateway or a textfile:

    - ``pushgateway``: when a run ends, invariantkit's metrics (the billing families,
      ``pg_constraint_exists``, the sink counters and that cron's four gauges; not the rest of
      the registry) are pushed with ``pushadd_to_gateway`` (POST: metrics you push to the same
      group with ``pushadd`` survive) under the grouping key ``job=<cron name>`` plus
      ``grouping_key``. No ``instance`` label by default: a Kubernetes CronJob pod has a new
      hostname every run, and each would leave a group behind forever, whose stale timestamp
      keeps the Missing alert firing. ``user:password@`` in the URL is sent as HTTP basic auth.
      The push is bounded by ``push_timeout`` and never raises; a failure is logged once and
      counted in ``invariantkit_sink_dropped_total{sink="prometheus"}``.
    - ``textfile``: when a run ends, the cron gauges are written atomically (temp file + rename)
      to this ``.prom`` path for node-exporter's textfile collector. Put ``{cron}`` in the path
      to write one file per job (``/var/lib/node_exporter/textfile/cron_{cron}.prom``);
      otherwise the file holds every job this process ran. Only the cron gauges go there:
      node-exporter rejects a series found in two files, and every process has the billing
      families.

    Args:
        registry: a ``CollectorRegistry``; the default registry when None.
        pushgateway: Pushgateway address (``http://host:9091`` or ``host:9091``).
        textfile: node-exporter textfile path, ending in ``.prom``; may contain ``{cron}``.
        grouping_key: extra Pushgateway grouping labels (e.g. ``{"environment": "prod"}``).
        push_timeout: seconds one push may take (default 2).

    Example:
        >>> import invariantkit as ik
        >>> from prometheus_client import CollectorRegistry
        >>> sink = ik.sinks.PrometheusMetrics(registry=CollectorRegistry())
    """

    name: ClassVar[str] = "prometheus"
    deferred: ClassVar[bool] = False

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        pushgateway: str | None = None,
        textfile: str | None = None,
        *,
        grouping_key: Mapping[str, str] | None = None,
        push_timeout: float = PUSH_TIMEOUT,
    ) -> None:
        try:
            import prometheus_client
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            raise SinkUnavailable(
                "invariantkit.sinks.PrometheusMetrics needs prometheus-client: "
                "pip install 'invariantkit[prometheus]'"
            ) from exc
        if registry is not None and not isinstance(registry, prometheus_client.CollectorRegistry):
            raise TypeError(
                "PrometheusMetrics(registry=...) must be a prometheus_client.CollectorRegistry "
                f"or None (the default registry), not {type(registry).__name__}"
            )
        _check_pushgateway(pushgateway)
        textfile = _check_textfile(textfile)
        self.grouping_key: dict[str, str] = _check_grouping_key(grouping_key)
        if (
            isinstance(push_timeout, bool)
            or not isinstance(push_timeout, (int, float))
            or not 0 < push_timeout <= 60
        ):
            raise ValueError(
                f"PrometheusMetrics(push_timeout={push_timeout!r}) must be seconds in (0, 60]"
            )
        self.push_timeout = float(push_timeout)
        self.registry: CollectorRegistry = (
            registry if registry is not None else prometheus_client.REGISTRY
        )
        self.pushgateway = pushgateway
        self._push_url, self._push_auth = _split_credentials(pushgateway)
        self.textfile = textfile
        self.families = _families(self.registry)
        self._ops: dict[str, _OpChildren] = {}
        self._violations: dict[tuple[str, bool], Any] = {}
        self._retries: dict[str, Any] = {}
        self._capped: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._io: Any = None  # the export worker (Pushgateway, textfile), made on first use
        self._export_failures_logged: set[str] = set()

    # -- declarations ---------------------------------------------------------------------------

    def _declare(self, decl: Any) -> None:
        # Crons and constraints get no series at declaration: a gauge at 0 would fire their
        # Missing/Failed alerts. Their series appear when a run ends or a check runs.
        kind = decl.kind
        if kind == "operation":
            self._op_children(decl.name)
        elif kind == "invariant":
            self._violation_child(decl, test=False)
        elif kind == "idempotent":
            self._retry_child(decl.name)
        elif kind == "check":
            # Only the run counter: a last-run gauge at 0 from a process that merely declared
            # the check would read as "never ran" beside the process that runs it.
            for outcome in sc.CHECK_OUTCOMES:
                self.families.check_runs.labels(decl.name, outcome)

    def _op_children(self, name: str) -> _OpChildren:
        """The pre-bound children of operation ``name``; past LABEL_VALUE_CAP operations (names
        built from ids at run time) they fold into ``operation="other"``, never cached by name."""
        ops = self._ops.get(name)
        if ops is None:
            if self._bounded("billing_operation_total/operation", name) == name:
                ops = self._ops[name] = _OpChildren(self.families, name)
            else:
                ops = self._ops.get(_OTHER)
                if ops is None:
                    ops = self._ops[_OTHER] = _OpChildren(self.families, "other")
        return ops

    def _violation_child(self, decl: Any, *, test: bool) -> Any:
        key = (decl.name, test)
        child = self._violations.get(key)
        if child is None:
            name = self._bounded("billing_invariant_violation_total/invariant", decl.name)
            type_ = f"test_{decl.type}" if test and not decl.type.startswith("test_") else decl.type
            if name != decl.name:
                type_ = "other"
            child = self.families.violations.labels(type_, name, "true" if test else "false")
            if name == decl.name:  # folded values are not cached: the dict stays bounded
                self._violations[key] = child
        return child

    def _retry_child(self, name: str) -> Any:
        child = self._retries.get(name)
        if child is None:
            child = self._retries[name] = self.families.retries.labels(name)
        return child

    def _bounded(self, metric: str, value: str) -> str:
        """Fold a label value into ``other`` once ``metric`` has seen LABEL_VALUE_CAP values."""
        with self._lock:
            seen = self._capped.setdefault(metric, set())
            if value in seen:
                return value
            if len(seen) < LABEL_VALUE_CAP:
                seen.add(value)
                return value
            if "\x00warned" not in seen:
                seen.add("\x00warned")
                logger.warning(
                    "invariantkit: %s has %d distinct label values; new ones are folded into 'other'",
                    metric,
                    LABEL_VALUE_CAP,
                )
        return "other"

    # -- records --------------------------------------------------------------------------------

    def emit(self, record: Record) -> None:
        kind = record.kind
        if kind == "operation":
            ops = self._ops.get(record.name) or self._op_children(record.name)
            duration = record.duration or 0.0
            if record.status == "success":
                ops.ok_count.inc()
                ops.ok_hist.observe(duration)
                return
            if record.status == "cancelled":  # not a failure: no error counter
                if ops.cancel_count is None:
                    ops.cancel_hist = self.families.operation_duration.labels(
                        ops.label, "cancelled"
                    )
                    ops.cancel_count = self.families.operation_total.labels(ops.label, "cancelled")
                ops.cancel_count.inc()
                ops.cancel_hist.observe(duration)
                return
            ops.fail_count.inc()
            ops.fail_hist.observe(duration)
            error_type = (
                type(record.exception).__name__ if record.exception is not None else "Error"
            )
            child = ops.errors.get(error_type)
            if child is None:
                bounded = self._bounded(f"billing_operation_errors_total/{ops.label}", error_type)
                child = self.families.operation_errors.labels(ops.label, bounded)
                if bounded == error_type:  # folded values are not cached: the dict stays bounded
                    ops.errors[error_type] = child
            child.inc()
        elif kind == "violation":
            decl = record.declaration
            if decl is None:
                return
            child = self._violation_child(decl, test=record.test)
            if record.trace_id:
                child.inc(1, exemplar={"trace_id": record.trace_id})
            else:
                child.inc()
        elif kind == "retry":
            self._retry_child(record.name).inc()
        elif kind == "cron":
            if record.status in ("ok", "error"):
                self._cron_ended(record)
        elif kind == "constraint":
            if record.status in ("present", "missing"):
                self.families.constraint_exists.labels(record.name).set(
                    1 if record.status == "present" else 0
                )
        elif kind == "check":
            self._check_ran(record)
        elif kind == "declare":
            decl = record.declaration
            if decl is None:
                return
            if record.test and decl.kind == "invariant":
                # Alert test mode: the test="true" child exists at zero before the first test
                # alert, so increase() sees it.
                self._violation_child(decl, test=True)
                return
            self._declare(decl)
        elif kind == "event":
            self._lifecycle_event(record)
        elif kind == "sink_error":
            self.families.sink_errors.labels(record.name).inc(record.attributes.get("count", 1))
        elif kind == "sink_dropped":
            self.families.sink_dropped.labels(
                record.name, record.attributes.get("reason", "error")
            ).inc(record.attributes.get("count", 1))

    def _check_ran(self, record: Record) -> None:
        """An at-rest check run: its outcome counted; the gauges describe the last run (the
        violating count and the last-run time only when the query itself succeeded)."""
        fams = self.families
        name = record.name
        outcome = record.status if record.status in sc.CHECK_OUTCOMES else "error"
        fams.check_runs.labels(name, outcome).inc()
        fams.check_duration.labels(name).set(record.duration or 0.0)
        if outcome != "error":
            fams.check_violating.labels(name).set(attribute_number(record, "violating_entities"))
            fams.check_last_run.labels(name).set(record.timestamp)

    def _lifecycle_event(self, record: Record) -> None:
        labels = lifecycle_labels(record)
        if labels is None:
            return
        event, reason = labels
        self.families.subscription_events.labels(event).inc()
        if reason is not None:
            self.families.renewal_failures.labels(reason).inc()

    # -- cron runs ------------------------------------------------------------------------------

    def _cron_ended(self, record: Record) -> None:
        gauges = _cron_gauges(self.families, self.registry, record.name)
        gauges.last_run_timestamp.set(record.timestamp)
        gauges.last_status.set(1 if record.status == "ok" else 0)
        gauges.duration_seconds.set(record.duration or 0.0)
        gauges.processed.set(attribute_number(record, "processed"))
        if self.pushgateway is not None or self.textfile is not None:
            # The network (and the disk) wait on a worker, never on the job's thread; flush(),
            # shutdown() and the exit drain wait for it within their bound.
            self._io_worker().submit((record.name, gauges))

    def _io_worker(self) -> Any:
        worker = self._io
        if worker is None:
            from invariantkit._dispatch import Worker

            with self._lock:
                if self._io is None:
                    self._io = Worker(
                        self._export,
                        maxsize=1000,
                        on_drop=self._export_dropped,
                        name="invariantkit-prometheus-export",
                    )
                worker = self._io
        return worker

    def _export(self, item: tuple[str, _CronGauges]) -> None:
        cron, gauges = item
        if self.pushgateway is not None:
            self._push(cron, gauges)
        if self.textfile is not None:
            self._write_textfile(cron)

    def _export_dropped(self, count: int) -> None:
        self._context.count_dropped(self.name, count, "queue_full")

    def _push(self, cron: str, gauges: _CronGauges) -> None:
        """Push the shared families and ``cron``'s gauges; bounded, never raises."""
        assert self.pushgateway is not None
        try:
            from prometheus_client import pushadd_to_gateway
            from prometheus_client.exposition import basic_auth_handler, default_handler

            view = _View([*self.families.shared(), *gauges.all()])
            auth = self._push_auth

            def handler(
                url: str, method: str, timeout: float | None, headers: Any, data: bytes
            ) -> Callable[[], None]:
                if auth is None:
                    return default_handler(url, method, timeout, headers, data)
                return basic_auth_handler(url, method, timeout, headers, data, *auth)

            pushadd_to_gateway(
                self._push_url,
                job=cron,
                registry=view,
                grouping_key=dict(self.grouping_key) or None,
                timeout=self.push_timeout,
                handler=handler,
            )
        except Exception as exc:
            self._export_failed("Pushgateway", _redacted(self.pushgateway), exc)

    def _write_textfile(self, cron: str) -> None:
        """Write the cron gauges atomically for node-exporter; never raises."""
        assert self.textfile is not None
        path = self.textfile
        try:
            from prometheus_client import write_to_textfile

            crons = self.families.crons()
            if "{cron}" in path:
                path = path.replace("{cron}", cron)
                crons = {cron: crons[cron]}
            view = _View(g for _, gauges in sorted(crons.items()) for g in gauges.all())
            write_to_textfile(path, view)
        except Exception as exc:
            self._export_failed("textfile", path, exc)

    def _export_failed(self, what: str, where: str, exc: BaseException) -> None:
        from invariantkit._safe import safe_str

        try:
            if what not in self._export_failures_logged:
                self._export_failures_logged.add(what)
                logger.warning(
                    "invariantkit: writing cron metrics to the %s at %s failed (%s: %s); the run's "
                    "metrics are lost there. Further failures are only counted in "
                    'invariantkit_sink_dropped_total{sink="%s"}',
                    what,
                    where,
                    type(exc).__name__,
                    safe_str(exc, 200),
                    self.name,
                )
            self._context.count_dropped(self.name, 1, "error")
        except Exception:
            pass

    def flush(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) for pending Pushgateway pushes and textfile writes."""
        return True if self._io is None else bool(self._io.flush(timeout))

    def shutdown(self, timeout: float) -> bool:
        return True if self._io is None else bool(self._io.stop(timeout))


def lifecycle_labels(record: Record) -> tuple[str, str | None] | None:
    """The ``event`` label of a product event that is a subscription lifecycle event, and the
    bounded ``reason`` label when it is a failed renewal; None for other product events (those
    are PostHog's business, not a metric). Shared by both metric sinks."""
    from invariantkit._semconv import LIFECYCLE_EVENTS, RENEWAL_FAILED, failure_reason_label

    if record.name not in LIFECYCLE_EVENTS:
        return None
    if record.name != RENEWAL_FAILED:
        return record.name, None
    reason = record.attributes.get("failureReason")
    return record.name, failure_reason_label(reason if isinstance(reason, str) else "other")


def attribute_number(record: Record, key: str) -> float:
    """``record.attributes[key]`` as a gauge value, 0 when missing or not a finite number."""
    value = record.attributes.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)


def _split_credentials(url: str | None) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@`` part, and that part for HTTP basic auth."""
    if url is None:
        return "", None
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    bare = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
    user = urllib.parse.unquote(parts.username)
    return bare, (user, urllib.parse.unquote(parts.password or ""))


def _check_pushgateway(url: object) -> None:
    if url is None:
        return
    if not isinstance(url, str):
        raise TypeError("PrometheusMetrics(pushgateway=...) must be a URL string")
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"PrometheusMetrics(pushgateway={_redacted(url)!r}) must be an http(s) URL or "
            "host:port, like 'http://pushgateway:9091'"
        )


def _check_textfile(path: object) -> str | None:
    if path is None:
        return None
    import os

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError("PrometheusMetrics(textfile=...) must be a file path")
    text = os.fspath(path)
    if not isinstance(text, str) or not text.endswith(".prom"):
        raise ValueError(
            f"PrometheusMetrics(textfile={text!r}) must end in .prom: node-exporter's textfile "
            "collector reads only *.prom files"
        )
    return text


def _check_grouping_key(key: object) -> dict[str, str]:
    if key is None:
        return {}
    if not isinstance(key, Mapping):
        raise TypeError("PrometheusMetrics(grouping_key=...) must be a mapping of str to str")
    out: dict[str, str] = {}
    for name, value in key.items():
        if not isinstance(name, str) or not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(
                f"PrometheusMetrics(grouping_key=...): {name!r} must be a label name "
                "([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"
            )
        if name == "job":
            raise ValueError(
                "PrometheusMetrics(grouping_key=...): 'job' is set to the cron's name; "
                "use another label"
            )
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"PrometheusMetrics(grouping_key=...): the value of {name!r} must be a non-empty str"
            )
        out[name] = value
    return out
