"""Shared pieces of the generators: metric names, naming, escaping, durations, links."""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from invariantkit import _semconv as sc
from invariantkit._catalog import Catalog, Constraint, CronDecl, Invariant, get_catalog

# -- the metric names the library emits: read from the one spec (invariantkit._semconv) ------

VIOLATIONS = sc.VIOLATIONS.name
OPERATIONS = sc.OPERATIONS.name
OPERATION_DURATION = sc.OPERATION_DURATION.name
OPERATION_ERRORS = sc.OPERATION_ERRORS.name
RETRIES = sc.RETRIES.name
CONSTRAINT_EXISTS = sc.CONSTRAINT_EXISTS.name
SINK_ERRORS = sc.SINK_ERRORS.name
SINK_DROPPED = sc.SINK_DROPPED.name
SUBSCRIPTION_EVENTS = sc.SUBSCRIPTION_EVENTS.name
RENEWAL_FAILURES = sc.RENEWAL_FAILURES.name
CHECK_RUNS = sc.CHECK_RUNS.name
CHECK_VIOLATING = sc.CHECK_VIOLATING.name
CHECK_LAST_RUN = sc.CHECK_LAST_RUN.name
CHECK_DURATION = sc.CHECK_DURATION.name
# Metrics the application exports itself (billing.py documents them); dashboards read them.
ACTIVE_SUBSCRIPTIONS = "billing_active_subscriptions"
MRR = "billing_mrr"

#: ``event`` label values of ``billing_subscription_events_total`` (the guide's PostHog names).
EVENT_STARTED = "subscription_started"
EVENT_RENEWAL_SUCCESS = "subscription_renewal_success"
EVENT_RENEWAL_FAILED = "subscription_renewal_failed"
EVENT_CANCELED = "subscription_canceled"

CRON_SUFFIXES = tuple(g.suffix for g in sc.CRON_GAUGES)

#: The window of every "first increase" expression (the guide's ``[5m]``).
WINDOW = "5m"
WINDOW_SECONDS = 300

DEFAULT_RUNBOOK_BASE_URL = "playbooks/"
DEFAULT_SENTRY_URL = "https://sentry.io/issues/"
DEFAULT_TEAM = "billing"
PLATFORM_TEAM = "platform"
TEST_SEVERITY = "test"

_METRIC_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TEAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def catalog_or_global(catalog: Catalog | None) -> Catalog:
    """``catalog``, or the process-wide one."""
    if catalog is None:
        return get_catalog()
    if not isinstance(catalog, Catalog):
        raise TypeError(f"catalog must be an invariantkit.Catalog, not {type(catalog).__name__}")
    return catalog


def invariants(catalog: Catalog) -> list[Invariant]:
    """The declared invariants, sorted by name (the output does not depend on import order)."""
    return [catalog.invariants[k] for k in sorted(catalog.invariants)]


def crons(catalog: Catalog) -> list[CronDecl]:
    """The declared crons, sorted by name, each checked for a usable metric name."""
    out = [catalog.crons[k] for k in sorted(catalog.crons)]
    for decl in out:
        cron_name(decl)
    return out


def constraints(catalog: Catalog) -> list[Constraint]:
    """The declared constraints, sorted by name."""
    return [catalog.constraints[k] for k in sorted(catalog.constraints)]


def cron_name(decl: CronDecl) -> str:
    """The cron's name, checked: it becomes part of the metric names ``cron_<name>_...``."""
    if not isinstance(decl.name, str) or not _METRIC_PART.match(decl.name):
        raise ValueError(
            f"cron {decl.name!r}: name must be usable in a metric name ([A-Za-z_][A-Za-z0-9_]*)"
        )
    for field_name in ("every", "max_runtime"):
        value = getattr(decl, field_name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"cron {decl.name!r}: {field_name}={value!r} must be positive seconds")
    check_team(f"cron {decl.name!r}", decl.team)
    return decl.name


