"""A small PromQL evaluator over the demo's :class:`Timeline`: which alert rules would fire.

It covers what alert rules on invariantkit's metrics use: instant and range selectors with
``=``, ``!=``, ``=~``, ``!~`` matchers and ``offset``; ``increase``, ``rate``, ``irate``, ``delta``, ``changes``,
``absent``, ``absent_over_time``, ``time``, ``vector``, ``scalar``, ``abs``,
``*_over_time``; ``sum``/``min``/``max``/``avg``/``count`` with ``by``/``without``; arithmetic,
comparison (with ``bool``), ``and``/``or``/``unless`` with ``on``/``ignoring``. Anything else
raises :class:`PromQLError`, and the rule is shown as not evaluated rather than guessed at.

Series are step functions between scrapes, the way Prometheus sees a target whose value does
not change between scrapes; ``increase`` takes the first sample inside the window as its base,
so a counter that did not exist at zero before its first increment shows no increase, exactly
the trap the design's "children at zero" rule avoids.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from invariantkit._demo._timeline import Key, Timeline

__all__ = [
    "AlertState",
    "PromQLError",
    "Rule",
    "evaluate_rule",
    "metric_names",
    "parse",
    "parse_duration",
    "rules_from_yaml",
]

Labels = tuple[tuple[str, str], ...]
Vector = dict[Labels, float]
Value: TypeAlias = "float | Vector"


class PromQLError(ValueError):
    """The expression uses something this evaluator does not implement (or is invalid)."""


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|y|w|d|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration (``5m``, ``1h30m``, ``0s``); a bare number is seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            raise PromQLError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise PromQLError(f"invalid duration {text!r}")
    return total


# -- lexer --------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<duration>\[\s*\d+(?:\.\d+)?(?:ms|[smhdwy])(?:\d+(?:\.\d+)?(?:ms|[smhdwy]))*\s*\])
  | (?P<bare_duration>\d+(?:\.\d+)?(?:ms|[smhdwy])(?:\d+(?:\.\d+)?(?:ms|[smhdwy]))*(?![A-Za-z0-9_:]))
  | (?P<number>(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|0x[0-9a-fA-F]+|[Ii]nf|NaN)(?![A-Za-z_:]))
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>==|!=|=~|!~|>=|<=|[-+*/%^<>=(){},])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str


def _lex(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PromQLError(f"unexpected {text[pos : pos + 10]!r} at {pos}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, m.group(0)))
        pos = m.end()
    return out


# -- AST ----------------------------------------------------------------------------------------


class _Ctx:
    """Evaluation state for one expression at one time."""

    def __init__(self, timeline: Timeline, t: float) -> None:
        self.timeline = timeline
        self.t = t


class Node:
    def eval(self, ctx: _Ctx) -> Value:
        raise NotImplementedError

    def ranges(self) -> Iterator[float]:
        """The range-vector windows used inside (for the evaluator's change points)."""
        return iter(())

    def numbers(self) -> Iterator[float]:
        return iter(())


@dataclass
class Number(Node):
    value: float

    def eval(self, ctx: _Ctx) -> Value:
        return self.value

    def numbers(self) -> Iterator[float]:
        yield self.value


@dataclass
class StringLit(Node):
    value: str

    def eval(self, ctx: _Ctx) -> Value:
        raise PromQLError("string values are not supported here")


@dataclass
class Matcher:
    name: str
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, actual: str) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.regex is not None
        hit = self.regex.fullmatch(actual) is not None
        return hit if self.op == "=~" else not hit


