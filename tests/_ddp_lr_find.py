"""Run by tests/test_lr_find.py: ``lr_find`` under 2-process CPU DDP; each rank writes what it saw.

Every rank runs this whole script (Lightning's ``ddp`` launcher starts the script again).
"""

import json
import sys

import lightning.pytorch as pl
import torch.distributed as dist

from lightning_recipes import DigitsDataModule, ImageClassifier, lr_find

out = sys.argv[1]
pl.seed_everything(0)
model = ImageClassifier(num_classes=10, in_channels=1)
trainer = pl.Trainer(
    accelerator="cpu",
    devices=2,
    strategy="ddp",
    max_epochs=2,
    default_root_dir=out,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)
seen = {}
reduce = trainer.strategy.reduce


def recording_reduce(tensor, *args, **kwargs):
    # Keep the sweep's own losses (a 1-d tensor) as this rank had them, and the mean.
    local = tensor.tolist() if getattr(tensor, "ndim", 0) == 1 else None
    result = reduce(tensor, *args, **kwargs)
    if local is not None:
        seen["local"], seen["mean"] = local, result.tolist()
    return result


trainer.strategy.reduce = recording_reduce
result = lr_find(model, trainer, DigitsDataModule(batch_size=32), min_lr=1e-4, num_training=30)
with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
    json.dump(
        {
            **seen,
            "lrs": result.lrs,
            "losses": result.losses,
            "suggestion": result.suggestion,
            "max_lr": model.max_lr,
        },
        f,
    )
# A script that starts a process group ends it: a gloo group left to the interpreter's
# finalization can abort the process at exit.
if dist.is_initialized():
    dist.destroy_process_group()
