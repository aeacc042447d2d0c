"""The shared options of the mixing callbacks, as each tool sees them: ``typing``,
``inspect.signature``, mypy, jsonargparse (the command) and the docstrings.

The one list of options is :class:`MixingOptions`; ``MixingCallback.__init__`` holds their
defaults. These tests keep the two the same and check that every tool reads all of them.
"""

from __future__ import annotations

import inspect
import json
import pydoc
import sys
import textwrap
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typing_extensions import Unpack

import lightning_recipes
from lightning_recipes import CutMix, FMix, MixingOptions, MixUp, RandomMix
from lightning_recipes.callbacks.mixing import _options
from lightning_recipes.callbacks.mixing._base import MixingCallback
from lightning_recipes.callbacks.mixing._options import takes_mixing_options
from lightning_recipes.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")

BASE = inspect.signature(MixingCallback.__init__, eval_str=True).parameters
BASE_OPTIONS = {name: p for name, p in BASE.items() if p.kind is p.KEYWORD_ONLY}
HINTS = typing.get_type_hints(MixingOptions)

# Each class with the parameters of its own, which come before the options.
OWN = {
    "MixUp": (MixUp, ["alpha"]),
    "CutMix": (CutMix, ["alpha", "correct_lam", "spatial_dims"]),
    "FMix": (FMix, ["alpha", "decay_power", "max_soft", "spatial_dims", "mask_sampler"]),
    "RandomMix": (
        RandomMix,
        [
            "probs",
            "alpha",
            "correct_lam",
            "spatial_dims",
            "decay_power",
            "max_soft",
            "mask_sampler",
        ],
    ),
}
# A value other than the default for every option (`stop_epoch` excludes `stop_fraction`).
VALUES: dict[str, Any] = {
    "p": 0.5,
    "per_sample": True,
    "label_smoothing": 0.1,
    "num_classes": 10,
    "stop_epoch": None,
    "stop_fraction": 0.75,
    "input_key": "image",
    "target_key": "label",
    "seed": 7,
    "save_grid": True,
    "grid_samples": 4,
    "inplace": True,
}


