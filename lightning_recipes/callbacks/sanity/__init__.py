"""``TrainingSanityChecks``: the rules of a correct training loop, checked on the user's module.

A training loop has a handful of rules that nothing enforces and that fail silently: a
parameter missing from the optimizer never trains; a forgotten ``zero_grad()`` sums every past
gradient into each step; validation with Dropout or BatchNorm in training mode measures a
different network; a ``OneCycleLR`` stepped per epoch stays in its warm-up forever. Each rule is
checked on the running module and raises :class:`TrainingSanityError` or warns with
:class:`TrainingSanityWarning`; ``docs/rules.md`` has a section per rule.

One module per group of rules: ``_optimizer`` (``param_groups``, ``zero_grad``), ``_scheduler``
(``scheduler_interval``, ``onecycle_lr``, ``schedule_end``), ``_eval`` (``eval_mode``) and
``_data`` (``batchnorm_batch``, ``finite_inputs``); ``_callback`` decides when each runs and
``_modes`` what a broken rule does.
"""

from lightning_recipes.callbacks.sanity._callback import TrainingSanityChecks
from lightning_recipes.callbacks.sanity._modes import Mode as Mode  # the type of a rule's mode
from lightning_recipes.callbacks.sanity._modes import TrainingSanityError, TrainingSanityWarning

__all__ = ["TrainingSanityChecks", "TrainingSanityError", "TrainingSanityWarning"]
