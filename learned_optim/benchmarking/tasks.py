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
The main reported loss is the training objective on the whole training split (evaluated without
gradient), because the benchmark measures optimization first; ``Problem.heldout_loss`` gives the
loss on a held-out split beside it (``Problem.split`` records the sizes):

* wine, breast cancer, iris (and breast_cancer_mlp_long; cancer_autoencoder uses the breast-cancer
  split): 80/20 stratified by class. For each class in sorted order, one
  ``numpy.random.default_rng(_DATA_SEED)`` permutes that class's rows and the first
  round(0.2 n_class) are held out: train / held-out rows 142/36, 456/113, 120/30.
* diabetes_mse: 80/20 drawn the same way over all rows (a regression target): 354/88.
* shapes_cnn: a separately generated test set, 256 images from seed _DATA_SEED + 1 (train: 1024).
* char_gru_lm: held-out files, ``common.text.VALIDATION_MODULES`` less those in the training corpus
  (string.py): shutil, tempfile, bisect, copy, operator; the loss is taken on 256 fixed windows of
  that text, as the training loss is on the training text.

Feature standardization (and diabetes' target standardization) uses training-split statistics
only; the held-out rows are transformed with them.
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
from ..common.text import VALIDATION_MODULES

__all__ = ["Problem", "TaskSpec", "TASKS", "task_names", "get_task", "corpus_info"]

# Data generation seed for synthetic data and the held-out splits: the dataset is part of the
# task, not of the seed.
_DATA_SEED = 0
_HELDOUT_FRACTION = 0.2


class Problem:
    """A dataset plus a model family and a loss: what one benchmark run trains.

    ``inputs``/``targets`` are the whole training split; a batch is a set of row indices.
    ``heldout``: the held-out split's (inputs, targets), never trained on; ``split``: what the
    split is (sizes and how it was made), for the results.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, model_fn: Callable[[], nn.Module],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 heldout: tuple[torch.Tensor, torch.Tensor] | None = None, split: dict | None = None) -> None:
        self.inputs = inputs
        self.targets = targets
        self.model_fn = model_fn
        self.loss_fn = loss_fn
        self.heldout_inputs, self.heldout_targets = heldout if heldout is not None else (None, None)
        self.split = dict(split or {})

    @property
    def has_heldout(self) -> bool:
        return self.heldout_inputs is not None

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
        """The loss on the whole training split."""
        return float(self.loss_fn(model(self.inputs), self.targets))

    def _need_heldout(self) -> None:
        if not self.has_heldout:
            raise ValueError("this problem has no held-out split; check Problem.has_heldout first")

    @torch.no_grad()
    def heldout_loss(self, model: nn.Module) -> float:
        """The loss on the whole held-out split."""
        self._need_heldout()
        return float(self.loss_fn(model(self.heldout_inputs), self.heldout_targets))


class LanguageProblem(Problem):
    """Next-character prediction on one long text; a batch is a set of window start offsets.
    ``heldout_ids``: a separate text whose loss is ``heldout_loss`` (on fixed windows)."""

    def __init__(self, text_ids: torch.Tensor, model_fn, seq_len: int, eval_windows: int,
                 heldout_ids: torch.Tensor | None = None, split: dict | None = None) -> None:
        heldout = (heldout_ids, heldout_ids) if heldout_ids is not None else None
        super().__init__(text_ids, text_ids, model_fn, F.cross_entropy, heldout, split)
        self.seq_len = seq_len
        gen = torch.Generator().manual_seed(_DATA_SEED)
        # A fixed set of windows stands in for "the whole corpus" in the reported loss (the
        # full corpus would cost more than all the training steps).
        self.eval_starts = torch.randint(len(text_ids) - seq_len - 1, (eval_windows,), generator=gen)
        if heldout_ids is not None:
            gen = torch.Generator().manual_seed(_DATA_SEED + 1)
            self.heldout_starts = torch.randint(len(heldout_ids) - seq_len - 1, (eval_windows,), generator=gen)

    def batches(self, seed: int, steps: int, batch_size: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(10_000 + seed)
        return torch.randint(len(self.inputs) - self.seq_len - 1, (steps, batch_size), generator=gen)

    def _windows(self, starts: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offs = starts[:, None] + torch.arange(self.seq_len + 1)
        w = ids[offs]
        return w[:, :-1], w[:, 1:]

    def _loss_on(self, model: nn.Module, ids: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        x, y = self._windows(starts, ids)
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def loss(self, model: nn.Module, index: torch.Tensor) -> torch.Tensor:
        return self._loss_on(model, self.inputs, index)

    @torch.no_grad()
    def full_loss(self, model: nn.Module) -> float:
        return float(self._loss_on(model, self.inputs, self.eval_starts))

    @torch.no_grad()
    def heldout_loss(self, model: nn.Module) -> float:
        self._need_heldout()
        return float(self._loss_on(model, self.heldout_inputs, self.heldout_starts))


# ---------------------------------------------------------------- data (cached per process)

# The bundled datasets whose held-out split is stratified by class (diabetes is a regression).
_STRATIFIED = ("wine", "breast_cancer", "iris")


def _split_rows(n: int, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The fixed 80/20 split of rows 0..n-1: (train rows, held-out rows), each sorted.

    With ``labels``, stratified: for each class in sorted order, one ``default_rng(_DATA_SEED)``
    permutes that class's rows and the first round(0.2 n_class) are held out. Without, the same
    over all rows. A pure function of n, the labels and _DATA_SEED (numpy's PCG64 stream is stable).
    """
    rng = np.random.default_rng(_DATA_SEED)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if labels is not None else [np.arange(n)]
    held = np.sort(np.concatenate([rng.permutation(g)[: int(round(_HELDOUT_FRACTION * len(g)))] for g in groups]))
    return np.setdiff1d(np.arange(n), held), held


@dataclass(frozen=True)
class _Split:
    """A bundled dataset split into train and held-out rows, standardized with train statistics."""

    x: torch.Tensor
    y: torch.Tensor
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor
    train_rows: np.ndarray
    heldout_rows: np.ndarray

    def info(self, how: str) -> dict:
        return {"train": len(self.train_rows), "heldout": len(self.heldout_rows), "unit": "rows", "how": how}


@functools.lru_cache(maxsize=None)
def _sklearn(name: str) -> _Split:
    """A scikit-learn bundled dataset (no download), split by ``_split_rows`` (stratified for
    ``_STRATIFIED``). Features are standardised in fp64 with the training split's mean and
    population std (eps 1e-8), both splits with those statistics, then cast to fp32; the targets
    as they come."""
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")()
    raw = torch.as_tensor(bunch.data, dtype=torch.float64)
    target = torch.as_tensor(bunch.target)
    train, held = _split_rows(len(raw), np.asarray(bunch.target) if name in _STRATIFIED else None)
    x_train = raw[torch.as_tensor(train)]
    mean, std = x_train.mean(0), x_train.std(0, correction=0)
    x = standardize(x_train, eps=1e-8, unbiased=False)  # == (x_train - mean) / (std + 1e-8)
    heldout_x = (raw[torch.as_tensor(held)] - mean) / (std + 1e-8)
    return _Split(x.to(torch.float32), target[torch.as_tensor(train)], heldout_x.to(torch.float32),
                  target[torch.as_tensor(held)], train, held)


@functools.lru_cache(maxsize=None)
def _shapes(n: int = 1024, size: int = 16, seed: int = _DATA_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural 16x16 images of 4 classes (horizontal bar, vertical bar, hollow square,
    filled disc) at random positions and sizes, plus Gaussian pixel noise of std 0.3. The
    training set is seed _DATA_SEED; the test set (``_SHAPES_TEST``) another seed."""
    rng = np.random.default_rng(seed)
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
# The held-out text: common.text's validation modules less any in the training corpus (string.py),
# read and encoded the same way. Disjoint files, so it measures code the model never saw.
_HELDOUT_FILES = tuple(m for m in VALIDATION_MODULES if m not in _CORPUS_FILES)
_SHAPES_TEST = (256, 16, _DATA_SEED + 1)  # n, size, seed of shapes_cnn's held-out test set


def _read_text(files: tuple[str, ...], min_chars: int, what: str) -> tuple[torch.Tensor, dict]:
    root = os.path.dirname(os.__file__)
    parts, used = [], []
    for name in files:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
            used.append(name)
    text = "\n".join(parts)[:_CORPUS_CHARS]
    if len(text) < min_chars:
        raise RuntimeError(
            f"the char_gru_lm {what} needs Python's standard-library sources in {root}; found "
            f"only {len(text)} characters of {files}. Run on a CPython with its .py files "
            f"installed, or pass --tasks without char_gru_lm"
        )
    ids = torch.tensor([ord(ch) if ord(ch) < _VOCAB else 0 for ch in text], dtype=torch.long)
    info = {"root": root, "files": used, "chars": len(text),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    return ids, info


@functools.lru_cache(maxsize=None)
def _corpus() -> tuple[torch.Tensor, dict]:
    return _read_text(_CORPUS_FILES, 20_000, "corpus")


@functools.lru_cache(maxsize=None)
def _heldout_corpus() -> tuple[torch.Tensor, dict]:
    return _read_text(_HELDOUT_FILES, 5_000, "held-out text")


def corpus_info() -> dict:
    """Which files the language-model task read, and a hash of the text (for the results); the
    same for its held-out text under ``"heldout"``."""
    return {**_corpus()[1], "heldout": _heldout_corpus()[1]}


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

_STRATIFIED_HOW = "80/20 stratified by class, numpy default_rng(0); features standardized with train statistics"


def _classification(name: str, model_fn, loss_fn) -> Problem:
    d = _sklearn(name)
    return Problem(d.x, d.y, model_fn, loss_fn, (d.heldout_x, d.heldout_y), d.info(_STRATIFIED_HOW))


def _wine() -> Problem:
    return _classification("wine", lambda: _mlp((13, 32, 3), nn.SiLU), F.cross_entropy)


def _cancer() -> Problem:
    return _classification("breast_cancer", lambda: _mlp((30, 64, 64, 1), nn.GELU), _bce)


def _iris_deep() -> Problem:
    return _classification("iris", lambda: _mlp((4,) + (16,) * 6 + (3,), nn.Tanh), F.cross_entropy)


def _diabetes() -> Problem:
    d = _sklearn("diabetes")
    # Standardized target (loss ~1 at start), with the training split's mean and (unbiased) std.
    mean, std = d.y.double().mean(), d.y.double().std()
    y, heldout_y = ((t.double() - mean) / std for t in (d.y, d.heldout_y))
    return Problem(d.x, y.float(), lambda: _mlp((10, 64, 1), nn.ReLU), _mse, (d.heldout_x, heldout_y.float()),
                   d.info("80/20 over all rows, numpy default_rng(0); features and target standardized with "
                          "train statistics"))


def _autoencoder() -> Problem:
    d = _sklearn("breast_cancer")
    return Problem(d.x, d.x, lambda: _mlp((30, 16, 4, 16, 30), nn.Tanh), F.mse_loss, (d.heldout_x, d.heldout_x),
                   d.info("the breast_cancer split: " + _STRATIFIED_HOW))


def _shapes_problem() -> Problem:
    x, y = _shapes()
    test = _shapes(*_SHAPES_TEST)
    return Problem(x, y, _shapes_cnn, F.cross_entropy, test,
                   {"train": len(x), "heldout": len(test[0]), "unit": "images",
                    "how": f"a separately generated test set, seed {_SHAPES_TEST[2]}"})


def _char_lm() -> Problem:
    ids, _ = _corpus()
    held, info = _heldout_corpus()
    return LanguageProblem(ids, _CharGRU, seq_len=32, eval_windows=256, heldout_ids=held,
                           split={"train": len(ids), "heldout": len(held), "unit": "characters",
                                  "how": f"held-out stdlib files {', '.join(info['files'])}; loss on 256 fixed "
                                         f"windows of 32, as the training loss"})


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
