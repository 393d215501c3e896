"""Sentry Crons check-ins for ``ik.monitor_cron`` records (called by the Sentry sink)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["capture_cron_checkin"]


def capture_cron_checkin(record: Record) -> None:
    """Send the check-in ``record`` describes through the current Sentry client."""
    from sentry_sdk.crons import capture_checkin

    decl = record.declaration
    slug = getattr(decl, "sentry_slug", None) or record.name.replace("_", "-")
    config: Any = None
    every = getattr(decl, "every", None)
    if every:
        minutes = max(round(every / 60), 1)
        max_runtime = getattr(decl, "max_runtime", None) or 0
        config = {
            "schedule": {"type": "interval", "value": minutes, "unit": "minute"},
            "checkin_margin": max(minutes // 10, 1),
            "max_runtime": max(round(max_runtime / 60), 1),
        }
    status = {"in_progress": "in_progress", "ok": "ok"}.get(record.status, "error")
    capture_checkin(
        monitor_slug=slug,
        check_in_id=record.attributes.get("check_in_id"),
        status=status,
        duration=record.duration,
        monitor_config=config,
    )
