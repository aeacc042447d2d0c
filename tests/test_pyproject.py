"""The `dev` extra's bounds: every test and docs requirement has a lower and an upper bound, so
a new major release of a tool cannot change CI's results unannounced (docs/development.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
REQUIREMENT = re.compile(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?>=([0-9.]+),<([0-9.]+)")


def _dev() -> list[str]:
    with PYPROJECT.open("rb") as file:
        return tomllib.load(file)["project"]["optional-dependencies"]["dev"]


@pytest.mark.parametrize("requirement", _dev())
def test_dev_requirement_has_both_bounds(requirement: str) -> None:
    match = REQUIREMENT.fullmatch(requirement)
    assert match, f"{requirement!r} is not `name>=lower,<upper`"
    lower, upper = (tuple(int(part) for part in v.split(".")) for v in match.group(3, 4))
    assert upper > lower, requirement
    # A major release (a minor while the major is 0): `<10`, `<0.18`, never `<9.3`.
    assert (len(upper) == 1 and upper[0] > 0) or (len(upper) == 2 and upper[0] == 0), requirement


def test_the_tools_named_in_the_docs_are_bounded() -> None:
    names = {REQUIREMENT.fullmatch(r).group(1) for r in _dev()}  # type: ignore[union-attr]
    tools = {"pytest", "hypothesis", "ruff", "mypy", "mkdocs", "mkdocs-material"}
    assert tools | {"mkdocstrings", "mkdocstrings-python"} <= names
