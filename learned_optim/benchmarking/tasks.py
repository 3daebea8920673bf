"""The held-out task suite of the quality benchmark.

Meta-training (``learned_optim.meta``) sees scikit-learn's ``load_digits`` (MLPs, CNNs,
logistic regression) and synthetic ``make_classification`` / ``make_regression`` data with
inner horizons of at most 200 steps. Every task here differs from that in data, and most
also in architecture, loss or horizon:

======================  ===============================  =================================
task                    data (all offline)               what is new to the optimizer
======================  ===============================  =================================
wine_mlp                ``load_wine`` (178 x 13)         SiLU MLP, 500 steps
breast_cancer_mlp       ``load_breast_cancer`` (569x30)  GELU MLP, binary cross-entropy
iris_deep_mlp           ``load_iris`` (150 x 4)          6 tanh layers of width 16 (deep, narrow)
diabetes_mse            ``load_diabetes`` (442 x 10)     MSE regression on a real target
cancer_autoencoder      ``load_breast_cancer``           30-16-4-16-30 autoencoder, MSE
shapes_cnn              procedural 16x16 shape images    2 conv layers + global average pool
char_gru_lm             Python's stdlib sources as text  char-level GRU language model
breast_cancer_mlp_long  ``load_breast_cancer``           2000 steps (10x meta-training's 200)
======================  ===============================  =================================

Run: ``learned-optim benchmark quality`` (see ``learned_optim.benchmarking.quality``).

Each task fixes its data (generated from seed 0 where it is synthetic); a benchmark seed fixes
the model initialisation and the minibatch order, which are the same for every optimizer.
The loss that is reported is the full-data training objective (evaluated without gradient),
because the benchmark measures optimization, not generalization.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..common.data import standardize

__all__ = ["Problem", "TaskSpec", "TASKS", "task_names", "get_task", "corpus_info"]

# Data generation seed for synthetic data: the dataset is part of the task, not of the seed.
_DATA_SEED = 0


class Problem:
    """A dataset plus a model family and a loss: what one benchmark run trains.

    ``inputs``/``targets`` are the full training set; a batch is a set of row indices.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, model_fn: Callable[[], nn.Module],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.inputs = inputs
        self.targets = targets
        self.model_fn = model_fn
        self.loss_fn = loss_fn

    def model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return self.model_fn()

    def batches(self, seed: int, steps: int, batch_size: int) -> torch.Tensor:
        """[steps, batch_size] row indices, a function of the seed only (shared by optimizers)."""
        gen = torch.Generator().manual_seed(10_000 + seed)
        return torch.randint(len(self.inputs), (steps, batch_size), generator=gen)

    def loss(self, model: nn.Module, index: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(model(self.inputs[index]), self.targets[index])

    @torch.no_grad()
    def full_loss(self, model: nn.Module) -> float:
        return float(self.loss_fn(model(self.inputs), self.targets))


class LanguageProblem(Problem):
    """Next-character prediction on one long text; a batch is a set of window start offsets."""

    def __init__(self, text_ids: torch.Tensor, model_fn, seq_len: int, eval_windows: int) -> None:
        super().__init__(text_ids, text_ids, model_fn, F.cross_entropy)
        self.seq_len = seq_len
        gen = torch.Generator().manual_seed(_DATA_SEED)
        # A fixed set of windows stands in for "the whole corpus" in the reported loss (the
        # full corpus would cost more than all the training steps).
        self.eval_starts = torch.randint(len(text_ids) - seq_len - 1, (eval_windows,), generator=gen)

    def batches(self, seed: int, steps: int, batch_size: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(10_000 + seed)
        return torch.randint(len(self.inputs) - self.seq_len - 1, (steps, batch_size), generator=gen)

    def _windows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offs = starts[:, None] + torch.arange(self.seq_len + 1)
        w = self.inputs[offs]
        return w[:, :-1], w[:, 1:]

    def loss(self, model: nn.Module, index: torch.Tensor) -> torch.Tensor:
        x, y = self._windows(index)
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def full_loss(self, model: nn.Module) -> float:
        return float(self.loss(model, self.eval_starts))


# ---------------------------------------------------------------- data (cached per process)

@functools.lru_cache(maxsize=None)
def _sklearn(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A scikit-learn bundled dataset (no download): features standardised in fp64 with the
    population std and eps 1e-8, then cast to fp32; the targets as they come."""
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")()
    x = standardize(torch.as_tensor(bunch.data, dtype=torch.float64), eps=1e-8, unbiased=False)
    return x.to(torch.float32), torch.as_tensor(bunch.target)


@functools.lru_cache(maxsize=None)
def _shapes(n: int = 1024, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural 16x16 images of 4 classes (horizontal bar, vertical bar, hollow square,
    filled disc) at random positions and sizes, plus Gaussian pixel noise of std 0.3."""
    rng = np.random.default_rng(_DATA_SEED)
    imgs = np.zeros((n, 1, size, size), dtype=np.float32)
    labels = rng.integers(0, 4, n)
    yy, xx = np.mgrid[0:size, 0:size]
    for i, k in enumerate(labels):
        r = int(rng.integers(3, 6))
        cy, cx = rng.integers(r, size - r, 2)
        if k == 0:
            mask = (abs(yy - cy) <= 0) & (abs(xx - cx) <= r)
        elif k == 1:
            mask = (abs(xx - cx) <= 0) & (abs(yy - cy) <= r)
        elif k == 2:
            inside = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            mask = inside & ~((abs(yy - cy) <= r - 1) & (abs(xx - cx) <= r - 1))
        else:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        imgs[i, 0][mask] = 1.0
    imgs += rng.normal(0, 0.3, imgs.shape).astype(np.float32)
    return torch.as_tensor(imgs), torch.as_tensor(labels)


# Standard-library modules whose source is the language-model corpus: present in every
# CPython >= 3.10, plain ASCII-heavy Python. Sorted, concatenated, cut at _CORPUS_CHARS.
_CORPUS_FILES = ("calendar.py", "difflib.py", "heapq.py", "shlex.py", "string.py", "textwrap.py")
_CORPUS_CHARS = 200_000
_VOCAB = 128  # ASCII; any other character maps to 0 (NUL never occurs in source)


@functools.lru_cache(maxsize=None)
def _corpus() -> tuple[torch.Tensor, dict]:
    root = os.path.dirname(os.__file__)
    parts, used = [], []
    for name in _CORPUS_FILES:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
            used.append(name)
    text = "\n".join(parts)[:_CORPUS_CHARS]
    if len(text) < 20_000:
        raise RuntimeError(
            f"the char_gru_lm corpus needs Python's standard-library sources in {root}; found "
            f"only {len(text)} characters of {_CORPUS_FILES}. Run on a CPython with its .py files "
            f"installed, or pass --tasks without char_gru_lm"
        )
    ids = torch.tensor([ord(ch) if ord(ch) < _VOCAB else 0 for ch in text], dtype=torch.long)
    info = {"root": root, "files": used, "chars": len(text),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    return ids, info


def corpus_info() -> dict:
    """Which files the language-model task read, and a hash of the text (for the results)."""
    return _corpus()[1]


# ---------------------------------------------------------------- models

def _mlp(sizes: tuple[int, ...], act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class _CharGRU(nn.Module):
    def __init__(self, vocab: int = _VOCAB, emb: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.gru = nn.GRU(emb, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.gru(self.emb(x))[0])


def _shapes_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


def _bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.squeeze(-1), y.float())


def _mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.squeeze(-1), y.float())


# ---------------------------------------------------------------- problems

def _wine() -> Problem:
    x, y = _sklearn("wine")
    return Problem(x, y, lambda: _mlp((13, 32, 3), nn.SiLU), F.cross_entropy)


def _cancer() -> Problem:
    x, y = _sklearn("breast_cancer")
    return Problem(x, y, lambda: _mlp((30, 64, 64, 1), nn.GELU), _bce)


def _iris_deep() -> Problem:
    x, y = _sklearn("iris")
    return Problem(x, y, lambda: _mlp((4,) + (16,) * 6 + (3,), nn.Tanh), F.cross_entropy)


def _diabetes() -> Problem:
    x, y = _sklearn("diabetes")
    y = (y.float() - y.float().mean()) / y.float().std()  # standardized target: loss ~1 at start
    return Problem(x, y, lambda: _mlp((10, 64, 1), nn.ReLU), _mse)


def _autoencoder() -> Problem:
    x, _ = _sklearn("breast_cancer")
    return Problem(x, x, lambda: _mlp((30, 16, 4, 16, 30), nn.Tanh), F.mse_loss)


def _shapes_problem() -> Problem:
    x, y = _shapes()
    return Problem(x, y, _shapes_cnn, F.cross_entropy)


def _char_lm() -> Problem:
    ids, _ = _corpus()
    return LanguageProblem(ids, _CharGRU, seq_len=32, eval_windows=256)


@dataclass(frozen=True)
class TaskSpec:
    """One row of the suite. ``steps`` is the full-run horizon; ``--quick`` scales it down."""

    name: str
    make: Callable[[], Problem]
    steps: int
    batch_size: int
    description: str
    long_horizon: bool = False

    def problem(self) -> Problem:
        return _problem(self.name)


# The suite. Horizons: 400-500 steps (2-2.5x meta-training's 200-step maximum) and one task at
# 2000 steps (10x). Batch sizes are small so that minibatch noise is part of the problem.
TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("wine_mlp", _wine, 500, 32, "load_wine, MLP 13-32-3 SiLU, cross-entropy"),
    TaskSpec("breast_cancer_mlp", _cancer, 500, 32, "load_breast_cancer, MLP 30-64-64-1 GELU, BCE"),
    TaskSpec("iris_deep_mlp", _iris_deep, 500, 16, "load_iris, 7-layer tanh MLP of width 16, cross-entropy"),
    TaskSpec("diabetes_mse", _diabetes, 500, 32, "load_diabetes, MLP 10-64-1 ReLU, MSE on standardized target"),
    TaskSpec("cancer_autoencoder", _autoencoder, 500, 32,
             "load_breast_cancer features, autoencoder 30-16-4-16-30 tanh, MSE"),
    TaskSpec("shapes_cnn", _shapes_problem, 400, 32,
             "procedural 16x16 shapes (4 classes), 2-conv CNN + global avg pool"),
    TaskSpec("char_gru_lm", _char_lm, 400, 16,
             "char-level GRU LM (emb 16, hidden 64, seq 32) on Python stdlib sources"),
    TaskSpec("breast_cancer_mlp_long", _cancer, 2000, 32,
             "breast_cancer_mlp at 2000 steps (10x the 200-step meta-training horizon)", long_horizon=True),
)

_BY_NAME = {t.name: t for t in TASKS}


@functools.lru_cache(maxsize=None)
def _problem(name: str) -> Problem:
    return _BY_NAME[name].make()


def task_names() -> list[str]:
    return [t.name for t in TASKS]


def get_task(name: str) -> TaskSpec:
    if name not in _BY_NAME:
        raise ValueError(f"tasks: unknown task {name!r}; choose from {', '.join(_BY_NAME)}")
    return _BY_NAME[name]
