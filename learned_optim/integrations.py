"""Thin helpers for the training frameworks that need one. No framework is imported until its
helper is called, so none of them is a dependency of the package.

* Hugging Face ``Trainer``: ``trainer_optimizer(args)`` gives the ``optimizer_cls_and_kwargs``
  pair with the learning rate taken from ``TrainingArguments`` (Trainer passes the kwargs of
  that pair unchanged, so without it ``args.learning_rate`` never reaches the optimizer).
* timm: ``register_timm()`` registers LearnedOptimizer in timm's optimizer registry, so
  ``timm.optim.create_optimizer_v2(model, "learned")`` builds it (timm looks optimizers up by
  name, not by class).

PyTorch Lightning and accelerate need no helper: return or prepare a ``LearnedOptimizer`` as
any ``torch.optim`` optimizer (see the README's integration sections).
"""

from __future__ import annotations

import re
from typing import Any

from .optimizer import LearnedOptimizer

__all__ = ["trainer_optimizer", "register_timm"]

# timm splits an optimizer name on "_" and treats everything before the last part as a prefix
# ("lookahead_adamw"), so a registered name must not contain one.
_TIMM_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


def trainer_optimizer(args: Any, **kwargs: Any) -> tuple[type[LearnedOptimizer], dict[str, Any]]:
    """``(LearnedOptimizer, kwargs)`` for ``transformers.Trainer(optimizer_cls_and_kwargs=...)``.

    The learning rate is ``args.learning_rate``; Trainer itself puts ``args.weight_decay`` into
    the parameter groups (none on biases and LayerNorm weights) and drives the lr with its
    scheduler (``args.lr_scheduler_type``, linear decay to zero by default).

    Args:
        args: the ``transformers.TrainingArguments`` of the run (anything with a positive
            ``learning_rate`` attribute).
        **kwargs: further ``LearnedOptimizer`` keyword arguments (``weights``, ``impl``, ...);
            ``lr`` is not accepted here: set ``TrainingArguments(learning_rate=...)``.

    Returns:
        A ``(class, kwargs)`` pair with ``kwargs["lr"] == args.learning_rate``.

    Raises:
        TypeError: ``args`` has no numeric ``learning_rate``.
        ValueError: ``lr`` was passed in ``kwargs``, or the learning rate is not positive.

    Example::

        >>> from types import SimpleNamespace
        >>> cls, kw = trainer_optimizer(SimpleNamespace(learning_rate=3e-4))
        >>> cls.__name__, kw
        ('LearnedOptimizer', {'lr': 0.0003})
    """
    if "lr" in kwargs:
        raise ValueError(
            "trainer_optimizer(args, lr=...): the learning rate comes from args; "
            "set TrainingArguments(learning_rate=...) instead"
        )
    lr = getattr(args, "learning_rate", None)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(
            f"args must be a transformers.TrainingArguments (with a numeric learning_rate), "
            f"got {type(args).__name__} with learning_rate={lr!r}"
        )
    if not lr > 0:
        raise ValueError(f"args.learning_rate must be > 0, got {lr!r}; e.g. TrainingArguments(learning_rate=1e-3)")
    return LearnedOptimizer, {"lr": float(lr), **kwargs}


def register_timm(name: str = "learned", **defaults: Any) -> str:
    """Register ``LearnedOptimizer`` in timm's optimizer registry under ``name``.

    Afterwards ``timm.optim.create_optimizer_v2(model, name, lr=..., weight_decay=...)`` builds
    a ``LearnedOptimizer`` with timm's parameter groups (no weight decay on biases and norms).
    Registering the same name again replaces the entry (timm logs a warning).

    Args:
        name: the registry name, default ``"learned"``: lower-case letters, digits and ``-``
            (timm reads ``a_b`` as optimizer ``b`` with prefix ``a``).
        **defaults: ``LearnedOptimizer`` keyword arguments used when the caller of
            ``create_optimizer_v2`` does not pass them (e.g. ``weights="lstm-h4-v1"``).

    Returns:
        ``name``.

    Raises:
        ValueError: ``name`` is not a valid timm optimizer name.
        ImportError: timm is not installed.

    Example (needs timm)::

        register_timm()
        optimizer = timm.optim.create_optimizer_v2(model, "learned", lr=1e-3, weight_decay=0.05)
    """
    if not isinstance(name, str) or not _TIMM_NAME.match(name):
        raise ValueError(
            f"name must be lower-case letters, digits and '-' starting with a letter (timm reads 'a_b' as "
            f"optimizer 'b' with prefix 'a'), got {name!r}; e.g. register_timm('learned')"
        )
    try:
        from timm.optim import OptimInfo
        from timm.optim._optim_factory import default_registry
    except ImportError as e:
        raise ImportError(
            f"register_timm needs timm ({e}); install torch and torchvision as a matching pair first "
            "(see the README's 'With timm' section), then pip install timm"
        ) from e
    default_registry.register(
        OptimInfo(
            name=name,
            opt_class=LearnedOptimizer,
            description="learned-optim: a meta-trained coordinatewise LSTM update rule",
            has_eps=False,
            has_momentum=False,
            has_betas=False,
            defaults=dict(defaults) or None,
        )
    )
    return name
