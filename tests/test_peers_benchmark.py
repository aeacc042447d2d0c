"""`benchmarks/peers.py` runs (its `--quick` mode), and its fastai-style OneCycle steps the
same LR and momentum as `OneCycleModule` at every optimizer step."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from _approx import assert_rows_close

pytest.importorskip("timm")
pytest.importorskip("torchvision")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"
QUICK_BATCHES = 8  # --quick: 1 seed, 1 epoch of 8 batches


@pytest.fixture(scope="module")
def peers() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("peers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while the class body is built.
    sys.modules["peers"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["peers"]


@pytest.fixture(scope="module")
def quick(peers: ModuleType) -> list[Any]:
    return peers.main(["--quick"])


def _standalone_onecycle(steps: int) -> list[tuple[float, ...]]:
    """(lr, momentum) of both param groups at each of ``steps`` optimizer steps of torch's
    `OneCycleLR` with the digits job's settings, stepped in a plain loop."""
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    bias = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD(
        [{"params": [weight], "weight_decay": 5e-4}, {"params": [bias]}],
        lr=0.2,
        momentum=0.95,
        nesterov=True,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=0.2,
        total_steps=steps,
        pct_start=0.25,
        div_factor=25.0,
        final_div_factor=1e4,
        base_momentum=0.85,
        max_momentum=0.95,
    )
    trace = []
    for _ in range(steps):
        trace.append(tuple(v for g in optimizer.param_groups for v in (g["lr"], g["momentum"])))
        optimizer.step()
        scheduler.step()
    return trace


@pytest.mark.slow
def test_quick_run_fits_and_reports_every_variant(peers: ModuleType, quick: list[Any]) -> None:
    printed = peers.report(quick, seeds=1, epochs=1, batches=QUICK_BATCHES)
    assert [v.name for v in quick] == [v.name for v in peers.variants()]
    for variant in quick:
        assert variant.name in printed
        assert len(variant.wall) == len(variant.cpu) == len(variant.accuracy) == 1
        assert 0.0 <= variant.accuracy[0] <= 1.0
        assert len(variant.steps[0]) == QUICK_BATCHES
    assert f"equal at all {QUICK_BATCHES} optimizer steps" in printed


@pytest.mark.slow
def test_fastai_style_onecycle_steps_as_onecycle_module(
    peers: ModuleType, quick: list[Any]
) -> None:
    ours, fastai = (v for v in quick if v.group == "OneCycle")
    assert ours.ours and not fastai.ours
    expected = _standalone_onecycle(QUICK_BATCHES)
    # Both traced every optimizer step, and the LR actually moved over the cycle.
    assert len(ours.steps[0]) == len(fastai.steps[0]) == QUICK_BATCHES
    assert len({step[0] for step in expected}) == QUICK_BATCHES
    assert fastai.steps[0] == ours.steps[0]
    assert_rows_close(ours.steps[0], expected, rel=1e-12)
    assert peers.schedule_mismatch([ours, fastai]) is None


@pytest.mark.slow
def test_a_schedule_mismatch_is_reported(peers: ModuleType) -> None:
    table = [v for v in peers.variants() if v.group == "OneCycle"]
    table[0].steps.append([(0.1, 0.9), (0.2, 0.9)])
    table[1].steps.append([(0.1, 0.9), (0.3, 0.9)])
    assert peers.schedule_mismatch(table) == (
        "seed 0, optimizer step 1: (lr, momentum) (0.3, 0.9) against (0.2, 0.9)"
    )


def test_user_lines_skips_docstrings_comments_decorators_and_blank_lines(
    peers: ModuleType,
) -> None:
    def sample() -> int:
        """A docstring
        over two lines."""
        # a comment

        value = 1  # counted
        return value

    assert peers.user_lines(sample) == 3  # `def`, `value = 1`, `return value`


def test_ours_needs_fewer_lines_than_every_peer(peers: ModuleType) -> None:
    table = peers.variants()
    for variant in table:
        base = next(v for v in table if v.group == variant.group and v.ours)
        if variant is not base:
            assert peers.user_lines(*base.code) < peers.user_lines(*variant.code)
