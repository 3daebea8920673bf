"""Held-out meta-validation: the learned rule against plain and tuned Adam on tasks it never trained on.

During meta-training the trainer evaluates its current weights every ``eval_every`` meta-steps
and keeps the best by ``metric``: the mean over validation tasks of

    log(final loss of the learned rule / final loss of tuned Adam)

(lower is better; "tuned Adam" is the best of ``common.adam_baseline.ADAM_LR_GRID`` on that task;
a diverged run counts as ``loss_cap`` x its initial loss). Losses are full-batch training losses
after ``horizon`` steps; every method sees the same initial parameters and minibatches.

Example::

    >>> from learned_optim.meta.task_families import tiny_validation_tasks
    >>> from learned_optim.network import CoordinatewiseLSTM
    >>> tasks = tiny_validation_tasks()
    >>> ev = evaluate(CoordinatewiseLSTM(), tasks, adam_baselines(tasks), inner_lr=1e-3, loss_cap=1.5)
    >>> ev["n"], ev["diverged"]          # the untrained rule is Adam at lr 1e-3
    (1, 0)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from ..common.adam_baseline import ADAM_LR_GRID, diverged
from ..common.schedules import WEIGHT_DECAY, warmup_cosine
from ..network import CoordinatewiseLSTM
from .inner import decay_mask, init_inner, inner_step
from .task_core import Task, flatten_params, unflatten_params

__all__ = ["full_loss", "run_inner", "ratio_log", "adam_baselines", "evaluate", "REDUCTIONS"]

# How ``evaluate`` combines the tasks into its metric (``MetaTrainConfig.val_reduce``).
REDUCTIONS = ("mean", "max")

# Task i of a validation set runs with seed VAL_SEED + i, for every method and every evaluation.
VAL_SEED = 1000


def full_loss(task: Task, params_flat: Tensor, shapes: Sequence[torch.Size]) -> float:
    """``task``'s loss on its full batch at the flat parameters ``params_flat`` (no graph)."""
    with torch.no_grad():
        return float(task.loss(unflatten_params(params_flat, shapes), task.full_batch()))


def run_inner(task: Task, horizon: int, seed: int, *, weights: CoordinatewiseLSTM | None = None,
              lr: float = 1e-3, impl: str = "reference", recipe: str = "constant",
              clip_norm: float | None = None) -> dict[str, Any]:
    """Train ``task`` for ``horizon`` steps with the learned rule (``weights``) or, with
    ``weights=None``, ``torch.optim.Adam``; both see the same initial parameters and minibatches.

    Args:
        task: the task; its initial parameters and minibatches come from one generator seeded
            with ``seed``.
        horizon: inner steps.
        seed: the generator's seed.
        weights: the learned rule's network, or None for Adam. Default None.
        lr: the learning rate. Default 1e-3.
        impl: ``inner.inner_step``'s ``impl`` for the learned rule's steps (no autograd flows
            through them). Default "reference".
        recipe: ``"constant"`` (``lr`` throughout, no weight decay) or ``"scheduled"`` (the
            transformer benchmark's: ``lr`` times ``common.schedules.warmup_cosine`` over the
            horizon, decoupled weight decay ``WEIGHT_DECAY`` on tensors with two or more
            dimensions, applied before each step as torch's AdamW does). Default "constant".
        clip_norm: clip each gradient to this norm first (the transformer benchmark clips to
            1), or None. Default None.
    Returns:
        ``{"init_loss", "final_loss", "diverged"}`` with full-batch losses; diverged means a
        non-finite loss or a final loss above the initial one (``common.adam_baseline.diverged``).
    """
    if recipe not in ("constant", "scheduled"):
        raise ValueError(f"recipe must be 'constant' or 'scheduled', got {recipe!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm!r}")
    gen = torch.Generator().manual_seed(seed)
    params = task.init_params(gen)
    shapes = [p.shape for p in params]
    p = flatten_params(params).detach().clone()
    init = full_loss(task, p, shapes)
    wd = decay_mask(shapes, WEIGHT_DECAY, p.dtype) if recipe == "scheduled" else 0.0
    if weights is None:
        p.requires_grad_(True)
        opt = torch.optim.Adam([p], lr=lr)
    else:
        state = init_inner(p.clone(), weights.config)
        p = state.params.requires_grad_(True)
    for t in range(horizon):
        step_lr = lr * warmup_cosine(t, horizon) if recipe == "scheduled" else lr
        batch = task.sample_batch(gen)
        loss = task.loss(unflatten_params(p, shapes), batch)
        if not torch.isfinite(loss.detach()):
            return {"init_loss": init, "final_loss": float("nan"), "diverged": True}
        (g,) = torch.autograd.grad(loss, p)
        with torch.no_grad():
            if clip_norm is not None:
                g = g * min(1.0, clip_norm / max(float(g.norm()), 1e-12))
            if weights is None:
                if recipe == "scheduled":
                    opt.param_groups[0]["lr"] = step_lr
                    p.mul_(1 - step_lr * wd)
                p.grad = g
                opt.step()
            else:
                state = inner_step(state._replace(params=p), g, weights, weights.config, step_lr, shapes, wd,
                                   impl=impl)
                p = state.params.requires_grad_(True)
    final = full_loss(task, p.detach(), shapes)
    return {"init_loss": init, "final_loss": final, "diverged": diverged(init, final)}