@dataclass
class Selector(Node):
    name: str | None
    matchers: list[Matcher]
    range: float | None = None
    offset: float = 0.0
    _cache: dict[int, Vector] = field(default_factory=dict, repr=False, compare=False)

    def _match(self, scrape: dict[Key, float]) -> Vector:
        cached = self._cache.get(id(scrape))
        if cached is not None:
            return cached
        out: Vector = {}
        for (metric, labels), value in scrape.items():
            if self.name is not None and metric != self.name:
                continue
            names = dict(labels)
            names["__name__"] = metric
            if all(m.matches(names.get(m.name, "")) for m in self.matchers):
                out[labels] = value
        self._cache[id(scrape)] = out
        return out

    def instant(self, ctx: _Ctx, t: float | None = None) -> Vector:
        scrape = ctx.timeline.at((ctx.t if t is None else t) - self.offset)
        return {} if scrape is None else self._match(scrape)

    def samples(self, ctx: _Ctx) -> dict[Labels, list[float]]:
        """Every series' values in ``[t - range, t]`` (the value at the window's start first)."""
        assert self.range is not None
        end = ctx.t - self.offset
        start = end - self.range
        series: dict[Labels, list[float]] = {}
        first = ctx.timeline.at(start)
        if first is not None:
            for labels, value in self._match(first).items():
                series.setdefault(labels, []).append(value)
        for scrape in ctx.timeline.window(start, end):
            for labels, value in self._match(scrape).items():
                series.setdefault(labels, []).append(value)
        return series

    def eval(self, ctx: _Ctx) -> Value:
        if self.range is not None:
            raise PromQLError("a range vector must be the argument of a function")
        return self.instant(ctx)

    def ranges(self) -> Iterator[float]:
        if self.range is not None:
            yield self.range + self.offset
        if self.offset:
            yield self.offset


def _increase(values: list[float]) -> float:
    total = 0.0
    for a, b in itertools.pairwise(values):
        total += b - a if b >= a else b  # a counter reset starts again from zero
    return total


def _range_fn(name: str) -> Callable[[list[float], float], float | None]:
    def need_two(
        fn: Callable[[list[float], float], float],
    ) -> Callable[[list[float], float], float | None]:
        return lambda v, w: fn(v, w) if len(v) >= 2 else None

    table: dict[str, Callable[[list[float], float], float | None]] = {
        "increase": need_two(lambda v, w: _increase(v)),
        "rate": need_two(lambda v, w: _increase(v) / w),
        "irate": need_two(lambda v, w: _increase(v) / w),
        "delta": need_two(lambda v, w: v[-1] - v[0]),
        "changes": lambda v, w: float(sum(1 for a, b in itertools.pairwise(v) if a != b)),
        "resets": lambda v, w: float(sum(1 for a, b in itertools.pairwise(v) if b < a)),
        "max_over_time": lambda v, w: max(v),
        "min_over_time": lambda v, w: min(v),
        "avg_over_time": lambda v, w: sum(v) / len(v),
        "sum_over_time": lambda v, w: sum(v),
        "count_over_time": lambda v, w: float(len(v)),
        "last_over_time": lambda v, w: v[-1],
        "present_over_time": lambda v, w: 1.0,
    }
    if name not in table:
        raise PromQLError(f"function {name}() is not supported")
    return table[name]


RANGE_FUNCTIONS = frozenset(
    {
        "increase",
        "rate",
        "irate",
        "delta",
        "changes",
        "resets",
        "max_over_time",
        "min_over_time",
        "avg_over_time",
        "sum_over_time",
        "count_over_time",
        "last_over_time",
        "present_over_time",
        "absent_over_time",
    }
)


