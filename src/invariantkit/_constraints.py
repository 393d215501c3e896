"""``ik.verify_constraints``: the database constraints that protect guarantees still exist."""

from __future__ import annotations

__all__ = ["verify_constraints"]


def verify_constraints(conn: object, names: object) -> dict[str, bool]:  # placeholder
    raise NotImplementedError("verify_constraints is being implemented")
