"""``benchmarks/gpu_check.py --dry-run``: every section runs on the CPU and reports sane values."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load(monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up by name while the class is built; the script puts
    # the repository root on `sys.path`, which is restored after the test.
    monkeypatch.setitem(sys.modules, "gpu_check", module)
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_reports_every_section(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_check = _load(monkeypatch)
    output = tmp_path / "check.json"
    results = gpu_check.main(["--dry-run", "--output", str(output)])
    settings = results["settings"]
    assert json.loads(output.read_text()) == json.loads(json.dumps(results, default=str))
    assert results["dry_run"] is True and settings["device"] == "cpu"
    # No time budget: every part runs however slow the machine is today.
    assert settings["budget_s"] is None

    sections = (
        "environment",
        "throughput",
        "memory",
        "mixing_cost",
        "sync_check",
        "step_syncs",
        "fit_cost",
    )
    for section in sections:
        assert results[section].get("status") != "error", results[section]
    assert results["environment"]["torch"]

    (size,) = settings["sizes"]
    name = f"{size['backbone']} {size['batch']}x3x{size['image']}x{size['image']}"
    runs = results["throughput"]["sizes"][name]["runs"]
    assert list(runs) == list(gpu_check.PRECISIONS)
    for run in runs.values():
        assert run["status"] == "ok", run
        assert run["timed_steps"] == settings["timed_steps"]
        assert run["steps"] == settings["warmup_steps"] + settings["timed_steps"] + 1
        assert run["images_per_s"] > 0 and run["step_ms_median"] > 0
        assert run["images_per_s"] == pytest.approx(size["batch"] * 1e3 / run["step_ms_mean"])
        assert run["speedup_vs_32_true"] > 0
    assert runs["32-true"]["speedup_vs_32_true"] == 1.0

    # No CUDA: no GPU memory and no sync check, each with its reason.
    assert results["memory"]["status"] == "skipped" and "CUDA" in results["memory"]["reason"]
    for section in ("sync_check", "step_syncs", "fused_blend"):
        assert results[section]["status"] == "skipped" and "CUDA" in results[section]["reason"]

    # The command's fit on the CIFAR-10 file the check wrote, with FMix logging its lam.
    cli = results["cli_fit"]
    assert cli["status"] == "ok", cli
    assert cli["precision"] == "32-true" and "--trainer.precision" in cli["argv"]
    assert cli["logged_lam_fmix"] and "last.ckpt" in cli["checkpoints"]

    # Per callback and mode: the host time of the hook; no GPU time without CUDA, with a reason.
    mixing = results["mixing_cost"]
    assert mixing["status"] == "ok", mixing
    assert mixing["gpu_time"]["status"] == "skipped" and "CUDA" in mixing["gpu_time"]["reason"]
    rows = mixing["sizes"][name]["rows"]
    assert len(rows) == len(gpu_check.MIXERS) * 4  # per batch / per sample, default / inplace
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["calls"] == settings["mix_timed_calls"]
        assert 0 < row["cpu_ms_min"] <= row["cpu_ms"]
        assert row["gpu_ms"] is None and row["gpu_share_of_step"] is None

    # The cost to a fit: one fit, the default (not in-place) modes, each against the steps
    # without a callback just before it.
    cost = results["fit_cost"]
    assert cost["status"] == "ok", cost
    assert cost["precision"] == settings["fit_cost_precision"] and cost["inplace"] is False
    assert "inplace=True" in cost["not_measured"]
    fit = cost["sizes"][name]
    assert fit["status"] == "ok", fit
    windows = len(cost["callbacks"]) * 2 * settings["fit_cost_rounds"]
    per_window = settings["fit_cost_settle_steps"] + settings["fit_cost_window_steps"]
    assert (
        fit["steps"]
        == cost["steps_per_fit"]
        == settings["fit_cost_warmup_steps"] + windows * per_window + 1
    )
    assert fit["baseline_step_ms"] > 0 and fit["baseline_window_spread"] >= 0
    assert list(fit["rows"]) == [key for key in rows if not key.endswith("inplace")]
    for key, row in fit["rows"].items():
        assert row["status"] == "ok", row
        assert row["step_ms"] > 0 and row["baseline_step_ms"] > 0 and row["ratio"] > 0
        assert row["ratio"] == pytest.approx(row["step_ms"] / row["baseline_step_ms"])
        assert row["cost"] == pytest.approx(row["ratio"] - 1)
        assert len(row["cost_per_round"]) == settings["fit_cost_rounds"]
        assert row["target"] == (0.03 if key.endswith("sample") else 0.01)
        assert row["met"] == (row["cost"] < row["target"])

    scale = results["loss_scale"]
    assert scale["status"] == "ok", scale
    assert scale["steps"] == settings["loss_scale_steps"]
    # The scenario happened: some steps were skipped and some updated the weights.
    assert scale["skipped_steps"] > 0 and scale["real_updates"] > 0
    assert scale["real_updates"] + scale["skipped_steps"] == scale["steps"]
    assert scale["scheduler_steps_equal_real_updates"] is True
    assert scale["scheduler_last_epoch"] == scale["real_updates"]
    assert scale["scheduler_before_optimizer_warnings"] == 0
    # Each skip halves the scale; a dozen clean steps never reach the growth interval.
    assert scale["scale_end"] == scale["init_scale"] * 0.5 ** scale["skipped_steps"]
    assert scale["scale_min"] == scale["scale_end"]

    printed = capsys.readouterr().out
    assert results["table"] in printed
    for text in (
        "Throughput",
        "Mixing callbacks",
        "GPU ms: skipped",
        "fit cost",
        *rows,
        "Sync check: skipped",
        "Step syncs: skipped",
        "Loss scale",
        *runs,
    ):
        assert text in printed


def test_fit_cost_schedule_pairs_each_window_with_one_without(monkeypatch: pytest.MonkeyPatch):
    gpu_check = _load(monkeypatch)
    s = gpu_check.gpu_settings(budget_s=270.0)
    names = ["MixUp batch", "CutMix sample", "FMix batch"]
    schedule, windows = gpu_check._schedule(names, s)
    assert schedule[: s.fit_cost_warmup_steps] == [None] * s.fit_cost_warmup_steps
    assert len(windows) == 2 * len(names) * s.fit_cost_rounds
    for before, window in itertools.pairwise([None, *windows]):
        assert len(window.steps) == s.fit_cost_window_steps
        # Every timed step runs what its window names; the settle steps before it do too.
        first = window.steps[0] - s.fit_cost_settle_steps
        assert set(schedule[first : window.steps[-1] + 1]) == {window.callback}
        if window.callback is not None:
            assert before.callback is None and before.round == window.round
            assert before.steps[-1] + 1 == first  # adjacent
    # Odd rounds run the callbacks in reverse order.
    order = [w.callback for w in windows if w.callback is not None]
    assert order == names + names[::-1]
    assert len(schedule) == windows[-1].steps[-1] + 1


def test_fit_cost_skips_a_size_past_the_budget(monkeypatch: pytest.MonkeyPatch):
    gpu_check = _load(monkeypatch)
    s = gpu_check.dry_run_settings(budget_s=5.0)
    s.fit_start_s = 10.0  # more than the budget: no fit starts
    out = gpu_check.fit_cost(s, {}, gpu_check._Clock(s.budget_s))
    (entry,) = out["sizes"].values()
    assert entry["status"] == "skipped" and "budget of 5.0 s" in entry["reason"]


def test_dry_run_runs_every_part_however_long_it_takes(monkeypatch: pytest.MonkeyPatch):
    gpu_check = _load(monkeypatch)
    s = gpu_check.dry_run_settings()
    clock = gpu_check._Clock(s.budget_s)
    clock.start -= 1e6  # as if the machine had been busy for days
    results: dict[str, Any] = {}
    assert gpu_check._guarded(results, "part", clock, lambda: {"status": "ok"}) == {"status": "ok"}
    assert results == {"part": {"status": "ok"}}


class _ClockMade(Exception):
    """Raised by a stand-in for the check's clock: the settings are read, nothing runs."""


