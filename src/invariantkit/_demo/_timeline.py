"""Metric snapshots on the simulated clock: what a Prometheus scraping the demo would store."""

from __future__ import annotations

import bisect
from typing import Any

__all__ = ["Key", "Timeline", "key"]

#: A series: its metric name and its sorted label pairs.
Key = tuple[str, tuple[tuple[str, str], ...]]


def key(name: str, **labels: str) -> Key:
    """The :data:`Key` of series ``name{labels}``."""
    return name, tuple(sorted(labels.items()))


class Timeline:
    """Scrapes of one registry, each at a simulated time.

    Gauges that hold a Unix timestamp (``*_timestamp``, ``*_timestamp_seconds``) are set by the
    code from the real clock while the demo compresses days into seconds: a changed timestamp is
    stored as the simulated time of the scrape that first saw it, so ``time() - x`` rules see
    simulated ages.
    """

    def __init__(self, registry: Any, names: set[str] | None = None) -> None:
        self.registry = registry
        # Reading only the series someone looks at keeps a scrape cheap (histograms are big).
        self.source = registry.restricted_registry(sorted(names)) if names else registry
        self.times: list[float] = []
        self.scrapes: list[dict[Key, float]] = []
        self.exemplars: dict[Key, dict[str, str]] = {}
        self._raw_timestamps: dict[Key, float] = {}

    def take(self, t: float, only: tuple[str, ...] | None = None) -> dict[Key, float]:
        """Scrape the registry now, stored at simulated time ``t``; returns the scrape.

        With ``only`` (sample names), just those series are read again and every other series
        keeps its previous value: a cheap scrape while one metric is moving fast.
        """
        previous = self.scrapes[-1] if self.scrapes else {}
        scrape: dict[Key, float] = dict(previous) if only else {}
        source = self.registry.restricted_registry(list(only)) if only else self.source
        for family in source.collect():
            for sample in family.samples:
                k: Key = (sample.name, tuple(sorted(sample.labels.items())))
                value = float(sample.value)
                if sample.name.endswith(("_timestamp", "_timestamp_seconds")):
                    raw = self._raw_timestamps.get(k)
                    self._raw_timestamps[k] = value
                    if raw is None or raw != value:
                        value = t if value > 0 else value
                    else:
                        value = previous.get(k, t)
                scrape[k] = value
                if sample.exemplar is not None:
                    self.exemplars[k] = dict(sample.exemplar.labels)
        if self.times and t < self.times[-1]:
            t = self.times[-1]
        if self.times and t == self.times[-1]:
            self.scrapes[-1] = scrape
        else:
            self.times.append(t)
            self.scrapes.append(scrape)
        return scrape

    def at(self, t: float) -> dict[Key, float] | None:
        """The last scrape at or before ``t`` (None before the first)."""
        i = bisect.bisect_right(self.times, t) - 1
        return self.scrapes[i] if i >= 0 else None

    def window(self, start: float, end: float) -> list[dict[Key, float]]:
        """The scrapes in ``(start, end]``, oldest first."""
        lo = bisect.bisect_right(self.times, start)
        hi = bisect.bisect_right(self.times, end)
        return self.scrapes[lo:hi]

    @property
    def end(self) -> float:
        return self.times[-1] if self.times else 0.0

    def last(self) -> dict[Key, float]:
        return self.scrapes[-1] if self.scrapes else {}
