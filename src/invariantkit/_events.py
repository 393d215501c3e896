"""``ik.track``: product events (PostHog) correlated with the trace and the user."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from invariantkit._config import STATE, current_config, dispatcher
from invariantkit._context import USER, current_ids, new_span_id, new_trace_id
from invariantkit._record import Record
from invariantkit._safe import safe_mapping, safe_str

__all__ = ["track"]

logger = logging.getLogger("invariantkit")
_EVENT_NAME = re.compile(r"[$A-Za-z][A-Za-z0-9_.:$ -]{0,199}\Z")


def track(event: str, **properties: Any) -> None:
    """Send the product event ``event`` (PostHog) with ``properties``, plus a span event, with the
    correlation id (property ``trace_id``) and the bound user as ``distinct_id``.

    Properties are scrubbed like tags. Never raises: an invalid event name is logged and dropped.

    Example:
        >>> import invariantkit as ik
        >>> ik.track("subscription_started", subscription_id="sub_1", tier="plus", amount=5.0)
    """
    try:
        if not isinstance(event, str) or not _EVENT_NAME.match(event):
            logger.error(
                "invariantkit: track() event name must be a str of 1-200 letters, digits, "
                "'_', '.', ':', '$', '-' or spaces; got %s (dropped)",
                safe_str(event, 100),
            )
            return
        scrubber = current_config().scrubber
        event = scrubber.scrub_text(event)  # "paid with 4242 4242 4242 4242" is a valid name
        d = STATE.dispatcher or dispatcher()
        ids = current_ids() or (new_trace_id(), new_span_id())
        d.emit(
            Record(
                "event",
                event,
                "tracked",
                format(ids[0], "032x"),
                format(ids[1], "016x"),
                USER.get(),
                time.time(),
                attributes=safe_mapping(properties, scrubber),
            )
        )
    except Exception:
        logger.exception("invariantkit: track(%s) failed", safe_str(event, 100))
