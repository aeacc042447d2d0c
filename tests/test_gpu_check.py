"""``benchmarks/gpu_check.py --dry-run``: every section runs on the CPU and reports sane values."""

from __future__ import annotations

import importlib.util
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

    sections = ("environment", "throughput", "memory", "mixing_cost", "sync_check", "step_syncs")
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
    for section in ("sync_check", "step_syncs"):
        assert results[section]["status"] == "skipped" and "CUDA" in results[section]["reason"]

    rows = results["mixing_cost"]["sizes"][name]["rows"]
    assert len(rows) == len(gpu_check.MIXERS) * 4  # per batch / per sample, default / inplace
    for key, row in rows.items():
        assert row["status"] == "ok", row
        assert row["calls"] == settings["mix_timed_calls"]
        assert row["hook_ms"] > 0 and row["fraction"] > 0
        assert row["target"] == (0.03 if " sample" in key else 0.01)
        assert row["met"] == (row["fraction"] < row["target"])

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
        "Mixing hook",
        "Sync check: skipped",
        "Step syncs: skipped",
        "Loss scale",
        *runs,
    ):
        assert text in printed
