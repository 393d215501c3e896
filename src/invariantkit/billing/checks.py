"""Ready-made at-rest checks for the guide's guarantees and a ledger's.

Each function returns an :class:`~invariantkit.Check` whose SQL runs unchanged on PostgreSQL and
sqlite. Table and column names are keywords, validated and quoted as identifiers (``"name"``,
embedded quotes doubled, ``schema.table`` quoted part by part), never pasted into the SQL as
text; a name with a control character or NUL, or longer than 63 characters, is rejected at
declaration. Pass names as the database stores them (PostgreSQL folds unquoted names to lower
case when a table is created).

Store the trace id with each row you write (``trace_id = ik.correlation_id()``, a ``CHAR(32)``
column) and pass ``trace_id="trace_id"``: a violation found at rest then links to the trace
of the operation that wrote the row (Sentry tag ``writer_trace_id``, span link).

Example:
    >>> import invariantkit as ik
    >>> from invariantkit.billing import checks
    >>> check = checks.double_charges(
    ...     table="charges", subscription="subscription_id", charged_at="charged_at",
    ...     status="status", trace_id="trace_id", every=3600,
    ... )
    >>> check.key
    ('subscription_id', 'charge_day')
"""

from __future__ import annotations

import datetime as dt

from invariantkit._catalog import Invariant
from invariantkit._checks import Check
from invariantkit.billing import CANCELED_NEVER_CHARGED, NO_DOUBLE_CHARGE

__all__ = [
    "balance_mismatch",
    "charges_on_canceled",
    "double_charges",
    "identifier",
    "ledger_unbalanced",
]

#: PostgreSQL truncates longer identifiers (NAMEDATALEN - 1): reject them instead.
IDENTIFIER_LIMIT = 63


def _check_part(what: str, part: str) -> None:
    if not part:
        raise ValueError(f"{what}: empty identifier")
    if len(part.encode()) > IDENTIFIER_LIMIT:
        raise ValueError(f"{what}: {part[:20]!r}... is longer than {IDENTIFIER_LIMIT} bytes")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in part):
        raise ValueError(f"{what}: {part!r} holds a control character or NUL")


def identifier(value: object, what: str = "identifier", *, dotted: bool = False) -> str:
    """``value`` quoted as an SQL identifier, the way ``psycopg.sql.Identifier`` does it: in
    double quotes, with embedded double quotes doubled (valid for PostgreSQL and sqlite). With
    ``dotted``, ``schema.table`` is quoted part by part.

    Raises ``TypeError`` for a non-str and ``ValueError`` for an empty name, a control character
    or NUL, or a part longer than 63 bytes.

    Example:
        >>> from invariantkit.billing.checks import identifier
        >>> identifier('charges"; DROP TABLE users; --')
        '"charges""; DROP TABLE users; --"'
        >>> identifier("billing.charges", dotted=True)
        '"billing"."charges"'
    """
    if not isinstance(value, str):
        raise TypeError(
            f"{what} must be a str naming a table or column, not {type(value).__name__}"
        )
    parts = value.split(".") if dotted else [value]
    for part in parts:
        _check_part(what, part)
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def _literal(value: object, what: str) -> str:
    """A string literal, embedded single quotes doubled (standard SQL, both databases)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError(f"{what}: {value!r} holds a control character or NUL")
    return "'" + value.replace("'", "''") + "'"


def _alias(value: str, what: str) -> str:
    """The name a key column gets in the result (the user's column name): validated above."""
    _check_part(what, value)
    return value


def _trace(trace_id: str | None, prefix: str = "") -> str:
    if trace_id is None:
        return ""
    return f", max({prefix}{identifier(trace_id, 'trace_id')}) AS trace_id"


def _distinct(*names: str) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"the result's column names must differ, got {', '.join(names)}")