@dataclass
class Call(Node):
    name: str
    args: list[Node]

    def eval(self, ctx: _Ctx) -> Value:
        name, args = self.name, self.args
        if name == "time":
            return ctx.t
        if name in RANGE_FUNCTIONS:
            if len(args) != 1 or not isinstance(args[0], Selector) or args[0].range is None:
                raise PromQLError(f"{name}() needs one range selector like metric[5m]")
            sel = args[0]
            window = sel.samples(ctx)
            if name == "absent_over_time":
                return {} if window else {_absent_labels(sel): 1.0}
            fn = _range_fn(name)
            out: Vector = {}
            assert sel.range is not None
            for labels, values in window.items():
                value = fn(values, sel.range)
                if value is not None:
                    out[labels] = value
            return out
        if name == "absent":
            if len(args) != 1 or not isinstance(args[0], Selector):
                raise PromQLError("absent() needs one instant selector")
            return {} if args[0].instant(ctx) else {_absent_labels(args[0]): 1.0}
        if name == "vector":
            value = _scalar(args[0].eval(ctx))
            return {(): value}
        if name == "scalar":
            vec = _vector(args[0].eval(ctx))
            return next(iter(vec.values())) if len(vec) == 1 else math.nan
        if name in ("abs", "ceil", "floor", "round", "sqrt", "ln", "exp"):
            functions: dict[str, Callable[[float], Any]] = {
                "abs": abs,
                "ceil": math.ceil,
                "floor": math.floor,
                "round": round,
                "sqrt": math.sqrt,
                "ln": math.log,
                "exp": math.exp,
            }
            fn1 = functions[name]
            arg = args[0].eval(ctx)
            if isinstance(arg, dict):
                return {k: float(fn1(v)) for k, v in arg.items()}
            return float(fn1(arg))
        if name in ("clamp_min", "clamp_max"):
            vec = _vector(args[0].eval(ctx))
            bound = _scalar(args[1].eval(ctx))
            pick = max if name == "clamp_min" else min
            return {k: pick(v, bound) for k, v in vec.items()}
        raise PromQLError(f"function {name}() is not supported")

    def ranges(self) -> Iterator[float]:
        for arg in self.args:
            yield from arg.ranges()

    def numbers(self) -> Iterator[float]:
        for arg in self.args:
            yield from arg.numbers()


def _absent_labels(sel: Selector) -> Labels:
    return tuple(
        sorted((m.name, m.value) for m in sel.matchers if m.op == "=" and m.name != "__name__")
    )


@dataclass
class Aggregate(Node):
    op: str
    expr: Node
    by: list[str] | None = None
    without: list[str] | None = None
    param: Node | None = None

    def eval(self, ctx: _Ctx) -> Value:
        vec = _vector(self.expr.eval(ctx))
        groups: dict[Labels, list[float]] = {}
        for labels, value in vec.items():
            if self.by is not None:
                group = tuple((k, v) for k, v in labels if k in self.by)
            elif self.without is not None:
                group = tuple((k, v) for k, v in labels if k not in self.without)
            else:
                group = ()
            groups.setdefault(group, []).append(value)
        fns: dict[str, Callable[[list[float]], float]] = {
            "sum": sum,
            "min": min,
            "max": max,
            "avg": lambda v: sum(v) / len(v),
            "count": lambda v: float(len(v)),
            "group": lambda v: 1.0,
        }
        if self.op not in fns:
            raise PromQLError(f"aggregation {self.op} is not supported")
        return {g: float(fns[self.op](v)) for g, v in groups.items()}

    def ranges(self) -> Iterator[float]:
        return self.expr.ranges()

    def numbers(self) -> Iterator[float]:
        return self.expr.numbers()


AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "topk",
        "bottomk",
        "quantile",
        "stddev",
        "stdvar",
        "count_values",
    }
)
_COMPARISONS = frozenset({"==", "!=", ">", "<", ">=", "<="})
_SET_OPS = frozenset({"and", "or", "unless"})


def _compare(op: str, a: float, b: float) -> bool:
    return {
        "==": a == b,
        "!=": a != b,
        ">": a > b,
        "<": a < b,
        ">=": a >= b,
        "<=": a <= b,
    }[op]


def _arith(op: str, a: float, b: float) -> float:
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b if b != 0 else (math.copysign(math.inf, a) if a != 0 else math.nan)
        if op == "%":
            return math.fmod(a, b) if b != 0 else math.nan
        if op == "^":
            return float(a**b)
    except (OverflowError, ValueError):
        return math.nan
    raise PromQLError(f"operator {op} is not supported")


def _scalar(value: Value) -> float:
    if isinstance(value, dict):
        raise PromQLError("expected a scalar, got an instant vector")
    return value


def _vector(value: Value) -> Vector:
    if not isinstance(value, dict):
        raise PromQLError("expected an instant vector, got a scalar")
    return value