def ratio_log(final: float, init: float, ref: float, cap: float) -> float:
    """log(final / ref); a diverged run (``common.adam_baseline.diverged``) counts as
    ``cap`` x its initial loss (or its final loss, if larger and finite)."""
    if diverged(init, final):
        final = max(init * cap, final if math.isfinite(final) else 0.0)
    return math.log(max(final, 1e-12) / max(ref, 1e-12))


def _seed(i: int, s: int) -> int:
    """Seed of validation task ``i`` in repeat ``s`` (repeat 0: ``VAL_SEED + i``, as with one seed)."""
    return VAL_SEED + i + 7919 * s


def _reusable(row: Any, task: Task, horizon: int, seeds: int) -> bool:
    """Whether an earlier baseline ``row`` is the one ``adam_baselines`` would compute at its index:
    same task name and horizon, made with the same number of seeds."""
    if not isinstance(row, dict) or row.get("task") != task.name or row.get("horizon") != horizon:
        return False
    per_seed = row.get("tuned_adam_seeds")
    return per_seed is None if seeds == 1 else isinstance(per_seed, list) and len(per_seed) == seeds


def _indices(indices: Sequence[int] | None, n: int) -> list[int]:
    """Each task's index in its validation set (``range(n)`` by default), checked."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
        raise TypeError(f"indices must be a list of ints, one per task, got {type(indices).__name__}; "
                        f"pass e.g. [1, 3] for the second and fourth tasks of a set, or None")
    out = list(indices)
    if len(out) != n or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in out):
        raise ValueError(f"indices must hold one int >= 0 per task ({n} tasks), got {out!r}; pass each task's "
                         f"position in the full validation set, or None for 0..{n - 1}")
    return out


def adam_baselines(val_tasks: Sequence[tuple[Task, int]], seeds: int = 1,
                   reuse: Sequence[dict[str, Any]] | None = None, *,
                   indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Adam at every lr of ``ADAM_LR_GRID`` on each ``(task, horizon)``, ``seeds`` runs each: one
    row per task with ``task``, ``horizon``, ``init_loss``, ``adam_1e-3`` (final loss at lr 1e-3),
    ``tuned_adam`` (the best final loss; diverged runs never win) and ``tuned_lr``; losses are
    means over the seeds, the best lr the one with the lowest mean log final loss. With
    ``seeds`` > 1 the rows also hold ``tuned_adam_seeds``, the tuned lr's final loss per seed.

    ``reuse``: rows of an earlier call, taken as they are instead of recomputed. Row ``i`` is reused
    for task ``i`` when it names the same task and horizon and was made with the same number of
    seeds; a row is a deterministic function of those and of its index (the seeds depend on it),
    so a reused row is the one this call would compute. The other tasks are computed. Default None.

    ``indices``: each task's index in its validation set, which sets its seeds (default ``None``:
    ``0, 1, ...``). Passing a subset of a set with the subset's positions in the full set gives
    the rows the full set's call gives for those tasks (e.g. to rerun only some tasks with more
    seeds).
    """
    if reuse is not None and (isinstance(reuse, (str, bytes, dict)) or not isinstance(reuse, Sequence)):
        raise TypeError(f"reuse must be a list of baseline rows (dicts), got {type(reuse).__name__}; "
                        f"pass e.g. the list an earlier adam_baselines call returned, or None")
    rows = []
    for k, (i, (task, horizon)) in enumerate(zip(_indices(indices, len(val_tasks)), val_tasks)):
        if reuse is not None and k < len(reuse) and _reusable(reuse[k], task, horizon, seeds):
            rows.append(dict(reuse[k]))
            continue
        runs = {lr: [run_inner(task, horizon, _seed(i, s), lr=lr) for s in range(seeds)] for lr in ADAM_LR_GRID}
        score = {lr: (sum(math.log(max(r["final_loss"], 1e-12)) for r in rs) / seeds
                      if not any(r["diverged"] for r in rs) else float("inf")) for lr, rs in runs.items()}
        best_lr = min(score, key=score.get)
        row = {
            "task": task.name, "horizon": horizon, "init_loss": _mean([r["init_loss"] for r in runs[1e-3]]),
            "adam_1e-3": _mean([r["final_loss"] for r in runs[1e-3]]),
            "tuned_adam": _mean([r["final_loss"] for r in runs[best_lr]]), "tuned_lr": best_lr,
        }
        if seeds > 1:
            row["tuned_adam_seeds"] = [r["final_loss"] for r in runs[best_lr]]
        rows.append(row)
    return rows


