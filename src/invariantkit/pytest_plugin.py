"""The invariantkit pytest plugin, registered through the ``pytest11`` entry point.

It adds, and imposes nothing (no autouse fixture):

- the ``signals`` fixture: :func:`invariantkit.testing.capture_signals` around the test, yielding
  its :class:`~invariantkit.testing.Signals`;
- the ``@pytest.mark.invariantkit(**options)`` marker: options for that fixture (any keyword of
  ``capture_signals``: ``mode="enforce"``, ``sentry=False``...), on a test, class or module;
  the closest marker wins for each option;
- the ini option ``invariantkit_fail_on_sink_error`` (default false): when true, a test fails if
  a sink raised or invariantkit had an internal error while it ran, errors invariantkit
  otherwise swallows so that the host application never sees them.

Example:
    A test that asserts what was really emitted::

        import pytest

        @pytest.mark.invariantkit(mode="enforce")
        def test_double_charge_is_reported(signals):
            with pytest.raises(ik.InvariantViolation):
                renew("sub_1")
            signals.assert_violation("NO_DOUBLE_CHARGE", subscription_id="sub_1")
"""

from __future__ import annotations

import inspect
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from invariantkit.testing import Signals

__all__ = ["signals"]

_INI_FAIL = "invariantkit_fail_on_sink_error"
_SIGNALS = pytest.StashKey["Signals"]()
_SAVED_DEFAULT = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _INI_FAIL,
        type="bool",
        default=False,
        help="invariantkit: fail a test when a sink raised or invariantkit had an internal "
        "error while it ran (inside the signals fixture or capture_signals())",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "invariantkit(**options): options for the invariantkit `signals` fixture, passed to "
        "invariantkit.testing.capture_signals() (for example mode='enforce')",
    )
    if config.getini(_INI_FAIL):  # import invariantkit only for sessions that use the option
        from invariantkit import testing

        config.stash[_SAVED_DEFAULT] = testing._DEFAULTS["fail_on_sink_error"]
        testing._DEFAULTS["fail_on_sink_error"] = True


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SAVED_DEFAULT in config.stash:
        from invariantkit import testing

        testing._DEFAULTS["fail_on_sink_error"] = config.stash[_SAVED_DEFAULT]


def _marker_options(node: pytest.Item) -> dict[str, Any]:
    from invariantkit.testing import capture_signals

    valid = [
        name
        for name, p in inspect.signature(capture_signals).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    options: dict[str, Any] = {}
    for marker in reversed(list(node.iter_markers("invariantkit"))):  # farthest first
        if marker.args:
            raise TypeError(
                f"@pytest.mark.invariantkit takes keyword options only, got {marker.args!r}; "
                f"valid options: {', '.join(valid)}"
            )
        unknown = sorted(set(marker.kwargs) - set(valid))
        if unknown:
            raise TypeError(
                f"@pytest.mark.invariantkit: unknown option {', '.join(unknown)}; "
                f"valid options: {', '.join(valid)}"
            )
        options.update(marker.kwargs)
    return options


@pytest.fixture
def signals(request: pytest.FixtureRequest) -> Iterator[Signals]:
    """Real, isolated SDK pipelines for this test (see
    :func:`invariantkit.testing.capture_signals`), configured by ``@pytest.mark.invariantkit``;
    everything is restored after the test."""
    from invariantkit.testing import capture_signals

    options = _marker_options(request.node)
    with capture_signals(**options) as captured:
        request.node.stash[_SIGNALS] = captured
        try:
            yield captured
        finally:  # items live for the whole session: do not keep every test's signals alive
            del request.node.stash[_SIGNALS]


@pytest.hookimpl(hookwrapper=True)  # old-style: works with every pluggy pytest 7+ ships with
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, None]:
    outcome = yield
    captured = item.stash.get(_SIGNALS, None)
    if captured is None:
        return
    if outcome.excinfo is not None:
        # The test failed on its own: show what invariantkit swallowed next to that failure
        # (it may be the cause), instead of a second error in teardown.
        try:
            captured.assert_no_sink_errors()
        except AssertionError as errors:
            item.add_report_section("call", "invariantkit errors", str(errors))
        return
    if captured._fail_on_sink_error:
        # Fail the test itself (not its teardown) when a swallowed error happened while it ran.
        try:
            captured.assert_no_sink_errors()
        except AssertionError as errors:
            force = getattr(outcome, "force_exception", None)  # pluggy >= 1.1
            if force is None:
                raise
            force(errors)