@pytest.mark.parametrize(
    ("argv", "budget_s"),
    [
        (["--dry-run"], None),
        (["--dry-run", "--budget-s", "5"], 5.0),
        ([], 270.0),
        (["--budget-s", "600"], 600.0),
    ],
)
def test_budget_argument(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], budget_s: float | None
) -> None:
    gpu_check = _load(monkeypatch)
    seen: list[float | None] = []

    def clock(budget: float | None) -> None:
        seen.append(budget)
        raise _ClockMade

    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "_Clock", clock)
    with pytest.raises(_ClockMade):
        gpu_check.main(argv)
    assert seen == [budget_s]


def test_a_spent_budget_skips_the_next_part(monkeypatch: pytest.MonkeyPatch):
    gpu_check = _load(monkeypatch)
    clock = gpu_check._Clock(5.0)
    clock.start -= 6.0
    ran: list[bool] = []
    results: dict[str, Any] = {}
    assert gpu_check._guarded(results, "part", clock, lambda: ran.append(True)) is None
    assert ran == [] and results["part"]["status"] == "skipped"
    assert "budget of 5.0 s" in results["part"]["reason"]


def test_table_reads_gpu_figures(monkeypatch: pytest.MonkeyPatch):
    # The dry run has no GPU figures: the table is fed the shape the GPU run writes.
    gpu_check = _load(monkeypatch)
    keys = [key for key, *_ in gpu_check._mixer_keys()]
    timed = {"status": "ok", "calls": 10, "cpu_ms": 0.3, "cpu_ms_min": 0.25, "gpu_ms": 0.05}
    timed |= {"launches_hidden": 10, "workload_in_call_ms": 15.1, "gpu_share_of_step": 0.05 / 40}
    big, small = "resnet50 128x3x224x224", "resnet18 256x3x32x32"
    sizes = {name: {"status": "ok", "step_ms": 40.0, "rows": {}} for name in (big, small)}
    for name in sizes:
        sizes[name]["rows"] = {key: dict(timed) for key in keys}
    sizes[big]["rows"]["FMix sample"]["launches_hidden"] = 9
    gpu = {"status": "ok", "workload": "7 x 4096x4096 @ 4096x4096 float32"}
    gpu |= {"workload_alone_ms": 15.0, "empty_window_ms": 0.002}
    fit_rows = {key: {"status": "ok", "cost": 0.02, "met": False} for key in keys[::2]}
    fit = {"status": "ok", "baseline_step_ms": 40.0, "baseline_window_spread": 0.004}
    results = {
        "mixing_cost": {"status": "ok", "gpu_time": gpu, "sizes": sizes},
        "fit_cost": {
            "status": "ok",
            "precision": "bf16-mixed",
            "sizes": {
                big: {**fit, "rows": fit_rows},
                small: {"status": "skipped", "reason": "its estimated 20 s would pass"},
            },
        },
    }
    lines = gpu_check.table(results).splitlines()

    def cells(size: str, key: str) -> list[str]:
        """The figures of one row: the words after the size and the key."""
        head = [*size.split(), *key.split()]
        rows = [line.split()[len(head) :] for line in lines if line.split()[: len(head)] == head]
        (row,) = [row for row in rows if row[0] != "inplace"]
        return row

    assert cells(big, "MixUp batch") == ["0.050", "0.12%", "0.300", "+2.00%", "MISSED"]
    assert cells(big, "MixUp batch inplace") == ["0.050", "0.12%", "0.300", "-", "-"]
    assert cells(small, "MixUp batch") == ["0.050", "0.12%", "0.300", "-", "-"]
    # One call returned after the GPU had finished the workload: an upper bound, marked.
    assert cells(big, "FMix sample")[0] == "0.050*"
    assert any(line.startswith("  * some calls") for line in lines)
    assert f"{small}: fit cost skipped (its estimated 20 s would pass)" in lines
    calls = len(sizes) * len(keys) * timed["calls"]
    busy = f"GPU still busy when the call returned: {calls - 1} of {calls} calls"
    assert any(busy in line for line in lines)
    assert any("15.10 ms (median) before the calls" in line for line in lines)
    assert any("differ by up to 0.40%" in line for line in lines)
