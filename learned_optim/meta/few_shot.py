r"""Few-shot learning: a learned inner-loop optimizer for N-way K-shot episodes.

An *episode* samples N classes, K labelled support examples and Q query examples per class. A
small MLP, freshly initialised, is adapted for T steps on the support set by an inner optimizer;
the query loss after adaptation is the meta-objective. Three inner optimizers share one code path
(``adapt``) and one initialisation policy:

* ``"learned"``: the coordinatewise-LSTM rule (``learned_optim.update.lstm_rule``) at a step scale
  ``lr`` that is meta-learned jointly with the LSTM (stored in the weights' provenance);
* ``"sgd"``: plain gradient descent, MAML's inner optimizer, lr tuned on meta-training episodes;
* ``"adam"``: Adam (the same rule with a zero output head), lr tuned likewise.

Meta-gradients: **full** backpropagation through all T inner updates, second order (the inner
gradients are differentiated too, ``create_graph=True``). T is small (10) and the model tiny, so
nothing is truncated or approximated; ``tests/test_few_shot.py`` checks the meta-gradient against
finite differences in float64. (The tutorial failure mode this avoids: detaching the parameters
after each inner update, which makes the meta-gradient of the optimizer's weights zero.)

Classes and the held-out split: scikit-learn's ``load_digits`` (no download) has 10 digits; each
digit rotated by 0/90/180/270 degrees is its own class (the Omniglot rotation trick, Santoro et al.
2016), giving 40 classes. Digits 0-4 (20 classes) are for meta-training and lr tuning; digits 5-9
(20 classes) are held out and used only for evaluation. Any ``(X, y)`` can be passed instead.

Initialisation policy: every episode starts every method from the same fresh PyTorch-default
initialisation (``init_params``). Meta-learning the initialisation jointly (MAML-style) is not
implemented: a fair comparison would need MAML-trained initialisations for both baselines too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..hub import from_pretrained, save_pretrained
from ..network import CoordinatewiseLSTM, LSTMOptimizerConfig
from ..update import lstm_rule

__all__ = [
    "FewShotConfig",
    "EpisodeSampler",
    "digits_classes",
    "adapt",
    "tune_lr",
    "train_few_shot",
    "evaluate",
    "FEW_SHOT_LR_GRID",
]

# 7-point log grid for the baselines' inner lr (and the learned rule's starting lr). SGD on a
# freshly initialised MLP needs large steps to learn anything in 10 steps; Adam smaller ones.
FEW_SHOT_LR_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


@dataclass
class FewShotConfig:
    """A few-shot meta-training run (saved in the provenance of the weights it produces).

    Attributes:
        seed: seeds every generator. Default 0.
        n_way: classes per episode. Default 5.
        k_shots: support examples per class; meta-training draws one per episode. Default (1, 5).
        q_query: query examples per class. Default 15 (the standard in the few-shot literature).
        inner_steps: T, inner updates per episode, the same for every method. Default 10.
        hidden: hidden units of the adapted MLP (in -> hidden -> n_way, ReLU). Default 32.
        meta_steps: meta-optimizer steps. Default 1500.
        meta_batch: episodes per meta-step. Default 8.
        meta_lr: Adam lr for the LSTM weights and the log step scale. Default 3e-3.
        grad_clip: meta-gradient norm clip. Default 1.0.
        network: LSTMOptimizerConfig fields for a fresh network (ignored with ``start_from``).
        start_from: weights to start from (shipped name, directory or Hub id). Default
            "adam-equivalent": the untrained rule is Adam, so training starts from a baseline.
        tune_episodes: meta-training episodes used to pick each method's lr on the grid. Default 100.
        learn_init: also meta-learn the MLP's initialisation (MAML-style), saved next to the
            weights as ``few_shot_init.safetensors``; every episode then starts from it instead
            of a fresh default init. The benchmark's ``init="learned"`` gives each baseline its
            own init meta-learned the same way for its inner loop. Default False.
    """

    seed: int = 0
    n_way: int = 5
    k_shots: tuple[int, ...] = (1, 5)
    q_query: int = 15
    inner_steps: int = 10
    hidden: int = 32
    meta_steps: int = 1500
    meta_batch: int = 8
    meta_lr: float = 3e-3
    grad_clip: float = 1.0
    network: dict = dataclasses.field(default_factory=dict)
    start_from: str | None = "adam-equivalent"
    tune_episodes: int = 100
    learn_init: bool = False

    def __post_init__(self) -> None:
        self.k_shots = tuple(self.k_shots)
        for name in ("n_way", "q_query", "inner_steps", "hidden", "meta_steps", "meta_batch", "tune_episodes"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < (0 if name == "meta_steps" else 1):
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if self.n_way < 2:
            raise ValueError(f"n_way must be >= 2, got {self.n_way}")
        if not self.k_shots or any(not isinstance(k, int) or k < 1 for k in self.k_shots):
            raise ValueError(f"k_shots must be a non-empty tuple of positive ints, got {self.k_shots!r}")
        if not (self.meta_lr > 0 and self.grad_clip > 0):
            raise ValueError("meta_lr and grad_clip must be > 0")
        if not isinstance(self.learn_init, bool):
            raise TypeError(f"learn_init must be True or False, got {self.learn_init!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["k_shots"] = list(self.k_shots)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FewShotConfig":
        d = dict(d)
        # Written by the first release of this module: every episode used a random init, which
        # is learn_init=False.
        if d.get("init", "random") != "random":
            raise ValueError(f"init={d['init']!r} is not supported; use learn_init=true for a learned init")
        d.pop("init", None)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown FewShotConfig fields {unknown}")
        return cls(**d)


# ------------------------------------------------------------------------------------- data


def digits_classes(rotations: int = 4) -> tuple[Tensor, Tensor, list[int], list[int]]:
    """Digits as few-shot classes: returns (X [n, 64] in [0, 1], y, train classes, held-out classes).

    Class id = digit * rotations + r for the image rotated by r * 90 degrees. Digits 0-4 are
    meta-training classes, digits 5-9 held out.
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    img = torch.tensor(x, dtype=torch.float32).view(-1, 8, 8) / 16.0  # pixels are 0..16
    y = torch.tensor(y, dtype=torch.long)
    xs, ys = [], []
    for r in range(rotations):
        xs.append(torch.rot90(img, r, dims=(1, 2)).reshape(-1, 64))
        ys.append(y * rotations + r)
    train = [d * rotations + r for d in range(5) for r in range(rotations)]
    held = [d * rotations + r for d in range(5, 10) for r in range(rotations)]
    return torch.cat(xs), torch.cat(ys), train, held


