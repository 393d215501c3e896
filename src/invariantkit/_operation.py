"""``ik.operation`` / ``ik.billing_operation``: one decorator or context manager per operation."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar, cast, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from typing_extensions import ParamSpec

from invariantkit._catalog import LABEL_VALUE, LOWER_SNAKE, OperationDecl, check_name, get_catalog
from invariantkit._config import STATE, dispatcher
from invariantkit._context import (
    CORRELATION,
    USER,
    CorrelationToken,
    current_ids,
    new_span_id,
    new_trace_id,
)
from invariantkit._control_flow import is_control_flow as _is_control_flow
from invariantkit._dispatch import Dispatcher
from invariantkit._record import EMPTY, Record
from invariantkit._safe import REDACTED, Scrubber, safe_str, scrubbed_str, scrubbed_traceback

__all__ = ["Operation", "OperationRun", "billing_operation", "operation"]

P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")
S = TypeVar("S")

logger = logging.getLogger("invariantkit")

_perf_counter = time.perf_counter
_time = time.time
_get_user = USER.get
_attach = otel_context.attach
_detach = otel_context.detach
_set_span_in_context = trace.set_span_in_context
_tuple_new = tuple.__new__
_STATE = STATE
_internal_errors_logged: set[str] = set()


def _hex32(value: int) -> str:
    return value.to_bytes(16, "big").hex()


def _hex16(value: int) -> str:
    return value.to_bytes(8, "big").hex()


def _internal_error(where: str) -> None:
    """invariantkit itself failed: never let it reach business code; log it once per place."""
    if where not in _internal_errors_logged:
        _internal_errors_logged.add(where)
        logger.exception("invariantkit: internal error in %s (further ones are not logged)", where)


class _Plan:
    """Everything about an operation that does not change between calls, computed once at
    decoration time: the declaration, the span name and the span's static attributes, scrubbed
    with the active configuration's rules (the default ones before ``configure()``) and scrubbed
    again when the configuration changes (operations are declared at import, configured later).
    """

    __slots__ = (
        "attributes",
        "config",
        "decl",
        "has_static",
        "name",
        "span_attributes",
        "span_name",
    )

    def __init__(self, decl: OperationDecl) -> None:
        self.decl = decl
        self.name = decl.name
        self.span_name = decl.span_name
        self.has_static = bool(decl.attributes)
        self.refresh()

    def refresh(self) -> None:
        config = STATE.config
        static: dict[str, Any] = {}
        if self.has_static:
            scrubber = config.scrubber if config is not None else Scrubber()
            for key, value in self.decl.attributes.items():
                static[key] = _scrub_attribute(scrubber, key, value)
        # Each span attribute costs the SDK a validation on every call: only what the contract
        # needs. The domain is already in the span name; it is repeated only when not "billing".
        span_attributes: dict[str, Any] = {"billing.operation": self.decl.name}
        if self.decl.domain != "billing":
            span_attributes["billing.domain"] = self.decl.domain
        span_attributes.update(static)
        self.span_attributes = span_attributes
        self.attributes: Mapping[str, Any] = static or EMPTY
        # Last: a call on another thread that sees this configuration sees its attributes too.
        self.config = config


class OperationRun:
    """One execution of an operation: the handle ``with ik.operation(...) as run`` gives.

    Example:
        >>> import invariantkit as ik
        >>> with ik.billing_operation("refund") as run:
        ...     run.set_attribute("refund.reason", "duplicate")
    """

    __slots__ = (
        "_attributes",
        "_corr_token",
        "_dispatcher",
        "_plan",
        "_span",
        "_stack_token",
        "_start",
        "_token",
        "_user",
        "span_id",
        "trace_id",
    )
    _stack_token: Token[OperationRun | None]

    # The hot path: keep calls and attribute stores to the minimum (see benchmarks/).
    def __init__(self, plan: _Plan, d: Dispatcher) -> None:
        if plan.has_static and plan.config is not STATE.config:
            plan.refresh()  # configure(scrub=...) changed since the attributes were scrubbed
        self._plan = plan
        self._dispatcher = d
        self._attributes: dict[str, Any] | None = None
        user = self._user = _get_user()
        traces = d.traces
        if traces is not None:
            if user is None:
                span = traces.tracer.start_span(plan.span_name, attributes=plan.span_attributes)
            else:
                attributes = plan.span_attributes.copy()
                attributes["enduser.id"] = user
                span = traces.tracer.start_span(plan.span_name, attributes=attributes)
            self._span: trace.Span | None = span
            self._token: Token[otel_context.Context] | None = _attach(_set_span_in_context(span))
            self._corr_token: CorrelationToken | None = None
            ctx = span.get_span_context()
            self.trace_id: int = ctx.trace_id
            self.span_id: int = ctx.span_id
        else:
            self._span = None
            self._token = None
            ids = current_ids()
            if ids is None:
                ids = (new_trace_id(), new_span_id())
            # Bound even when nested, so generator steps can restore exactly this run's ids.
            self._corr_token = CORRELATION.set(ids)
            self.trace_id, self.span_id = ids
        if d.start_sinks and d.starts_wanted():
            d.emit(self._record("operation_start", "started", None, None))
        self._start = _perf_counter()

    @property
    def decl(self) -> OperationDecl:
        """The operation's declaration (name, domain, user_facing, attributes)."""
        return self._plan.decl

    @property
    def correlation_id(self) -> str:
        """The trace id of this run, 32 lowercase hex characters."""
        return _hex32(self.trace_id)

    def set_attribute(self, key: str, value: Any) -> None:
        """Attach ``key=value`` to this run's span, log line and Sentry/PostHog context.

        Values are scrubbed like tags; never put an id you want as a metric label here: ids are
        never metric labels.
        """
        from invariantkit._config import current_config

        try:
            key = safe_str(key, 100)
            text = _scrub_attribute(current_config().scrubber, key, value)
            if self._attributes is None:
                self._attributes = {}
            self._attributes[key] = text
            if self._span is not None:
                self._span.set_attribute(key, text)
        except Exception:
            _internal_error("OperationRun.set_attribute")

    def _record(
        self, kind: str, status: str, duration: float | None, exc: BaseException | None
    ) -> Record:
        plan = self._plan
        attrs = plan.attributes
        if self._attributes:
            attrs = {**attrs, **self._attributes}
        # tuple.__new__ directly: the NamedTuple's generated __new__ costs a Python call.
        return _tuple_new(
            Record,
            (
                kind,
                plan.name,
                status,
                _hex32(self.trace_id),
                _hex16(self.span_id),
                self._user,
                _time(),
                duration,
                attrs,
                EMPTY,
                exc,
                plan.decl,
                False,
            ),
        )

    def _close(self) -> None:
        """Unbind the span (or fallback correlation) from the current context."""
        if self._token is not None:
            _detach(self._token)
            self._token = None
        if self._corr_token is not None:
            CORRELATION.reset(self._corr_token)
            self._corr_token = None

    def succeed(self) -> None:
        """End the run as a success (span OK, success counter and histogram)."""
        try:
            end = _perf_counter()
            span = self._span
            if span is not None:
                try:
                    # Status left UNSET (OpenTelemetry: OK is the application's to set); an
                    # ERROR set during the call (a violation, or the application) is kept.
                    span.end()
                except Exception:  # the tracing SDK failing must not lose the success metric
                    _internal_error("span end")
                finally:  # the span never stays current, whatever the SDK did
                    token = self._token
                    if token is not None:
                        self._token = None
                        _detach(token)
            else:
                corr_token = self._corr_token
                if corr_token is not None:
                    self._corr_token = None
                    CORRELATION.reset(corr_token)
            plan = self._plan
            attrs = self._attributes
            self._dispatcher.emit(
                _tuple_new(
                    Record,
                    (
                        "operation",
                        plan.name,
                        "success",
                        self.trace_id.to_bytes(16, "big").hex(),
                        self.span_id.to_bytes(8, "big").hex(),
                        self._user,
                        _time(),
                        end - self._start,
                        plan.attributes if not attrs else {**plan.attributes, **attrs},
                        EMPTY,
                        None,
                        plan.decl,
                        False,
                    ),
                )
            )
        except Exception:
            _internal_error("operation success path")

    def fail(self, exc: BaseException) -> None:
        """End the run as a failure caused by ``exc`` (which the caller re-raises unchanged).

        A ``BaseException`` that is not an ``Exception`` (``asyncio.CancelledError``,
        ``KeyboardInterrupt``, ``GeneratorExit``, ``SystemExit``) is no failure: the run ends
        with outcome ``"cancelled"``, the span's status is left UNSET, no error is counted and
        no Sentry event is sent.
        """
        if _is_control_flow(exc):  # Celery's Retry/Ignore/Reject (integrations/celery.py)
            return self.succeed()
        cancelled = not isinstance(exc, Exception)
        try:
            duration = _perf_counter() - self._start
            span = self._span
            if span is not None and not cancelled:
                # The tracing SDK failing must not lose the failure everywhere else.
                try:
                    _record_exception(span, exc)
                except Exception:
                    _internal_error("span record_exception")
            if span is not None:
                try:
                    span.end()
                except Exception:
                    _internal_error("span end")
            self._close()
            status = "cancelled" if cancelled else "failure"
            self._dispatcher.emit(self._record("operation", status, duration, exc))
        except Exception:
            _internal_error("operation failure path")
        finally:
            try:
                self._close()  # whatever failed above, the span never stays current
            except Exception:
                _internal_error("operation failure path")

    # Generators run between yields in the consumer's context: re-bind the span (or the
    # fallback correlation) for each step, and unbind it before yielding.
    def _resume(self) -> tuple[Any, Any] | None:
        try:
            if self._span is not None:
                return _attach(_set_span_in_context(self._span)), None
            return None, CORRELATION.set((self.trace_id, self.span_id))
        except Exception:
            _internal_error("generator step")
            return None


