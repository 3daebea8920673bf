"""Tasks to meta-train on: the ``Task`` protocol, concrete tasks, and families that sample them.

A *task* is one optimisation problem: initial parameters, a stream of minibatches and a loss.
Meta-training runs the learned rule on many tasks and differentiates (or perturbs) the
resulting losses with respect to the rule's meta-parameters, so every task here is written
*functionally*: ``loss(params, batch)`` takes the parameters as a list of tensors that may carry
autograd graph, never as module attributes.

A *task family* samples concrete tasks from a seed: ``family.sample(generator) -> Task``. Sampling
the same family with generators in the same state gives the same task, which is how a resumed
meta-training run rebuilds its in-flight tasks from a stored seed.

Data is never downloaded: the built-in families use scikit-learn's bundled ``load_digits``
(1797 8x8 images) and procedurally generated data (``make_classification``, ``make_regression``,
random teacher networks). The held-out quality benchmark (``learned_optim.benchmarking``) uses
other data (wine, breast cancer, diabetes, iris, text), so the two stay disjoint.

Users bring their own problem as a ``Task`` or with ``as_task``:
``as_task((model, (X, y)))`` wraps any ``nn.Module`` and in-memory data with
``torch.func.functional_call``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    "as_task",
    "as_family",
    "default_train_family",
    "default_validation_tasks",
    "ACTIVATIONS",
    "flatten_params",
    "unflatten_params",
]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
}


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


# ----------------------------------------------------------------------------- helpers

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


@lru_cache(maxsize=1)
def _digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled digits (1797 x 64, pixel values 0..16) scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


def _standardise(x: Tensor) -> Tensor:
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


# ----------------------------------------------------------------------------- concrete tasks

@dataclass
class _DataTask:
    """Shared minibatching for tasks on in-memory tensors ``x``, ``y``."""

    x: Tensor
    y: Tensor
    batch_size: int | None
    loss_kind: str  # "ce" (cross-entropy on class ids) or "mse"
    name: str = "task"

    def sample_batch(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = _batch_indices(len(self.x), self.batch_size, generator)
        if idx is None:
            return self.x, self.y
        return self.x[idx], self.y[idx]

    def full_batch(self) -> tuple[Tensor, Tensor]:
        return self.x, self.y

    def _criterion(self, out: Tensor, y: Tensor) -> Tensor:
        if self.loss_kind == "ce":
            return F.cross_entropy(out, y)
        return F.mse_loss(out.reshape(y.shape), y)


@dataclass
class MLPTask(_DataTask):
    """A fully connected network (or, with no hidden layers, linear/logistic regression).

    Params are ``[W_1, b_1, ..., W_L, b_L]`` with ``W_i`` of shape ``[fan_in, fan_out]``;
    weights start at ``N(0, (init_scale * gain / sqrt(fan_in))^2)`` (He/Xavier-style scaling,
    gain sqrt(2) for ReLU/GELU, 1 otherwise), biases at zero.
    """

    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    out_dim: int = 1
    init_scale: float = 1.0

    def init_params(self, generator: torch.Generator) -> list[Tensor]:
        dims = [self.x.shape[1], *self.hidden, self.out_dim]
        gain = math.sqrt(2.0) if self.activation in ("relu", "gelu") else 1.0
        params = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            g = gain if i < len(dims) - 2 else 1.0
            params.append(torch.randn(a, b, generator=generator) * (self.init_scale * g / math.sqrt(a)))
            params.append(torch.zeros(b))
        return params

    def loss(self, params: Sequence[Tensor], batch: Any) -> Tensor:
        x, y = batch
        act = ACTIVATIONS[self.activation]
        n = len(params) // 2
        for i in range(n):
            x = torch.addmm(params[2 * i + 1], x, params[2 * i])
            if i < n - 1:
                x = act(x)
        return self._criterion(x, y)


@dataclass
class ConvTask(_DataTask):
    """A small CNN on ``[n, 1, 8, 8]`` images: conv3x3 -> act -> conv3x3 stride 2 -> act ->
    global average pool -> linear. Init as ``MLPTask`` (fan-in scaling)."""

    channels: tuple[int, int] = (8, 16)
    activation: str = "relu"
    out_dim: int = 10
    init_scale: float = 1.0

    def init_params(self, generator: torch.Generator) -> list[Tensor]:
        c1, c2 = self.channels
        gain = math.sqrt(2.0) if self.activation in ("relu", "gelu") else 1.0
        s = self.init_scale

        def w(*shape, fan_in, g):
            return torch.randn(*shape, generator=generator) * (s * g / math.sqrt(fan_in))

        return [
            w(c1, 1, 3, 3, fan_in=9, g=gain), torch.zeros(c1),
            w(c2, c1, 3, 3, fan_in=9 * c1, g=gain), torch.zeros(c2),
            w(c2, self.out_dim, fan_in=c2, g=1.0), torch.zeros(self.out_dim),
        ]

    def loss(self, params: Sequence[Tensor], batch: Any) -> Tensor:
        x, y = batch
        act = ACTIVATIONS[self.activation]
        w1, b1, w2, b2, w3, b3 = params
        h = act(F.conv2d(x, w1, b1, padding=1))
        h = act(F.conv2d(h, w2, b2, stride=2, padding=1))
        h = h.mean(dim=(2, 3))
        return self._criterion(torch.addmm(b3, h, w3), y)


@dataclass
class RescaledTask:
    """Reparametrise a task as ``p = scale_i * q`` per tensor (the optimizer sees ``q``).

    Random per-tensor rescaling is a standard trick for robust learned optimizers
    (learned_optimization's parameter-scale task augmentation; NOTES-anchors.md): it changes
    gradient magnitudes and curvature per tensor without changing the problem.
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
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
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
            raise ValueError(f"weights must be {len(self.families)} non-negative numbers with a positive sum, got {w!r}")
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


# ----------------------------------------------------------------------------- families

@dataclass(frozen=True)
class _FamilyBase:
    """Options every built-in family shares.

    Attributes:
        batch_sizes: minibatch sizes to draw from; ``None`` = full batch.
        init_scale: (lo, hi) of the log-uniform multiplier on the initialisation std.
        rescale_prob: probability of wrapping the task in a ``RescaledTask``.
        rescale_range: (lo, hi) of the log-uniform per-tensor scale.
    """

    batch_sizes: tuple = (16, 32, 64, 128, None)
    init_scale: tuple[float, float] = (0.5, 2.0)
    rescale_prob: float = 0.3
    rescale_range: tuple[float, float] = (0.2, 5.0)

    def _finish(self, task, gen: torch.Generator):
        if torch.rand((), generator=gen).item() < self.rescale_prob:
            n = len(task.init_params(torch.Generator().manual_seed(0)))
            scales = tuple(_log_uniform(gen, *self.rescale_range) for _ in range(n))
            return RescaledTask(task, scales)
        return task


@dataclass(frozen=True)
class DigitsMLPFamily(_FamilyBase):
    """MLPs on scikit-learn digits (64 inputs, 10 classes, cross-entropy)."""

    widths: tuple[int, ...] = (16, 32, 64)
    depths: tuple[int, ...] = (1, 2, 3, 4)
    activations: tuple[str, ...] = ("relu", "tanh", "sigmoid", "gelu")
    # No full batch: digits has 1797 examples and the inner step's cost is meta-training's budget.
    batch_sizes: tuple = (16, 32, 64, 128)

    def sample(self, gen: torch.Generator) -> Task:
        x, y = _digits()
        depth, width = _choice(gen, self.depths), _choice(gen, self.widths)
        act, bs = _choice(gen, self.activations), _choice(gen, self.batch_sizes)
        s = _log_uniform(gen, *self.init_scale)
        t = MLPTask(x, y, bs, "ce", f"digits-mlp{depth}x{width}-{act}-bs{bs}-s{s:.2f}",
                    hidden=(width,) * depth, activation=act, out_dim=10, init_scale=s)
        return self._finish(t, gen)


@dataclass(frozen=True)
class DigitsAutoencoderFamily(_FamilyBase):
    """MLP autoencoders on digits: 64 -> hidden -> bottleneck -> hidden -> 64, MSE on pixels."""

    bottlenecks: tuple[int, ...] = (4, 8, 16)
    widths: tuple[int, ...] = (0, 32)  # 0: no hidden layer around the bottleneck
    activations: tuple[str, ...] = ("relu", "tanh", "sigmoid", "gelu")
    batch_sizes: tuple = (16, 32, 64, 128)

    def sample(self, gen: torch.Generator) -> Task:
        x, _ = _digits()
        b, w = _choice(gen, self.bottlenecks), _choice(gen, self.widths)
        act, bs = _choice(gen, self.activations), _choice(gen, self.batch_sizes)
        s = _log_uniform(gen, *self.init_scale)
        hidden = (w, b, w) if w else (b,)
        t = MLPTask(x, x, bs, "mse", f"digits-ae{hidden}-{act}-bs{bs}", hidden=hidden, activation=act,
                    out_dim=64, init_scale=s)
        return self._finish(t, gen)


@dataclass(frozen=True)
class DigitsLogRegFamily(_FamilyBase):
    """Multinomial logistic regression on digits."""

    batch_sizes: tuple = (16, 32, 64, 128)

    def sample(self, gen: torch.Generator) -> Task:
        x, y = _digits()
        bs, s = _choice(gen, self.batch_sizes), _log_uniform(gen, *self.init_scale)
        t = MLPTask(x, y, bs, "ce", f"digits-logreg-bs{bs}", hidden=(), out_dim=10, init_scale=s)
        return self._finish(t, gen)


@dataclass(frozen=True)
class DigitsCNNFamily(_FamilyBase):
    """Small CNNs on the 8x8 digit images."""

    channels: tuple[tuple[int, int], ...] = ((4, 8), (8, 8), (8, 16))
    activations: tuple[str, ...] = ("relu", "tanh", "gelu")
    batch_sizes: tuple = (32, 64, 128)

    def sample(self, gen: torch.Generator) -> Task:
        x, y = _digits()
        ch, act = _choice(gen, self.channels), _choice(gen, self.activations)
        bs, s = _choice(gen, self.batch_sizes), _log_uniform(gen, *self.init_scale)
        t = ConvTask(x.view(-1, 1, 8, 8), y, bs, "ce", f"digits-cnn{ch[0]}-{ch[1]}-{act}-bs{bs}",
                     channels=ch, activation=act, out_dim=10, init_scale=s)
        return self._finish(t, gen)


@lru_cache(maxsize=64)
def _make_classification(seed: int, n: int, d: int, classes: int) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n, n_features=d, n_informative=max(2, d // 2),
                               n_redundant=min(2, d // 4), n_classes=classes,
                               n_clusters_per_class=2 if classes <= 4 else 1, random_state=seed)
    return _standardise(torch.tensor(x, dtype=torch.float32)), torch.tensor(y, dtype=torch.long)


@dataclass(frozen=True)
class SyntheticClassificationFamily(_FamilyBase):
    """Logistic regression or MLPs on ``sklearn.datasets.make_classification`` data."""

    n_samples: tuple[int, ...] = (256, 512, 1024)
    n_features: tuple[int, ...] = (8, 16, 32)
    n_classes: tuple[int, ...] = (2, 3, 5)
    hidden: tuple[tuple[int, ...], ...] = ((), (32,), (64,), (32, 32))
    activations: tuple[str, ...] = ("relu", "tanh", "sigmoid", "gelu")

    def sample(self, gen: torch.Generator) -> Task:
        n, d = _choice(gen, self.n_samples), _choice(gen, self.n_features)
        k, hid = _choice(gen, self.n_classes), _choice(gen, self.hidden)
        act, bs = _choice(gen, self.activations), _choice(gen, self.batch_sizes)
        s = _log_uniform(gen, *self.init_scale)
        x, y = _make_classification(_seed(gen) % 10_000, n, d, k)
        t = MLPTask(x, y, bs, "ce", f"synth-cls{k}-d{d}-h{hid}-{act}-bs{bs}", hidden=hid,
                    activation=act, out_dim=k, init_scale=s)
        return self._finish(t, gen)


@lru_cache(maxsize=64)
def _make_regression(seed: int, n: int, d: int, kind: str, noise: float) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if kind == "linear":
        from sklearn.datasets import make_regression

        x, y = make_regression(n_samples=n, n_features=d, n_informative=max(1, d // 2),
                               noise=0.0, random_state=seed)
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    else:  # a random tanh teacher network: smooth nonlinear targets
        x = torch.randn(n, d, generator=gen)
        w1 = torch.randn(d, 32, generator=gen) / math.sqrt(d)
        w2 = torch.randn(32, generator=gen) / math.sqrt(32)
        y = torch.tanh(x @ w1 * 2) @ w2
    y = (y - y.mean()) / (y.std() + 1e-6)
    # Noise keeps the loss floor above zero, as in real regression data, so log-loss
    # meta-objectives are not dominated by chasing an exact interpolation.
    y = y + noise * torch.randn(n, generator=gen)
    return _standardise(x), y


@dataclass(frozen=True)
class SyntheticRegressionFamily(_FamilyBase):
    """Linear regression or MLP regression (MSE) on generated data."""

    n_samples: tuple[int, ...] = (128, 256, 512)
    n_features: tuple[int, ...] = (4, 8, 16, 32)
    kinds: tuple[str, ...] = ("linear", "teacher")
    noise: tuple[float, float] = (0.05, 0.5)
    hidden: tuple[tuple[int, ...], ...] = ((), (32,), (64,), (32, 32))
    activations: tuple[str, ...] = ("relu", "tanh", "sigmoid", "gelu")

    def sample(self, gen: torch.Generator) -> Task:
        n, d = _choice(gen, self.n_samples), _choice(gen, self.n_features)
        kind, hid = _choice(gen, self.kinds), _choice(gen, self.hidden)
        act, bs = _choice(gen, self.activations), _choice(gen, self.batch_sizes)
        noise = _log_uniform(gen, *self.noise)
        s = _log_uniform(gen, *self.init_scale)
        x, y = _make_regression(_seed(gen) % 10_000, n, d, kind, round(noise, 3))
        t = MLPTask(x, y, bs, "mse", f"synth-reg-{kind}-d{d}-h{hid}-{act}-bs{bs}", hidden=hid,
                    activation=act, out_dim=1, init_scale=s)
        return self._finish(t, gen)


def default_train_family() -> Mixture:
    """The meta-training distribution of the shipped default (weights are relative frequencies)."""
    return Mixture(
        [DigitsMLPFamily(), DigitsCNNFamily(), DigitsLogRegFamily(), DigitsAutoencoderFamily(),
         SyntheticClassificationFamily(), SyntheticRegressionFamily()],
        [3.0, 1.0, 1.0, 1.5, 2.0, 3.0],
    )


def default_validation_tasks() -> list[tuple[Task, int]]:
    """Held-out meta-validation tasks and horizons, for early selection during meta-training.

    None of them is in the training distribution: a dataset generator not used for training
    (``make_friedman1``, ``make_moons``), an architecture not sampled there (a 4-layer GELU MLP,
    a wider CNN), and horizons up to 5x the longest meta-training trajectory.
    """
    from sklearn.datasets import make_friedman1, make_moons

    xf, yf = make_friedman1(n_samples=400, n_features=10, noise=0.3, random_state=7)
    xf = _standardise(torch.tensor(xf, dtype=torch.float32))
    yf = torch.tensor(yf, dtype=torch.float32)
    yf = (yf - yf.mean()) / yf.std()
    xm, ym = make_moons(n_samples=400, noise=0.2, random_state=7)
    xm = _standardise(torch.tensor(xm, dtype=torch.float32))
    ym = torch.tensor(ym, dtype=torch.long)
    x, y = _digits()
    return [
        (MLPTask(xf, yf, 32, "mse", "friedman1-mlp64-tanh", hidden=(64,), activation="tanh"), 300),
        (MLPTask(xf, yf, None, "mse", "friedman1-linear-full", hidden=()), 200),
        (MLPTask(xm, ym, 64, "ce", "moons-mlp32x32-relu", hidden=(32, 32), out_dim=2), 300),
        (MLPTask(x, y, 64, "ce", "digits-mlp4x32-gelu", hidden=(32,) * 4, activation="gelu", out_dim=10), 500),
        (ConvTask(x.view(-1, 1, 8, 8), y, 128, "ce", "digits-cnn16-32-relu", channels=(16, 32)), 200),
        (MLPTask(xm, ym, 32, "ce", "moons-mlp16x3-tanh-long", hidden=(16,) * 3, activation="tanh", out_dim=2), 1000),
    ]
