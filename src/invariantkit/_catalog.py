"""The process-wide catalog of what was declared: invariants, operations, crons, constraints.

The generators (alert rules, dashboards, Sentry rules, playbooks), ``verify`` and the demo read it;
metrics sinks create every declared label child at zero from it, so the first violation after a
process start is seen by ``increase()``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

if TYPE_CHECKING:
    from invariantkit._checks import Check

__all__ = [
    "Catalog",
    "Constraint",
    "CronDecl",
    "Declaration",
    "IdempotentDecl",
    "Invariant",
    "OperationDecl",
    "get_catalog",
]

logger = logging.getLogger("invariantkit")

Severity = Literal["critical", "error", "warning"]
SEVERITIES: tuple[str, ...] = ("critical", "error", "warning")
#: Sentry level for each severity (the guide sends critical invariants at level "fatal").
SENTRY_LEVELS: Mapping[str, str] = MappingProxyType(
    {"critical": "fatal", "error": "error", "warning": "warning"}
)

UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9_]*\Z")
LOWER_SNAKE = re.compile(r"[a-z][a-z0-9_]*\Z")
LABEL_VALUE = re.compile(r"[a-z][a-z0-9_-]*\Z")


#: Longest declared name or type: both travel as Sentry tag values and metric label values.
NAME_LIMIT = 100
#: ``type`` values starting with this prefix are reserved for test alerts (``fire_test_alert``).
TEST_TYPE_PREFIX = "test_"


def _suggestion(value: str, pattern: re.Pattern[str]) -> str | None:
    """A valid spelling of ``value`` for the error message, when one is obvious."""
    if pattern is UPPER_SNAKE:
        candidate = re.sub(r"[^A-Z0-9]+", "_", value.upper()).strip("_")
    elif pattern is LOWER_SNAKE:
        candidate = re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")
    else:
        return None
    if candidate and candidate != value and pattern.match(candidate):
        return candidate
    return None


def check_name(
    owner: str, field_name: str, value: object, pattern: re.Pattern[str], rule: str
) -> str:
    """Validate a declared name: a clear error naming the field and the rule.

    ``TypeError`` when ``value`` is not a str; ``ValueError`` (with a suggested spelling when
    one is obvious) when it does not match ``pattern`` or is longer than ``NAME_LIMIT``.
    """
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {field_name} must be a str, not {type(value).__name__}")
    if not pattern.match(value):
        hint = _suggestion(value, pattern)
        suffix = f", for example {hint!r}" if hint else ""
        raise ValueError(f"{owner}: {field_name}={value!r} must be {rule}{suffix}")
    if len(value) > NAME_LIMIT:
        raise ValueError(
            f"{owner}: {field_name} must be at most {NAME_LIMIT} characters long, "
            f"not {len(value)} (it is sent as a Sentry tag and a metric label value)"
        )
    return value


def check_text(owner: str, field_name: str, value: object, *, optional: bool = False) -> str:
    """Validate a free-text field: a str, non-blank unless ``optional`` (then None means "")."""
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {field_name} must be a str, not {type(value).__name__}")
    if not optional and not value.strip():
        raise ValueError(f"{owner}: {field_name} must not be empty")
    return value


def check_severity(owner: str, value: object) -> str:
    """Validate a severity: one of ``SEVERITIES`` (Sentry's ``fatal`` is ``critical`` here)."""
    if not isinstance(value, str) or value not in SEVERITIES:
        hint = " (Sentry level 'fatal' is severity 'critical')" if value == "fatal" else ""
        raise ValueError(
            f"{owner}: severity={value!r} must be one of {', '.join(SEVERITIES)}{hint}"
        )
    return value


_RUNBOOK = re.compile(
    r"https?://[^\s/]+\S*\Z"  # an http(s) URL
    r"|/\S*\Z"  # an absolute path on the docs site
    r"|(?:\.{1,2}/)*[\w.-]+(?:/[\w.-]+)*\.md(?:#[\w.-]*)?\Z"  # a relative .md file
)


def check_url(owner: str, value: object) -> str | None:
    """Validate a runbook link: an http(s) URL, an absolute path or a relative ``.md`` path."""
    if value is None:
        return None
    if not isinstance(value, str) or not _RUNBOOK.match(value):
        raise ValueError(
            f"{owner}: runbook_url={value!r} must be an http(s) URL, an absolute path or a "
            "relative path to a .md file"
        )
    return value


@dataclass(frozen=True, eq=False)
class Invariant:
    """A declared invariant: a guarantee whose violation must page its owner.

    Declaring one registers it in the process-wide catalog, creates its violation counter child
    ``billing_invariant_violation_total{type,invariant}`` at zero in every metrics sink, and gives
    the generators what they need for its alert rule, dashboard panel and playbook.

    Every argument is validated here, at declaration time: a bad one raises ``ValueError`` (or
    ``TypeError``) naming the field and the rule, so a typo fails at import, not at 3 a.m.

    Args:
        name: UPPER_SNAKE name (``[A-Z][A-Z0-9_]*``, at most 100 characters), the Sentry message
            and ``invariant`` tag.
        type: lower_snake kind (``[a-z][a-z0-9_]*``), the metric's ``type`` label. The prefix
            ``test_`` is reserved for test alerts.
        severity: ``critical`` (Sentry ``fatal``, alert ``for: 0m``), ``error`` or ``warning``.
        summary: one line for the alert (required, not blank).
        description: what it means and where to look.
        runbook_url: the playbook (an http(s) URL, an absolute path or a relative ``.md`` path);
            defaults to the generated one.
        team: who is paged (alert label ``team``, ``[a-z][a-z0-9_-]*``).
        domain: the product domain (Sentry tag ``domain``, ``[a-z][a-z0-9_-]*``).
        enforce: ``True`` raises :class:`~invariantkit.InvariantViolation` after reporting even in
            report mode; ``False`` never raises, even when ``configure(mode="enforce")``;
            ``None`` (default) follows the configured mode.

    Example:
        >>> import invariantkit as ik
        >>> REFUND_LIMIT = ik.Invariant(
        ...     "REFUND_NOT_ABOVE_CHARGE", type="refund_above_charge",
        ...     summary="A refund exceeded the charge it refunds",
        ... )
        >>> REFUND_LIMIT.level
        'fatal'
    """

    name: str
    type: str
    severity: Severity = "critical"
    summary: str = ""
    description: str = ""
    runbook_url: str | None = None
    team: str = "billing"
    domain: str = "billing"
    enforce: bool | None = None
    kind: Literal["invariant"] = field(default="invariant", init=False, repr=False)

    def __init__(
        self,
        name: str,
        *,
        type: str,  # noqa: A002 - the design's public keyword
        severity: Severity = "critical",
        summary: str,
        description: str = "",
        runbook_url: str | None = None,
        team: str = "billing",
        domain: str = "billing",
        enforce: bool | None = None,
    ) -> None:
        owner = f"Invariant({name!r})" if isinstance(name, str) else "Invariant"
        set_ = object.__setattr__
        set_(
            self,
            "name",
            check_name(owner, "name", name, UPPER_SNAKE, "UPPER_SNAKE: [A-Z][A-Z0-9_]*"),
        )
        set_(
            self,
            "type",
            check_name(owner, "type", type, LOWER_SNAKE, "lower_snake: [a-z][a-z0-9_]*"),
        )
        if type.startswith(TEST_TYPE_PREFIX):
            raise ValueError(
                f"{owner}: type={type!r} must not start with {TEST_TYPE_PREFIX!r}: that prefix "
                "is reserved for test alerts (ik.fire_test_alert() reports type "
                f"'{TEST_TYPE_PREFIX}<type>' with label test=\"true\")"
            )
        set_(self, "severity", check_severity(owner, severity))
        set_(self, "summary", check_text(owner, "summary", summary))
        set_(self, "description", check_text(owner, "description", description, optional=True))
        set_(self, "runbook_url", check_url(owner, runbook_url))
        set_(
            self,
            "team",
            check_name(owner, "team", team, LABEL_VALUE, "a label value: [a-z][a-z0-9_-]*"),
        )
        set_(
            self,
            "domain",
            check_name(owner, "domain", domain, LABEL_VALUE, "a label value: [a-z][a-z0-9_-]*"),
        )
        if enforce is not None and not isinstance(enforce, bool):
            raise TypeError(
                f"{owner}: enforce must be True (always raise), False (never raise) or None "
                f"(follow the configured mode), not {enforce!r}"
            )
        set_(self, "enforce", enforce)
        set_(self, "kind", "invariant")
        get_catalog().add(self)

    @property
    def level(self) -> str:
        """The Sentry level for this invariant's severity (``fatal``, ``error`` or ``warning``)."""
        return SENTRY_LEVELS[self.severity]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_invariant, (self.name,))


