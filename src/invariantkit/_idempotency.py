"""``ik.idempotent_write``: unique-constraint violations are expected retries, not alerts."""

from __future__ import annotations

__all__ = ["DbError", "idempotent_write"]


class DbError(Exception):
    """An unexpected database error in an idempotent write, chained to the original."""


def idempotent_write(operation: str, *, key: object = None) -> object:  # placeholder
    raise NotImplementedError("idempotent_write is being implemented")
