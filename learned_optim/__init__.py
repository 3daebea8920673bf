"""learned-optim: learned optimizers as a drop-in replacement for torch.optim.

>>> from learned_optim import LearnedOptimizer
>>> optimizer = LearnedOptimizer(model.parameters())  # doctest: +SKIP
"""

from .hub import (
    DEFAULT_WEIGHTS,
    WeightsError,
    WeightsNotFoundError,
    from_pretrained,
    list_shipped,
    push_to_hub,
    save_pretrained,
)
from .network import CoordinatewiseLSTM, LSTMOptimizerConfig
from .optimizer import LearnedOptimizer
from .update import learned_update, lstm_rule

__version__ = "0.1.0"

__all__ = [
    "LearnedOptimizer",
    "CoordinatewiseLSTM",
    "LSTMOptimizerConfig",
    "learned_update",
    "lstm_rule",
    "from_pretrained",
    "save_pretrained",
    "push_to_hub",
    "list_shipped",
    "DEFAULT_WEIGHTS",
    "WeightsError",
    "WeightsNotFoundError",
    "__version__",
]
