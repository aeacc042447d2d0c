"""Reading the README's and the docs' code blocks and links, and running their examples."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
# Where the docs link to files of the repository (outside docs/, which MkDocs does not serve).
REPO_BLOB = "https://github.com/lightning-recipes/lightning-recipes/blob/main/"
# Every fit of an example trains this many real optimizer steps on the CPU.
STEPS = 4


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the fenced blocks of ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def recipes_commands(text: str) -> Iterator[list[str]]:
    """The arguments of every ``lightning-recipes`` command of the ``bash`` blocks in ``text``.

    Continuation lines are joined, comments dropped, ``a && b`` split and leading environment
    assignments (``MASTER_ADDR=... lightning-recipes ...``) removed.
    """
    for block in fenced_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for command in " ".join(shlex.split(line, comments=True)).split(" && "):
                words = shlex.split(command)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words.pop(0)
                if words and words[0] == "lightning-recipes":
                    yield words[1:]


def github_slug(heading: str) -> str:
    """The anchor GitHub (and MkDocs' default ``toc``) gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    return {github_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


def markdown_links(text: str) -> list[str]:
    """The targets of the inline links and images of ``text``, code blocks left out."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def run_examples(
    blocks: list[str], filename: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[dict[str, Any], list[pl.Trainer]]:
    """Run ``blocks`` in order in one namespace, in ``tmp_path``; return it and the trainers fit.

    Every Trainer the examples build keeps its arguments, with a short run on the CPU laid over
    them: fits really train, for STEPS optimizer steps.
    """
    fitted: list[pl.Trainer] = []
    init, fit = pl.Trainer.__init__, pl.Trainer.fit

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

    def recorded_fit(self: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        fit(self, *args, **kwargs)
        fitted.append(self)

    monkeypatch.setattr(pl.Trainer, "__init__", short_init)
    monkeypatch.setattr(pl.Trainer, "fit", recorded_fit)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__example__"}
    for block in blocks:
        exec(compile(block, filename, "exec"), namespace)
    return namespace, fitted


def assert_fits_trained(fitted: list[pl.Trainer], code: str) -> None:
    """Each trainer the examples fit trained STEPS steps, and its OneCycle schedule followed."""
    # The scenario happened: the examples fit (`lr_find` also fits, inside, on the same trainer).
    assert bool(fitted) == (".fit(" in code)
    for trainer in {id(trainer): trainer for trainer in fitted}.values():
        assert trainer.global_step == STEPS
        for config in trainer.lr_scheduler_configs:
            assert config.scheduler.last_epoch == STEPS


def parse_only(main: Callable[[list[str]], None], args: list[str]) -> None:
    """Parse a ``lightning-recipes`` command without running it: exit status 0 or a failure."""
    if not any(arg == "--help" or arg.endswith(".help") for arg in args):
        args = [*args, "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None), f"lightning-recipes {shlex.join(args)}"