def _rebuild_invariant(name: str) -> Invariant:
    return get_catalog().invariants[name]


@dataclass(frozen=True)
class OperationDecl:
    """A declared operation (``ik.operation``): its span name and metric children are fixed."""

    name: str
    domain: str = "billing"
    user_facing: bool = False
    attributes: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    kind: Literal["operation"] = field(default="operation", init=False, repr=False)

    @property
    def span_name(self) -> str:
        return f"{self.domain}.{self.name}"

    @property
    def event_prefix(self) -> str:
        return f"{self.domain}_{self.name}"


@dataclass(frozen=True)
class CronDecl:
    """A declared cron job (``ik.monitor_cron``): schedule and runtime bounds, in seconds."""

    name: str
    every: float
    max_runtime: float
    team: str = "platform"
    sentry_slug: str | None = None
    runbook_url: str | None = None
    domain: str = "billing"
    kind: Literal["cron"] = field(default="cron", init=False, repr=False)


@dataclass(frozen=True)
class Constraint:
    """A declared database constraint or unique index that protects a guarantee.

    Example:
        >>> import invariantkit as ik
        >>> IDEMPOTENCY_IDX = ik.Constraint("subscription_payment_events_idempotency_idx")
    """

    name: str
    team: str = "platform"
    severity: Severity = "critical"
    summary: str = ""
    description: str = ""
    runbook_url: str | None = None
    kind: Literal["constraint"] = field(default="constraint", init=False, repr=False)

    def __post_init__(self) -> None:
        owner = f"Constraint({self.name!r})"
        check_name(
            owner, "name", self.name, re.compile(r"[A-Za-z_][A-Za-z0-9_$.]*\Z"), "an SQL identifier"
        )
        check_name(owner, "team", self.team, LABEL_VALUE, "a label value: [a-z][a-z0-9_-]*")
        check_severity(owner, self.severity)
        check_url(owner, self.runbook_url)
        if not self.summary:
            object.__setattr__(self, "summary", f"Database constraint {self.name} is missing")
        get_catalog().add(self)


