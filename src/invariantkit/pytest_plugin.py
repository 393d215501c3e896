"""The invariantkit pytest plugin (entry point ``pytest11``): the ``signals`` fixture.

Example:
    A test that asserts what was really emitted::

        def test_double_charge_is_reported(signals):
            renew("sub_1")
            signals.assert_violation("NO_DOUBLE_CHARGE", subscription_id="sub_1")
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from invariantkit.testing import Signals, capture_signals

__all__ = ["signals"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "invariantkit(**options): options for the signals fixture, passed to capture_signals() "
        "(for example mode='enforce')",
    )


@pytest.fixture
def signals(request: pytest.FixtureRequest) -> Iterator[Signals]:
    """Real, isolated SDK pipelines for this test; see :func:`invariantkit.testing.capture_signals`."""
    marker = request.node.get_closest_marker("invariantkit")
    options = dict(marker.kwargs) if marker is not None else {}
    with capture_signals(**options) as captured:
        yield captured
