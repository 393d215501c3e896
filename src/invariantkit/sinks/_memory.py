"""Records kept in memory: for tests and the demo."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["Memory"]


class Memory:
    """Keep every record in ``records``, except declarations (``declare`` records, and the
    zero-count ``sink_error``/``sink_dropped`` records that create those counters); thread-safe.

    Example:
        >>> import invariantkit as ik
        >>> sink = ik.sinks.Memory()
        >>> sink.records
        []
    """

    name: ClassVar[str] = "memory"
    deferred: ClassVar[bool] = False

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._lock = threading.Lock()

    def emit(self, record: Record) -> None:
        kind = record.kind
        if kind == "declare" or (
            kind in ("sink_error", "sink_dropped") and record.attributes.get("count") == 0
        ):
            return
        with self._lock:
            self.records.append(record)

    def clear(self) -> None:
        with self._lock:
            self.records.clear()

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> bool:
        return True