class EpisodeSampler:
    """Samples N-way K-shot episodes from ``(X, y)`` restricted to ``classes``.

    Labels inside an episode are 0..N-1 in a random order. Support and query are disjoint.
    """

    def __init__(self, x: Tensor, y: Tensor, classes: Sequence[int], n_way: int, q_query: int) -> None:
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"X must be [n, features] and y [n], got {tuple(x.shape)} and {tuple(y.shape)}")
        if len(classes) < n_way:
            raise ValueError(f"need at least n_way={n_way} classes, got {len(classes)}")
        self.x = x
        self.n_way, self.q_query = n_way, q_query
        self.classes = list(classes)
        self.index = {c: (y == c).nonzero().flatten() for c in self.classes}
        small = [c for c, idx in self.index.items() if len(idx) < 2]
        if small:
            raise ValueError(f"classes {small} have fewer than 2 examples")

    def sample(self, k_shot: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns (x_support [N*K, d], y_support, x_query [N*Q', d], y_query)."""
        pick = torch.randperm(len(self.classes), generator=gen)[: self.n_way].tolist()
        xs, ys, xq, yq = [], [], [], []
        for label, ci in enumerate(pick):
            idx = self.index[self.classes[ci]]
            q = min(self.q_query, len(idx) - k_shot)
            if q < 1:
                raise ValueError(f"class {self.classes[ci]} has {len(idx)} examples, too few for k_shot={k_shot}")
            order = idx[torch.randperm(len(idx), generator=gen)]
            xs.append(self.x[order[:k_shot]])
            xq.append(self.x[order[k_shot : k_shot + q]])
            ys.append(torch.full((k_shot,), label))
            yq.append(torch.full((q,), label))
        return torch.cat(xs), torch.cat(ys), torch.cat(xq), torch.cat(yq)


# ------------------------------------------------------------------------------------- model


def _layer_shapes(d_in: int, hidden: int, n_out: int) -> list[tuple[int, ...]]:
    return [(hidden, d_in), (hidden,), (n_out, hidden), (n_out,)]


def init_params(d_in: int, hidden: int, n_out: int, gen: torch.Generator, dtype=torch.float32) -> Tensor:
    """A flat parameter vector with nn.Linear's default init (U(-1/sqrt(fan_in), +))."""
    parts = []
    for shape, fan_in in zip(_layer_shapes(d_in, hidden, n_out), (d_in, d_in, hidden, hidden)):
        b = 1.0 / math.sqrt(fan_in)
        parts.append((torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1).mul_(b).flatten())
    return torch.cat(parts)


def mlp_logits(theta: Tensor, x: Tensor, hidden: int, n_out: int) -> Tensor:
    shapes = _layer_shapes(x.shape[1], hidden, n_out)
    w1, b1, w2, b2 = torch.split(theta, [math.prod(s) for s in shapes])
    h = torch.relu(x @ w1.view(shapes[0]).T + b1)
    return h @ w2.view(shapes[2]).T + b2


# ------------------------------------------------------------------------------------- inner loop


def adapt(
    method: str,
    theta0: Tensor,
    support: tuple[Tensor, Tensor],
    *,
    steps: int,
    lr: Tensor | float,
    hidden: int,
    n_way: int,
    network: CoordinatewiseLSTM | None = None,
    create_graph: bool = False,
    query: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, list[float]]:
    """Adapt ``theta0`` for ``steps`` inner updates on the support set.

    ``method``: "learned" (``network``'s rule), "adam" (the rule with a zero head) or "sgd".
    With ``create_graph`` the result is differentiable w.r.t. ``theta0``, ``lr`` and the network's
    weights through every update (full, second-order). With ``query``, also returns the query
    accuracy after each step (index 0 = before adapting), for accuracy-vs-steps curves.
    """
    xs, ys = support
    theta = theta0
    if method in ("learned", "adam"):
        if network is None:
            raise ValueError(f"method={method!r} needs network=")
        cfg = network.config
        if method == "adam":
            network = CoordinatewiseLSTM(cfg)  # zero head: exactly Adam
        n = theta0.numel()
        m = torch.zeros(n, dtype=theta0.dtype)
        v = torch.zeros(n, dtype=theta0.dtype)
        h = torch.zeros(cfg.hidden_size, n, dtype=theta0.dtype)
        c = torch.zeros(cfg.hidden_size, n, dtype=theta0.dtype)
        weights = {k: getattr(network, k).to(theta0.dtype) for k in network.expected_shapes()}
        if method == "adam":
            weights = {k: w.detach() for k, w in weights.items()}
    elif method != "sgd":
        raise ValueError(f"method must be 'learned', 'adam' or 'sgd', got {method!r}")
    accs = []

    def acc(th):
        with torch.no_grad():
            return (mlp_logits(th, query[0], hidden, n_way).argmax(1) == query[1]).float().mean().item()

    if query is not None:
        accs.append(acc(theta))
    for t in range(1, steps + 1):
        if not theta.requires_grad:  # a fresh leaf: never flip the caller's tensor in place
            theta = theta.detach().requires_grad_()
        loss = nn.functional.cross_entropy(mlp_logits(theta, xs, hidden, n_way), ys)
        (g,) = torch.autograd.grad(loss, theta, create_graph=create_graph)
        if method == "sgd":
            theta = theta - lr * g
        else:
            out = lstm_rule(g, m, v, h, c, t, weights, cfg)
            m, v, h, c = out.exp_avg, out.exp_avg_sq, out.h, out.c
            theta = theta - lr * out.direction
        if not create_graph:
            theta = theta.detach()
        if query is not None:
            accs.append(acc(theta))
    return theta, accs


def _query_loss(theta: Tensor, query: tuple[Tensor, Tensor], hidden: int, n_way: int) -> Tensor:
    return nn.functional.cross_entropy(mlp_logits(theta, query[0], hidden, n_way), query[1])


def tune_lr(
    method: str,
    sampler: EpisodeSampler,
    cfg: FewShotConfig,
    k_shot: int,
    *,
    network: CoordinatewiseLSTM | None = None,
    grid: Sequence[float] = FEW_SHOT_LR_GRID,
    episodes: int | None = None,
    seed: int = 0,
) -> tuple[float, dict[float, float]]:
    """Pick the lr with the best mean query accuracy on meta-training episodes (never held-out).

    Returns (best lr, {lr: mean accuracy}); every lr sees the same episodes and initialisations.
    """
    n = episodes or cfg.tune_episodes
    scores = {}
    for lr in grid:
        gen = torch.Generator().manual_seed(seed)
        total = 0.0
        for _ in range(n):
            xs, ys, xq, yq = sampler.sample(k_shot, gen)
            theta0 = init_params(xs.shape[1], cfg.hidden, cfg.n_way, gen)
            _, accs = adapt(method, theta0, (xs, ys), steps=cfg.inner_steps, lr=lr, hidden=cfg.hidden,
                            n_way=cfg.n_way, network=network, query=(xq, yq))
            total += accs[-1]
        scores[lr] = total / n
    best = max(scores, key=lambda k: scores[k])
    return best, scores


# ------------------------------------------------------------------------------------- training


def meta_train_inner(
    method: str,
    cfg: FewShotConfig,
    sampler: "EpisodeSampler",
    d_in: int,
    *,
    lr0: float,
    network: CoordinatewiseLSTM | None = None,
    learn_rule: bool = False,
    learn_init: bool = False,
    progress: bool = True,
    desc: str = "few-shot meta-train",
) -> tuple[float, Tensor | None, list[float]]:
    """The few-shot meta-training loop, for any inner optimizer.

    Meta-parameters: the inner step scale (log lr, from ``lr0``) always; the LSTM rule's weights
    with ``learn_rule`` (``method="learned"`` only); the model's initialisation with
    ``learn_init`` (MAML-style: one flat parameter vector every episode starts from; otherwise a
    fresh PyTorch-default init per episode). Meta-gradients flow through all ``inner_steps``
    updates (full second order). ``cfg.meta_steps`` Adam steps on ``cfg.meta_batch`` episodes
    each, meta-gradient norm clipped to ``cfg.grad_clip``.

    Returns (final inner lr, the learned init or None, per-step mean query loss).
    """
    from tqdm.auto import tqdm

    if learn_rule and method != "learned":
        raise ValueError(f"learn_rule=True needs method='learned', got method={method!r}")
    log_lr = nn.Parameter(torch.tensor(math.log(lr0)))
    # this order (rule, lr, init) keeps the shipped weights reproducible: the clip's total norm
    # sums in it
    meta_params = [*network.parameters(), log_lr] if learn_rule else [log_lr]
    theta_init = None
    if learn_init:
        # starts from one draw of the default init (its own stream: the episodes are unchanged)
        theta_init = nn.Parameter(init_params(d_in, cfg.hidden, cfg.n_way, torch.Generator().manual_seed(cfg.seed + 3)))
        meta_params.append(theta_init)
    opt = torch.optim.Adam(meta_params, lr=cfg.meta_lr)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    history = []
    bar = tqdm(range(cfg.meta_steps), desc=desc, disable=not progress)
    for step in bar:
        opt.zero_grad()
        total = 0.0
        for _ in range(cfg.meta_batch):
            k = cfg.k_shots[int(torch.randint(len(cfg.k_shots), (1,), generator=gen))]
            xs, ys, xq, yq = sampler.sample(k, gen)
            fresh = init_params(d_in, cfg.hidden, cfg.n_way, gen)  # drawn either way: same episode stream
            theta0 = theta_init if learn_init else fresh
            theta, _ = adapt(method, theta0, (xs, ys), steps=cfg.inner_steps, lr=log_lr.exp(), hidden=cfg.hidden,
                             n_way=cfg.n_way, network=network, create_graph=True)
            loss = _query_loss(theta, (xq, yq), cfg.hidden, cfg.n_way) / cfg.meta_batch
            if not torch.isfinite(loss):  # one exploding episode must not poison the meta-step
                continue
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(meta_params, cfg.grad_clip)
        if all(p.grad is None or torch.isfinite(p.grad).all() for p in meta_params):
            opt.step()
        history.append(total)
        if step % 10 == 0:
            bar.set_postfix(query_loss=f"{sum(history[-10:]) / len(history[-10:]):.3f}", lr=f"{log_lr.exp().item():.3g}")
    return log_lr.detach().exp().item(), (theta_init.detach().clone() if learn_init else None), history


INIT_FILE = "few_shot_init.safetensors"


def save_init(theta: Tensor, directory: str | Path, cfg: FewShotConfig, d_in: int) -> Path:
    """Save a learned initialisation (flat MLP parameters) next to the weights, as safetensors."""
    from safetensors.torch import save_file

    path = Path(directory) / INIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"theta": theta.detach().float().contiguous()}, str(path),
              metadata={"mlp": f"{d_in}-{cfg.hidden}-{cfg.n_way}", "layout": "w1, b1, w2, b2 flattened"})
    return path


def load_init(directory: str | Path, cfg: FewShotConfig, d_in: int) -> Tensor:
    """The learned initialisation saved by ``save_init``; checks it fits the MLP of ``cfg``."""
    from safetensors import safe_open

    path = Path(directory) / INIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: these weights have no learned initialisation "
                                f"(train with learn_init=True, or evaluate with init='fresh')")
    with safe_open(str(path), framework="pt") as f:
        theta = f.get_tensor("theta")
    want = sum(math.prod(s) for s in _layer_shapes(d_in, cfg.hidden, cfg.n_way))
    if theta.dim() != 1 or theta.numel() != want or not torch.isfinite(theta).all():
        raise ValueError(f"{path}: expected a finite flat vector of {want} values for the MLP "
                         f"{d_in}-{cfg.hidden}-{cfg.n_way}, got shape {tuple(theta.shape)}")
    return theta


