"""Exceptions that end a unit of work without failing it (Celery's ``Retry``, ``Ignore`` and
``Reject``): an operation or cron run they end is a success, and no failure is reported.

Integrations register the types of their framework (``invariantkit.integrations.celery``).
"""

from __future__ import annotations

__all__ = ["is_control_flow", "register"]

_types: tuple[type[BaseException], ...] = ()


def register(*types: type[BaseException]) -> None:
    """Treat instances of ``types`` as control flow from now on (idempotent)."""
    global _types
    _types = tuple(dict.fromkeys((*_types, *types)))


def is_control_flow(exc: BaseException | None) -> bool:
    """True for an exception of a registered control-flow type."""
    return isinstance(exc, _types)
