"""The production entry point: configure monitoring, then build the app.

    BILLING_DB=/var/lib/billing/billing.db gunicorn billing_service.wsgi:application

or, with the standard library only: ``python -m billing_service.wsgi``. ``invariantkit verify
-m billing_service.wsgi`` checks this set-up.
"""

from __future__ import annotations

import os

from billing_service.app import Server, create_app
from billing_service.monitoring import setup

DB = os.environ.get("BILLING_DB", "billing.db")

setup(service="billing")
application = create_app(
    DB,
    payments_url=os.environ.get("PAYMENTS_URL") or None,
    migrate=not os.path.exists(DB),  # the first start creates the schema; later ones only check
    require_constraints=os.environ.get("BILLING_REQUIRE_CONSTRAINTS") == "1",
)

if __name__ == "__main__":  # pragma: no cover - manual use
    with Server(application, int(os.environ.get("PORT", "8000"))) as server:
        print(f"billing service on {server.url}")
        server.wait()
