"""The few-shot inner loop (``adapt``) for the learned rule, Adam and SGD, and lr tuning on a grid."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from ...network import CoordinatewiseLSTM
from ..inner import init_inner, inner_step
from .family import EpisodeSampler, init_params, layer_shapes, mlp_logits, query_loss

if TYPE_CHECKING:
    from .config import FewShotConfig

__all__ = ["adapt", "tune_lr", "FEW_SHOT_LR_GRID"]

# 7-point log grid for the baselines' inner lr (and the learned rule's starting lr). SGD on a
# freshly initialised MLP needs large steps to learn anything in 10 steps; Adam smaller ones.
FEW_SHOT_LR_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


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
    The rule's steps are ``learned_optim.meta.inner.inner_step``. With ``create_graph`` the
    result is differentiable w.r.t. ``theta0``, ``lr`` and the network's weights through every
    update (full, second-order). With ``query``, also returns the query accuracy after each step
    (index 0 = before adapting), for accuracy-vs-steps curves.
    """
    xs, ys = support
    state = weights = None
    if method in ("learned", "adam"):
        if network is None:
            raise ValueError(f"method={method!r} needs network=")
        cfg = network.config
        if method == "adam":  # a zero head: exactly Adam, without a cautious mask the network's config may have
            cfg = dataclasses.replace(cfg, cautious_scale=0.0, cautious_rescale=False)
        rule = network if method == "learned" else CoordinatewiseLSTM(cfg)
        weights = {k: getattr(rule, k).to(theta0.dtype) for k in rule.expected_shapes()}
        if method == "adam":
            weights = {k: w.detach() for k, w in weights.items()}
        state = init_inner(theta0, cfg)
    elif method != "sgd":
        raise ValueError(f"method must be 'learned', 'adam' or 'sgd', got {method!r}")
    accs = []

    def acc(th):
        with torch.no_grad():
            return (mlp_logits(th, query[0], hidden, n_way).argmax(1) == query[1]).float().mean().item()

    theta = theta0
    if query is not None:
        accs.append(acc(theta))
    for _ in range(steps):
        if not theta.requires_grad:  # a fresh leaf: never flip the caller's tensor in place
            theta = theta.detach().requires_grad_()
        (g,) = torch.autograd.grad(query_loss(theta, support, hidden, n_way), theta, create_graph=create_graph)
        if state is None:
            theta = theta - lr * g
        else:
            state = inner_step(state._replace(params=theta), g, weights, cfg, lr,
                               layer_shapes(xs.shape[1], hidden, n_way))
            if not create_graph:
                state = state.detached()
            theta = state.params
        if not create_graph:
            theta = theta.detach()
        if query is not None:
            accs.append(acc(theta))
    return theta, accs


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
