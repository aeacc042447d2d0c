"""The README's Python examples run as written, their fits shortened to a few real steps."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

README = Path(__file__).parents[1] / "README.md"
# Self-contained examples: the blocks that import what they use (the others are fragments).
BLOCKS = [
    block
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    if re.search(r"^(from|import) ", block, flags=re.MULTILINE)
]
STEPS = 4


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, monkeypatch, tmp_path):
    # Every Trainer the example builds keeps its arguments, with a short run on the CPU laid
    # over them: fits really train, for STEPS optimizer steps.
    trainers: list[pl.Trainer] = []
    init = pl.Trainer.__init__

    def short_init(self: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        kwargs.update(
            accelerator="cpu",
            max_steps=STEPS,
            limit_val_batches=2,
            num_sanity_val_steps=0,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        init(self, *args, **kwargs)
        trainers.append(self)

    monkeypatch.setattr(pl.Trainer, "__init__", short_init)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    if "trainer.fit(" in code:
        # The scenario happened: the example's fit trained, and its schedule ran to the end.
        (trainer,) = trainers
        assert trainer.global_step == STEPS
        (config,) = trainer.lr_scheduler_configs
        assert config.scheduler.last_epoch == STEPS
