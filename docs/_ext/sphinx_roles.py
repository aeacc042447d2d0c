"""A griffe extension for the reference pages: Sphinx roles in docstrings become code spans.

The package's docstrings name other objects the way Sphinx and Python's own documentation do
(``:func:`~lightning_recipes.functional.blend```), which reads well in ``help()`` and an IDE;
mkdocstrings renders Google-style Markdown and would show the role literally. Each role is
turned into the code span it stands for, with the name as Sphinx would display it: the last
component after ``~``, the title of ``title <target>``, else the name as written.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _display(match: re.Match[str]) -> str:
    short, text = match.group(1), match.group(2).strip()
    titled = re.fullmatch(r"(.+?)\s*<([^<>]+)>", text)
    if titled:
        return f"`{titled.group(1)}`"
    name = text.lstrip(".")
    return f"`{name.rsplit('.', 1)[-1] if short else name}`"


def strip_roles(text: str) -> str:
    """``text`` with every Sphinx cross-reference role replaced by a code span."""
    return ROLE.sub(_display, text)


class SphinxRoles(griffe.Extension):
    """Rewrites the docstring of every object griffe loads (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = strip_roles(obj.docstring.value)
