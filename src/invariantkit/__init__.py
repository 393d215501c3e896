"""invariantkit: layer 5 for billing code.

Catch in production the bad states that types, assertions, database constraints and tests failed
to prevent; fan each one out to OpenTelemetry, Prometheus, Sentry, PostHog and JSON logs with one
correlation id and one user id.

Example:
    >>> import invariantkit as ik
    >>> from invariantkit import billing
    >>> @ik.billing_operation("renewal")
    ... def renew(charges_today: int) -> bool:
    ...     return ik.assert_invariant(charges_today <= 1, billing.NO_DOUBLE_CHARGE)
    >>> renew(1)
    True
"""

from invariantkit import sinks
from invariantkit._catalog import Catalog, Constraint, Invariant, get_catalog
from invariantkit._checks import Check, CheckReport, CheckResult, run_checks
from invariantkit._config import Config, configure, flush, shutdown
from invariantkit._constraints import verify_constraints
from invariantkit._context import Binding, correlation_id, extract, identify, inject
from invariantkit._cron import Cron, CronRun, monitor_cron
from invariantkit._dispatch import Stats, stats
from invariantkit._events import track
from invariantkit._idempotency import DbError, IdempotentWrite, idempotent_write
from invariantkit._invariant import (
    InvariantViolation,
    assert_invariant,
    fire_test_alert,
    report_violation,
)
from invariantkit._operation import Operation, OperationRun, billing_operation, operation
from invariantkit._record import Record
from invariantkit._safe import Scrubber
from invariantkit.sinks._logs import JsonFormatter

__version__ = "0.1.0.dev0"

__all__ = [
    "Binding",
    "Catalog",
    "Check",
    "CheckReport",
    "CheckResult",
    "Config",
    "Constraint",
    "Cron",
    "CronRun",
    "DbError",
    "IdempotentWrite",
    "Invariant",
    "InvariantViolation",
    "JsonFormatter",
    "Operation",
    "OperationRun",
    "Record",
    "Scrubber",
    "Stats",
    "__version__",
    "assert_invariant",
    "billing_operation",
    "configure",
    "correlation_id",
    "extract",
    "fire_test_alert",
    "flush",
    "get_catalog",
    "idempotent_write",
    "identify",
    "inject",
    "monitor_cron",
    "operation",
    "report_violation",
    "run_checks",
    "shutdown",
    "sinks",
    "stats",
    "track",
    "verify_constraints",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = "invariantkit"
del _name, _obj
