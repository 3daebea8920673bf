"""Tasks to meta-train on: the ``Task`` protocol, concrete tasks, and families that sample them.

One import for everything about tasks; the code lives in two modules:

* ``task_core``: the ``Task``/``TaskFamily`` protocols, ``flatten_params``/``unflatten_params``,
  the adapters ``ModuleTask``/``as_task`` (any ``nn.Module`` and in-memory data, through
  ``torch.func.functional_call``) and ``RescaledTask``, and the combinators ``FixedTasks``,
  ``Mixture``, ``as_family``.
* ``task_families``: ``MLPTask``, ``ConvTask``, the built-in families on scikit-learn's bundled
  digits and on generated data (never downloaded), and the named training/validation sets.
* ``arch_tasks`` (models in ``arch_models``): the architectures users train, as families:
  transformer and GRU/LSTM byte LMs on Python's stdlib sources, ViTs, residual LayerNorm MLPs,
  BatchNorm CNNs and deep MLPs on digits, an embedding-bag classifier with a padding index.

Example::

    >>> import torch
    >>> from learned_optim.meta import tasks as T
    >>> task = T.DigitsLogRegFamily().sample(torch.Generator().manual_seed(0))
    >>> params = task.init_params(torch.Generator().manual_seed(1))
    >>> float(task.loss(params, task.full_batch())) > 0
    True
"""

from __future__ import annotations

from .arch_tasks import (
    BatchNormCNNFamily,
    DeepMLPFamily,
    EmbeddingBagFamily,
    ResMLPFamily,
    RNNLMFamily,
    TransformerLMFamily,
    ViTDigitsFamily,
    arch_train_family,
    arch_validation_tasks,
    wide_arch_family,
)
from .task_core import (
    FixedTasks,
    Mixture,
    ModuleTask,
    RescaledTask,
    Task,
    TaskFamily,
    as_family,
    as_task,
    flatten_params,
    unflatten_params,
)
from .task_families import (
    ACTIVATIONS,
    ConvTask,
    DigitsAutoencoderFamily,
    DigitsCNNFamily,
    DigitsLogRegFamily,
    DigitsMLPFamily,
    MLPTask,
    SyntheticClassificationFamily,
    SyntheticRegressionFamily,
    default_train_family,
    default_validation_tasks,
    tiny_train_family,
    tiny_validation_tasks,
)

__all__ = [
    "Task",
    "TaskFamily",
    "MLPTask",
    "ConvTask",
    "ModuleTask",
    "RescaledTask",
    "FixedTasks",
    "Mixture",
    "DigitsMLPFamily",
    "DigitsCNNFamily",
    "DigitsLogRegFamily",
    "DigitsAutoencoderFamily",
    "SyntheticClassificationFamily",
    "SyntheticRegressionFamily",
    "TransformerLMFamily",
    "RNNLMFamily",
    "ViTDigitsFamily",
    "ResMLPFamily",
    "BatchNormCNNFamily",
    "DeepMLPFamily",
    "EmbeddingBagFamily",
    "arch_train_family",
    "wide_arch_family",
    "arch_validation_tasks",
    "as_task",
    "as_family",
    "default_train_family",
    "default_validation_tasks",
    "tiny_train_family",
    "tiny_validation_tasks",
    "ACTIVATIONS",
    "flatten_params",
    "unflatten_params",
]