def _mean(xs: Sequence[float]) -> float:
    return xs[0] if len(xs) == 1 else sum(xs) / len(xs)


def evaluate(net: CoordinatewiseLSTM, val_tasks: Sequence[tuple[Task, int]], baselines: Sequence[dict[str, Any]],
             *, inner_lr: float, loss_cap: float, seeds: int = 1, reduce: str = "mean",
             inner_impl: str = "reference", indices: Sequence[int] | None = None) -> dict[str, Any]:
    """Held-out evaluation of ``net`` at ``inner_lr`` against the rows of ``adam_baselines`` (made
    with the same ``seeds``, default 1).

    Returns ``{"metric", "wins_vs_adam", "diverged", "n", "rows", "log_ratios"}``: ``metric`` is, with
    ``reduce="mean"`` (default), the mean over tasks and seeds of log(final loss / tuned-Adam final
    loss on that seed), with ``reduce="max"`` the largest of the tasks' means (lower is better; a
    divergence counts as ``loss_cap`` x the initial loss), ``wins_vs_adam`` the number of tasks
    with a lower mean final loss than Adam at lr 1e-3, ``diverged`` the number of diverged runs,
    ``rows`` the baseline rows with ``learned`` (mean final loss), ``diverged`` and
    ``ratio_vs_tuned`` (exp of the task's mean log ratio) added, ``log_ratios`` each task's
    per-seed log ratios (a list per task; their spread is the metric's seed noise).
    ``inner_impl``: ``run_inner``'s ``impl`` (default "reference"). ``indices``: each task's index
    in its validation set, which sets its seeds, as in ``adam_baselines`` (default ``None``:
    ``0, 1, ...``).
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    rows, logs, task_means, per_seed, wins, div = [], [], [], [], 0, 0
    for i, (task, horizon), base in zip(_indices(indices, len(val_tasks)), val_tasks, baselines):
        refs = base.get("tuned_adam_seeds", [base["tuned_adam"]])
        if len(refs) != seeds:
            raise ValueError(f"baselines were made with {len(refs)} seed(s), evaluate got seeds={seeds}")
        runs = [run_inner(task, horizon, _seed(i, s), weights=net, lr=inner_lr, impl=inner_impl)
                for s in range(seeds)]
        task_logs = [ratio_log(r["final_loss"], r["init_loss"], ref, loss_cap) for r, ref in zip(runs, refs)]
        lr_ = _mean(task_logs)
        task_means.append(lr_)
        logs.extend(task_logs)
        n_div = sum(r["diverged"] for r in runs)
        learned = _mean([r["final_loss"] for r in runs])
        wins += int(not n_div and learned < base["adam_1e-3"])
        div += n_div
        rows.append({**base, "learned": learned, "diverged": bool(n_div), "ratio_vs_tuned": math.exp(lr_)})
        per_seed.append(task_logs)
    if not logs:
        metric = float("nan")
    else:
        metric = sum(logs) / len(logs) if reduce == "mean" else max(task_means)
    return {"metric": metric, "wins_vs_adam": wins, "diverged": div, "n": len(rows), "rows": rows,
            "log_ratios": per_seed}
