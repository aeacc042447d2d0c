"""The package reads as layers: functional core → mixing kernels → callbacks, module and data
→ the command and the trainer.

A module may import modules of its own layer or of lower layers, never of a higher one, so a
reader can understand each layer with only the ones below it. The test reads every import of
the package's source (at module level and inside functions) with :mod:`ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lightning_recipes

ROOT = Path(lightning_recipes.__file__).parent

# Lowest first. A module is placed by the longest prefix of its dotted name listed here.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_compat", "_validation"),
    ("functional",),
    ("callbacks.mixing._kernels",),
    (
        "callbacks",
        "module",
        "_param_groups",
        "scheduler",
        "checkpointing",
        "_interrupt",
        "data",
        "backbones",
        "classifier",
    ),
    ("lr_find", "_lr_suggestions", "preview", "trainer", "cli", "__main__"),
)


def _layer(dotted: str) -> int:
    """The layer of ``lightning_recipes.<dotted>``; the package root is above every layer."""
    if dotted == "":
        return len(LAYERS)
    best: tuple[int, int] | None = None
    for level, names in enumerate(LAYERS):
        for name in names:
            if (dotted == name or dotted.startswith((name + ".", name + "_"))) and (
                best is None or len(name) > best[1]
            ):
                best = (level, len(name))
    if best is None:
        raise AssertionError(f"lightning_recipes.{dotted} is in no layer; add it to LAYERS")
    return best[0]


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:  # the package root re-exports every layer
            found.append((".".join(parts), path))
    return found


def _imports(dotted: str, path: Path) -> set[str]:
    """Dotted names (below ``lightning_recipes``) that ``path`` imports."""
    package = dotted.split(".") if path.name == "__init__.py" else dotted.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(["lightning_recipes", *base, *filter(None, [node.module])])
            else:
                module = node.module or ""
            targets = [module]
        else:
            continue
        for target in targets:
            if target == "lightning_recipes":  # the root re-exports every layer
                names.add("")
            elif target.startswith("lightning_recipes."):
                names.add(target.removeprefix("lightning_recipes."))
    return names


MODULES = _modules()


def test_every_module_is_in_a_layer():
    assert len(MODULES) > 20  # the walk found the package
    for dotted, _ in MODULES:
        _layer(dotted)


@pytest.mark.parametrize(("dotted", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_no_import_runs_back_up(dotted, path):
    own = _layer(dotted)
    upward = sorted(name for name in _imports(dotted, path) if _layer(name) > own)
    assert not upward, f"lightning_recipes.{dotted} (layer {own}) imports higher layers: {upward}"


def test_the_check_sees_an_upward_import(tmp_path):
    # The walk must catch a lazy import inside a function, not only module-level ones.
    source = tmp_path / "fake.py"
    source.write_text("def f():\n    from lightning_recipes.cli import main\n")
    assert _imports("functional.fake", source) == {"cli"}
    assert _layer("cli") > _layer("functional.fake")
    source.write_text("from lightning_recipes import MixUp\n")
    assert _imports("functional.fake", source) == {""}
    assert _layer("") > _layer("cli")