@dataclass
class Binary(Node):
    op: str
    lhs: Node
    rhs: Node
    bool_: bool = False
    on: list[str] | None = None
    ignoring: list[str] | None = None

    def _sig(self, labels: Labels) -> Labels:
        if self.on is not None:
            return tuple((k, v) for k, v in labels if k in self.on)
        if self.ignoring is not None:
            return tuple((k, v) for k, v in labels if k not in self.ignoring)
        return labels

    def eval(self, ctx: _Ctx) -> Value:
        a = self.lhs.eval(ctx)
        b = self.rhs.eval(ctx)
        op = self.op
        if op in _SET_OPS:
            va, vb = _vector(a), _vector(b)
            sigs = {self._sig(k) for k in vb}
            if op == "and":
                return {k: v for k, v in va.items() if self._sig(k) in sigs}
            if op == "unless":
                return {k: v for k, v in va.items() if self._sig(k) not in sigs}
            seen = {self._sig(k) for k in va}
            return {**va, **{k: v for k, v in vb.items() if self._sig(k) not in seen}}
        if not isinstance(a, dict) and not isinstance(b, dict):
            if op in _COMPARISONS:
                return 1.0 if _compare(op, a, b) else 0.0
            return _arith(op, a, b)
        if isinstance(a, dict) and isinstance(b, dict):
            index = {self._sig(k): (k, v) for k, v in b.items()}
            out = {}
            for k, v in a.items():
                hit = index.get(self._sig(k))
                if hit is None:
                    continue
                out_labels = k if self.on is None else self._sig(k)
                if op in _COMPARISONS:
                    ok = _compare(op, v, hit[1])
                    if self.bool_:
                        out[out_labels] = 1.0 if ok else 0.0
                    elif ok:
                        out[k] = v
                else:
                    out[out_labels] = _arith(op, v, hit[1])
            return out
        vec, scalar, vec_left = (
            (a, _scalar(b), True) if isinstance(a, dict) else (_vector(b), a, False)
        )
        result: Vector = {}
        for k, v in vec.items():
            x, y = (v, scalar) if vec_left else (scalar, v)
            if op in _COMPARISONS:
                ok = _compare(op, x, y)
                if self.bool_:
                    result[k] = 1.0 if ok else 0.0
                elif ok:
                    result[k] = v
            else:
                result[k] = _arith(op, x, y)
        return result

    def ranges(self) -> Iterator[float]:
        yield from self.lhs.ranges()
        yield from self.rhs.ranges()

    def numbers(self) -> Iterator[float]:
        yield from self.lhs.numbers()
        yield from self.rhs.numbers()


@dataclass
class Negate(Node):
    expr: Node

    def eval(self, ctx: _Ctx) -> Value:
        value = self.expr.eval(ctx)
        if isinstance(value, dict):
            return {k: -v for k, v in value.items()}
        return -value

    def ranges(self) -> Iterator[float]:
        return self.expr.ranges()

    def numbers(self) -> Iterator[float]:
        return self.expr.numbers()


# -- parser -------------------------------------------------------------------------------------

