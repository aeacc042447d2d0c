"""The README stays a short landing page whose examples run and whose links lead somewhere."""

from __future__ import annotations

import re

import pytest
from _snippets import (
    README,
    ROOT,
    anchors,
    assert_fits_trained,
    fenced_blocks,
    markdown_links,
    run_examples,
)

TEXT = README.read_text()
BLOCKS = fenced_blocks(TEXT, "python")
MAX_LINES = 150


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


def test_readme_is_a_short_landing_page():
    assert len(TEXT.splitlines()) <= MAX_LINES


def test_readme_links_lead_to_files_that_exist():
    relative = [link for link in markdown_links(TEXT) if not re.match(r"[a-z]+://", link)]
    assert relative  # the scenario: the README links into the repository
    for link in relative:
        path, _, anchor = link.partition("#")
        assert (ROOT / path).exists(), link
        if anchor:
            assert anchor in anchors(ROOT / path), link


def test_readme_keeps_the_command_ci_runs():
    # .ci/run reads and runs the fenced block after this marker.
    after = TEXT.split("<!-- test-command -->\n", 1)[1]
    (command,) = fenced_blocks(after, "bash")[:1]
    assert 'pip install -e ".[dev]"' in command
    assert "pytest" in command


@pytest.mark.slow
@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, monkeypatch, tmp_path):
    # Each block is self-contained, as a reader copies it; its fit trains a few real steps.
    _, fitted = run_examples([code], str(README), monkeypatch, tmp_path)
    assert_fits_trained(fitted, code)
