"""The task protocol and the generic task machinery of meta-training.

A *task* is one optimisation problem: initial parameters, a stream of minibatches and a loss.
Meta-training runs the learned rule on many tasks and differentiates (or perturbs) the
resulting losses with respect to the rule's meta-parameters, so every task is written
*functionally*: ``loss(params, batch)`` takes the parameters as a list of tensors that may carry
autograd graph, never as module attributes.

A *task family* samples concrete tasks from a seed: ``family.sample(generator) -> Task``. Sampling
the same family with generators in the same state gives the same task, which is how a resumed
meta-training run rebuilds its in-flight tasks from a stored seed.

This module holds what does not depend on any data set: the ``Task``/``TaskFamily`` protocols,
the flat-parameter helpers, the seeded sampling helpers the families share, the adapters
(``ModuleTask``/``as_task`` for a user's ``nn.Module`` and data, ``RescaledTask``) and the
combinators (``FixedTasks``, ``Mixture``, ``as_family``). The built-in tasks and families are in
``task_families``; ``tasks`` re-exports both.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Task",
    "TaskFamily",
    "ModuleTask",
    "RescaledTask",
    "FixedTasks",
    "Mixture",
    "as_task",
    "as_family",
    "flatten_params",
    "unflatten_params",
]


@runtime_checkable
class Task(Protocol):
    """One optimisation problem, written functionally.

    Attributes:
        name: a short human-readable description (for logs).
    Methods:
        init_params(generator) -> list of tensors: fresh initial parameters (leaves, no grad).
        sample_batch(generator) -> any batch object ``loss`` understands.
        loss(params, batch) -> scalar tensor, differentiable in ``params``.
        full_batch() -> the whole training set as one batch (used for final-loss evaluation).
        heldout_batch(generator) -> optional: a minibatch of data the task never trains on; the
            meta-objective uses it with ``objective_split="heldout"``.
    """

    name: str

    def init_params(self, generator: torch.Generator) -> list[Tensor]: ...

    def sample_batch(self, generator: torch.Generator) -> Any: ...

    def loss(self, params: Sequence[Tensor], batch: Any) -> Tensor: ...

    def full_batch(self) -> Any: ...


@runtime_checkable
class TaskFamily(Protocol):
    """A distribution over tasks: ``sample(generator) -> Task``, deterministic in the generator."""

    def sample(self, generator: torch.Generator) -> Task: ...


def flatten_params(params: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector (the learned rule is coordinatewise)."""
    return torch.cat([p.reshape(-1) for p in params])


def unflatten_params(flat: Tensor, shapes: Sequence[torch.Size]) -> list[Tensor]:
    """Views of ``flat`` with the given shapes (differentiable; inverse of ``flatten_params``)."""
    sizes = [math.prod(s) for s in shapes]
    return [t.view(s) for t, s in zip(torch.split(flat, sizes), shapes)]


# ----------------------------------------------------------------------------- seeded sampling helpers
# (package-private: task_families draws its tasks with these, so the draws stay in one place)

def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def _log_uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return math.exp(_uniform(gen, math.log(lo), math.log(hi)))


def _choice(gen: torch.Generator, options: Sequence[Any]) -> Any:
    return options[int(torch.randint(len(options), (), generator=gen))]


def _seed(gen: torch.Generator) -> int:
    return int(torch.randint(2**31 - 1, (), generator=gen))


def _batch_indices(n: int, batch_size: int | None, gen: torch.Generator) -> Tensor | None:
    if batch_size is None or batch_size >= n:
        return None
    return torch.randint(n, (batch_size,), generator=gen)


# ----------------------------------------------------------------------------- adapters and combinators