def train_few_shot(
    cfg: FewShotConfig,
    out: str | Path | None = None,
    *,
    data: tuple[Tensor, Tensor, Sequence[int], Sequence[int]] | None = None,
    progress: bool = True,
) -> tuple[CoordinatewiseLSTM, dict[str, Any]]:
    """Meta-train the LSTM rule (and its step scale; with ``cfg.learn_init`` also the MLP's
    initialisation, MAML-style) as a few-shot inner optimizer.

    ``data`` = (X, y, meta-training classes, held-out classes); default ``digits_classes()``.
    Held-out classes are not touched here. Saves to ``out`` (``save_pretrained`` format, with
    the config, the meta-learned ``inner_lr`` and the wall time in the provenance; the learned
    init as ``few_shot_init.safetensors``) if given. Returns (network, provenance).
    """
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    x, y, train_classes, _ = data if data is not None else digits_classes()
    sampler = EpisodeSampler(x, y, train_classes, cfg.n_way, cfg.q_query)
    if cfg.start_from is not None:
        net = from_pretrained(cfg.start_from)
    else:
        net = CoordinatewiseLSTM(LSTMOptimizerConfig(**cfg.network), seed=cfg.seed)
    # The step scale starts at the best lr of the untrained rule (= Adam) on meta-training episodes.
    lr0, _ = tune_lr("learned", sampler, cfg, cfg.k_shots[0], network=net, episodes=min(cfg.tune_episodes, 50),
                     seed=cfg.seed + 1)
    d_in = x.shape[1]
    inner_lr, theta_init, history = meta_train_inner("learned", cfg, sampler, d_in, lr0=lr0, network=net,
                                                     learn_rule=True, learn_init=cfg.learn_init, progress=progress)
    wall = time.perf_counter() - t0
    net.provenance = {
        "trained": True,
        "kind": "few-shot inner optimizer" + (" with a learned initialisation" if cfg.learn_init else ""),
        "inner_lr": inner_lr,
        "few_shot_config": cfg.to_dict(),
        "meta_train_classes": [int(c) for c in train_classes],
        "wall_time_s": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
        "final_query_loss_mean_last100": sum(history[-100:]) / max(1, len(history[-100:])),
    }
    if cfg.learn_init:
        net.provenance["learned_init"] = INIT_FILE
    if out is not None:
        save_pretrained(net, out)
        if theta_init is not None:
            save_init(theta_init, out, cfg, d_in)
    return net, net.provenance