@dataclass(frozen=True)
class IdempotentDecl:
    """An operation written with ``ik.idempotent_write`` (its retry counter starts at zero)."""

    name: str
    team: str = "billing"
    kind: Literal["idempotent"] = field(default="idempotent", init=False, repr=False)


Declaration: TypeAlias = (
    "Invariant | OperationDecl | CronDecl | Constraint | IdempotentDecl | Check"
)


#: Operations the catalog keeps. Names built at run time (an id inside the name) beyond it are
#: not kept (their metric labels fold into "other" at 100 anyway); what is already in the
#: catalog, and every invariant, cron, constraint and write, is never dropped.
OPERATION_LIMIT = 1000


class Catalog:
    """Everything declared in this process, by kind and name. Thread-safe.

    ``invariants``, ``operations``, ``crons``, ``constraints`` and ``idempotent`` map names to
    declarations; iterating yields them all. A later declaration with the same kind and name
    replaces the earlier one (module reloads; a different type, severity or team is logged as a
    warning). Get the process-wide one with :func:`~invariantkit.get_catalog`.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit import billing
        >>> catalog = ik.get_catalog()
        >>> catalog.invariants["NO_DOUBLE_CHARGE"] is billing.NO_DOUBLE_CHARGE
        True
        >>> sorted(d.name for d in catalog if d.kind == "invariant")[:2]
        ['CANCELED_NEVER_CHARGED', 'NO_DOUBLE_CHARGE']
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.invariants: dict[str, Invariant] = {}
        self.operations: dict[str, OperationDecl] = {}
        self.crons: dict[str, CronDecl] = {}
        self.constraints: dict[str, Constraint] = {}
        self.idempotent: dict[str, IdempotentDecl] = {}
        self.checks: dict[str, Check] = {}  # at-rest checks (ik.Check)
        self._listeners: list[Callable[[Declaration], None]] = []
        #: Operations not kept because the catalog held ``OPERATION_LIMIT`` already.
        self.folded_operations = 0

    def _table(self, decl: Declaration) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {
            "invariant": self.invariants,
            "operation": self.operations,
            "cron": self.crons,
            "constraint": self.constraints,
            "idempotent": self.idempotent,
            "check": self.checks,
        }
        return tables[decl.kind]

    def add(self, decl: Declaration) -> Declaration:
        """Register ``decl`` and tell the configured sinks (which create its metrics at zero)."""
        with self._lock:
            table = self._table(decl)
            existing = table.get(decl.name)
            if existing is not None and existing == decl and decl.kind != "invariant":
                return existing  # type: ignore[no-any-return]
            if isinstance(existing, Invariant) and isinstance(decl, Invariant):
                _warn_if_redefined(existing, decl)
            if existing is None and decl.kind == "operation" and len(table) >= OPERATION_LIMIT:
                self.folded_operations += 1
                if self.folded_operations == 1:
                    logger.warning(
                        "invariantkit: more than %d operation names (an id inside the name?); "
                        "new ones are not kept in the catalog and their metrics fold into "
                        'operation="other"',
                        OPERATION_LIMIT,
                    )
                return decl
            table[decl.name] = decl
            listeners = list(self._listeners)
        for listener in listeners:
            listener(decl)
        return decl

    def subscribe(self, listener: Callable[[Declaration], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def __iter__(self) -> Iterator[Declaration]:
        with self._lock:
            items: list[Declaration] = [
                *self.invariants.values(),
                *self.operations.values(),
                *self.crons.values(),
                *self.constraints.values(),
                *self.idempotent.values(),
                *self.checks.values(),
            ]
        return iter(items)

    def __len__(self) -> int:
        return sum(
            len(t)
            for t in (
                self.invariants,
                self.operations,
                self.crons,
                self.constraints,
                self.idempotent,
                self.checks,
            )
        )

    def snapshot(self) -> tuple[dict[str, Any], ...]:
        """Copies of every table (for tests that must restore the catalog)."""
        with self._lock:
            return (
                dict(self.invariants),
                dict(self.operations),
                dict(self.crons),
                dict(self.constraints),
                dict(self.idempotent),
                dict(self.checks),
            )

    def restore(self, snapshot: tuple[dict[str, Any], ...]) -> None:
        """Put back the tables taken by ``snapshot()``."""
        with self._lock:
            tables: tuple[dict[str, Any], ...] = (
                self.invariants,
                self.operations,
                self.crons,
                self.constraints,
                self.idempotent,
                self.checks,
            )
            # A snapshot from before a table existed (five tables) empties the newer ones.
            padded = (*snapshot, *({},) * (len(tables) - len(snapshot)))
            for table, saved in zip(
                tables,
                padded,
                strict=True,
            ):
                table.clear()
                table.update(saved)


_INVARIANT_FIELDS = ("type", "severity", "team", "domain", "enforce")


def _warn_if_redefined(old: Invariant, new: Invariant) -> None:
    """Two modules declaring one name differently is a mistake; a reload declares it again."""
    changed = [f for f in _INVARIANT_FIELDS if getattr(old, f) != getattr(new, f)]
    if changed:
        logger.warning(
            "invariantkit: invariant %s declared again with a different %s; the new declaration "
            "replaces the old one (metric series of the old type stay at their last value)",
            new.name,
            ", ".join(changed),
        )


_CATALOG = Catalog()


def get_catalog() -> Catalog:
    """The process-wide catalog of declarations.

    Example:
        >>> import invariantkit as ik
        >>> "NO_DOUBLE_CHARGE" in ik.get_catalog().invariants or True
        True
    """
    return _CATALOG
