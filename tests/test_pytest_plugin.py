"""The pytest plugin: the ``signals`` fixture, the ``invariantkit`` marker and the ini option,
run in pytest sessions of their own (``pytester``)."""

from __future__ import annotations

import textwrap

import hypothesis.strategies
import opentelemetry.sdk.trace
import posthog
import prometheus_client
import pytest
import sentry_sdk

from invariantkit import testing

# Imported here once: pytester's in-process runs drop the modules they import when they end,
# and re-importing (with assertion rewriting, without bytecode caching) costs seconds per run.
_PRELOADED = (
    hypothesis.strategies,
    opentelemetry.sdk.trace,
    posthog,
    prometheus_client,
    sentry_sdk,
)

pytest_plugins = ["pytester"]

STRICT_INI = """
[pytest]
addopts = --strict-markers --strict-config
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""

RAISING_SINK = '''
from typing import ClassVar

class Raising:
    """A sink with a bug."""

    name: ClassVar[str] = "raising"
    deferred: ClassVar[bool] = False

    def emit(self, record):
        if record.kind == "violation":  # bookkeeping records (declarations, counters) pass
            raise RuntimeError("sink bug")

    def flush(self, timeout):
        return True

    def shutdown(self, timeout):
        return True


class DeferredRaising(Raising):
    """The same bug on invariantkit's background worker."""

    name: ClassVar[str] = "deferred_raising"
    deferred: ClassVar[bool] = True