# ------------------------------------------------------------------------------------- evaluation


def _ci95(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    mean = sum(xs) / n
    var = sum((a - mean) ** 2 for a in xs) / max(1, n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def evaluate(
    network: CoordinatewiseLSTM,
    cfg: FewShotConfig,
    *,
    k_shot: int,
    episodes: int = 600,
    lrs: dict[str, float],
    data=None,
    seed: int = 12345,
    inits: dict[str, Tensor] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Held-out accuracy of each method in ``lrs`` ({method: inner lr}) on the same episodes and
    initialisations: mean, 95% CI half-width, per-step accuracy curve. A method in ``inits``
    ({method: flat parameters}) starts every episode from its learned init instead."""
    from tqdm.auto import tqdm

    x, y, _, held = data if data is not None else digits_classes()
    sampler = EpisodeSampler(x, y, held, cfg.n_way, cfg.q_query)
    gen = torch.Generator().manual_seed(seed)
    eps = []
    for _ in range(episodes):
        xs, ys, xq, yq = sampler.sample(k_shot, gen)
        eps.append((xs, ys, xq, yq, init_params(x.shape[1], cfg.hidden, cfg.n_way, gen)))
    results = {}
    for method, lr in lrs.items():
        finals, curves = [], torch.zeros(cfg.inner_steps + 1)
        for xs, ys, xq, yq, fresh in tqdm(eps, desc=f"{cfg.n_way}-way {k_shot}-shot {method}", disable=not progress):
            theta0 = inits[method] if inits and method in inits else fresh
            _, accs = adapt(method, theta0, (xs, ys), steps=cfg.inner_steps, lr=lr, hidden=cfg.hidden,
                            n_way=cfg.n_way, network=network, query=(xq, yq))
            finals.append(accs[-1])
            curves += torch.tensor(accs)
        mean, half = _ci95(finals)
        results[method] = {"lr": lr, "accuracy": mean, "ci95": half, "per_step": (curves / episodes).tolist()}
    return results


# ------------------------------------------------------------------------------------- benchmark


def run_benchmark(
    network: CoordinatewiseLSTM,
    cfg: FewShotConfig,
    out_dir: str | Path,
    *,
    episodes: int = 600,
    tune_episodes: int | None = None,
    k_shots: Sequence[int] = (1, 5),
    weights_name: str = "",
    command: str | None = None,
    init: str = "fresh",
    init_dir: str | Path | None = None,
    baseline_meta_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Tune the baselines' lr on meta-training classes, evaluate all methods on held-out classes,
    write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``.

    ``init="fresh"`` (stem ``few_shot``): every method starts each episode from the same fresh
    default init. ``init="learned"`` (stem ``few_shot_learned_init``), the MAML-style policy: the
    learned optimizer starts from the init it was meta-trained with (``few_shot_init.safetensors``
    in ``init_dir``), and each baseline from an init meta-learned for its own inner loop here
    (MAML for SGD), on the same meta-training episodes, for ``baseline_meta_steps`` (default: as
    many as the learned optimizer had), its inner lr meta-learned too, starting from the tuned one.
    """
    if init not in ("fresh", "learned"):
        raise ValueError(f"init must be 'fresh' or 'learned', got {init!r}")
    if init == "learned" and init_dir is None:
        raise ValueError("init='learned' needs init_dir= (the weights directory with few_shot_init.safetensors)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = digits_classes()
    d_in = data[0].shape[1]
    sampler = EpisodeSampler(data[0], data[1], data[2], cfg.n_way, cfg.q_query)
    inner_lr = float(network.provenance.get("inner_lr", 0) or 0)
    results, tuning, inits, init_training = {}, {}, None, {}
    if init == "learned":
        inits = {"learned": load_init(init_dir, cfg, d_in)}
        base_cfg = dataclasses.replace(cfg, meta_steps=baseline_meta_steps if baseline_meta_steps is not None
                                       else cfg.meta_steps)
        for method in ("sgd", "adam"):
            lr0, tuning[f"fresh-init {method}"] = tune_lr(method, sampler, cfg, cfg.k_shots[0], network=network,
                                                          episodes=tune_episodes)
            t_m = time.perf_counter()
            lr_m, inits[method], hist = meta_train_inner(method, base_cfg, sampler, d_in, lr0=lr0, network=network,
                                                         learn_init=True, progress=progress,
                                                         desc=f"MAML-style init for {method}")
            init_training[method] = {"lr_start": lr0, "lr": lr_m, "meta_steps": base_cfg.meta_steps,
                                     "final_query_loss_mean_last100": sum(hist[-100:]) / max(1, len(hist[-100:])),
                                     "wall_s": round(time.perf_counter() - t_m, 1)}
    for k in k_shots:
        lrs = {}
        for method in ("sgd", "adam"):
            if init == "learned":
                lrs[method] = init_training[method]["lr"]
            else:
                lrs[method], tuning[f"{k}-shot {method}"] = tune_lr(
                    method, sampler, cfg, k, network=network, episodes=tune_episodes)
        if inner_lr > 0:
            lrs["learned"] = inner_lr
        else:  # weights without a meta-learned step scale: tune it like the baselines
            lrs["learned"], tuning[f"{k}-shot learned"] = tune_lr("learned", sampler, cfg, k, network=network,
                                                                  episodes=tune_episodes)
        lrs = {m: lrs[m] for m in ("learned", "sgd", "adam")}
        results[f"{cfg.n_way}-way {k}-shot"] = evaluate(network, cfg, k_shot=k, episodes=episodes, lrs=lrs,
                                                        data=data, inits=inits, progress=progress)
    wall = time.perf_counter() - t0
    stem = "few_shot" if init == "fresh" else "few_shot_learned_init"
    init_text = ("fresh PyTorch-default init per episode" if init == "fresh" else
                 "init meta-learned per method (MAML-style): the learned optimizer's jointly with it, SGD's and "
                 "Adam's here for their own inner loops (inner lr meta-learned too)")
    payload = {
        "command": command or f"python benchmarks/few_shot.py --weights {weights_name} --episodes {episodes}",
        "weights": weights_name,
        "episodes": episodes,
        "inner_steps": cfg.inner_steps,
        "init": init,
        "baseline_init_training": init_training,
        "model": f"MLP {d_in}-{cfg.hidden}-{cfg.n_way} (ReLU), {init_text}",
        "data": "scikit-learn load_digits, digit x rotation = 40 classes; held-out digits 5-9 (20 classes)",
        "lr_tuning": {k: {str(lr): acc for lr, acc in v.items()} for k, v in tuning.items()},
        "tuning_episodes": tune_episodes or cfg.tune_episodes,
        "results": results,
        "wall_time_s": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        f"# Few-shot: held-out query accuracy ({episodes} episodes, 95% CI), T = {cfg.inner_steps} inner steps",
        "",
        f"Weights: `{weights_name}`. {payload['model']}. {payload['data']}. Baseline lrs tuned on "
        f"meta-training classes (grid {list(FEW_SHOT_LR_GRID)}, {payload['tuning_episodes']} episodes each"
        + ("" if init == "fresh" else "; then meta-learned with the init, " + ", ".join(
            f"{m}: {v['meta_steps']} meta-steps, {v['wall_s']:.0f} s, lr {v['lr_start']:.3g} -> {v['lr']:.3g}"
            for m, v in init_training.items())) + ").",
        f"Command: `{payload['command']}`; wall time {wall:.0f} s, {torch.get_num_threads()} thread(s).",
        "",
        "| setting | learned (lr) | SGD tuned (lr) | Adam tuned (lr) | learned beats both, CIs apart? |",
        "|---|---|---|---|---|",
    ]
    for setting, res in results.items():
        cells = [f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}% ({r['lr']:.3g})" for r in res.values()]
        lo = res["learned"]["accuracy"] - res["learned"]["ci95"]
        apart = all(lo > r["accuracy"] + r["ci95"] for m, r in res.items() if m != "learned")
        lines.append(f"| {setting} | " + " | ".join(cells) + f" | {'yes' if apart else 'no'} |")
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (setting, res) in zip(axes[0], results.items()):
        for method, r in res.items():
            ax.plot(range(len(r["per_step"])), r["per_step"], marker="o", ms=3, label=f"{method} (lr {r['lr']:.3g})")
        ax.set_title(f"{setting}, held-out classes")
        ax.set_xlabel("inner step")
        ax.set_ylabel("query accuracy")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"{stem}.png", dpi=100)
    plt.close(fig)
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m learned_optim.meta.few_shot --out DIR [--config JSON] [--meta-steps N]``: train."""
    import argparse

    parser = argparse.ArgumentParser(description="Meta-train a few-shot inner optimizer on digits.")
    parser.add_argument("--out", required=True, help="directory for config.json + model.safetensors")
    parser.add_argument("--config", default=None, help="JSON file with FewShotConfig fields (default: the defaults)")
    parser.add_argument("--meta-steps", type=int, default=None, help="override meta_steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fields = json.loads(Path(args.config).read_text()) if args.config else {}
    if args.meta_steps is not None:
        fields["meta_steps"] = args.meta_steps
    cfg = FewShotConfig.from_dict(fields)
    _, prov = train_few_shot(cfg, out=args.out)
    print(json.dumps({k: prov[k] for k in ("inner_lr", "wall_time_s", "final_query_loss_mean_last100")}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
