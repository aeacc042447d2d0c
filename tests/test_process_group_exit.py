"""A multi-process fit with ``InterruptCheckpoint`` destroys its process groups before the
interpreter finalizes (Lightning does so only for NCCL): a gloo group left alive aborts a rank
now and then at exit, "terminate called without an active exception", status 134."""

from __future__ import annotations

import atexit
import os
from pathlib import Path

import pytest
import torch.distributed as dist

from lightning_recipes import _interrupt


def test_destroys_the_default_group_and_is_then_a_no_op(tmp_path: Path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    extra = dist.new_group(backend="gloo")  # as the ranks' agreement makes under NCCL
    assert dist.is_initialized() and extra is not None
    _interrupt._destroy_process_groups()
    assert not dist.is_initialized()
    _interrupt._destroy_process_groups()  # nothing left: no error
    assert not dist.is_initialized()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in Linux /proc")
def test_the_group_s_threads_are_joined_once_nothing_holds_it(tmp_path: Path) -> None:
    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    before = threads()
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    held = [dist.group.WORLD]
    held.append(held)  # a cycle, as the trainer, its callbacks and its DDP model make
    assert threads() > before  # gloo's worker threads
    del held
    _interrupt._destroy_process_groups()
    assert threads() == before


def test_registered_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[object] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(_interrupt, "_destroy_registered", False)
    _interrupt._destroy_process_groups_at_exit()
    _interrupt._destroy_process_groups_at_exit()
    assert registered == [_interrupt._destroy_process_groups]


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
def test_every_stage_of_several_processes_destroys_its_groups_at_exit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stage: str
) -> None:
    # Under `ddp_spawn`, `trainer.test()` after a fit (as the command runs it) starts new
    # processes, which never reach `on_train_start`: their gloo group was left alive at exit,
    # and a rank aborted now and then after the test had finished.
    from types import SimpleNamespace

    from lightning_recipes import InterruptCheckpoint

    registered: list[object] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(_interrupt, "_destroy_registered", False)
    callback = InterruptCheckpoint()
    one_process = SimpleNamespace(world_size=1)
    callback.setup(one_process, None, stage)  # type: ignore[arg-type]
    assert registered == []
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        callback.setup(SimpleNamespace(world_size=2), None, stage)  # type: ignore[arg-type]
    finally:
        dist.destroy_process_group()
    assert registered == [_interrupt._destroy_process_groups]
