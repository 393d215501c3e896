"""The backends invariantkit fans out to. Each implements the :class:`Sink` protocol.

Example:
    >>> import invariantkit as ik
    >>> sorted(ik.sinks.__all__)[:3]
    ['JsonLogs', 'Memory', 'OtelMetrics']
"""

from invariantkit.sinks._base import Sink, SinkContext, SinkUnavailable
from invariantkit.sinks._logs import JsonLogs
from invariantkit.sinks._memory import Memory
from invariantkit.sinks._otel import OtelTraces
from invariantkit.sinks._otel_metrics import OtelMetrics
from invariantkit.sinks._posthog import PostHog
from invariantkit.sinks._prometheus import PrometheusMetrics
from invariantkit.sinks._sentry import Sentry

__all__ = [
    "JsonLogs",
    "Memory",
    "OtelMetrics",
    "OtelTraces",
    "PostHog",
    "PrometheusMetrics",
    "Sentry",
    "Sink",
    "SinkContext",
    "SinkUnavailable",
]

for _name in __all__:
    globals()[_name].__module__ = "invariantkit.sinks"
del _name