'''


@pytest.fixture
def strict(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory whose sessions are as strict as ours."""
    pytester.makeini(STRICT_INI)
    return pytester


class TestFixture:
    def test_signals_fixture_captures_real_pipelines(self, strict: pytest.Pytester) -> None:
        """A test asking for ``signals`` gets a capture of the real SDKs."""
        strict.makepyfile(
            """
            import invariantkit as ik
            from invariantkit import billing
            from invariantkit.testing import Signals

            def test_capture(signals):
                assert isinstance(signals, Signals)
                with ik.identify("user_1"):
                    assert ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE) is False
                signals.assert_violation("NO_DOUBLE_CHARGE")
                assert signals.metric("billing_invariant_violation_total") == 1
                assert [e["message"] for e in signals.sentry_events] == ["NO_DOUBLE_CHARGE"]
                assert signals.posthog_events[0]["distinct_id"] == "user_1"
                signals.assert_correlated()
            """
        )
        strict.runpytest().assert_outcomes(passed=1)

    def test_state_is_reset_between_tests_and_nothing_is_autouse(
        self, strict: pytest.Pytester
    ) -> None:
        """What a test leaves bound, declared, configured or tagged is gone in the next test;
        a test that does not ask for ``signals`` runs without any capture."""
        strict.makepyfile(
            """
            import sentry_sdk
            import invariantkit as ik
            from invariantkit._config import STATE
            from invariantkit._context import USER
            from invariantkit.sinks import Memory

            INITIAL = STATE.dispatcher
            CLIENT = sentry_sdk.get_global_scope().client

            def test_leaves_a_mess(signals):
                ik.identify("leaky_user")
                ik.extract({"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"})
                sentry_sdk.set_tag("leaky", "yes")
                ik.Invariant("LEAKY", type="leaky", summary="Declared by a test")
                ik.configure(sinks=[Memory()])

            def test_finds_it_clean(request):
                assert "signals" not in request.fixturenames
                assert STATE.dispatcher is INITIAL
                assert USER.get() is None
                assert ik.correlation_id() != "ab" * 16
                assert "LEAKY" not in ik.get_catalog().invariants
                assert "leaky" not in sentry_sdk.get_isolation_scope()._tags
                assert sentry_sdk.get_global_scope().client is CLIENT
            """
        )
        strict.runpytest().assert_outcomes(passed=2)

    def test_async_test(self, strict: pytest.Pytester) -> None:
        """The fixture works for async tests (pytest-asyncio): each task keeps its own ids."""
        strict.makepyfile(
            """
            import asyncio
            import pytest
            import invariantkit as ik
            from invariantkit import billing

            @ik.billing_operation("renewal")
            async def renew(user, charges):
                with ik.identify(user):
                    await asyncio.sleep(0)
                    ik.assert_invariant(charges <= 1, billing.NO_DOUBLE_CHARGE, tags={"user": user})

            @pytest.mark.asyncio
            async def test_tasks(signals):
                await asyncio.gather(*(renew(f"user_{i}", 2) for i in range(5)))
                signals.assert_violation("NO_DOUBLE_CHARGE", count=5)
                for record in signals.violations:
                    assert record.user_id == record.attributes["user"]
                assert len({r.trace_id for r in signals.violations}) == 5
                signals.assert_correlated()
            """
        )
        strict.runpytest().assert_outcomes(passed=1)

    def test_a_failing_test_shows_the_swallowed_errors(self, strict: pytest.Pytester) -> None:
        """When a test fails on its own, what invariantkit swallowed is shown next to the
        failure, not as a second error in teardown."""
        strict.makepyfile(
            RAISING_SINK
            + textwrap.dedent(
                """
                import pytest
                import invariantkit as ik
                from invariantkit import billing

                @pytest.mark.invariantkit(extra_sinks=[Raising()], fail_on_sink_error=True)
                def test_fails(signals):
                    ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
                    assert False, "the test's own failure"
                """
            )
        )
        result = strict.runpytest()
        result.assert_outcomes(failed=1, errors=0)
        result.stdout.fnmatch_lines(
            [
                "*the test's own failure*",
                "*Captured invariantkit errors call*",
                "*raising: sink 'raising' raised RuntimeError: sink bug*",
            ]
        )


class TestMarker:
    def test_marker_options_reach_capture_signals(self, strict: pytest.Pytester) -> None:
        """Module, class and function markers merge; the closest one wins per option."""
        strict.makepyfile(
            """
            import pytest
            import invariantkit as ik
            from invariantkit import billing
            from invariantkit._config import current_config

            pytestmark = pytest.mark.invariantkit(mode="enforce", service="from-module")

            @pytest.mark.invariantkit(service="from-class")
            class TestRenewal:
                def test_class_and_module(self, signals):
                    config = current_config()
                    assert (config.mode, config.service) == ("enforce", "from-class")
                    with pytest.raises(ik.InvariantViolation):
                        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
                    signals.assert_violation("NO_DOUBLE_CHARGE")

                @pytest.mark.invariantkit(mode="report", sentry=False)
                def test_function_wins(self, signals):
                    config = current_config()
                    assert (config.mode, config.service) == ("report", "from-class")
                    assert ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE) is False
                    with pytest.raises(RuntimeError, match="sentry=False"):
                        _ = signals.sentry_events

            def test_module_only(signals):
                assert current_config().service == "from-module"
            """
        )
        strict.runpytest().assert_outcomes(passed=3)

    def test_marker_is_registered(self, strict: pytest.Pytester) -> None:
        """``--strict-markers`` accepts it and ``--markers`` documents it."""
        result = strict.runpytest("--markers")
        result.stdout.fnmatch_lines(["@pytest.mark.invariantkit(**options): *capture_signals*"])

    def test_bad_marker_options_fail_clearly(self, strict: pytest.Pytester) -> None:
        """An unknown option or a positional argument is an error that lists the valid options."""
        strict.makepyfile(
            """
            import pytest

            @pytest.mark.invariantkit(mod="enforce")
            def test_typo(signals):
                pass

            @pytest.mark.invariantkit("enforce")
            def test_positional(signals):
                pass
            """
        )
        result = strict.runpytest()
        result.assert_outcomes(errors=2)
        result.stdout.fnmatch_lines(
            [
                "*@pytest.mark.invariantkit: unknown option mod; valid options: mode, test_mode*",
                "*@pytest.mark.invariantkit takes keyword options only, got ('enforce',)*",
            ]
        )

    def test_marker_with_a_bad_value_fails_clearly(self, strict: pytest.Pytester) -> None:
        """The option's own validation applies."""
        strict.makepyfile(
            """
            import pytest

            @pytest.mark.invariantkit(mode="enforced")
            def test_bad(signals):
                pass
            """
        )
        result = strict.runpytest()
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*capture_signals(mode='enforced'): must be*"])


SINK_ERROR_TESTS = RAISING_SINK + textwrap.dedent(
    """
    import pytest
    import invariantkit as ik
    from invariantkit import billing
    from invariantkit.testing import capture_signals

    @pytest.mark.invariantkit(extra_sinks=[Raising()])
    def test_inline_sink_bug(signals):
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)

    @pytest.mark.invariantkit(extra_sinks=[DeferredRaising()])
    def test_deferred_sink_bug(signals):
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)

    @pytest.mark.invariantkit(extra_sinks=[Raising()], fail_on_sink_error=False)
    def test_opted_out(signals):
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
        assert signals.sink_errors

    def test_direct_capture():
        with capture_signals(extra_sinks=[Raising()]):
            ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)

    def test_healthy(signals):
        ik.assert_invariant(False, billing.NO_DOUBLE_CHARGE)
    """
)


class TestFailOnSinkError:
    def test_off_by_default(self, strict: pytest.Pytester) -> None:
        """Without the ini option a sink error is swallowed, as in production."""
        strict.makepyfile(SINK_ERROR_TESTS)
        strict.runpytest().assert_outcomes(passed=5)

    def test_ini_option_fails_the_test(self, pytester: pytest.Pytester) -> None:
        """With ``invariantkit_fail_on_sink_error = true`` a sink error fails the test itself
        (inline or deferred sink, fixture or capture_signals()), unless a marker opts out."""
        pytester.makeini(STRICT_INI + "invariantkit_fail_on_sink_error = true\n")
        pytester.makepyfile(SINK_ERROR_TESTS)
        result = pytester.runpytest()
        result.assert_outcomes(failed=3, passed=2, errors=0)
        result.stdout.fnmatch_lines_random(
            [
                "FAILED *::test_inline_sink_bug - *",
                "FAILED *::test_deferred_sink_bug - *",
                "FAILED *::test_direct_capture - *",
                "E * - deferred_raising: sink 'deferred_raising' raised RuntimeError: sink bug",
                "E * - raising: sink 'raising' raised RuntimeError: sink bug",
            ]
        )
        # Counted on the failure lines themselves (the short summary repeats them when the
        # terminal is wide enough).
        swallowed = [
            line
            for line in result.stdout.lines
            if line.startswith("E ") and "invariantkit swallowed 1 error(s)" in line
        ]
        assert len(swallowed) == 3
        assert testing._DEFAULTS["fail_on_sink_error"] is False  # the session's setting ended

    def test_ini_option_is_documented(self, strict: pytest.Pytester) -> None:
        """``--help`` lists the ini option."""
        strict.runpytest("--help").stdout.fnmatch_lines(["*invariantkit_fail_on_sink_error*"])


class TestEntryPoint:
    def test_loaded_through_the_entry_point(self, strict: pytest.Pytester) -> None:
        """In a fresh interpreter the plugin comes from the ``pytest11`` entry point, and
        disabling it by that name removes the fixture."""
        strict.makepyfile(
            """
            def test_capture(signals):
                signals.assert_no_violations()
            """
        )
        strict.runpytest_subprocess().assert_outcomes(passed=1)
        result = strict.runpytest("-p", "no:invariantkit")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*fixture 'signals' not found*"])