@pytest.fixture(autouse=True)
def _command_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The command runs in-process: it reads ``sys.argv``, and the config seeds the run."""
    monkeypatch.setattr(sys, "argv", ["lightning-recipes"])
    for variable in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(variable, raising=False)
    with torch.random.fork_rng(devices=[]):
        yield


def test_the_options_are_the_keyword_only_parameters_of_the_base():
    # Names, order and types: the TypedDict that the type checkers read and the parameters
    # that hold the defaults cannot drift apart.
    assert "per_sample" in HINTS and "methods" in BASE  # both lists were read
    assert list(HINTS.items()) == [(name, p.annotation) for name, p in BASE_OPTIONS.items()]
    assert set(VALUES) == set(HINTS)


def test_every_option_may_be_left_out():
    assert MixingOptions.__required_keys__ == frozenset()
    assert MixingOptions.__optional_keys__ == frozenset(HINTS)


@pytest.mark.parametrize("name", list(OWN))
def test_signature_lists_every_option_with_its_default_and_type(name):
    cls, own = OWN[name]
    parameters = inspect.signature(cls).parameters
    assert list(parameters) == [*own, *HINTS]
    assert all(p.kind is not p.VAR_KEYWORD for p in parameters.values())
    for option, annotation in HINTS.items():
        parameter = parameters[option]
        assert parameter.kind is parameter.KEYWORD_ONLY, option
        assert parameter.default == BASE_OPTIONS[option].default, option
        assert parameter.annotation == annotation, option
    # The class's own parameters are as it wrote them.
    assert parameters["alpha"].default == 1.0


@pytest.mark.parametrize("name", list(OWN))
def test_help_shows_every_option_with_its_default_and_description(name):
    cls, _ = OWN[name]
    text = " ".join(pydoc.render_doc(cls, renderer=pydoc.plaintext).split())
    for option, doc in _options._option_docs().items():
        assert str(inspect.signature(cls).parameters[option]) in text, option
        assert f"{option}: {doc.split()[0]}" in text, option


@pytest.mark.parametrize("name", list(OWN))
def test_the_signature_shown_is_the_one_accepted(name):
    cls, _ = OWN[name]
    inspect.signature(cls).bind(**VALUES)
    callback = cls(**VALUES)
    for option, value in VALUES.items():
        assert getattr(callback, option) == value, option


@pytest.mark.parametrize("name", list(OWN))
def test_a_misspelt_option_is_refused_at_run_time_too(name):
    cls, _ = OWN[name]
    with pytest.raises(TypeError, match="per_smaple"):
        cls(per_smaple=True)


def test_every_option_has_a_description():
    docs = _options._option_docs()
    assert list(docs) == list(HINTS)
    assert all(docs.values())
    assert docs["grid_samples"] == "Images in the grid; default 16."


def test_without_a_source_the_options_go_without_descriptions(monkeypatch):
    def no_source(obj: object) -> str:
        raise OSError("could not get source code")

    _options._option_docs.cache_clear()
    monkeypatch.setattr(inspect, "getsource", no_source)
    try:
        assert _options._option_docs() == {}
    finally:
        _options._option_docs.cache_clear()


@pytest.mark.parametrize("name", list(OWN))
def test_callback_help_describes_every_option(capsys, name):
    # What jsonargparse prints comes from the `Args:` that `takes_mixing_options` writes.
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--trainer.callbacks.help", f"lightning_recipes.{name}"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for option, doc in _options._option_docs().items():
        default = BASE_OPTIONS[option].default
        shown = "null" if default is None else str(default)
        assert f"--trainer.callbacks.{option} " in out, option
        assert " ".join(doc.split()) in out, option
        assert f"default: {shown})" in out, option


@pytest.mark.parametrize("name", list(OWN))
def test_the_command_reads_every_option_from_a_config(capsys, name):
    # jsonargparse checks each value against the signature's type before it prints the config.
    entry = {"class_path": f"lightning_recipes.{name}", "init_args": VALUES}
    args = ["fit", "--config", DIGITS, f"--trainer.callbacks={json.dumps([entry])}"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code == 0
    (callback,) = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
    assert callback["class_path"] == f"lightning_recipes.{name}"
    assert {option: callback["init_args"][option] for option in VALUES} == VALUES


class _NoOptions(MixingCallback):
    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__(None)  # never built: only its signature is read


class _UntypedOptions(MixingCallback):
    def __init__(self, **options: Any) -> None:
        super().__init__(None, **options)


class _Inherited(MixingCallback):
    pass


class _Parent:
    def __init__(self, *, p: float = 1.0) -> None:
        self.p = p


class _ParentWithoutOptions(_Parent):
    def __init__(self, **options: Unpack[MixingOptions]) -> None:
        super().__init__(p=options.get("p", 1.0))


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (_NoOptions, r"`_NoOptions.__init__` must take `\*\*options: Unpack\[MixingOptions\]`"),
        (_UntypedOptions, r"`_UntypedOptions.__init__` must take `\*\*options"),
        (_Inherited, r"`_Inherited.__init__` must take `\*\*options"),
        (_ParentWithoutOptions, r"`_ParentWithoutOptions` lacks the options \['per_sample'"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_takes_mixing_options_refuses_a_class_without_the_options(cls, match):
    with pytest.raises(TypeError, match=match):
        takes_mixing_options(cls)


# ----------------------------------------------------------------------------------- mypy
# Each snippet in a file of its own, one mypy run for all: each wrong call must be the one
# error of its file, and the snippet that uses every option right must have none.
WRONG = {
    "misspelt_option": (
        "MixUp(per_smaple=True)",
        'error: Unexpected keyword argument "per_smaple" for "MixUp"',
    ),
    "wrong_type": ('MixUp(p="x")', 'error: Argument "p" to "MixUp" has incompatible type "str"'),
    "misspelt_cutmix": (
        "CutMix(stop_epochs=3)",
        'error: Unexpected keyword argument "stop_epochs" for "CutMix"',
    ),
    "wrong_type_fmix": (
        'FMix(num_classes="10")',
        'error: Argument "num_classes" to "FMix" has incompatible type "str"',
    ),
    "misspelt_randommix": (
        "RandomMix(save_grids=True)",
        'error: Unexpected keyword argument "save_grids" for "RandomMix"',
    ),
    "wrong_type_in_a_dict": (
        'options: MixingOptions = {"seed": 1.5}',
        'error: Incompatible types (expression has type "float", TypedDict item "seed" has type',
    ),
}
KEYWORDS = ", ".join(f"{option}={value!r}" for option, value in VALUES.items())
RIGHT = f"""
options: MixingOptions = {VALUES!r}
callbacks = [
    MixUp(0.4, **options),
    CutMix(1.0, correct_lam=False, {KEYWORDS}),
    FMix(decay_power=2.0, **options),
    RandomMix({{"mixup": 1.0}}, alpha=0.8, **options),
]
"""
IMPORTS = "from lightning_recipes import CutMix, FMix, MixingOptions, MixUp, RandomMix\n"


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    api = pytest.importorskip("mypy.api")
    folder = tmp_path_factory.mktemp("mypy")
    for case, (line, _) in WRONG.items():
        (folder / f"{case}.py").write_text(IMPORTS + line + "\n")
    (folder / "right.py").write_text(IMPORTS + textwrap.dedent(RIGHT))
    # `mypy_path` first: the package of this checkout, not an installed copy of it.
    package_root = Path(lightning_recipes.__file__).parents[1]
    config = folder / "mypy.ini"
    config.write_text(
        f"[mypy]\nstrict = True\npython_version = 3.10\nmypy_path = {package_root}\n"
        f"cache_dir = {folder / 'cache'}\n"
    )
    files = sorted(str(path) for path in folder.glob("*.py"))
    out, err, _ = api.run(["--config-file", str(config), *files])
    assert not err, err
    return out


def _errors(output: str, case: str) -> list[str]:
    return [line for line in output.splitlines() if f"{case}.py:" in line and "error:" in line]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(WRONG))
def test_mypy_strict_flags_a_wrong_option(mypy_output, case):
    _, message = WRONG[case]
    errors = _errors(mypy_output, case)
    assert len(errors) == 1, mypy_output
    assert message in errors[0]


@pytest.mark.slow
def test_mypy_strict_passes_every_option_used_right(mypy_output):
    assert _errors(mypy_output, "right") == [], mypy_output
    assert "Found 6 errors in 6 files" in mypy_output  # all the snippets were checked