def check_team(owner: str, team: object) -> str:
    """A team label value: non-empty, no spaces or quotes (it is matched in routes)."""
    if not isinstance(team, str) or not _TEAM.match(team):
        raise ValueError(f"{owner}: team={team!r} must be a label value like 'billing'")
    return team


def cron_metric(decl: CronDecl, suffix: str) -> str:
    """``cron_<name>_<suffix>``, the guide's gauge names."""
    [gauge] = [g for g in sc.CRON_GAUGES if g.suffix == suffix]
    return gauge.name(cron_name(decl))


def camel(name: str, fallback: str = "X") -> str:
    """``NO_DOUBLE_CHARGE`` -> ``NoDoubleCharge``; ``subscription_renewal`` ->
    ``SubscriptionRenewal``. Always a valid alert name (starts with a letter)."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", name) if p]
    out = "".join(p[:1].upper() + p[1:].lower() for p in parts)
    if not out or not out[0].isalpha():
        out = fallback + out
    return out


def kebab(name: str) -> str:
    """``NO_DOUBLE_CHARGE`` -> ``no-double-charge`` (playbook file names)."""
    return "-".join(p.lower() for p in re.split(r"[^A-Za-z0-9]+", name) if p) or "unnamed"


# -- escaping -----------------------------------------------------------------------------------


def promql_string(value: str) -> str:
    """A PromQL double-quoted string literal for ``value`` (label matcher values)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def promql_regex(values: Iterable[str]) -> str:
    """A PromQL string literal holding an RE2 alternation that matches exactly ``values``."""
    alternatives = sorted(
        {"".join("\\" + c if c in _RE2_SPECIAL else c for c in v) for v in values}
    )
    return promql_string("|".join(alternatives))


def selector(metric: str, matchers: Sequence[tuple[str, str, str]] = ()) -> str:
    """``metric{label op "value", ...}`` with every value escaped; ``op`` is ``=``, ``!=``,
    ``=~`` or ``!~`` (for the regex ones ``value`` is already a PromQL literal)."""
    if not matchers:
        return metric
    parts = []
    for label, op, value in matchers:
        literal = value if op in ("=~", "!~") else promql_string(value)
        parts.append(f"{label}{op}{literal}")
    return f"{metric}{{{','.join(parts)}}}"


_TEMPLATE_OPEN = "{{"
#: How a literal ``{{`` is written in a Prometheus (Go) template.
TEMPLATE_LITERAL_OPEN = '{{ "{{" }}'


def template_text(text: str) -> str:
    """User text made safe inside an alert annotation (Go template): ``{{`` stays literal."""
    return text.replace(_TEMPLATE_OPEN, TEMPLATE_LITERAL_OPEN)


def label_ref(label: str) -> str:
    """The template reference to an alert label, ``{{ $labels.<label> }}``."""
    return "{{ $labels." + label + " }}"


_LABEL_REF = re.compile(r"\{\{ \$labels\.([A-Za-z_][A-Za-z0-9_]*) \}\}")


def render_template(template: str, labels: dict[str, str]) -> str:
    """Render the only template forms the generators write (label references and literal
    ``{{``), as Prometheus would: used to state the expected annotations in rule tests."""
    marker = "\x00"
    out = template.replace(TEMPLATE_LITERAL_OPEN, marker)
    out = _LABEL_REF.sub(lambda m: labels.get(m[1], ""), out)
    return out.replace(marker, _TEMPLATE_OPEN)


# -- durations and numbers ----------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A Prometheus duration: ``90000`` -> ``25h``, ``330`` -> ``5m30s``, ``2.5`` -> ``2500ms``."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms % 1000:
        return f"{ms}ms"
    total = ms // 1000
    out = ""
    for unit, length in (("h", 3600), ("m", 60), ("s", 1)):
        if total >= length:
            out += f"{total // length}{unit}"
            total %= length
    return out


def human(seconds: float) -> str:
    """``90000`` -> ``25h``; ``5400`` -> ``1h 30m``; ``2`` -> ``2s`` (for summaries)."""
    total = round(seconds)
    if total < 60:
        return f"{seconds:g}s"
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return " ".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v)


