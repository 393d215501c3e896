"""A small billing service instrumented with invariantkit (the example of ``examples/``).

Subscriptions, renewals, cancellations and payment events with idempotency keys on SQLite,
served over HTTP by the standard library's ``wsgiref``; a renewal cron; a start-up check of the
unique index that stops double charges. Every feature of invariantkit is used once, where a real
service would use it:

- ``ik.billing_operation``: every endpoint and the charge path (:mod:`billing_service.service`);
- the guide's three invariants: ``billing.check_no_double_charge``, ``billing.guard_chargeable``,
  ``billing.check_period_advanced``;
- ``ik.idempotent_write``: payment events (a redelivered webhook is an expected retry);
- ``ik.monitor_cron``: the renewal cron (:mod:`billing_service.cron`, ``renewal_cron.py``);
- ``ik.verify_constraints``: at start-up (:func:`billing_service.app.create_app`);
- ``ik.identify`` from the ``X-User-Id`` header, ``ik.inject``/``ik.extract`` between the renewal
  endpoint and the payments endpoint (one trace id across the HTTP call);
- the lifecycle events the guide's PostHog funnels use.
"""
