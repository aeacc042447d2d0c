"""Tolerant comparison of sequences of rows (for example ``(lr, momentum)`` per step).

``pytest.approx`` is documented for flat sequences and mappings of numbers: from pytest 9.2
it refuses a list of tuples (``TypeError: pytest.approx() does not support nested data
structures``). So the rows are checked for their shape first, then flattened and compared
with one explicit tolerance, the same on every pytest release.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest


def assert_rows_close(
    actual: Sequence[Sequence[float]], expected: Sequence[Sequence[float]], *, rel: float
) -> None:
    """Asserts the same number of rows, each of the same length, and every value within ``rel``."""
    assert [len(row) for row in actual] == [len(row) for row in expected]
    flat_actual = [value for row in actual for value in row]
    flat_expected = [value for row in expected for value in row]
    assert flat_actual == pytest.approx(flat_expected, rel=rel, abs=0.0)
