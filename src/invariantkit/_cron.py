"""``ik.monitor_cron``: cron-job health for short-lived processes."""

from __future__ import annotations

__all__ = ["monitor_cron"]


def monitor_cron(name: str, **kwargs: object) -> object:  # placeholder
    raise NotImplementedError("monitor_cron is being implemented")
