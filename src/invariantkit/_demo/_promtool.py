"""Which generated alerts fire on the simulated timeline, as Prometheus's own rule engine says.

The timeline's scrapes become ``input_series`` of a ``promtool test rules`` unit test (one sample
per minute, simulated time 0 at the start of the simulation); promtool evaluates the rule file
minute by minute with Prometheus's engine, and its ``promql_expr_test`` queries over the
``ALERTS`` series it wrote report when each alert started firing. We expect nothing from those
queries on purpose: promtool then prints what it got, which is what we read.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from invariantkit._demo._timeline import Key, Timeline

__all__ = [
    "AlertState",
    "PromtoolUnavailable",
    "Rule",
    "evaluate",
    "metric_names",
    "rules_from_yaml",
]

STEP = 60
DAY = 86400
TIMEOUT = 300.0
HOW_TO_GET = (
    "promtool not found: install the Debian package 'prometheus' "
    "(`sudo apt-get install prometheus`; scripts/demo.sh does it), or put promtool on PATH"
)
#: The resolutions a rule may be evaluated at (seconds between samples and evaluations).
STEPS = (60, 120, 300, 900, 3600)
#: The resolution of "when it fired" for rules without a range or a ``for``.
DEFAULT_PRECISION = 300
#: Samples in the shortest range window of a rule, evaluations in its ``for``.
SAMPLES_PER_WINDOW = 2.5
EVALUATIONS_PER_FOR = 5
#: Samples per series one evaluation may read (promtool's test engine stops at 10,000 in all).
MAX_POINTS = 1000
_FIRING = 'ALERTS{alertstate="firing"}'


class PromtoolUnavailable(RuntimeError):
    """promtool is not installed or did not answer."""


@dataclass(frozen=True)
class Rule:
    """An alerting rule of the rule file."""

    alert: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


Labels = tuple[tuple[str, str], ...]


@dataclass
class AlertState:
    """What promtool's evaluation said about one rule: each time it started firing (simulated
    epoch seconds, with the alert's own labels) and the label sets still firing at the end."""

    rule: Rule
    fired: list[tuple[float, Labels]] = field(default_factory=list)
    firing_at_end: list[Labels] = field(default_factory=list)
    error: str | None = None

    @property
    def fires(self) -> bool:
        return bool(self.fired)


def rules_from_yaml(text: str) -> list[Rule]:
    """The alerting rules of a Prometheus rule file."""
    data = yaml.safe_load(text) or {}
    out: list[Rule] = []
    for group in data.get("groups") or []:
        for rule in group.get("rules") or []:
            if "alert" in rule:
                out.append(
                    Rule(
                        str(rule["alert"]),
                        str(rule["expr"]),
                        {str(k): str(v) for k, v in (rule.get("labels") or {}).items()},
                        {str(k): str(v) for k, v in (rule.get("annotations") or {}).items()},
                    )
                )
    return out


