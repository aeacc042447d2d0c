"""The README's Python examples run as written (fits replaced by a record of the call)."""

from __future__ import annotations

import re
from pathlib import Path

import lightning.pytorch as pl
import pytest

README = Path(__file__).parents[1] / "README.md"
# Self-contained examples: the blocks that import what they use (the others are fragments).
BLOCKS = [
    block
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    if re.search(r"^(from|import) ", block, flags=re.MULTILINE)
]


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, monkeypatch, tmp_path):
    fits = []
    monkeypatch.setattr(pl.Trainer, "fit", lambda self, *a, **k: fits.append((a, k)))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    if "trainer.fit(" in code:
        assert fits, "the example's fit was not reached"