def number(value: float) -> str:
    """A PromQL number literal: ``90000.0`` -> ``90000``, ``3.5`` -> ``3.5``."""
    return f"{float(value):.15g}"


def cron_missing_after(decl: CronDecl) -> float:
    """Seconds after its last run when a cron counts as missing: ``every`` plus Sentry's
    check-in margin (one formula, shared with :func:`invariantkit._cron.missing_after`; a daily
    job: 90000 s, the guide's ``RenewalCronMissing``).
    """
    from invariantkit._cron import missing_after

    return float(missing_after(decl))


def cron_missing_for(decl: CronDecl) -> float:
    """The ``for`` of a cron's Missing alert: the guide's 5 minutes, or ``every`` if shorter."""
    return min(float(decl.every), 300.0)


# -- links --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Links:
    """Where generated alerts, dashboards and playbooks point."""

    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL
    sentry_url: str = DEFAULT_SENTRY_URL

    @classmethod
    def make(cls, runbook_base_url: str | None, sentry_url: str | None) -> Links:
        base = DEFAULT_RUNBOOK_BASE_URL if runbook_base_url is None else runbook_base_url
        sentry = DEFAULT_SENTRY_URL if sentry_url is None else sentry_url
        for field_name, value in (("runbook_base_url", base), ("sentry_url", sentry)):
            if not isinstance(value, str):
                raise TypeError(f"{field_name} must be a str, not {type(value).__name__}")
            if any(c in value for c in "\n\r\t {}\"'"):
                raise ValueError(f"{field_name}={value!r} must be a URL or path without spaces")
        if not re.match(r"https?://", sentry):
            raise ValueError(f"sentry_url={sentry!r} must be an http(s) URL")
        if base and not base.endswith("/"):
            base += "/"
        return cls(base, sentry)

    def runbook(self, declared: str | None, filename: str) -> str:
        """The declared runbook URL, else the generated playbook's URL."""
        return declared if declared else self.runbook_base_url + filename

    def sentry_search(self, query: str) -> str:
        """A link to the Sentry issue search for ``query`` (e.g. ``invariant:NO_DOUBLE_CHARGE``)."""
        sep = "&" if "?" in self.sentry_url else "?"
        return f"{self.sentry_url}{sep}{urllib.parse.urlencode({'query': query})}"


# -- playbook file names ------------------------------------------------------------------------


def invariant_playbook(inv: Invariant) -> str:
    return f"{kebab(inv.name)}.md"


def cron_playbook(decl: CronDecl) -> str:
    return f"cron-{kebab(decl.name)}.md"


def constraint_playbook(decl: Constraint) -> str:
    return f"constraint-{kebab(decl.name)}.md"


PLAYBOOK_RETRIES = "idempotent-retries.md"
PLAYBOOK_SINKS = "invariantkit-sinks.md"
PLAYBOOK_RENEWAL_SPIKE = "renewal-failure-spike.md"
PLAYBOOK_CANCELLATION_SPIKE = "cancellation-spike.md"
PLAYBOOK_TEST = "test-alert.md"
PLAYBOOK_INDEX = "README.md"


def team_split(
    items: Iterable[tuple[str, str]], default_team: str
) -> list[tuple[str, str, list[str]]]:
    """Split names by team for rules that cover a family of series with one rule per team.

    Returns ``(team, op, names)`` tuples: other teams match their names (``=~``); the default
    team takes everything else (``!~`` the other teams' names, no matcher when there are none),
    so a series whose name was never declared still routes somewhere.
    """
    by_team: dict[str, list[str]] = {}
    for name, team in items:
        by_team.setdefault(team, []).append(name)
    others = sorted(t for t in by_team if t != default_team)
    out: list[tuple[str, str, list[str]]] = []
    excluded = [n for t in others for n in by_team[t]]
    out.append((default_team, "!~", excluded))
    out.extend((t, "=~", by_team[t]) for t in others)
    return out