def metric_names(rules: list[Rule]) -> set[str]:
    """Every identifier in the rules' expressions (a superset of the metric names they read):
    the timeline scrapes only those."""
    return {m for r in rules for m in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", r.expr)}


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _values(points: list[float | None]) -> str:
    """promtool's expanding notation: runs of one value as ``vxN``, of gaps as ``_xN``."""
    out: list[str] = []
    i = 0
    while i < len(points):
        j = i
        while j + 1 < len(points) and points[j + 1] == points[i]:
            j += 1
        value, run = points[i], j - i + 1
        if value is None:  # "_xN" is N gaps
            out.append("_" if run == 1 else f"_x{run}")
        else:  # "vxN" is v, then N more times v
            out.append(_number(value) if run == 1 else f"{_number(value)}x{run - 1}")
        i = j + 1
    return " ".join(out)


def _series_name(k: Key) -> str:
    name, labels = k
    inner = ",".join(f"{n}={json.dumps(v)}" for n, v in labels)
    return f"{name}{{{inner}}}" if inner else name


def input_series(
    timeline: Timeline, start: float, end: float, step: int = STEP
) -> list[dict[str, str]]:
    """The timeline resampled every ``step`` seconds from ``start`` (time 0 for promtool): each
    sample is the last scrape at or before it. Unix-time gauges are shifted by ``start`` too."""
    steps = math.ceil((end - start) / step) + 1
    keys = sorted({k for scrape in timeline.scrapes for k in scrape})
    points: dict[Key, list[float | None]] = {k: [None] * steps for k in keys}
    shifted = {k for k in keys if k[0].endswith(("_timestamp", "_timestamp_seconds"))}
    i = -1
    for n in range(steps):
        t = start + n * step
        while i + 1 < len(timeline.times) and timeline.times[i + 1] <= t:
            i += 1
        if i < 0:
            continue
        for k, value in timeline.scrapes[i].items():
            points[k][n] = value - start if k in shifted and value > 0 else value
    return [{"series": _series_name(k), "values": _values(points[k])} for k in keys]


_SAMPLE = re.compile(r'\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\}\s+(\S+?)(?:,\s+|\s*$)')
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_CASE = re.compile(r'^\s*expr: (".*"), time: (\S+?),\s*$')


def _parse_got(text: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for m in _SAMPLE.finditer(text):
        labels = {k: json.loads(f'"{v}"') for k, v in _LABEL.findall(m[1])}
        out.append((labels, float(m[2])))
    return out


def _seconds(duration: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+)(ms|[smhdwy])", duration):
        total += (
            int(amount)
            * {
                "ms": 0.001,
                "s": 1,
                "m": 60,
                "h": 3600,
                "d": DAY,
                "w": 7 * DAY,
                "y": 365 * DAY,
            }[unit]
        )
    return total


def _step(rule: dict[str, Any]) -> int:
    """The coarsest of STEPS at which ``rule`` still evaluates as Prometheus scraping every
    few seconds would: each range window holds SAMPLES_PER_WINDOW samples, a ``for``
    EVALUATIONS_PER_FOR evaluations, and one evaluation reads at most MAX_POINTS samples per series (promtool's
    test engine refuses queries over 10,000 samples)."""
    expr = str(rule.get("expr", ""))
    ranges = [_seconds(d) for d in re.findall(r"\[([0-9a-z]+)(?::[0-9a-z]*)?\]", expr)]
    offsets = [_seconds(d) for d in re.findall(r"offset\s+([0-9a-z]+)", expr)]
    reach = max(ranges, default=0.0) + max(offsets, default=0.0)
    finest = min([*ranges, *offsets, DEFAULT_PRECISION * SAMPLES_PER_WINDOW])
    hold = _seconds(str(rule.get("for", "0s")))
    if hold > 0:  # a condition must hold for EVALUATIONS_PER_FOR evaluations in a row
        finest = min(finest, hold * SAMPLES_PER_WINDOW / EVALUATIONS_PER_FOR)
    allowed = [s for s in STEPS if reach / s <= MAX_POINTS] or [STEPS[-1]]
    faithful = [s for s in allowed if s * SAMPLES_PER_WINDOW <= finest]
    return max(faithful) if faithful else min(allowed)


def evaluate(
    rules_text: str, timeline: Timeline, start: float, end: float, promtool: str | None = None
) -> list[AlertState]:
    """Evaluate ``rules_text`` on ``timeline`` with ``promtool test rules``.

    Each rule is evaluated at the coarsest resolution that keeps its meaning (see
    :func:`_step`): a minute for the rules on 5-minute windows, 15 minutes for the
    week-over-week spike rules. promtool runs per resolution and slice of the rules, side by
    side (it evaluates on one core). Raises
    PromtoolUnavailable when promtool is missing, ValueError when promtool rejects the rules
    (with its message).
    """
    from concurrent.futures import ThreadPoolExecutor

    tool = promtool or shutil.which("promtool")
    if tool is None:
        raise PromtoolUnavailable(HOW_TO_GET)
    data = yaml.safe_load(rules_text) or {}
    rules = rules_from_yaml(rules_text)
    states = {rule.alert: AlertState(rule) for rule in rules}
    # One promtool run per (resolution, slice of the rules): promtool evaluates on one core.
    slices = max(1, os.cpu_count() or 1)
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {}
    count: dict[int, int] = {}
    for group in data.get("groups") or []:
        for rule in group.get("rules") or []:
            if "alert" in rule:
                step = _step(rule)
                count[step] = count.get(step, 0) + 1
                groups = runs.setdefault((step, count[step] % slices), [])
                if not groups or groups[-1]["name"] != group["name"]:
                    groups.append({**group, "rules": []})
                groups[-1]["rules"].append(rule)
    with ThreadPoolExecutor(max_workers=slices) as pool:
        futures = [
            pool.submit(
                _run,
                tool,
                yaml.safe_dump({"groups": groups}, sort_keys=False),
                timeline,
                start=start,
                end=end,
                step=step,
                states=states,
            )
            for (step, _), groups in sorted(runs.items())
        ]
        for future in futures:
            future.result()
    for state in states.values():
        state.fired.sort()
    return list(states.values())


def _run(
    tool: str,
    rules_text: str,
    timeline: Timeline,
    *,
    start: float,
    end: float,
    step: int,
    states: dict[str, AlertState],
) -> None:
    """One ``promtool test rules`` run of ``rules_text`` at resolution ``step``; what fired
    goes into ``states``."""
    length = end - start
    windows = [min((d + 1) * DAY, length) for d in range(math.ceil(length / DAY))]
    starts = (
        'min_over_time(timestamp(ALERTS{alertstate="firing"} unless '
        f'ALERTS{{alertstate="firing"}} offset {step}s)[{DAY}s:{step}s])'
    )
    tests: list[dict[str, Any]] = [
        {"expr": starts, "eval_time": f"{int(t)}s", "exp_samples": []} for t in windows
    ]
    tests.append({"expr": _FIRING, "eval_time": f"{int(length)}s", "exp_samples": []})
    unit = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": f"{step}s",
        "tests": [
            {
                "interval": f"{step}s",
                "input_series": input_series(timeline, start, end, step),
                "promql_expr_test": tests,
            }
        ],
    }
    with tempfile.TemporaryDirectory(prefix="invariantkit-demo-") as tmp:
        Path(tmp, "rules.yml").write_text(rules_text)
        Path(tmp, "tests.yml").write_text(yaml.safe_dump(unit, sort_keys=False))
        try:
            proc = subprocess.run(  # noqa: S603 - promtool from PATH, arguments are ours
                [tool, "test", "rules", "tests.yml"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PromtoolUnavailable(f"promtool did not run: {exc}") from exc
    output = proc.stdout + proc.stderr
    case: tuple[str, float] | None = None
    parsed = 0
    for line in output.splitlines():
        m = _CASE.match(line)
        if m is not None:
            case = (json.loads(m[1]), _seconds(m[2]))
            continue
        if case is None or not line.strip().startswith("got:"):
            continue
        parsed += 1
        expr = case[0]
        for labels, value in _parse_got(line.split("got:", 1)[1]):
            state = states.get(labels.get("alertname", ""))
            if state is None:
                continue
            own = _own_labels(labels, state.rule)
            if expr == _FIRING:
                state.firing_at_end.append(own)
            else:
                state.fired.append((start + value, own))
        case = None
    if proc.returncode != 0 and parsed == 0:  # not our empty expectations: promtool failed
        raise ValueError(f"promtool test rules failed: {output.strip()[-2000:]}")


def _own_labels(labels: dict[str, str], rule: Rule) -> Labels:
    """The labels the expression gave the alert (not the ALERTS name, alertname, alertstate or
    the rule's own labels)."""
    return tuple(
        sorted(
            (k, v)
            for k, v in labels.items()
            if k not in ("__name__", "alertname", "alertstate") and k not in rule.labels
        )
    )
