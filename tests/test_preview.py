"""The schedule preview equals the fit's LR and momentum; lr_find and preview from the CLI."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from lightning_recipes import DigitsDataModule, ImageClassifier
from lightning_recipes.cli import main
from lightning_recipes.preview import preview_schedule

CONFIG = Path(__file__).parents[1] / "configs" / "digits.yaml"


class _Record(Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.momenta: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append([g["lr"] for g in optimizer.param_groups])
        group = optimizer.param_groups[0]
        self.momenta.append(group["betas"][0] if "betas" in group else group["momentum"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_kwargs", "trainer_kwargs"),
    [
        ({}, {"max_epochs": 2, "limit_train_batches": 7}),
        ({"optimizer": "adamw"}, {"max_epochs": 2, "accumulate_grad_batches": 3}),
        ({"pct_start": 0.5}, {"max_steps": 9}),
        ({}, {"max_steps": 4}),
    ],
    ids=["sgd-limit", "adamw-accumulate", "max_steps", "short"],
)
def test_preview_equals_the_fit_value_for_value(tmp_path, model_kwargs, trainer_kwargs):
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=64)
    model = ImageClassifier(num_classes=10, in_channels=1, max_lr=0.1, **model_kwargs)
    record = _Record()
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        callbacks=[record],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    preview = preview_schedule(model, trainer, dm)

    # No training step ran and nothing was recorded by the trainer's own callbacks.
    assert trainer.global_step == 0 and record.lrs == []
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    trainer.fit(model, datamodule=dm)
    assert preview.total_steps == trainer.global_step == len(record.lrs)
    assert preview.group_lrs == record.lrs
    assert preview.momenta == record.momenta
    points = preview.key_points()
    assert points["start_lr"] == record.lrs[0][0]
    assert points["peak_lr"] == max(row[0] for row in record.lrs)
    assert points["end_lr"] == record.lrs[-1][0]


def test_preview_needs_a_onecycle(tmp_path):
    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(64, 10)

        def training_step(self, batch, batch_idx):
            return self.net(batch[0].flatten(1)).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=2, logger=False)
    with pytest.raises(ValueError, match="no OneCycleLR"):
        preview_schedule(Plain(), trainer, DigitsDataModule())


def _cli(tmp_path: Path, subcommand: str, *args: str) -> None:
    main(
        [
            subcommand,
            "--config",
            str(CONFIG),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
            *args,
        ]
    )


@pytest.mark.slow
def test_cli_preview_prints_the_key_points_and_saves_the_plot(tmp_path, capsys):
    _cli(tmp_path, "preview", "--trainer.max_epochs", "3")
    out = capsys.readouterr().out
    dm = DigitsDataModule(batch_size=64)  # the config's
    dm.setup("fit")
    steps = 3 * len(dm.train_dataloader())
    assert f"optimizer steps  {steps}" in out
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps, pct_start=0.25)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    peak = max(range(steps), key=lrs.__getitem__)
    assert f"peak lr          {lrs[peak]:.4g}  (step {peak})" in out
    assert (tmp_path / "schedule_preview.png").stat().st_size > 0
    assert not (tmp_path / "digits").exists()  # nothing logged


@pytest.mark.slow
def test_cli_lr_find_writes_a_fit_config_with_the_suggestion(tmp_path, capsys):
    _cli(tmp_path, "lr_find", "--num_training", "40", "--min_lr", "1e-4", "--max_lr", "5")
    out = capsys.readouterr().out
    config_path = tmp_path / "lr_find_config.yaml"
    assert f"train with: lightning-recipes fit --config {config_path}" in out
    config = yaml.safe_load(config_path.read_text())
    suggestion = config["model"]["init_args"]["max_lr"]
    assert f"valley    {suggestion:.3g}  <- max_lr" in out
    assert "num_training" not in config and "rule" not in config
    assert (tmp_path / "lr_find.png").stat().st_size > 0
    # The written config is a valid fit config whose cycle starts at suggestion / div_factor.
    main(["preview", "--config", str(config_path), "--trainer.max_epochs", "1"])
    assert f"start lr         {suggestion / 25:.4g}  (step 0)" in capsys.readouterr().out
