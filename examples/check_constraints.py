"""Check that the database constraints the billing guarantees rely on exist (deploy gate).

    python examples/check_constraints.py --db billing.db   # exit 1 when one is missing

The same check the service runs at start-up, as a step of a deploy pipeline or an init
container: a migration that dropped the unique index is caught before traffic arrives. The
result is also reported (``pg_constraint_exists``, a Sentry error when one is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys

from billing_service.monitoring import setup

import invariantkit as ik


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("BILLING_DB", "billing.db"))
    args = parser.parse_args(argv)
    if not os.path.isfile(args.db):
        parser.error(f"no database at {args.db}")
    from prometheus_client import CollectorRegistry

    setup(service="billing-constraint-check", registry=CollectorRegistry())
    conn = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    try:
        found = ik.verify_constraints(conn, sorted(ik.get_catalog().constraints))
    finally:
        conn.close()
        ik.shutdown(timeout=5.0)
    print(json.dumps(found))
    return 0 if all(found.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
