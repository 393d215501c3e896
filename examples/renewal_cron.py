"""The renewal cron as a short-lived process: one run, its metrics pushed to a Pushgateway.

A cron process exits before any Prometheus scrapes it: ``ik.monitor_cron`` pushes the run's
gauges (``cron_subscription_renewal_last_status``, ``_last_run_timestamp``, ``_duration_seconds``,
``_processed``) and the billing counters to the Pushgateway when the run ends. Schedule it daily:

    BILLING_DB=billing.db PAYMENTS_URL=http://127.0.0.1:8000 \\
        python examples/renewal_cron.py --pushgateway http://127.0.0.1:9091

Exits 1 when the run failed (the provider was down): the scheduler sees it, and so do the
``SubscriptionRenewalCronFailed`` alert and Sentry Crons.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from billing_service import db
from billing_service.cron import ProviderDown, run_renewals
from billing_service.monitoring import setup
from billing_service.service import Billing, HttpPayments

import invariantkit as ik


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("BILLING_DB", "billing.db"))
    parser.add_argument("--payments-url", default=os.environ.get("PAYMENTS_URL"))
    parser.add_argument("--pushgateway", default=os.environ.get("PROMETHEUS_PUSHGATEWAY"))
    args = parser.parse_args(argv)
    if not args.payments_url:
        parser.error("--payments-url (or PAYMENTS_URL) is required")
    if not args.pushgateway:
        print("warning: no --pushgateway: this run's metrics are never seen", file=sys.stderr)

    from prometheus_client import CollectorRegistry

    # A registry of its own: only this job's series are pushed.
    setup(
        service="billing-renewal-cron", pushgateway=args.pushgateway, registry=CollectorRegistry()
    )
    service = Billing(db.connect(args.db, migrate=False), payments=HttpPayments(args.payments_url))
    try:
        result = run_renewals(service)
    except ProviderDown as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 1
    finally:
        ik.shutdown(timeout=5.0)  # hand everything to the backends before the process exits
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