def _scrubber() -> Scrubber:
    from invariantkit._config import current_config

    return current_config().scrubber


def _scrub_attribute(scrubber: Scrubber, key: str, value: Any) -> Any:
    """A span attribute / tag value as it may leave the process: scrubbed like tags (a denied
    key redacts the value whole; card numbers are found in text and in integers)."""
    if isinstance(value, (bool, float)):
        return value
    if scrubber.key_is_allowed(key):
        return value if isinstance(value, (str, int)) else safe_str(value, 1000)
    if scrubber.key_is_denied(key):
        return REDACTED
    if isinstance(value, int):
        return scrubber.scrub_number(value)
    return scrubber.scrub_text(safe_str(value, 1000))


def _record_exception(span: trace.Span, exc: BaseException) -> None:
    """The span's ``exception`` event, ``error.type`` and ERROR status, with the message and the
    stack trace cut and scrubbed (an exception message often quotes the data that caused it).

    The event is added directly rather than with ``span.record_exception``, which formats the
    whole traceback again, uncut, and adds the deprecated ``exception.escaped``.
    """
    scrubber = _scrubber()
    message = scrubbed_str(exc, scrubber, 500)
    kind = type(exc)
    span.add_event(
        "exception",
        {
            "exception.type": f"{kind.__module__}.{kind.__qualname__}"
            if kind.__module__ != "builtins"
            else kind.__qualname__,
            "exception.message": message,
            "exception.stacktrace": scrubbed_traceback(exc, scrubber),
        },
    )
    span.set_attribute("error.type", kind.__name__)
    span.set_status(Status(StatusCode.ERROR, f"{kind.__name__}: {message}"))


