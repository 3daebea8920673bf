"""Meta-training: train, fine-tune and ship learned optimizers.

>>> from learned_optim.meta import meta_train
>>> net = meta_train("default", out="runs/mine")                     # doctest: +SKIP
>>> net = meta_train("tiny", out="runs/ft", init="adam-equivalent",
...                  tasks=[(my_model, (X, y))])                      # doctest: +SKIP

Modules, one concern each:

* ``inner``: the inner optimizer as a pure function (``InnerState``, ``init_inner``, ``inner_step``).
* ``tasks``: one import for tasks; the code is in ``task_core`` (the ``Task`` protocol, adapters,
  combinators) and ``task_families`` (the built-in tasks and families, the named task sets).
* ``estimators``: the meta-objective, truncated BPTT and antithetic PES.
* ``config``: ``MetaTrainConfig``, ``PRESETS``, ``load_config``.
* ``validation``: held-out evaluation against plain and tuned Adam (``run_inner``).
* ``checkpoint``: the resumable checkpoint and the log in the output folder.
* ``trainer``: the loop, ``MetaTrainer`` and ``meta_train``.
* ``distributed``: the collectives of multi-process meta-training.
* ``few_shot``: the few-shot inner-optimizer family (its own config and trainer).
* ``cli``: ``learned-optim meta-train``.
"""

from .config import PRESETS, MetaTrainConfig, get_preset, load_config
from .estimators import AntitheticPES, TruncatedBPTT, meta_objective
from .inner import InnerState, init_inner, inner_step
from .tasks import ModuleTask, Task, TaskFamily, as_task
from .trainer import MetaTrainer, meta_train
from .validation import run_inner

__all__ = [
    "meta_train",
    "MetaTrainer",
    "MetaTrainConfig",
    "PRESETS",
    "get_preset",
    "load_config",
    "run_inner",
    "InnerState",
    "init_inner",
    "inner_step",
    "Task",
    "TaskFamily",
    "ModuleTask",
    "as_task",
    "TruncatedBPTT",
    "AntitheticPES",
    "meta_objective",
]
