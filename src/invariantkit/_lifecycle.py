"""The guide's subscription lifecycle events and business health gauges ("who was affected?").

Re-exported from :mod:`invariantkit.billing`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from invariantkit._events import track

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = [
    "LIFECYCLE_EVENTS",
    "RENEWAL_FAILURE_REASONS",
    "HealthCollector",
    "register_health",
    "renewal_failed",
    "renewal_succeeded",
    "subscription_canceled",
    "subscription_started",
]

from invariantkit._semconv import (
    LIFECYCLE_EVENTS,
    RENEWAL_FAILED,
    RENEWAL_FAILURE_REASONS,
    RENEWAL_SUCCESS,
    SUBSCRIPTION_CANCELED,
    SUBSCRIPTION_STARTED,
)

logger = logging.getLogger("invariantkit")


def _send(event: str, subscription_id: str, properties: dict[str, Any]) -> None:
    # The guide's property names (camelCase) so existing PostHog funnels and insights keep working.
    props: dict[str, Any] = {"subscriptionId": subscription_id}
    props.update({k: v for k, v in properties.items() if v is not None})
    track(event, **props)


def subscription_started(
    subscription_id: str, *, tier: str | None = None, amount: float | None = None, **properties: Any
) -> None:
    """A subscription started: PostHog ``subscription_started`` (``subscriptionId``, ``tier``,
    ``amount``), a span event, and ``billing_subscription_events_total{event}``.

    Example:
        >>> from invariantkit import billing
        >>> billing.subscription_started("sub_1", tier="horoscope-plus", amount=5.0)
    """
    _send(SUBSCRIPTION_STARTED, subscription_id, {"tier": tier, "amount": amount, **properties})


def renewal_succeeded(
    subscription_id: str, *, period_number: int | None = None, **properties: Any
) -> None:
    """A renewal charged successfully: PostHog ``subscription_renewal_success``
    (``subscriptionId``, ``periodNumber``).

    Example:
        >>> from invariantkit import billing
        >>> billing.renewal_succeeded("sub_1", period_number=2)
    """
    _send(RENEWAL_SUCCESS, subscription_id, {"periodNumber": period_number, **properties})


def renewal_failed(subscription_id: str, *, reason: str, **properties: Any) -> None:
    """A renewal failed: PostHog ``subscription_renewal_failed`` (``subscriptionId``,
    ``failureReason``) and ``billing_renewal_failures_total{reason}``, with ``reason`` folded into
    ``other`` unless it is one of :data:`RENEWAL_FAILURE_REASONS` (metric labels stay bounded).

    Example:
        >>> from invariantkit import billing
        >>> billing.renewal_failed("sub_1", reason="insufficient_funds")
    """
    _send(RENEWAL_FAILED, subscription_id, {"failureReason": reason, **properties})


def subscription_canceled(
    subscription_id: str,
    *,
    reason: str,
    periods_completed: int | None = None,
    **properties: Any,
) -> None:
    """A subscription was canceled: PostHog ``subscription_canceled`` (``subscriptionId``,
    ``reason``, ``periodsCompleted``).

    Example:
        >>> from invariantkit import billing
        >>> billing.subscription_canceled("sub_1", reason="user_requested", periods_completed=3)
    """
    _send(
        SUBSCRIPTION_CANCELED,
        subscription_id,
        {"reason": reason, "periodsCompleted": periods_completed, **properties},
    )


MrrSource = Callable[[], "int | float | Mapping[str, int | float]"]


class HealthCollector:
    """A prometheus-client custom collector reading business gauges at scrape time.

    ``billing_active_subscriptions`` and ``billing_mrr{currency}`` (in the currency's minor
    unit, e.g. cents) cost nothing per call: the callables run only when Prometheus scrapes. A
    callable that raises is logged (once) and its gauge left out of that scrape.
    """

    def __init__(
        self,
        active_subscriptions: Callable[[], int | float] | None,
        mrr: MrrSource | None,
        currency: str,
    ) -> None:
        self.active_subscriptions = active_subscriptions
        self.mrr = mrr
        self.currency = currency
        self.registry: CollectorRegistry | None = None
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def _read(self, name: str, source: Callable[[], Any]) -> Any:
        try:
            return source()
        except Exception:
            with self._lock:
                first = name not in self._warned
                self._warned.add(name)
            if first:
                logger.exception("invariantkit: reading %s for the scrape failed", name)
            return None

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        if self.active_subscriptions is not None:
            value = self._read("billing_active_subscriptions", self.active_subscriptions)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield GaugeMetricFamily(
                    "billing_active_subscriptions",
                    "Subscriptions currently active (read at scrape time).",
                    value=float(value),
                )
        if self.mrr is not None:
            value = self._read("billing_mrr", self.mrr)
            by_currency: Mapping[str, Any] | None
            if isinstance(value, Mapping):
                by_currency = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                by_currency = {self.currency: value}
            else:
                by_currency = None
            if by_currency is not None:
                family = GaugeMetricFamily(
                    "billing_mrr",
                    "Monthly recurring revenue in the currency's minor unit (read at scrape time).",
                    labels=["currency"],
                )
                for currency, amount in by_currency.items():
                    if isinstance(amount, (int, float)) and not isinstance(amount, bool):
                        family.add_metric([str(currency).upper()], float(amount))
                yield family

    def describe(self) -> Iterator[Metric]:
        # Describing without calling the user's callables keeps registration side-effect free.
        from prometheus_client.core import GaugeMetricFamily

        if self.active_subscriptions is not None:
            yield GaugeMetricFamily("billing_active_subscriptions", "Active subscriptions.")
        if self.mrr is not None:
            yield GaugeMetricFamily("billing_mrr", "MRR in minor units.", labels=["currency"])

    def unregister(self) -> None:
        """Remove the collector from the registry it was registered in."""
        if self.registry is not None:
            self.registry.unregister(self)
            self.registry = None


def register_health(
    *,
    active_subscriptions: Callable[[], int | float] | None = None,
    mrr: MrrSource | None = None,
    currency: str = "USD",
    registry: CollectorRegistry | None = None,
) -> HealthCollector:
    """Expose business health gauges, read at scrape time: ``billing_active_subscriptions`` and
    ``billing_mrr{currency}`` (minor units). ``mrr`` may return one amount (in ``currency``) or a
    mapping of currency to amount. The Billing Health Overview dashboard uses both.

    Args:
        active_subscriptions: returns the number of active subscriptions.
        mrr: returns the MRR in minor units, or ``{"EUR": 120000, "USD": 99000}``.
        currency: ISO 4217 code used when ``mrr`` returns a single amount.
        registry: where to register; default prometheus-client's global registry.

    Example:
        >>> from prometheus_client import CollectorRegistry
        >>> from invariantkit import billing
        >>> registry = CollectorRegistry()
        >>> health = billing.register_health(
        ...     active_subscriptions=lambda: 1234, mrr=lambda: 617000, registry=registry)
        >>> registry.get_sample_value("billing_mrr", {"currency": "USD"})
        617000.0
    """
    if active_subscriptions is None and mrr is None:
        raise ValueError("register_health(): pass active_subscriptions=, mrr= or both")
    for name, source in (("active_subscriptions", active_subscriptions), ("mrr", mrr)):
        if source is not None and not callable(source):
            raise TypeError(f"register_health({name}=...) must be a callable, read at scrape time")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise ValueError(
            f"register_health(currency={currency!r}) must be an ISO 4217 code like 'USD'"
        )
    if registry is None:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    collector = HealthCollector(active_subscriptions, mrr, currency.upper())
    registry.register(collector)
    collector.registry = registry
    return collector