def double_charges(
    invariant: Invariant = NO_DOUBLE_CHARGE,
    *,
    table: str,
    subscription: str,
    charged_at: str,
    every: float | dt.timedelta,
    status: str | None = None,
    succeeded: str = "succeeded",
    trace_id: str | None = None,
    name: str = "double_charges",
    sample: int = 100,
) -> Check:
    """More than one successful charge of one subscription on one (UTC) day.

    One entity per subscription and day, tagged by the subscription column's name and
    ``charge_day``; ``charges_count`` goes to extra. With ``status``, only rows whose status is
    ``succeeded`` count. With ``trace_id``, the largest writer trace id of that day's charges
    links the violation to a writer.

    Example:
        >>> from invariantkit.billing import checks
        >>> check = checks.double_charges(
        ...     table="charges", subscription="subscription_id", charged_at="charged_at",
        ...     every=3600, name="doc_double_charges",
        ... )
        >>> "HAVING count(*) > 1" in check.sql
        True
    """
    sub = identifier(subscription, "subscription")
    at = identifier(charged_at, "charged_at")
    key = _alias(subscription, "subscription")
    _distinct(key, "charge_day", "charges_count", "trace_id")
    where = ""
    if status is not None:
        where = f" WHERE {identifier(status, 'status')} = {_literal(succeeded, 'succeeded')}"
    sql = (
        f"SELECT {sub} AS {sub}, date({at}) AS charge_day, count(*) AS charges_count"  # noqa: S608 - quoted identifiers
        f"{_trace(trace_id)} FROM {identifier(table, 'table', dotted=True)}{where} "
        f"GROUP BY {sub}, date({at}) HAVING count(*) > 1"
    )
    return Check(invariant, sql=sql, key=(key, "charge_day"), every=every, name=name, sample=sample)


def charges_on_canceled(
    invariant: Invariant = CANCELED_NEVER_CHARGED,
    *,
    charges: str,
    subscriptions: str,
    every: float | dt.timedelta,
    charge_id: str = "id",
    charge_subscription: str = "subscription_id",
    charged_at: str = "charged_at",
    subscription_id: str = "id",
    status: str = "status",
    canceled: str = "canceled",
    canceled_at: str = "canceled_at",
    trace_id: str | None = None,
    name: str = "charges_on_canceled",
    sample: int = 100,
) -> Check:
    """A charge made after its subscription was canceled.

    Joins ``charges.<charge_subscription>`` to ``subscriptions.<subscription_id>``; a charge is
    violating when the subscription's ``status`` is ``canceled`` and the charge's ``charged_at``
    is later than its ``canceled_at``. One entity per charge, tagged by the charges' subscription
    column's name and ``charge_id``; the two timestamps go to extra. With ``trace_id`` (a column
    of the charges table), the writer of the charge is linked.

    Example:
        >>> from invariantkit.billing import checks
        >>> check = checks.charges_on_canceled(
        ...     charges="charges", subscriptions="subscriptions", every=3600,
        ...     name="doc_charges_on_canceled",
        ... )
        >>> check.key
        ('subscription_id', 'charge_id')
    """
    sub = _alias(charge_subscription, "charge_subscription")
    _distinct(sub, "charge_id", "charged_at", "canceled_at", "trace_id")
    trace = "" if trace_id is None else f", c.{identifier(trace_id, 'trace_id')} AS trace_id"
    c_sub = identifier(charge_subscription, "charge_subscription")
    sql = (
        f"SELECT c.{c_sub} AS {c_sub}, c.{identifier(charge_id, 'charge_id')} AS charge_id, "  # noqa: S608 - quoted identifiers
        f"c.{identifier(charged_at, 'charged_at')} AS charged_at, "
        f"s.{identifier(canceled_at, 'canceled_at')} AS canceled_at{trace} "
        f"FROM {identifier(charges, 'charges', dotted=True)} c "
        f"JOIN {identifier(subscriptions, 'subscriptions', dotted=True)} s "
        f"ON s.{identifier(subscription_id, 'subscription_id')} = c.{c_sub} "
        f"WHERE s.{identifier(status, 'status')} = {_literal(canceled, 'canceled')} "
        f"AND c.{identifier(charged_at, 'charged_at')} > s.{identifier(canceled_at, 'canceled_at')}"
    )
    return Check(invariant, sql=sql, key=(sub, "charge_id"), every=every, name=name, sample=sample)


