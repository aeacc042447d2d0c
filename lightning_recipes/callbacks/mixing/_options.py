"""The options every mixing callback takes, typed once for static and run-time tools.

:class:`MixingOptions` is what type checkers and IDEs read (PEP 692:
``**options: Unpack[MixingOptions]``), and its attribute docstrings are the only description
of each option: the reference pages read them (griffe's ``unpack_typeddict`` extension).
:func:`takes_mixing_options` gives each public callback's ``__init__`` the signature it
accepts, so ``inspect.signature``, ``help()`` and the command's ``--help`` (jsonargparse,
which reads the signature and the ``Args:`` of the docstrings) list every option with its
default. The defaults live in ``MixingCallback.__init__``; ``tests/test_mixing_options.py``
keeps its keyword-only parameters and these keys the same.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import textwrap
from typing import Any, TypeVar, cast, get_args, get_origin

from typing_extensions import TypedDict, Unpack

__all__ = ["MixingOptions", "takes_mixing_options"]

_C = TypeVar("_C", bound=type)


class MixingOptions(TypedDict, total=False):
    """The keyword options that :class:`MixUp`, :class:`CutMix`, :class:`FMix` and
    :class:`RandomMix` share; every one may be left out.

    Example:
        >>> from lightning_recipes import MixUp, MixingOptions
        >>> options: MixingOptions = {"p": 0.5, "stop_fraction": 0.9}
        >>> MixUp(alpha=0.4, **options).p
        0.5
    """

    p: float
    """Probability that a batch is mixed (that a sample is, with ``per_sample=True``);
    default 1. Unmixed batches still get soft targets, so ``training_step`` sees one format."""
    per_sample: bool
    """Draw lam (and CutMix boxes, FMix masks) per sample instead of per batch, vectorised on
    the device; default False."""
    label_smoothing: float
    """Target smoothing ``t * (1 - s) + s / C``, the definition of ``F.cross_entropy``; 0
    (default) changes no target silently."""
    num_classes: int | None
    """Number of classes, needed for integer labels; default: the LightningModule's
    ``num_classes`` attribute or hyperparameter."""
    stop_epoch: int | None
    """Mix only in epochs before this one (0-based), so the last epochs train on clean data;
    default None (every epoch)."""
    stop_fraction: float | None
    """Mix only during this fraction of the optimizer steps
    (``trainer.estimated_stepping_batches``); exclusive with ``stop_epoch``; default None."""
    input_key: int | str | None
    """Index (list batch) or key (dict batch) of the inputs; default 0, or the first of
    ``"input"``, ``"image"``, ``"images"``, ``"pixel_values"``, ``"x"``."""
    target_key: int | str | None
    """Index or key of the targets; default 1, or the first of ``"target"``, ``"label"``,
    ``"labels"``, ``"y"``."""
    seed: int | None
    """Seed of the mixing; default the run's seed (``seed_everything``). Each process combines
    it with its rank; the state is saved in checkpoints."""
    save_grid: bool
    """Once per epoch, save a PNG grid of mixed training images with the top classes of their
    soft targets to ``<log_dir>/mix_grids`` (and add it to a TensorBoard logger); default
    False. Costs one device-to-host copy per epoch."""
    grid_samples: int
    """Images in the grid; default 16."""
    inplace: bool
    """Write the mixed inputs into the batch's own input tensor, as timm's ``Mixup`` does,
    instead of a new tensor; default False. Per-batch CutMix then copies only the box; for the
    other methods the cost is the same. Only for batches with a tensor of their own, which
    torch's default ``collate_fn`` and the copy to an accelerator give; a view of another
    tensor (e.g. a slice of a Dataset's stored images) is refused with an error."""


def takes_mixing_options(cls: _C) -> _C:
    """Gives ``cls.__init__``, written ``(..., **options: Unpack[MixingOptions])``, the
    signature it accepts: its own parameters, then the options, in the order of
    :class:`MixingOptions`, with the annotations and defaults of the parent ``__init__`` that
    ``**options`` goes to; and the options' descriptions as its docstring's ``Args:``.

    ``inspect.signature`` does not expand ``Unpack`` (and jsonargparse, which does, finds no
    defaults in a ``TypedDict`` and no longer follows ``**options`` into the parent), so the
    run-time tools read ``__signature__`` instead. The annotations are evaluated here, in the
    modules that define them, so that no tool has to resolve the parent's ``"Key | None"`` in
    the subclass's module.
    """
    init: Any = cls.__dict__.get("__init__")  # a function, given its own `__signature__`
    own = None if init is None else inspect.signature(init, eval_str=True)
    rest = [] if own is None else [p for p in own.parameters.values() if p.kind is p.VAR_KEYWORD]
    if own is None or not rest or not _is_options(rest[0].annotation):
        raise TypeError(
            f"`{cls.__name__}.__init__` must take `**options: Unpack[MixingOptions]`, got {own}"
        )
    parent = inspect.signature(super(cls, cls).__init__, eval_str=True)  # type: ignore[arg-type]
    missing = [name for name in MixingOptions.__annotations__ if name not in parent.parameters]
    if missing:
        raise TypeError(f"the parent `__init__` of `{cls.__name__}` lacks the options {missing}")
    kept = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
    shared = [parent.parameters[name] for name in MixingOptions.__annotations__]
    init.__signature__ = own.replace(parameters=[*kept, *shared])
    init.__doc__ = "\n\n".join(filter(None, [init.__doc__, _args_section(_option_docs())]))
    return cls


def _is_options(annotation: Any) -> bool:
    return get_origin(annotation) is Unpack and get_args(annotation) == (MixingOptions,)


@functools.cache
def _option_docs() -> dict[str, str]:
    """The attribute docstrings of :class:`MixingOptions`, by option.

    Python keeps no attribute docstrings at run time, so they are read from the source, as
    jsonargparse's own attribute-docstring parsing does; without a source (a frozen install)
    the options go without descriptions.
    """
    try:
        source = textwrap.dedent(inspect.getsource(MixingOptions))
    except OSError:
        return {}
    body = cast(ast.ClassDef, ast.parse(source).body[0]).body
    return {
        field.target.id: inspect.cleandoc(doc.value.value)
        for field, doc in itertools.pairwise(body)
        if isinstance(field, ast.AnnAssign)
        and isinstance(field.target, ast.Name)
        and isinstance(doc, ast.Expr)
        and isinstance(doc.value, ast.Constant)
        and isinstance(doc.value.value, str)
    }


def _args_section(docs: dict[str, str]) -> str:
    """A Google-style ``Args:`` section of ``docs``, the form jsonargparse parses (after a
    summary line: a docstring that opens with ``Args:`` is not read as Google style)."""
    lines = ["The options of :class:`~lightning_recipes.MixingOptions`.", "", "Args:"]
    for name, doc in docs.items():
        first, *rest = doc.splitlines()
        lines += [f"    {name}: {first}", *(f"        {line}" for line in rest)]
    return "\n".join(lines)