@dataclass
class RescaledTask:
    """Reparametrise a task as ``p = scale_i * q`` per tensor (the optimizer sees ``q``).

    Random per-tensor rescaling is a standard trick for robust learned optimizers
    (learned_optimization's parameter-scale task augmentation): it changes gradient magnitudes
    and curvature per tensor without changing the problem.
    """

    task: Any
    scales: tuple[float, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{self.task.name}|rescaled"

    def init_params(self, generator: torch.Generator) -> list[Tensor]:
        return [p / s for p, s in zip(self.task.init_params(generator), self.scales)]

    def sample_batch(self, generator: torch.Generator) -> Any:
        return self.task.sample_batch(generator)

    def full_batch(self) -> Any:
        return self.task.full_batch()

    @property
    def heldout_batch(self) -> Callable[[torch.Generator], Any]:
        # a property, so that hasattr() is False exactly when the wrapped task has none
        return self.task.heldout_batch

    def loss(self, params: Sequence[Tensor], batch: Any) -> Tensor:
        return self.task.loss([q * s for q, s in zip(params, self.scales)], batch)


class ModuleTask:
    """A user's ``nn.Module`` plus in-memory data, as a functional ``Task``.

    Args:
        model: any ``nn.Module``; it is deep-copied, the original is never modified. Each
            trajectory starts from freshly initialised parameters: modules with
            ``reset_parameters`` are re-initialised under a seed drawn from the trainer's
            generator (``reinit=True``, the default), else the model's current values are used.
        data: ``(X, y)`` tensors (first dimension = examples), or a callable
            ``data(generator) -> batch`` that returns one minibatch ``(x, y)``; with a callable,
            ``full_batch()`` (the final-loss evaluation) is the batch it returns for a generator
            seeded with 0.
        loss_fn: ``loss_fn(output, y) -> scalar``. Default ``None``: cross-entropy when ``y`` is
            an integer tensor, else mean squared error.
        batch_size: examples per minibatch when ``data`` is ``(X, y)``. Default 64; ``None`` means
            full batch.
        reinit: see ``model``. Default True.
        name: label for logs. Default the model's class name.
    """

    def __init__(
        self,
        model: nn.Module,
        data: tuple[Tensor, Tensor] | Callable[[torch.Generator], Any],
        loss_fn: Callable[[Tensor, Any], Tensor] | None = None,
        batch_size: int | None = 64,
        reinit: bool = True,
        name: str | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None (full batch), got {batch_size!r}")
        self.model = copy.deepcopy(model)
        self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if not self.names:
            raise ValueError("model has no trainable parameters; pass a model with requires_grad parameters")
        if callable(data) and not isinstance(data, (tuple, list)):
            self._sampler = data
            self.x = self.y = None
        else:
            if not isinstance(data, (tuple, list)) or len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
                raise TypeError(
                    f"data must be a pair of tensors (X, y) or a callable data(generator) -> batch, "
                    f"got {type(data).__name__}"
                )
            x, y = data
            if len(x) != len(y) or len(x) == 0:
                raise ValueError(f"data X and y must have the same non-zero length, got {len(x)} and {len(y)}")
            self._sampler = None
            self.x, self.y = x, y
        self.loss_fn = loss_fn
        self.batch_size = batch_size
        self.reinit = reinit
        self.name = name or type(model).__name__

    def init_params(self, generator: torch.Generator) -> list[Tensor]:
        if self.reinit:
            # torch's init functions use the global RNG: seed it from our generator inside a
            # forked RNG so the caller's global random state is untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed(generator))
                for m in self.model.modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
        named = dict(self.model.named_parameters())
        return [named[n].detach().clone() for n in self.names]

    def sample_batch(self, generator: torch.Generator) -> Any:
        if self._sampler is not None:
            return self._sampler(generator)
        idx = _batch_indices(len(self.x), self.batch_size, generator)
        return (self.x, self.y) if idx is None else (self.x[idx], self.y[idx])

    def full_batch(self) -> Any:
        if self._sampler is not None:
            return self._sampler(torch.Generator().manual_seed(0))
        return self.x, self.y

    def loss(self, params: Sequence[Tensor], batch: Any) -> Tensor:
        x, y = batch
        out = torch.func.functional_call(self.model, dict(zip(self.names, params)), (x,))
        if self.loss_fn is not None:
            return self.loss_fn(out, y)
        if not y.is_floating_point():
            return F.cross_entropy(out, y)
        return F.mse_loss(out.reshape(y.shape), y)


def as_task(obj: Any) -> Task:
    """Turn ``obj`` into a ``Task``: a Task as is; ``(model, (X, y))`` or
    ``(model, (X, y), loss_fn)`` via ``ModuleTask``."""
    if isinstance(obj, tuple) and len(obj) in (2, 3) and isinstance(obj[0], nn.Module):
        return ModuleTask(obj[0], obj[1], obj[2] if len(obj) == 3 else None)
    if isinstance(obj, Task):
        return obj
    raise TypeError(
        f"cannot use a {type(obj).__name__} as a task: pass a Task (init_params, sample_batch, loss, "
        f"full_batch), a TaskFamily, or a tuple (model, (X, y)[, loss_fn]) with an nn.Module"
    )


@dataclass
class FixedTasks:
    """A family that draws uniformly from a fixed list of tasks (e.g. a user's own tasks)."""

    tasks: list

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks must be a non-empty list of tasks")
        self.tasks = [as_task(t) for t in self.tasks]

    def sample(self, generator: torch.Generator) -> Task:
        return _choice(generator, self.tasks)


@dataclass
class Mixture:
    """Sample a family with probability proportional to its weight, then a task from it."""

    families: list
    weights: list[float] | None = None

    def __post_init__(self) -> None:
        if not self.families:
            raise ValueError("families must be non-empty")
        w = self.weights or [1.0] * len(self.families)
        if len(w) != len(self.families) or any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(
                f"weights must be {len(self.families)} non-negative numbers with a positive sum, got {w!r}"
            )
        self._probs = torch.tensor(w, dtype=torch.float64) / sum(w)

    def sample(self, generator: torch.Generator) -> Task:
        i = int(torch.multinomial(self._probs, 1, generator=generator))
        return self.families[i].sample(generator)


def as_family(obj: Any) -> TaskFamily:
    """A ``TaskFamily`` from a family, a task, or a list mixing both."""
    if isinstance(obj, (list, tuple)) and not (isinstance(obj, tuple) and obj and isinstance(obj[0], nn.Module)):
        if not obj:
            raise ValueError("tasks must be a non-empty list of tasks or task families")
        fams = [o if isinstance(o, TaskFamily) and not isinstance(o, Task) else FixedTasks([o]) for o in obj]
        return fams[0] if len(fams) == 1 else Mixture(fams)
    if isinstance(obj, TaskFamily) and not isinstance(obj, Task):
        return obj
    return FixedTasks([obj])