def ledger_unbalanced(
    invariant: Invariant,
    *,
    table: str,
    transaction: str,
    amount: str,
    every: float | dt.timedelta,
    trace_id: str | None = None,
    name: str = "ledger_unbalanced",
    sample: int = 100,
) -> Check:
    """A double-entry transaction whose entries do not sum to zero.

    One entity per transaction, tagged by the transaction column's name; the ``imbalance`` (the
    sum) and the number of ``entries`` go to extra. Keep amounts in integer minor units or
    NUMERIC: floating-point sums are rarely exactly zero.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit.billing import checks
        >>> LEDGER = ik.Invariant("LEDGER_BALANCED", type="ledger_unbalanced",
        ...                       summary="A ledger transaction does not balance")
        >>> check = checks.ledger_unbalanced(LEDGER, table="ledger_entries",
        ...                                  transaction="transaction_id", amount="amount",
        ...                                  every=3600)
        >>> check.key
        ('transaction_id',)
    """
    tx = identifier(transaction, "transaction")
    amt = identifier(amount, "amount")
    key = _alias(transaction, "transaction")
    _distinct(key, "imbalance", "entries", "trace_id")
    sql = (
        f"SELECT {tx} AS {tx}, sum({amt}) AS imbalance, count(*) AS entries{_trace(trace_id)} "  # noqa: S608 - quoted identifiers
        f"FROM {identifier(table, 'table', dotted=True)} GROUP BY {tx} HAVING sum({amt}) <> 0"
    )
    return Check(invariant, sql=sql, key=(key,), every=every, name=name, sample=sample)


def balance_mismatch(
    invariant: Invariant,
    *,
    accounts: str,
    entries: str,
    every: float | dt.timedelta,
    account_id: str = "id",
    balance: str = "balance",
    entry_account: str = "account_id",
    amount: str = "amount",
    name: str = "balance_mismatch",
    sample: int = 100,
) -> Check:
    """An account whose stored balance differs from the sum of its ledger entries.

    One entity per account, tagged by the entries' account column's name (``account_id`` by
    default); the stored ``balance`` and the ``ledger_total`` go to extra. An account without
    entries must have a zero balance.

    Example:
        >>> import invariantkit as ik
        >>> from invariantkit.billing import checks
        >>> BALANCE = ik.Invariant("BALANCE_MATCHES_LEDGER", type="balance_mismatch",
        ...                        summary="An account balance differs from its ledger")
        >>> check = checks.balance_mismatch(BALANCE, accounts="accounts",
        ...                                 entries="ledger_entries", every=3600)
        >>> check.key
        ('account_id',)
    """
    key = _alias(entry_account, "entry_account")
    _distinct(key, "balance", "ledger_total")
    acc_id = identifier(account_id, "account_id")
    bal = identifier(balance, "balance")
    e_acc = identifier(entry_account, "entry_account")
    sql = (
        f"SELECT a.{acc_id} AS {e_acc}, a.{bal} AS balance, "  # noqa: S608 - quoted identifiers
        "COALESCE(e.total, 0) AS ledger_total "
        f"FROM {identifier(accounts, 'accounts', dotted=True)} a LEFT JOIN "
        f"(SELECT {e_acc} AS account, sum({identifier(amount, 'amount')}) AS total "
        f"FROM {identifier(entries, 'entries', dotted=True)} GROUP BY {e_acc}) e "
        f"ON e.account = a.{acc_id} WHERE a.{bal} <> COALESCE(e.total, 0)"
    )
    return Check(invariant, sql=sql, key=(key,), every=every, name=name, sample=sample)
