"""Records kept in memory: for tests and the demo."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from invariantkit._record import Record

__all__ = ["Memory"]


class Memory:
    """Keep every record (except declarations) in ``records``; thread-safe.

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
        if record.kind == "declare":
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
