"""The command's parser: its help texts, and errors without jsonargparse's Union restatements."""

from __future__ import annotations

import argparse
import re
from typing import Any, NoReturn

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override

# Lines of jsonargparse's Union errors that only restate the types: `--model` is
# `OneCycleModule | None`, so every bad model argument also "is not None".
_UNION_NOISE = re.compile(
    r"\s*(Does not validate against any of the Union subtypes|Subtypes: \[.*\]|Errors:"
    r"|- Expected a <class 'NoneType'>|Given value type: .*|Given value: .*)"
)

_MAIN_DESCRIPTION = """\
lightning-recipes: train, validate, test and predict with the lightning_recipes models
(OneCycle stepped per optimizer step, MixUp/CutMix/FMix, LR and loss-scale monitors).

Examples:
  lightning-recipes fit --config configs/digits.yaml
  lightning-recipes fit --config configs/digits.yaml --trainer.max_epochs 5
  lightning-recipes fit --help                              every option of fit
  lightning-recipes fit --model.help ImageClassifier        the model's arguments
  lightning-recipes fit --data.help DigitsDataModule        the data module's arguments

A wrong argument ends with a short error (exit status 2); set LIGHTNING_RECIPES_TRACEBACK=1
to see its full traceback.
"""
_SUBCOMMAND_DESCRIPTION = """\
{summary}

  lightning-recipes {subcommand} --config configs/digits.yaml{example}
  lightning-recipes {subcommand} --model.help ImageClassifier     the model's arguments
  lightning-recipes {subcommand} --data.help DigitsDataModule     the data module's arguments

Any option below can also be set in the YAML file given by --config; options on the
command line override it.
"""
_SUMMARIES = {
    "fit": "Train the model, then test the final weights and print where logs, checkpoints"
    " and the config went.",
    "validate": "Evaluate a checkpoint on the validation set.",
    "test": "Evaluate a checkpoint on the test set.",
    "predict": "Predict class probabilities with a checkpoint.",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's formatter that keeps the description's lines (its example commands)."""


class _Parser(LightningArgumentParser):
    """The command's parser: errors without jsonargparse's restatement of Union types."""

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        lines = [line for line in message.splitlines() if not _UNION_NOISE.fullmatch(line)]
        super().error("\n".join(lines), ex)


def _parser_kwargs() -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "description": _MAIN_DESCRIPTION,
        "formatter_class": _HelpFormatter,
    }
    for subcommand, summary in _SUMMARIES.items():
        example = "" if subcommand == "fit" else " --ckpt_path CHECKPOINT"
        kwargs[subcommand] = {
            "description": _SUBCOMMAND_DESCRIPTION.format(
                summary=summary, subcommand=subcommand, example=example
            ),
            "formatter_class": _HelpFormatter,
            "usage": "%(prog)s [--config CONFIG] [--SECTION.ARGUMENT VALUE ...]",
        }
    return kwargs