def _suspend(tokens: tuple[Any, Any] | None) -> None:
    if tokens is None:
        return
    otel_token, corr_token = tokens
    try:
        if otel_token is not None:
            _detach(otel_token)
        if corr_token is not None:
            CORRELATION.reset(corr_token)
    except Exception:
        _internal_error("generator step")


def _begin(plan: _Plan) -> OperationRun | None:
    try:
        return OperationRun(plan, STATE.dispatcher or dispatcher())
    except Exception:
        _internal_error("operation start")
        return None


def _begin_detached(plan: _Plan) -> OperationRun | None:
    """Start a run for a generator: the span exists, but is bound only during each step."""
    run = _begin(plan)
    if run is not None:
        try:
            run._close()
        except Exception:
            _internal_error("generator start")
    return run


class Operation:
    """A declared operation: a decorator for plain, async, generator and async-generator
    functions, and a (sync or async) context manager. Returned by :func:`operation`.

    On success: span ``<domain>.<name>`` with ``billing.operation`` and status OK,
    ``billing_operation_total{operation,outcome="success"}``, the duration histogram, an INFO JSON
    log line, and PostHog ``<domain>_<name>_success`` when ``user_facing``. On failure: the span
    records the exception (status ERROR), ``outcome="failure"``,
    ``billing_operation_errors_total{operation,error_type}``, a Sentry exception tagged
    ``operation``, ``domain`` and ``trace_id``, an ERROR log line, PostHog ``..._failure``; then the
    exception is re-raised unchanged (same object, same traceback).

    Example:
        >>> import invariantkit as ik
        >>> REFUND = ik.billing_operation("refund")
        >>> with REFUND as run:
        ...     run.set_attribute("refund.reason", "duplicate")
    """

    __slots__ = ("_active", "_plan", "decl")

    def __init__(
        self,
        name: str,
        *,
        domain: str = "billing",
        user_facing: bool = False,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        owner = f"operation({name!r})" if isinstance(name, str) else "operation"
        check_name(owner, "name", name, LOWER_SNAKE, "lower_snake: [a-z][a-z0-9_]*")
        check_name(owner, "domain", domain, LABEL_VALUE, "a label value: [a-z][a-z0-9_-]*")
        if not isinstance(user_facing, bool):
            raise TypeError(f"{owner}: user_facing must be True or False")
        static: dict[str, Any] = {}
        if attributes is not None:
            if not isinstance(attributes, Mapping):
                raise TypeError(
                    f"{owner}: attributes must be a mapping of str to str/int/float/bool"
                )
            for key, value in attributes.items():
                if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
                    raise TypeError(
                        f"{owner}: attribute {key!r}={value!r} must map a str to a "
                        "str, int, float or bool (span attributes cannot hold other types)"
                    )
                static[key] = value
        self.decl = OperationDecl(name, domain, user_facing, static)
        self._plan = _Plan(self.decl)
        get_catalog().add(self.decl)
        self._active: ContextVar[OperationRun | None] = ContextVar(
            f"invariantkit.operation.{name}", default=None
        )

    # -- context manager ----------------------------------------------------------------------

    def __enter__(self) -> OperationRun:
        run = _begin(self._plan)
        if run is None:  # instrumentation failed: the block still runs
            run = _NullRun(self._plan)
        run._stack_token = self._active.set(run)
        return run

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run = self._active.get()
        if run is None:
            return
        try:
            self._active.reset(run._stack_token)
        except Exception:  # exited in another context than entered: still end the run
            _internal_error("operation context manager exit")
        if exc is None:
            run.succeed()
        else:
            run.fail(exc)

    async def __aenter__(self) -> OperationRun:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- decorator ----------------------------------------------------------------------------

    @overload
    def __call__(
        self, fn: Callable[P, AsyncGenerator[Y, S]]
    ) -> Callable[P, AsyncGenerator[Y, S]]: ...
    @overload
    def __call__(self, fn: Callable[P, Generator[Y, S, R]]) -> Callable[P, Generator[Y, S, R]]: ...
    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        if not callable(fn):
            raise TypeError(f"operation({self.decl.name!r}) decorates a function, not {fn!r}")
        if inspect.isclass(fn):
            raise TypeError(
                f"operation({self.decl.name!r}) decorates a function or a method, not the class "
                f"{fn.__name__}: decorate the methods that are operations"
            )
        plan = self._plan
        if inspect.isasyncgenfunction(fn):
            return _wrap_async_gen(plan, fn)
        if inspect.isgeneratorfunction(fn):
            return _wrap_gen(plan, fn)
        if inspect.iscoroutinefunction(fn):
            return _wrap_async(plan, fn)
        return _wrap_sync(plan, fn)


class _NullRun(OperationRun):
    """Stand-in when instrumentation itself failed: the business code still runs."""

    def __init__(self, plan: _Plan) -> None:
        self._plan = plan
        self._span = None
        self._token = None
        self._corr_token = None
        self._attributes = None
        self.trace_id = 0
        self.span_id = 0

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def succeed(self) -> None:
        return None

    def fail(self, exc: BaseException) -> None:
        return None


def _wrap_sync(plan: _Plan, fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            run: OperationRun | None = OperationRun(plan, _STATE.dispatcher or dispatcher())
        except Exception:
            run = None
            _internal_error("operation start")
        if run is None:
            return fn(*args, **kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            run.fail(exc)
            raise
        run.succeed()
        return result

    return wrapper


def _wrap_async(
    plan: _Plan, fn: Callable[P, Coroutine[Any, Any, R]]
) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            run: OperationRun | None = OperationRun(plan, _STATE.dispatcher or dispatcher())
        except Exception:
            run = None
            _internal_error("operation start")
        if run is None:
            return await fn(*args, **kwargs)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            run.fail(exc)
            raise
        run.succeed()
        return result

    return wrapper


def _wrap_gen(plan: _Plan, fn: Callable[P, Generator[Y, S, R]]) -> Callable[P, Generator[Y, S, R]]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Generator[Y, S, R]:
        gen = fn(*args, **kwargs)
        # The body of this wrapper first runs at the consumer's first next(): so does the run.
        run = _begin_detached(plan)
        if run is None:
            return (yield from gen)
        send_value: Any = None
        to_throw: BaseException | None = None
        while True:
            tokens = run._resume()
            try:
                item = gen.send(send_value) if to_throw is None else gen.throw(to_throw)
            except StopIteration as stop:
                _suspend(tokens)
                run.succeed()
                return cast("R", stop.value)
            except BaseException as exc:
                _suspend(tokens)
                run.fail(exc)
                raise
            _suspend(tokens)
            try:
                send_value = yield item
                to_throw = None
            except GeneratorExit:
                # The consumer stopped early (close(), break, garbage collection): the inner
                # generator's cleanup runs in the span, and the run ends as a success.
                tokens = run._resume()
                try:
                    gen.close()
                except BaseException as exc:
                    _suspend(tokens)
                    run.fail(exc)
                    raise
                _suspend(tokens)
                run.succeed()
                raise
            except BaseException as exc:
                send_value, to_throw = None, exc

    return wrapper


def _wrap_async_gen(
    plan: _Plan, fn: Callable[P, AsyncGenerator[Y, S]]
) -> Callable[P, AsyncGenerator[Y, S]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[Y, S]:
        agen = fn(*args, **kwargs)
        run = _begin_detached(plan)
        if run is None:
            async for item in agen:
                yield item
            return
        send_value: Any = None
        to_throw: BaseException | None = None
        while True:
            tokens = run._resume()
            try:
                if to_throw is None:
                    item = await agen.asend(send_value)
                else:
                    item = await agen.athrow(to_throw)
            except StopAsyncIteration:
                _suspend(tokens)
                run.succeed()
                return
            except BaseException as exc:
                _suspend(tokens)
                run.fail(exc)
                raise
            _suspend(tokens)
            try:
                send_value = yield item
                to_throw = None
            except GeneratorExit:
                tokens = run._resume()
                try:
                    await agen.aclose()
                except BaseException as exc:
                    _suspend(tokens)
                    run.fail(exc)
                    raise
                _suspend(tokens)
                run.succeed()
                raise
            except BaseException as exc:
                send_value, to_throw = None, exc

    return wrapper


def operation(
    name: str,
    *,
    domain: str = "billing",
    user_facing: bool = False,
    attributes: Mapping[str, Any] | None = None,
) -> Operation:
    """Declare an operation; use the result as a decorator or a context manager.

    Args:
        name: lower_snake name; the span is ``<domain>.<name>``, the metric label ``operation``.
        domain: the product domain (Sentry tag ``domain``).
        user_facing: also send PostHog ``<domain>_<name>_success`` / ``_failure``.
        attributes: static span attributes (str keys; str, int, float or bool values).

    Example:
        >>> import invariantkit as ik
        >>> @ik.operation("charge", domain="payments")
        ... def charge(amount: int) -> int:
        ...     return amount
        >>> charge(5)
        5
    """
    return Operation(name, domain=domain, user_facing=user_facing, attributes=attributes)


def billing_operation(
    name: str, *, user_facing: bool = False, attributes: Mapping[str, Any] | None = None
) -> Operation:
    """:func:`operation` with domain ``"billing"``: the guide's instrumentation template in one line.

    Example:
        >>> import invariantkit as ik
        >>> @ik.billing_operation("renewal", user_facing=True)
        ... def renew(subscription_id: str) -> str:
        ...     return "renewed"
        >>> with ik.identify("user_42"):
        ...     renew("sub_1")
        'renewed'
    """
    return Operation(name, domain="billing", user_facing=user_facing, attributes=attributes)
