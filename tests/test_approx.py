"""The rows comparison the schedule tests use: it passes within the tolerance and fails outside."""

from __future__ import annotations

import pytest
from _approx import assert_rows_close

ROWS = [(0.3, 0.85), (0.1, 0.95)]


def test_rows_within_the_tolerance_pass() -> None:
    assert_rows_close([(0.3 * (1 + 1e-13), 0.85), (0.1, 0.95)], ROWS, rel=1e-12)


@pytest.mark.parametrize(
    "actual",
    [
        [(0.3 * (1 + 1e-11), 0.85), (0.1, 0.95)],  # a value outside the tolerance
        [(0.3, 0.85)],  # a row missing
        [(0.3, 0.85, 0.0), (0.1, 0.95)],  # a row of another length
        [(0.3, 0.85, 0.1), (0.95,)],  # the same values, rows cut elsewhere
    ],
)
def test_rows_that_differ_fail(actual: list[tuple[float, ...]]) -> None:
    with pytest.raises(AssertionError):
        assert_rows_close(actual, ROWS, rel=1e-12)
