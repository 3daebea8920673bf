"""Meta-training: train, fine-tune and ship learned optimizers.

>>> from learned_optim.meta import meta_train
>>> net = meta_train("default", out="runs/mine")                     # doctest: +SKIP
>>> net = meta_train("tiny", out="runs/ft", init="adam-equivalent",
...                  tasks=[(my_model, (X, y))])                      # doctest: +SKIP

Modules: ``tasks`` (the Task protocol and task families), ``estimators`` (truncated BPTT and
antithetic PES, the meta-objective), ``trainer`` (``MetaTrainer``, ``meta_train``, configs and
presets), ``cli`` (``learned-optim meta-train``).
"""

from .estimators import AntitheticPES, TruncatedBPTT, meta_objective
from .tasks import ModuleTask, Task, TaskFamily, as_task
from .trainer import PRESETS, MetaTrainConfig, MetaTrainer, get_preset, load_config, meta_train, run_inner

__all__ = [
    "meta_train",
    "MetaTrainer",
    "MetaTrainConfig",
    "PRESETS",
    "get_preset",
    "load_config",
    "run_inner",
    "Task",
    "TaskFamily",
    "ModuleTask",
    "as_task",
    "TruncatedBPTT",
    "AntitheticPES",
    "meta_objective",
]
