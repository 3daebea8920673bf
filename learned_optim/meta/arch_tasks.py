"""Task families of architectures users train: transformers, RNNs, residual/BN/deep nets, embeddings.

Every family samples widths, depths, init scales, batch sizes and data from a ``torch.Generator``
(same generator state -> same task) and keeps one inner step (forward + backward at the sampled
sizes) at a few milliseconds on one CPU thread; configurations above a family's ``max_params``
are redrawn. The networks are the functional models of ``arch_models``. Data is never downloaded:
the byte corpus of Python's own standard library (``common.text.stdlib_bytes``) and
scikit-learn's bundled digits (``common.data.digits``), both cached once per process.

* ``TransformerLMFamily``: pre-LN decoder-only byte LMs (GPT-2 init), random corpus windows.
* ``ViTDigitsFamily``: patch transformers on the 8x8 digits.
* ``RNNLMFamily``: GRU/LSTM byte LMs.
* ``ResMLPFamily``, ``BatchNormCNNFamily``, ``DeepMLPFamily``: digits classifiers.
* ``EmbeddingBagFamily``: which standard-library module a variable-length byte window is from
  (masked mean of embeddings with ``padding_idx=0``, linear head).
* ``arch_train_family``, ``wide_arch_family``, ``arch_validation_tasks``, ``tiny_arch_family``: the named sets.

``full_batch()`` is a fixed evaluation batch (256 windows for the text tasks, a fixed subset of
512 digits for the transformer/CNN digit tasks), so the trainer's final-loss evaluation is cheap.
The LM tasks also have ``validation_batch()``: 256 windows of held-out text. With ``split=True``
the language-model and digit families train on part of their data (the first 90% of the text, a
fixed 80% of the digits) and their tasks draw held-out minibatches of the rest
(``heldout_batch(generator)``) for the held-out meta-objective (``objective_split="heldout"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..common.data import digits
from ..common.text import TRAIN_MODULES, stdlib_bytes, stdlib_dir
from .arch_models import BNCNN, RNNLM, EmbeddingBag, ResMLP, TransformerLM, ViT
from .task_core import Mixture, Task, _choice, _log_uniform
from .task_families import MLPTask, _FamilyBase

__all__ = [
    "LMTask",
    "DigitsArchTask",
    "ModuleBagTask",
    "TransformerLMFamily",
    "ViTDigitsFamily",
    "RNNLMFamily",
    "ResMLPFamily",
    "BatchNormCNNFamily",
    "DeepMLPFamily",
    "EmbeddingBagFamily",
    "arch_train_family",
    "wide_arch_family",
    "arch_validation_tasks",
    "tiny_arch_family",
]

_EVAL_SEED = 20240601  # fixed evaluation batches: the same windows/examples for every task and run
_EVAL_WINDOWS = 256
_SPLIT_SEED = 20240602  # the digits' fixed training / held-out split of the ``split`` families
_HELDOUT_FRACTION = 0.2
_MAX_DRAWS = 64


# ----------------------------------------------------------------------------- cached data

@lru_cache(maxsize=8)
def _corpus(source: str) -> Tensor:
    """uint8 bytes of ``"train"`` or ``"validation"``, or ``"<split>:head"``/``"<split>:tail"``
    (its first 90% / last 10%: a held-out task trains on the head and validates on the tail)."""
    split, _, part = source.partition(":")
    data = stdlib_bytes(split)
    if part not in ("", "head", "tail"):
        raise ValueError(f"unknown corpus part {part!r} in {source!r}; use 'head' or 'tail'")
    cut = int(0.9 * data.numel())
    return data[:cut] if part == "head" else data[cut:] if part == "tail" else data


@lru_cache(maxsize=8)
def _arange(n: int) -> Tensor:
    return torch.arange(n)


def _windows(data: Tensor, n: int, length: int, gen: torch.Generator) -> Tensor:
    starts = torch.randint(data.numel() - length + 1, (n, 1), generator=gen)
    return data[starts + _arange(length)].long()


@lru_cache(maxsize=32)
def _eval_windows(source: str, length: int, n: int = _EVAL_WINDOWS) -> Tensor:
    return _windows(_corpus(source), n, length, torch.Generator().manual_seed(_EVAL_SEED))


@lru_cache(maxsize=4)
def _digit_patches(patch: int) -> Tensor:
    """digits as ``[1797, (8/patch)^2, patch^2]`` row-major patches."""
    x, _ = digits()
    k = 8 // patch
    return x.view(-1, k, patch, k, patch).permute(0, 1, 3, 2, 4).reshape(x.shape[0], k * k, patch * patch).contiguous()


@lru_cache(maxsize=4)
def _eval_index(n: int, size: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(_EVAL_SEED))[:size].sort().values


@lru_cache(maxsize=1)
def _digit_split() -> tuple[Tensor, Tensor]:
    """Sorted training and held-out indices of the digits: a fixed random fifth is held out."""
    n = len(digits()[1])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_SPLIT_SEED))
    k = round(n * _HELDOUT_FRACTION)
    return perm[k:].sort().values, perm[:k].sort().values


@lru_cache(maxsize=1)
def _module_spans() -> tuple[Tensor, Tensor, Tensor]:
    """The training corpus and, per ``TRAIN_MODULES`` entry, its start offset and length in it."""
    data = stdlib_bytes("train")
    sizes = torch.tensor([os.path.getsize(os.path.join(stdlib_dir(), m)) for m in TRAIN_MODULES])
    starts = torch.cumsum(sizes + 1, 0) - sizes - 1  # modules are joined with one b"\n"
    if int(sizes.sum()) + len(sizes) - 1 != data.numel():
        raise RuntimeError("stdlib_bytes('train') does not match the sizes of TRAIN_MODULES' files")
    return data, starts, sizes


# ----------------------------------------------------------------------------- tasks

@dataclass
class LMTask:
    """Next-byte prediction with a ``TransformerLM`` or ``RNNLM`` on random windows of a corpus.

    A batch is ``[batch_size, ctx + 1]`` int64 bytes; the loss is the mean cross-entropy of
    predicting bytes 1..ctx from the ones before. ``full_batch()``: 256 fixed windows of
    ``source``; ``validation_batch()``: 256 fixed windows of ``heldout`` (None: no held-out text);
    ``heldout_batch(generator)``: random windows of ``objective_source`` (None: none), the
    held-out minibatches of the meta-objective.
    """

    model: Any
    source: str
    ctx: int
    batch_size: int
    init_scale: float = 1.0
    name: str = "lm"
    heldout: str | None = "validation"
    objective_source: str | None = None

    def init_params(self, generator: torch.Generator) -> list[Tensor]:
        return self.model.init(generator, self.init_scale)

    def sample_batch(self, generator: torch.Generator) -> Tensor:
        return _windows(_corpus(self.source), self.batch_size, self.ctx + 1, generator)

    def full_batch(self) -> Tensor:
        return _eval_windows(self.source, self.ctx + 1)

    def validation_batch(self) -> Tensor:
        if self.heldout is None:
            raise ValueError(f"task {self.name!r} has no held-out text")
        return _eval_windows(self.heldout, self.ctx + 1)

    @property
    def heldout_batch(self) -> Callable[[torch.Generator], Tensor]:
        """``heldout_batch(generator)``: ``batch_size`` random windows of ``objective_source``
        (an AttributeError without one, so ``hasattr`` tells whether the task has held-out data)."""
        if self.objective_source is None:
            raise AttributeError(f"task {self.name!r} has no held-out minibatches (objective_source is None)")
        source, n, length = self.objective_source, self.batch_size, self.ctx + 1
        return lambda generator: _windows(_corpus(source), n, length, generator)

    def logits(self, params: Sequence[Tensor], tokens: Tensor) -> Tensor:
        """``[B, T]`` bytes -> ``[B, T, vocab]`` logits."""
        out = self.model(params, tokens)
        return out.transpose(0, 1) if isinstance(self.model, RNNLM) else out

    def loss(self, params: Sequence[Tensor], batch: Tensor) -> Tensor:
        x, y = batch[:, :-1], batch[:, 1:]
        out = self.model(params, x)
        if isinstance(self.model, RNNLM):  # time-first logits
            y = y.t()
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@dataclass
class DigitsArchTask:
    """Cross-entropy classification of in-memory examples ``x`` (any shape the model takes) with
    a functional model. Minibatches are drawn with replacement; ``full_batch()`` is a fixed subset
    of ``eval_size`` examples (None: all)."""

    model: Any
    x: Tensor
    y: Tensor
    batch_size: int
    init_scale: float = 1.0
    name: str = "digits-arch"
    eval_size: int | None = 512
    heldout_x: Tensor | None = None
    heldout_y: Tensor | None = None
    _eval: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False)

    def init_params(self, generator: torch.Generator) -> list[Tensor]:
        return self.model.init(generator, self.init_scale)

    def sample_batch(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(len(self.x), (self.batch_size,), generator=generator)
        return self.x[idx], self.y[idx]

    def full_batch(self) -> tuple[Tensor, Tensor]:
        if self._eval is None:
            if self.eval_size is None or self.eval_size >= len(self.x):
                self._eval = (self.x, self.y)
            else:
                idx = _eval_index(len(self.x), self.eval_size)
                self._eval = (self.x[idx], self.y[idx])
        return self._eval

    @property
    def heldout_batch(self) -> Callable[[torch.Generator], tuple[Tensor, Tensor]]:
        """``heldout_batch(generator)``: ``batch_size`` examples of ``heldout_x``/``heldout_y``,
        drawn with replacement (an AttributeError without them)."""
        if self.heldout_x is None or self.heldout_y is None:
            raise AttributeError(f"task {self.name!r} has no held-out examples (heldout_x is None)")
        hx, hy, n = self.heldout_x, self.heldout_y, self.batch_size

        def draw(generator: torch.Generator) -> tuple[Tensor, Tensor]:
            idx = torch.randint(len(hx), (n,), generator=generator)
            return hx[idx], hy[idx]

        return draw

    def loss(self, params: Sequence[Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.model(params, x), y)


def _digits_task(model: Any, x: Tensor, y: Tensor, batch_size: int, init_scale: float, name: str, split: bool,
                 eval_size: int | None = 512) -> DigitsArchTask:
    """A ``DigitsArchTask`` on all the digits, or with ``split`` on the training part of
    ``_digit_split`` with the rest as its held-out examples."""
    if not split:
        return DigitsArchTask(model, x, y, batch_size, init_scale, name, eval_size=eval_size)
    train, held = _digit_split()
    return DigitsArchTask(model, x[train], y[train], batch_size, init_scale, f"{name}-split", eval_size=eval_size,
                          heldout_x=x[held], heldout_y=y[held])


def _lm_task(model: Any, source: str, ctx: int, batch_size: int, init_scale: float, name: str,
             split: bool) -> LMTask:
    """An ``LMTask`` on ``source``, or with ``split`` on its first 90% with held-out minibatches
    from the last 10%."""
    if not split:
        return LMTask(model, source, ctx, batch_size, init_scale, name)
    return LMTask(model, f"{source}:head", ctx, batch_size, init_scale, f"{name}-split",
                  objective_source=f"{source}:tail")


def _bag_batch(modules: tuple[int, ...], min_len: int, max_len: int, n: int, gen: torch.Generator):
    data, starts, sizes = _module_spans()
    y = torch.randint(len(modules), (n,), generator=gen)
    m = torch.tensor(modules)[y]
    off = starts[m] + (torch.rand(n, generator=gen) * (sizes[m] - max_len + 1)).long()
    pos = _arange(max_len)
    tokens = data[off[:, None] + pos].long() + 1  # 0 is the padding token
    lengths = torch.randint(min_len, max_len + 1, (n, 1), generator=gen)
    return tokens.masked_fill_(pos >= lengths, 0), y


@dataclass
class ModuleBagTask:
    """Which of ``modules`` (indices into ``common.text.TRAIN_MODULES``) a byte window comes
    from: windows of ``min_len``..``max_len`` bytes (byte ``b`` is token ``b + 1``), right-padded
    with 0 to ``max_len``; an ``EmbeddingBag`` model; cross-entropy."""

    model: EmbeddingBag
    modules: tuple[int, ...]
    min_len: int
    max_len: int
    batch_size: int
    init_scale: float = 1.0
    name: str = "module-bag"
    _eval: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False)

    def init_params(self, generator: torch.Generator) -> list[Tensor]:
        return self.model.init(generator, self.init_scale)

    def sample_batch(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return _bag_batch(self.modules, self.min_len, self.max_len, self.batch_size, generator)

    def full_batch(self) -> tuple[Tensor, Tensor]:
        if self._eval is None:
            gen = torch.Generator().manual_seed(_EVAL_SEED)
            self._eval = _bag_batch(self.modules, self.min_len, self.max_len, _EVAL_WINDOWS, gen)
        return self._eval

    def loss(self, params: Sequence[Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
        tokens, y = batch
        return F.cross_entropy(self.model(params, tokens), y)


# ----------------------------------------------------------------------------- families

def _draw(make: Callable[[], Any], max_params: int) -> Any:
    """``make()`` until the model has at most ``max_params`` parameters (at most 64 draws)."""
    for _ in range(_MAX_DRAWS):
        model = make()
        if model.n_params() <= max_params:
            return model
    return model


def _heads(gen: torch.Generator, options: Sequence[int], d: int) -> int:
    return _choice(gen, [h for h in options if d % h == 0] or [1])


@dataclass(frozen=True)
class TransformerLMFamily(_FamilyBase):
    """Tiny pre-LN decoder-only byte LMs on ``stdlib_bytes(source)``: GPT-2 init (std 0.02,
    residual projections / sqrt(2 layers)) times a log-uniform ``init_scale`` multiplier."""

    dims: tuple[int, ...] = (16, 32, 48)
    layers: tuple[int, ...] = (1, 2)
    heads: tuple[int, ...] = (2, 3, 4)
    contexts: tuple[int, ...] = (16, 24, 32)
    ratios: tuple[int, ...] = (2, 4)
    tied: tuple[bool, ...] = (True, False)
    batch_sizes: tuple = (4, 8, 16)
    max_params: int = 45_000
    source: str = "train"
    split: bool = False

    def sample(self, gen: torch.Generator) -> Task:
        def make():
            d = _choice(gen, self.dims)
            return TransformerLM(d=d, heads=_heads(gen, self.heads, d), layers=_choice(gen, self.layers),
                                 ctx=_choice(gen, self.contexts), ratio=_choice(gen, self.ratios),
                                 tied=_choice(gen, self.tied))

        m = _draw(make, self.max_params)
        bs, s = _choice(gen, self.batch_sizes), _log_uniform(gen, *self.init_scale)
        name = (f"tlm{m.layers}x{m.d}-h{m.heads}-c{m.ctx}-r{m.ratio}-{'tied' if m.tied else 'untied'}"
                f"-bs{bs}-s{s:.2f}")
        return self._finish(_lm_task(m, self.source, m.ctx, bs, s, name, self.split), gen)


@dataclass(frozen=True)
class RNNLMFamily(_FamilyBase):
    """GRU or LSTM byte LMs (one layer by default) on ``stdlib_bytes(source)``."""

    cells: tuple[str, ...] = ("gru", "lstm")
    hidden: tuple[int, ...] = (16, 32, 48)
    embeddings: tuple[int, ...] = (16, 32)
    layers: tuple[int, ...] = (1,)
    contexts: tuple[int, ...] = (16, 24, 32)
    batch_sizes: tuple = (8, 16)
    max_params: int = 45_000
    source: str = "train"
    split: bool = False

    def sample(self, gen: torch.Generator) -> Task:
        def make():
            return RNNLM(cell=_choice(gen, self.cells), emb=_choice(gen, self.embeddings),
                         hidden=_choice(gen, self.hidden), layers=_choice(gen, self.layers))

        m = _draw(make, self.max_params)
        ctx, bs = _choice(gen, self.contexts), _choice(gen, self.batch_sizes)
        s = _log_uniform(gen, *self.init_scale)
        name = f"{m.cell}lm{m.layers}x{m.hidden}-e{m.emb}-c{ctx}-bs{bs}-s{s:.2f}"
        return self._finish(_lm_task(m, self.source, ctx, bs, s, name, self.split), gen)


@dataclass(frozen=True)
class ViTDigitsFamily(_FamilyBase):
    """Patch transformers (patch 2 or 4) on the 8x8 digits; cls token or mean pooling."""

    patches: tuple[int, ...] = (2, 4)
    dims: tuple[int, ...] = (16, 24, 32)
    layers: tuple[int, ...] = (1, 2)
    heads: tuple[int, ...] = (2, 4)
    ratios: tuple[int, ...] = (2, 4)
    pools: tuple[str, ...] = ("cls", "mean")
    batch_sizes: tuple = (16, 32)
    max_params: int = 45_000
    split: bool = False
    # ``arch_models.ViT.init_style`` choices; drawn (one extra draw per task) only when there are several, so
    # the one-choice default leaves every earlier family's draws unchanged
    inits: tuple[str, ...] = ("fan_in",)

    def sample(self, gen: torch.Generator) -> Task:
        def make():
            p, d = _choice(gen, self.patches), _choice(gen, self.dims)
            return ViT(n_patches=(8 // p) ** 2, patch_dim=p * p, d=d, heads=_heads(gen, self.heads, d),
                       layers=_choice(gen, self.layers), ratio=_choice(gen, self.ratios),
                       cls=_choice(gen, self.pools) == "cls")

        m = _draw(make, self.max_params)
        bs, s = _choice(gen, self.batch_sizes), _log_uniform(gen, *self.init_scale)
        init = _choice(gen, self.inits) if len(self.inits) > 1 else self.inits[0]
        if init != m.init_style:
            m = replace(m, init_style=init)
        p = int(round(m.patch_dim ** 0.5))
        name = f"vit{m.layers}x{m.d}-p{p}-h{m.heads}-r{m.ratio}-{'cls' if m.cls else 'mean'}-bs{bs}-s{s:.2f}"
        name += "-nanogpt" if init == "nanogpt" else ""
        return self._finish(_digits_task(m, _digit_patches(p), digits()[1], bs, s, name, self.split), gen)


@dataclass(frozen=True)
class ResMLPFamily(_FamilyBase):
    """Residual MLPs with pre-LN blocks on the digits (64 inputs, 10 classes)."""

    widths: tuple[int, ...] = (16, 32, 48, 64)
    blocks: tuple[int, ...] = (2, 3, 4, 5, 6)
    ratios: tuple[int, ...] = (1, 2)
    activations: tuple[str, ...] = ("relu", "gelu")
    batch_sizes: tuple = (16, 32, 64, 128)
    max_params: int = 45_000
    split: bool = False

    def sample(self, gen: torch.Generator) -> Task:
        def make():
            return ResMLP(width=_choice(gen, self.widths), blocks=_choice(gen, self.blocks),
                          ratio=_choice(gen, self.ratios), act=_choice(gen, self.activations))

        m = _draw(make, self.max_params)
        bs, s = _choice(gen, self.batch_sizes), _log_uniform(gen, *self.init_scale)
        x, y = digits()
        name = f"resmlp{m.blocks}x{m.width}-r{m.ratio}-{m.act}-bs{bs}-s{s:.2f}"
        return self._finish(_digits_task(m, x, y, bs, s, name, self.split, eval_size=None), gen)


@dataclass(frozen=True)
class BatchNormCNNFamily(_FamilyBase):
    """conv3x3 -> batch norm (training-mode batch statistics) -> ReLU stacks on the digits: 2 or 3
    convs, the second with stride 2, then global average pooling and a linear head."""

    first: tuple[int, ...] = (8, 16)
    second: tuple[int, ...] = (16, 24)
    third: tuple[int, ...] = (0, 16, 24)  # 0: no third conv
    third_strides: tuple[int, ...] = (1, 2)
    batch_sizes: tuple = (16, 32, 64)
    split: bool = False

    def sample(self, gen: torch.Generator) -> Task:
        ch = (_choice(gen, self.first), _choice(gen, self.second), _choice(gen, self.third))
        stride3 = _choice(gen, self.third_strides)
        m = BNCNN(channels=ch[:2], strides=(1, 2)) if ch[2] == 0 else BNCNN(channels=ch, strides=(1, 2, stride3))
        bs, s = _choice(gen, self.batch_sizes), _log_uniform(gen, *self.init_scale)
        name = f"bncnn{'-'.join(map(str, m.channels))}-st{''.join(map(str, m.strides))}-bs{bs}-s{s:.2f}"
        return self._finish(_digits_task(m, digits()[0].view(-1, 1, 8, 8), digits()[1], bs, s, name, self.split),
                            gen)


@dataclass(frozen=True)
class DeepMLPFamily(_FamilyBase):
    """Plain MLPs with 5-8 hidden layers on the digits (``task_families.MLPTask``: fan-in init
    with ReLU/GELU gain, times ``init_scale``; a narrower default range, as depth compounds it)."""

    depths: tuple[int, ...] = (5, 6, 7, 8)
    widths: tuple[int, ...] = (16, 32, 48)
    activations: tuple[str, ...] = ("relu", "tanh", "gelu")
    batch_sizes: tuple = (16, 32, 64, 128)
    init_scale: tuple[float, float] = (0.7, 1.4)

    def sample(self, gen: torch.Generator) -> Task:
        depth, width = _choice(gen, self.depths), _choice(gen, self.widths)
        act, bs = _choice(gen, self.activations), _choice(gen, self.batch_sizes)
        s = _log_uniform(gen, *self.init_scale)
        x, y = digits()
        t = MLPTask(x, y, bs, "ce", f"deepmlp{depth}x{width}-{act}-bs{bs}-s{s:.2f}", hidden=(width,) * depth,
                    activation=act, out_dim=10, init_scale=s)
        return self._finish(t, gen)


@dataclass(frozen=True)
class EmbeddingBagFamily(_FamilyBase):
    """Classify which of K standard-library modules a padded byte window comes from, with a
    masked mean of embeddings (``padding_idx=0``) and a linear head."""

    classes: tuple[int, ...] = (4, 8, 16)
    dims: tuple[int, ...] = (16, 32, 64)
    max_lens: tuple[int, ...] = (16, 32, 64)
    batch_sizes: tuple = (16, 32, 64)

    def sample(self, gen: torch.Generator) -> Task:
        k, dim = _choice(gen, self.classes), _choice(gen, self.dims)
        max_len, bs = _choice(gen, self.max_lens), _choice(gen, self.batch_sizes)
        modules = tuple(int(i) for i in torch.randperm(len(TRAIN_MODULES), generator=gen)[:k])
        s = _log_uniform(gen, *self.init_scale)
        m = EmbeddingBag(dim=dim, classes=k)
        name = f"modbag{k}-e{dim}-len{max(2, max_len // 4)}-{max_len}-bs{bs}-s{s:.2f}"
        return self._finish(ModuleBagTask(m, modules, max(2, max_len // 4), max_len, bs, s, name), gen)


# ----------------------------------------------------------------------------- named sets

def arch_train_family() -> Mixture:
    """The seven architecture families, transformer LMs the most frequent."""
    return Mixture(
        [TransformerLMFamily(), ViTDigitsFamily(), RNNLMFamily(), ResMLPFamily(), BatchNormCNNFamily(),
         DeepMLPFamily(), EmbeddingBagFamily()],
        [3.0, 1.5, 2.0, 1.5, 1.0, 1.0, 1.0],
    )


def wide_arch_family(split: bool = False, vit_inits: tuple[str, ...] = ("fan_in",), vit_weight: float = 1.5) -> Mixture:
    """The architecture families at the widths people train small models at (d up to 128,
    up to ~250k parameters). With ``split``, the language-model and digit tasks train on part of
    their data and have held-out minibatches of the rest (``heldout_batch``) for a held-out
    meta-objective; the deep-MLP and embedding tasks have none. Adam's best lr falls with width
    (mostly 3e-3 on the default family's transformer LMs, 1e-3 to 3e-3 on these, measured in
    benchmarks/results/meta-v2/adam-lr-by-width.md): a width range lets the per-tensor context
    (log fan-in) size steps by width. Each inner step costs up to ~5x more than on the default
    families. ``vit_inits``: the ViTs' ``arch_models.ViT.init_style`` choices (default: fan-in only, as
    before the option existed); ``vit_weight``: the ViT family's mixture weight (default 1.5)."""
    return Mixture(
        [TransformerLMFamily(dims=(32, 48, 64, 96, 128), layers=(1, 2), heads=(2, 4), contexts=(32,),
                             batch_sizes=(8, 16), max_params=250_000, split=split),
         ViTDigitsFamily(dims=(32, 48, 64), max_params=120_000, split=split, inits=vit_inits),
         RNNLMFamily(hidden=(32, 64, 96), embeddings=(32,), max_params=120_000, split=split),
         ResMLPFamily(widths=(32, 64, 128), max_params=120_000, split=split),
         BatchNormCNNFamily(split=split), DeepMLPFamily(widths=(32, 64, 96)), EmbeddingBagFamily()],
        [3.0, vit_weight, 1.5, 1.5, 1.0, 1.0, 1.0],
    )