_PRECEDENCE: list[frozenset[str]] = [
    frozenset({"or"}),
    frozenset({"and", "unless"}),
    _COMPARISONS,
    frozenset({"+", "-"}),
    frozenset({"*", "/", "%"}),
]


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _lex(text)
        self.i = 0

    def peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def next(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise PromQLError("unexpected end of expression")
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.next()
        if tok.text != text:
            raise PromQLError(f"expected {text!r}, got {tok.text!r}")

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.text == text

    def parse(self) -> Node:
        node = self.binary(0)
        if self.peek() is not None:
            raise PromQLError(f"unexpected {self.peek().text!r}")  # type: ignore[union-attr]
        return node

    def _labels_list(self) -> list[str]:
        self.expect("(")
        names: list[str] = []
        while not self.at(")"):
            names.append(self.next().text)
            if self.at(","):
                self.next()
        self.expect(")")
        return names

    def binary(self, level: int) -> Node:
        if level >= len(_PRECEDENCE):
            return self.power()
        node = self.binary(level + 1)
        while True:
            tok = self.peek()
            if tok is None or tok.text not in _PRECEDENCE[level]:
                return node
            self.next()
            bool_ = False
            on = ignoring = None
            if self.at("bool"):
                self.next()
                bool_ = True
            if self.at("on"):
                self.next()
                on = self._labels_list()
            elif self.at("ignoring"):
                self.next()
                ignoring = self._labels_list()
            if self.at("group_left") or self.at("group_right"):
                self.next()
                if self.at("("):
                    self._labels_list()
            rhs = self.binary(level + 1)
            node = Binary(tok.text, node, rhs, bool_, on, ignoring)

    def power(self) -> Node:
        node = self.unary()
        if self.at("^"):
            self.next()
            return Binary("^", node, self.power())
        return node

    def unary(self) -> Node:
        if self.at("-"):
            self.next()
            return Negate(self.unary())
        if self.at("+"):
            self.next()
            return self.unary()
        return self.primary()

    def primary(self) -> Node:
        tok = self.next()
        if tok.text == "(":
            node = self.binary(0)
            self.expect(")")
            return self._maybe_range(node)
        if tok.kind == "number":
            text = tok.text.lower()
            value = (
                math.inf
                if text == "inf"
                else math.nan
                if text == "nan"
                else float(int(text, 16))
                if text.startswith("0x")
                else float(text)
            )
            return Number(value)
        if tok.kind == "string":
            return StringLit(tok.text[1:-1])
        if tok.text == "{":
            self.i -= 1
            return self._selector(None)
        if tok.kind == "ident":
            name = tok.text
            if name in AGGREGATIONS:
                return self._aggregation(name)
            if self.at("("):
                self.next()
                args: list[Node] = []
                while not self.at(")"):
                    args.append(self.binary(0))
                    if self.at(","):
                        self.next()
                self.expect(")")
                return Call(name, args)
            return self._selector(name)
        raise PromQLError(f"unexpected {tok.text!r}")

    def _maybe_range(self, node: Node) -> Node:
        tok = self.peek()
        if tok is not None and tok.kind == "duration":
            raise PromQLError("subqueries are not supported")
        return node

    def _selector(self, name: str | None) -> Selector:
        matchers: list[Matcher] = []
        if self.at("{"):
            self.next()
            while not self.at("}"):
                label = self.next().text
                op = self.next().text
                if op not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(f"invalid label matcher operator {op!r}")
                value_tok = self.next()
                if value_tok.kind != "string":
                    raise PromQLError(f"label value must be a string, got {value_tok.text!r}")
                raw = value_tok.text[1:-1]
                value = raw.encode().decode("unicode_escape") if value_tok.text[0] != "`" else raw
                regex = re.compile(value) if op in ("=~", "!~") else None
                matchers.append(Matcher(label, op, value, regex))
                if self.at(","):
                    self.next()
            self.expect("}")
        if name is None:
            named = [m for m in matchers if m.name == "__name__" and m.op == "="]
            name = named[0].value if named else None
        rng = None
        tok = self.peek()
        if tok is not None and tok.kind == "duration":
            self.next()
            rng = parse_duration(tok.text.strip("[] "))
        offset = 0.0
        if self.at("offset"):
            self.next()
            tok = self.next()
            if tok.kind != "bare_duration":
                raise PromQLError(f"offset needs a duration, got {tok.text!r}")
            offset = parse_duration(tok.text)
        if self.at("@"):
            raise PromQLError("the @ modifier is not supported")
        return Selector(name, matchers, rng, offset)

    def _aggregation(self, op: str) -> Node:
        by = without = None
        if self.at("by"):
            self.next()
            by = self._labels_list()
        elif self.at("without"):
            self.next()
            without = self._labels_list()
        self.expect("(")
        param = None
        if op in ("topk", "bottomk", "quantile", "count_values"):
            param = self.binary(0)
            self.expect(",")
        expr = self.binary(0)
        self.expect(")")
        if self.at("by"):
            self.next()
            by = self._labels_list()
        elif self.at("without"):
            self.next()
            without = self._labels_list()
        return Aggregate(op, expr, by, without, param)


def parse(text: str) -> Node:
    """Parse a PromQL expression (the supported subset) into an evaluable tree."""
    return _Parser(text).parse()


def metric_names(node: Node) -> set[str]:
    """The metric names the expression selects (None-named selectors are left out)."""
    if isinstance(node, Selector):
        return {node.name} if node.name else set()
    children: list[Node] = []
    if isinstance(node, Call):
        children = node.args
    elif isinstance(node, Aggregate):
        children = [node.expr] + ([node.param] if node.param is not None else [])
    elif isinstance(node, Binary):
        children = [node.lhs, node.rhs]
    elif isinstance(node, Negate):
        children = [node.expr]
    names: set[str] = set()
    for child in children:
        names |= metric_names(child)
    return names


# -- alert rules --------------------------------------------------------------------------------


@dataclass
class Rule:
    """An alerting rule from a Prometheus rule file."""

    alert: str
    expr: str
    for_: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    group: str = ""


@dataclass
class AlertState:
    """When a rule's alert fired on the simulated timeline (per series), or why it was not
    evaluated."""

    rule: Rule
    fired: list[tuple[float, Labels, float]] = field(default_factory=list)  # (when, labels, value)
    firing_at_end: list[Labels] = field(default_factory=list)
    error: str | None = None

    @property
    def fires(self) -> bool:
        return bool(self.fired)


def evaluate_rule(
    rule: Rule, timeline: Timeline, end: float, *, until: float | None = None
) -> AlertState:
    """Evaluate ``rule`` over the timeline the way Prometheus would, at every point where its
    value can change; return when each series' alert fired (each time it went to firing).

    By default the evaluation runs a ``for`` past ``end`` with the values held: the alerts that
    would fire if the process stopped there. With ``until``, it stops at that time and
    ``firing_at_end`` lists the series firing then.
    """
    state = AlertState(rule)
    try:
        node = parse(rule.expr)
    except PromQLError as exc:
        state.error = str(exc)
        return state
    except re.error as exc:
        state.error = f"invalid regular expression: {exc}"
        return state
    windows = sorted(set(node.ranges()))
    numbers = [n for n in node.numbers() if math.isfinite(n) and n > 0]
    base = list(timeline.times)
    points = set(base)
    for t in base:
        for w in windows:
            points.add(t + w)
    timestamps = {
        v
        for scrape in timeline.scrapes
        for (name, _), v in scrape.items()
        if name.endswith(("_timestamp", "_timestamp_seconds")) and v > 0
    }
    for v in timestamps:
        for n in numbers:
            points.add(v + n + 1e-3)
    if rule.for_ > 0:
        points |= {p + rule.for_ for p in list(points)}
    horizon = end + rule.for_ + 1.0 if until is None else until
    first = base[0] if base else 0.0
    if until is not None and until >= first:
        points.add(until)
    active: dict[Labels, float] = {}
    firing: set[Labels] = set()
    try:
        for t in sorted(p for p in points if first <= p <= horizon):
            value = node.eval(_Ctx(timeline, t))
            vec: Vector = value if isinstance(value, dict) else ({(): value} if value else {})
            for labels in list(active):
                if labels not in vec:
                    del active[labels]
                    firing.discard(labels)
            for labels, v in vec.items():
                since = active.setdefault(labels, t)
                if t - since >= rule.for_ and labels not in firing:
                    firing.add(labels)
                    state.fired.append((t, labels, v))
    except PromQLError as exc:
        state.error = str(exc)
        state.fired.clear()
        return state
    state.firing_at_end = sorted(firing)
    return state


def rules_from_yaml(text: str) -> list[Rule]:
    """The alerting rules of a Prometheus rule file (recording rules are skipped)."""
    import yaml

    data = yaml.safe_load(text) or {}
    rules: list[Rule] = []
    for group in data.get("groups") or []:
        for item in group.get("rules") or []:
            if "alert" not in item:
                continue
            rules.append(
                Rule(
                    alert=str(item["alert"]),
                    expr=str(item["expr"]),
                    for_=parse_duration(str(item.get("for", "0s"))),
                    labels={str(k): str(v) for k, v in (item.get("labels") or {}).items()},
                    annotations={
                        str(k): str(v) for k, v in (item.get("annotations") or {}).items()
                    },
                    group=str(group.get("name", "")),
                )
            )
    return rules
