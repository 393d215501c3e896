"""Isolated catalogs for the generator tests (alerts, dashboards, playbooks)."""

from __future__ import annotations

from invariantkit import billing
from invariantkit._catalog import Catalog, Declaration


def with_guarantees(*declarations: Declaration) -> Catalog:
    """A fresh catalog holding the guide's three guarantees, then ``declarations`` in order."""
    catalog = Catalog()
    for decl in (
        billing.NO_DOUBLE_CHARGE,
        billing.CANCELED_NEVER_CHARGED,
        billing.PERIOD_MUST_ADVANCE,
        *declarations,
    ):
        catalog.add(decl)
    return catalog