def arch_validation_tasks() -> list[tuple[Task, int]]:
    """Held-out tasks and horizons outside the training distribution (sizes, depths, text and
    horizons): the LMs train on the first 90% of ``stdlib_bytes("validation")`` (modules never
    in training) and their ``validation_batch()`` is the last 10%."""
    x, y = digits()
    tlm = TransformerLM(d=64, heads=4, layers=2, ctx=32, ratio=4, tied=True)
    vit = ViT(n_patches=16, patch_dim=4, d=48, heads=4, layers=2, ratio=2, cls=True)
    gru = RNNLM(cell="gru", emb=32, hidden=48, layers=3)
    res = ResMLP(width=32, blocks=8, ratio=2, act="gelu")
    return [
        (LMTask(tlm, "validation:head", 32, 8, 1.0, "val-tlm2x64-c32-bs8", heldout="validation:tail"), 2000),
        (DigitsArchTask(vit, _digit_patches(2), y, 32, 1.0, "val-vit2x48-p2-cls-bs32"), 1000),
        (LMTask(gru, "validation:head", 16, 16, 1.0, "val-grulm3x48-e32-c16-bs16", heldout="validation:tail"), 1000),
        (DigitsArchTask(res, x, y, 64, 1.0, "val-resmlp8x32-r2-gelu-bs64", eval_size=None), 500),
    ]


def tiny_arch_family() -> Mixture:
    """Seconds-scale instances of every family (tests and smoke runs)."""
    return Mixture([
        TransformerLMFamily(dims=(16,), layers=(1,), contexts=(16,), ratios=(2,), batch_sizes=(4,)),
        ViTDigitsFamily(patches=(4,), dims=(16,), layers=(1,), ratios=(2,), batch_sizes=(16,)),
        RNNLMFamily(hidden=(16,), embeddings=(16,), contexts=(16,), batch_sizes=(8,)),
        ResMLPFamily(widths=(16,), blocks=(2,), ratios=(1,), batch_sizes=(16,)),
        BatchNormCNNFamily(first=(8,), second=(16,), third=(0,), batch_sizes=(32,)),
        DeepMLPFamily(depths=(5,), widths=(16,), batch_sizes=(16,)),
        EmbeddingBagFamily(classes=(4,), dims=(16,), max_lens=(16,), batch_sizes=(16,)),
    ])
