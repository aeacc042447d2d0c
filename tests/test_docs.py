"""The docs stay true: their examples run, their commands parse, their links and names exist."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml
from _snippets import (
    DOCS,
    PAGES,
    README,
    REPO_BLOB,
    ROOT,
    anchors,
    assert_fits_trained,
    fenced_blocks,
    markdown_links,
    parse_only,
    recipes_commands,
    run_examples,
)

import lightning_recipes
from lightning_recipes.callbacks.mixing import _options
from lightning_recipes.cli import main

EXAMPLE_PAGES = [page for page in PAGES if fenced_blocks(page.read_text(), "python")]
# Configs that an earlier command of the same block writes (`lr_find` writes the fit config
# with its suggestion): parsed with the config they are made from.
WRITTEN_CONFIGS = {"runs/digits/lr_find_config.yaml": "configs/digits.yaml"}
COMMANDS = [
    [WRITTEN_CONFIGS.get(arg, arg) for arg in args]
    for source in [README, *PAGES]
    for args in recipes_commands(source.read_text())
]


def _name(page: Path) -> str:
    return str(page.relative_to(DOCS))


def test_every_page_has_a_place_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = set(re.findall(r"[\w/-]+\.md", str(config["nav"])))
    assert listed == {_name(page) for page in PAGES}


def test_the_docs_have_python_examples_and_commands():
    assert len(EXAMPLE_PAGES) >= 10
    assert len(COMMANDS) >= 15


@pytest.mark.slow
@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=_name)
def test_page_examples_run(page, monkeypatch, tmp_path):
    # The blocks of a page run in order in one namespace, as a reader pastes them.
    blocks = fenced_blocks(page.read_text(), "python")
    _, fitted = run_examples(blocks, str(page), monkeypatch, tmp_path)
    assert_fits_trained(fitted, "".join(blocks))


@pytest.mark.slow
@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: " ".join(args)[:60])
def test_command_shown_parses(args, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["lightning-recipes"])
    parse_only(main, args)
    assert capsys.readouterr().out  # the config or the help was printed


YAML_BLOCKS = [block for page in PAGES for block in fenced_blocks(page.read_text(), "yaml")]


@pytest.mark.parametrize("block", YAML_BLOCKS)
def test_yaml_examples_name_importable_classes(block):
    # A config fragment a reader pastes: valid YAML whose every class_path imports.
    paths = re.findall(r"class_path: (\S+)", block)
    assert yaml.safe_load(block) and paths
    for path in paths:
        module, _, name = path.rpartition(".")
        assert hasattr(importlib.import_module(module), name), path


def test_reference_documents_public_names_only():
    # Modules move; the names of `__all__` (and the functional core's package) stay. The one
    # exception is `lr_find`, whose module has its name: the directive names the function there.
    public = {f"lightning_recipes.{name}" for name in lightning_recipes.__all__}
    public.add("lightning_recipes.functional")
    aliases = {"lightning_recipes.lr_find.lr_find": "lightning_recipes.lr_find"}
    documented = {
        aliases.get(name, name)
        for page in PAGES
        for name in re.findall(r"^::: (\S+)", page.read_text(), re.M)
    }
    assert documented, "no reference directives found"
    assert documented <= public, sorted(documented - public)
    assert public <= documented, f"without a reference entry: {sorted(public - documented)}"


def test_training_loop_facts_and_their_tests_pair_up():
    page = (DOCS / "training-loop.md").read_text()
    tests = (ROOT / "tests" / "test_facts.py").read_text()
    named = set(re.findall(r"`(test_\w+)`", page))
    defined = set(re.findall(r"^def (test_\w+)", tests, re.M))
    assert named == defined


@pytest.mark.parametrize("source", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_figures_outside_the_benchmark_results(source):
    # Figures live in benchmarks/RESULTS.md only; a page quotes a conclusion and links there.
    text = source.read_text()
    assert "![" not in text
    assert not [link for link in markdown_links(text) if link.split("#")[0].endswith(".png")]


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_links_into_the_repository_exist(page):
    for link in markdown_links(page.read_text()):
        if not link.startswith(REPO_BLOB):
            continue
        path, _, anchor = link.removeprefix(REPO_BLOB).partition("#")
        assert (ROOT / path).exists(), link
        if anchor:
            assert anchor in anchors(ROOT / path), link


@pytest.mark.slow
@pytest.mark.skipif(find_spec("mkdocs") is None, reason="the dev extra is not installed")
def test_mkdocs_build_strict(tmp_path):
    # Strict: a broken link or anchor, a page missing from the nav or a docstring the
    # reference cannot parse fails the build.
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # No Sphinx role shows literally: the docs' griffe extension made each a code span.
    html = "".join(page.read_text() for page in (tmp_path / "site").rglob("*.html"))
    assert not re.findall(r":(?:class|func|meth|mod|data|attr|exc|obj):(?:<code>|`)", html)
    # Each public name is rendered as itself: `lr_find` as the function, not as the module of
    # the same name that defines it.
    html = "".join(page.read_text() for page in (tmp_path / "site" / "reference").rglob("*.html"))
    rendered = set(re.findall(r'id="(lightning_recipes\.[\w.]+)"', html))
    expected = {f"lightning_recipes.{name}" for name in lightning_recipes.__all__}
    expected = expected - {"lightning_recipes.lr_find"} | {"lightning_recipes.lr_find.lr_find"}
    assert not expected - rendered
    assert "lightning_recipes.lr_find" not in rendered
    # Each mixing callback's entry shows every shared option (its `**options: Unpack[...]`
    # expanded) in its signature and as a row of its parameters, with the description.
    page = (tmp_path / "site" / "reference" / "callbacks" / "index.html").read_text()
    for name in ("MixUp", "CutMix", "FMix", "RandomMix"):
        entry = _entry(page, name)
        text = " ".join(re.sub(r"<[^>]+>", "", entry).split())
        for option, doc in _options._option_docs().items():
            assert re.search(rf"<td>\s*<code>{option}</code>\s*</td>", entry), (name, option)
            assert f"{option}: " in text, (name, option)  # in the signature
            assert " ".join(doc.split()[:2]) in text, (name, option)


def _entry(html: str, name: str) -> str:
    """The part of the reference page about ``lightning_recipes.<name>``, up to the next."""
    start = html.index(f'id="lightning_recipes.{name}"')
    end = re.compile(rf'id="lightning_recipes\.(?!{name}[."])').search(html, start)
    return html[start : end.start() if end else len(html)]


def _sphinx_roles():  # the docs' griffe extension, a file outside the package
    spec = importlib.util.spec_from_file_location("sphinx_roles", DOCS / "_ext" / "sphinx_roles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("docstring", "rendered"),
    [
        ("See :func:`blend`.", "See `blend`."),
        (":class:`~lightning_recipes.MixingOptions` keys", "`MixingOptions` keys"),
        (":meth:`Tuner.lr_find <lightning.pytorch.tuner.Tuner.lr_find>`", "`Tuner.lr_find`"),
        (":mod:`.blend` and :py:data:`_ROW_BYTES`", "`blend` and `_ROW_BYTES`"),
        (":attr:`lightning_recipes.FMix.decay_power`", "`lightning_recipes.FMix.decay_power`"),
        ("plain `code`, ``literal`` and a: colon", "plain `code`, ``literal`` and a: colon"),
    ],
)
def test_sphinx_roles_become_code_spans_named_as_sphinx_shows_them(docstring, rendered):
    assert _sphinx_roles().strip_roles(docstring) == rendered


def test_the_sphinx_roles_extension_is_registered_and_not_published():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    handler = config["plugins"][2]["mkdocstrings"]["handlers"]["python"]
    assert "docs/_ext/sphinx_roles.py:SphinxRoles" in handler["options"]["extensions"]
    assert "_ext/" in config["exclude_docs"].split()
