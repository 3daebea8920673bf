"""The built-in tasks and task families meta-training samples from.

Data is never downloaded: the families use scikit-learn's bundled ``load_digits`` (1797 8x8
images; ``common.data.digits``) and procedurally generated data (``make_classification``,
``make_regression``, random teacher networks). The held-out quality benchmark
(``learned_optim.benchmarking``) uses other data (wine, breast cancer, diabetes, iris, text), so
the two stay disjoint.

* concrete tasks: ``MLPTask`` (MLPs, linear/logistic regression), ``ConvTask`` (small CNNs);
* families: ``DigitsMLPFamily``, ``DigitsCNNFamily``, ``DigitsLogRegFamily``,
  ``DigitsAutoencoderFamily``, ``SyntheticClassificationFamily``, ``SyntheticRegressionFamily``;
* named sets: ``default_train_family`` and ``default_validation_tasks`` (the shipped default's),
  ``tiny_train_family`` and ``tiny_validation_tasks`` (seconds-scale, for tests and smoke runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..common.data import digits, standardize
from .task_core import Mixture, RescaledTask, Task, _batch_indices, _choice, _log_uniform, _seed

__all__ = [
    "ACTIVATIONS",
    "MLPTask",
    "ConvTask",
    "DigitsMLPFamily",
    "DigitsCNNFamily",
    "DigitsLogRegFamily",
    "DigitsAutoencoderFamily",
    "SyntheticClassificationFamily",
    "SyntheticRegressionFamily",
    "default_train_family",
    "default_validation_tasks",
    "tiny_train_family",
    "tiny_validation_tasks",
]

# Meta-training's tasks standardise features with this eps (the shipped weights were trained so).
_EPS = 1e-6

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
}


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
        x, y = digits()
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
        x, _ = digits()
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
        x, y = digits()
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
        x, y = digits()
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
    return standardize(torch.tensor(x, dtype=torch.float32), _EPS), torch.tensor(y, dtype=torch.long)


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
    return standardize(x, _EPS), y


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
    xf = standardize(torch.tensor(xf, dtype=torch.float32), _EPS)
    yf = torch.tensor(yf, dtype=torch.float32)
    yf = (yf - yf.mean()) / yf.std()
    xm, ym = make_moons(n_samples=400, noise=0.2, random_state=7)
    xm = standardize(torch.tensor(xm, dtype=torch.float32), _EPS)
    ym = torch.tensor(ym, dtype=torch.long)
    x, y = digits()
    return [
        (MLPTask(xf, yf, 32, "mse", "friedman1-mlp64-tanh", hidden=(64,), activation="tanh"), 300),
        (MLPTask(xf, yf, None, "mse", "friedman1-linear-full", hidden=()), 200),
        (MLPTask(xm, ym, 64, "ce", "moons-mlp32x32-relu", hidden=(32, 32), out_dim=2), 300),
        (MLPTask(x, y, 64, "ce", "digits-mlp4x32-gelu", hidden=(32,) * 4, activation="gelu", out_dim=10), 500),
        (ConvTask(x.view(-1, 1, 8, 8), y, 128, "ce", "digits-cnn16-32-relu", channels=(16, 32)), 200),
        (MLPTask(xm, ym, 32, "ce", "moons-mlp16x3-tanh-long", hidden=(16,) * 3, activation="tanh", out_dim=2), 1000),
    ]


def tiny_train_family() -> Mixture:
    """Seconds-scale tasks for tests and smoke runs (the ``tiny`` preset)."""
    return Mixture([
        SyntheticRegressionFamily(n_samples=(64,), n_features=(4,), hidden=((), (8,)), batch_sizes=(16, None)),
        SyntheticClassificationFamily(n_samples=(64,), n_features=(4,), n_classes=(2,), hidden=((), (8,)),
                                      batch_sizes=(16, None)),
    ])


def tiny_validation_tasks() -> list[tuple[Task, int]]:
    """One seconds-scale held-out task (``make_moons``, 64 points, 30 steps) for the ``tiny`` preset."""
    from sklearn.datasets import make_moons

    xm, ym = make_moons(n_samples=64, noise=0.2, random_state=3)
    xm = torch.tensor(xm, dtype=torch.float32)
    ym = torch.tensor(ym, dtype=torch.long)
    return [(MLPTask(xm, ym, 16, "ce", "tiny-moons-mlp8", hidden=(8,), out_dim=2), 30)]
