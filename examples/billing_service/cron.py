"""The nightly renewal run, monitored with ``ik.monitor_cron``."""

from __future__ import annotations

import urllib.error

import invariantkit as ik
from billing_service.monitoring import RENEWAL_CRON
from billing_service.service import Billing, PaymentFailed
from invariantkit import billing


class ProviderDown(Exception):
    """The payments endpoint is unreachable or the provider is down: the run stops."""


def run_renewals(service: Billing) -> dict[str, int]:
    """Renew every due subscription. A declined card or a canceled subscription fails that one
    renewal (reported, counted) and the run goes on; the provider being down fails the run
    (Sentry check-in ``error``, ``cron_subscription_renewal_last_status`` 0)."""
    renewed = failed = 0
    with RENEWAL_CRON as run:
        for sub in service.due():
            with ik.identify(sub["user_id"]):
                try:
                    service.renew(sub["id"])
                except billing.SubscriptionNotChargeableError:
                    failed += 1
                    continue
                except PaymentFailed as exc:
                    if exc.status >= 500:
                        raise ProviderDown(exc.reason) from exc
                    failed += 1
                    continue
                except urllib.error.URLError as exc:
                    raise ProviderDown(f"payments endpoint unreachable: {exc.reason}") from exc
            renewed += 1
            run.processed += 1
    return {"renewed": renewed, "failed": failed}
