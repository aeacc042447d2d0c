"""Rule modes and reporting: what a broken rule does in ``"raise"``, ``"warn"`` or ``"off"``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from lightning.pytorch.utilities import rank_zero_warn

Mode = Literal["raise", "warn", "off"]
MODES: tuple[Mode, ...] = ("raise", "warn", "off")
RULES_DOC = "docs/rules.md"
_MAX_LISTED = 8


class TrainingSanityError(RuntimeError):
    """A training-loop rule checked by :class:`TrainingSanityChecks` is broken."""


class TrainingSanityWarning(UserWarning):
    """A training-loop rule checked by :class:`TrainingSanityChecks` (in ``"warn"`` mode)."""


class _Rules:
    """Base of a group of rules: reports a broken rule as its mode says.

    The groups of one callback share ``modes`` and ``warned``, so a later change of
    ``TrainingSanityChecks.modes`` reaches every group and a warning is shown once per rule and
    subject across them.
    """

    def __init__(self, modes: Mapping[str, Mode], warned: set[str]) -> None:
        self._modes = modes
        self._warned = warned

    def _on(self, rule: str) -> bool:
        return self._modes[rule] != "off"

    def _report(self, rule: str, subject: str, message: str) -> None:
        mode = self._modes[rule]
        if mode == "off":
            return
        text = f"TrainingSanityChecks[{rule}]: {message} (rule: {rule}, see {RULES_DOC}#{rule})"
        if mode == "raise":
            raise TrainingSanityError(text)
        key = f"{rule}:{subject}"
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(text, category=TrainingSanityWarning)


def listing(items: Sequence[str]) -> str:
    """The first few ``items``, comma-separated, and how many more there are."""
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown
