r"""Meta-gradient estimators: truncated backpropagation through time and antithetic PES.

Both estimate the gradient of the *meta-objective* with respect to the meta-parameters
:math:`\theta` (the tensors of a ``CoordinatewiseLSTM``), from partial unrolls ("truncations")
of inner trajectories that continue across meta-steps.

**Meta-objective.** For a truncation of :math:`n` inner steps with losses :math:`L_1..L_n`
(the loss *after* each update, on that step's minibatch):

.. math::
    J = \frac{1}{n}\sum_{i=1}^n \min\big(\log L_i,\ \log L_{cap}\big),
    \qquad L_{cap} = \texttt{loss\_cap} \cdot L_{init}

where :math:`L_{init}` is the task's loss at the start of its trajectory. With
``objective_split="heldout"``, :math:`L_i` is taken on a held-out minibatch for tasks that have
held-out data (``heldout_batch``), so the rule is rewarded for generalisation, not for
memorising a small training set; the inner gradients always come from training minibatches.
The log makes tasks of any loss scale count alike and rewards progress late in training as much as early on; the cap
(default ``loss_cap`` 1.5: for a C-class task, whose initial loss is about ln C, this is
learned_optimization's "clip at 1.5 ln C" stabilising trick) bounds what one exploding task
contributes, and a non-finite loss counts as the cap with no gradient, so one divergent task
cannot poison a meta-step with NaN.

With ``rise_penalty`` :math:`\lambda > 0`, each truncation also pays for a rise of the full-batch
loss :math:`L_b` at its end above the lowest such loss of the trajectory so far,
:math:`J \mathrel{+}= \lambda \max(0, \ell_b - \min_{b' < b} \ell_{b'})` with
:math:`\ell = \mathrm{clip}(\log L,\ \log(10^{-12} L_{init}),\ \log L_{cap})` (``rise_term``), so a
rule that reaches a low loss and bounces away from it late in a run is punished even where the
loss is below ``loss_floor``.

**Truncated BPTT** (``TruncatedBPTT``): unroll :math:`n` steps with the parameters carrying
autograd graph back to :math:`\theta` and backpropagate :math:`J`. The inner state (parameters,
moments, LSTM state) is cut with an explicit ``.detach()`` at every truncation boundary, so no
graph survives from one meta-step to the next. With ``second_order=False`` (default) the inner
gradients are treated as constants (the first-order approximation of Andrychowicz et al. 2016);
the meta-gradient still flows through the parameter trajectory and the LSTM state.

**Antithetic PES** (``AntitheticPES``, Vicol et al. 2021, "Unbiased Gradient Estimation in
Unrolled Computation Graphs with Persistent Evolution Strategies"): each trajectory runs twice,
with :math:`\theta+\epsilon_k` and :math:`\theta-\epsilon_k` in truncation :math:`k`, on the same
minibatches, and keeps the running sum :math:`\xi = \sum_{j \le k}\epsilon_j` of the perturbations
it has seen since it started. The estimate

.. math::
    \hat g = \frac{\xi\,(J^+ - J^-)}{2\sigma^2}

is unbiased for the gradient of the Gaussian-smoothed objective over the whole trajectory
(truncated ES, which uses :math:`\epsilon_k` instead of :math:`\xi`, is biased toward short
horizons). It needs no backward pass through the unroll, so it is cheap and memory-flat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from ..common.schedules import WEIGHT_DECAY, warmup_cosine
from ..network import WEIGHT_NAMES, CoordinatewiseLSTM, LSTMOptimizerConfig
from .inner import INNER_IMPLS, InnerState, decay_mask, inner_step
from .task_core import Task, unflatten_params

# WEIGHT_NAMES (network) and InnerState (inner) are re-exported: estimator code and tests use them.
__all__ = [
    "WEIGHT_NAMES",
    "InnerState",
    "Trajectory",
    "meta_objective",
    "rise_term",
    "TruncatedBPTT",
    "AntitheticPES",
    "flat_weights",
    "weights_from_flat",
    "OBJECTIVE_SPLITS",
    "INNER_RECIPES",
]


def flat_weights(net: CoordinatewiseLSTM) -> Tensor:
    """The meta-parameters as one flat (detached) vector, in ``WEIGHT_NAMES`` order."""
    return torch.cat([getattr(net, n).detach().reshape(-1) for n in WEIGHT_NAMES])


def weights_from_flat(flat: Tensor, net: CoordinatewiseLSTM) -> dict[str, Tensor]:
    """The mapping ``lstm_rule`` accepts, as views of ``flat`` shaped like ``net``'s tensors."""
    shapes = [getattr(net, n).shape for n in WEIGHT_NAMES]
    return dict(zip(WEIGHT_NAMES, unflatten_params(flat, shapes)))


@dataclass
class Trajectory:
    """One inner training run in flight across meta-steps.

    Attributes:
        task: the task being optimised; ``shapes``: its parameter shapes.
        task_seed: seed that rebuilt ``task`` from the family (for checkpoints).
        horizon: total inner steps of this trajectory; ``step``: steps done so far.
        data_gen: generator for minibatches (and the initial parameters).
        init_loss: full-batch loss at step 0 (the reference for ``loss_cap``).
        states: one ``InnerState`` (BPTT) or two (PES: +, -). ``step`` above, not the states'
            own ``step``, is the step count the next truncation continues from.
        pes_acc: PES's accumulated perturbation (None for BPTT).
        first_truncation: length of the first truncation (randomised to de-synchronise workers).
        done: set when the horizon is reached or the run diverged.
        best_log: per state, the lowest clipped log full-batch loss at a truncation end so far
            (``rise_term``; None until the first truncation with ``rise_penalty`` > 0).
        recipe: how the inner run trains: ``"constant"`` (the lr as given, no weight decay) or
            ``"scheduled"`` (``common.schedules``: the lr times
            ``warmup_cosine`` over the horizon, decoupled weight decay ``WEIGHT_DECAY`` on tensors
            with two or more dimensions), so the rule can be trained the way the transformer
            benchmark and most users run it. Default "constant".
    """

    task: Task
    shapes: list
    task_seed: int
    horizon: int
    data_gen: torch.Generator
    init_loss: float
    states: list[InnerState]
    step: int = 0
    pes_acc: Tensor | None = None
    first_truncation: int = 0
    done: bool = False
    best_log: list[float] | None = None
    recipe: str = "constant"

    def __post_init__(self) -> None:
        if self.recipe not in ("constant", "scheduled"):
            raise ValueError(f"recipe must be 'constant' or 'scheduled', got {self.recipe!r} (a config's \"mixed\" "
                             "picks one of the two for each trajectory)")

    def truncation_length(self, k: int) -> int:
        if self.step == 0 and self.first_truncation > 0:
            k = self.first_truncation
        return max(0, min(k, self.horizon - self.step))

    def inner_lrs(self, lr: float, n: int) -> float | list[float]:
        """The inner lr of the next ``n`` updates: ``lr`` itself under the constant recipe, else
        one value per update from the schedule over the horizon."""
        if self.recipe == "constant":
            return lr
        return [lr * warmup_cosine(self.step + i, self.horizon) for i in range(n)]

    def weight_decay(self) -> float | Tensor:
        """The inner runs' decoupled weight decay: 0.0, or per coordinate under the scheduled recipe."""
        if self.recipe == "constant":
            return 0.0
        return decay_mask(self.shapes, WEIGHT_DECAY, self.states[0].params.dtype)


def meta_objective(losses: Sequence[Tensor], log_cap: float, log_floor: float = -math.inf,
                   start: int = 0) -> tuple[Tensor | None, bool]:
    """Mean over ``losses[start:]`` (default: the whole truncation) of ``clip(log L_i, log_floor,
    log_cap)``; non-finite losses count as the cap.

    Returns ``(J, diverged)``. Terms that are non-finite or above the cap enter as the constant
    ``log_cap``, terms below ``log_floor`` (default -inf: none) as the constant ``log_floor``
    (no gradient either way); ``diverged`` says whether any term of ``losses``, counted or not, was
    non-finite or capped. ``J`` is None when no term is counted (``start >= len(losses)``).
    """
    terms, diverged = [], False
    for i, loss in enumerate(losses):
        val = loss.detach()
        if torch.isfinite(val) and val > 0 and math.log(float(val)) <= log_floor:
            term = torch.tensor(log_floor, dtype=loss.dtype)
        elif not torch.isfinite(val) or val <= 0 or math.log(float(val)) >= log_cap:
            diverged = diverged or not torch.isfinite(val) or math.log(max(float(val), 1e-300)) >= log_cap
            if torch.isfinite(val) and val <= 0:  # exact zero loss: floor it, no gradient
                term = torch.tensor(math.log(1e-30), dtype=loss.dtype)
            else:
                term = torch.tensor(log_cap, dtype=loss.dtype)
        else:
            term = torch.log(loss) if i >= start else None  # uncounted: no graph to build
        if i >= start:
            terms.append(term)
    return (torch.stack(terms).mean() if terms else None), diverged


def _log_floor(traj: Trajectory, floor_factor: float) -> float:
    """log(floor_factor x the task's initial loss), or -inf without a floor (factor 0)."""
    return math.log(traj.init_loss * floor_factor) if floor_factor > 0 else -math.inf


# rise_term clips log L at this fraction of the initial loss from below: there the loss is mostly float
# rounding (a float32 cross-entropy term is exactly 0 beyond a logit margin of ~17), so its rises are
# not a training failure, and an exact 0 has no log.
RISE_FLOOR = 1e-12


def rise_term(traj: Trajectory, k: int, loss: Tensor, log_cap: float) -> Tensor:
    """The rise of state ``k``'s full-batch loss ``loss`` at a truncation end above the lowest of
    the trajectory so far, on clipped logs: max(0, l - min l') with l = clip(log L, log(RISE_FLOOR x
    L_init), log_cap); updates ``traj.best_log``. A clipped or non-finite loss enters as a constant
    (no gradient), as in ``meta_objective``; otherwise the term carries ``loss``'s graph."""
    lo = math.log(traj.init_loss * RISE_FLOOR)
    if traj.best_log is None:
        traj.best_log = [min(max(math.log(traj.init_loss), lo), log_cap)] * len(traj.states)
    val = loss.detach()
    if not torch.isfinite(val) or val <= 0 or not lo < math.log(float(val)) < log_cap:
        const = lo if torch.isfinite(val) and (val <= 0 or math.log(float(val)) <= lo) else log_cap
        ell = torch.tensor(const, dtype=loss.dtype)
    else:
        ell = torch.log(loss)
    rise = torch.clamp(ell - traj.best_log[k], min=0.0)
    traj.best_log[k] = min(traj.best_log[k], float(ell.detach()))
    return rise


def _full_loss(traj: Trajectory, state: InnerState) -> Tensor:
    """The task's full-batch loss at ``state``'s parameters (with their graph, if any)."""
    return traj.task.loss(unflatten_params(state.params, traj.shapes), traj.task.full_batch())


def _first_counted(traj: Trajectory, objective_from: float) -> int:
    """The index in this truncation's losses of the first one the meta-objective counts: losses
    after inner steps past ``objective_from`` x the trajectory's horizon (0 with 0). ``losses[i]``
    follows inner step ``traj.step + i + 1``."""
    return max(0, math.floor(objective_from * traj.horizon) - traj.step)


def _unroll(
    task: Task,
    shapes: list,
    state: InnerState,
    step0: int,
    batches: Sequence[Any],
    weights,
    config: LSTMOptimizerConfig,
    lr: float | Sequence[float],
    *,
    differentiable: bool,
    second_order: bool = False,
    log_cap: float,
    objective_batches: Sequence[Any] | None = None,
    objective_start: int = 0,
    weight_decay: float | Tensor = 0.0,
    impl: str = "reference",
) -> tuple[list[Tensor], InnerState]:
    """Run ``len(batches) - 1`` inner steps (``inner.inner_step``) from ``state``, cut from its
    graph first, continuing the step count from ``step0`` (the trajectory's, not ``state.step``).

    Returns the losses after each update (the last one on the extra final batch) and the new
    state. With ``objective_batches`` (one per update), the loss after update ``i`` (1-based) is
    taken on ``objective_batches[i - 1]`` instead (held-out data) for the losses from index
    ``objective_start`` on; the ones before are the minibatch losses, which the meta-objective
    does not count. With ``differentiable=True`` the returned losses and state carry graph to
    ``weights``. ``lr``: one value for every update, or one per update (``Trajectory.inner_lrs``);
    ``weight_decay``: as in ``inner_step``; ``impl``: ``inner_step``'s, for graph-free unrolls
    (``differentiable=False``; the reference otherwise).
    """
    if differentiable and impl != "reference":
        raise ValueError(f"impl={impl!r} computes the inner steps without autograd: a differentiable unroll "
                         "needs impl='reference'")
    # The truncation boundary: nothing before this point is reachable.
    state = state.detached()._replace(step=step0)
    state = state._replace(params=state.params.requires_grad_(True))
    losses: list[Tensor] = []
    n = len(batches) - 1
    for i in range(n + 1):
        held = objective_batches is not None and i > 0 and i - 1 >= objective_start
        if held:
            with torch.set_grad_enabled(differentiable):
                losses.append(task.loss(unflatten_params(state.params, shapes), objective_batches[i - 1]))
            if i == n:  # the extra final minibatch only scores the last update
                break
        with torch.enable_grad():
            loss = task.loss(unflatten_params(state.params, shapes), batches[i])
            if i > 0 and not held:
                losses.append(loss)
            if i == n:
                break
            val = loss.detach()
            if not torch.isfinite(val) or math.log(max(float(val), 1e-300)) >= log_cap + 5.0:
                # Far past the cap: the rest of this truncation cannot contribute gradient;
                # stop early and report the cap for the remaining steps.
                losses.extend([torch.tensor(float("inf"))] * (n - i))
                break
            (g,) = torch.autograd.grad(loss, state.params, retain_graph=differentiable, create_graph=second_order)
        if not second_order:
            g = g.detach()
        with torch.set_grad_enabled(differentiable):
            step_lr = lr[i] if isinstance(lr, (list, tuple)) else lr
            state = inner_step(state, g, weights, config, step_lr, shapes, weight_decay, impl)
        if not differentiable:
            state = state._replace(params=state.params.detach().requires_grad_(True))
    return losses, state


def _batches(traj: Trajectory, n: int) -> list[Any]:
    return [traj.task.sample_batch(traj.data_gen) for _ in range(n + 1)]


OBJECTIVE_SPLITS = ("train", "heldout")
INNER_RECIPES = ("constant", "scheduled", "mixed")  # "mixed": each trajectory one of the first two


def _objective_batches(traj: Trajectory, n: int, objective_split: str) -> list[Any] | None:
    """With ``"heldout"``, one held-out minibatch per update for tasks that have held-out data
    (``heldout_batch``); None otherwise (the objective uses the training minibatches)."""
    if objective_split not in OBJECTIVE_SPLITS:
        raise ValueError(f"objective_split must be one of {OBJECTIVE_SPLITS}, got {objective_split!r}")
    if objective_split == "train" or not hasattr(traj.task, "heldout_batch"):
        return None
    return [traj.task.heldout_batch(traj.data_gen) for _ in range(n)]


@dataclass
class TruncatedBPTT:
    """Truncated backpropagation through the unrolled inner optimisation.

    Args:
        truncation_length: inner steps per truncation. Default 20 (Andrychowicz et al. 2016).
        second_order: backpropagate through the inner gradients too (``create_graph``). Default
            False: first-order, ~2x cheaper and stabler on these tasks.
    """

    truncation_length: int = 20
    second_order: bool = False
    n_states: int = field(default=1, init=False)

    def estimate(self, net: CoordinatewiseLSTM, trajs: Sequence[Trajectory], meta_gen: torch.Generator,
                 lr: float, log_cap_factor: float, floor_factor: float = 0.0,
                 objective_from: float = 0.0, objective_split: str = "train",
                 rise_penalty: float = 0.0) -> tuple[Tensor, dict[str, float]]:
        """Advance every trajectory by one truncation; return the mean meta-gradient (flat).
        ``objective_from``: the meta-objective counts only the losses after this fraction of each
        trajectory's horizon (default 0: all; ``_first_counted``). ``objective_split``: ``"train"``
        (default: the loss after each update on the next training minibatch) or ``"heldout"``
        (on a held-out minibatch, for tasks with ``heldout_batch``; the others keep "train").
        ``rise_penalty``: the weight of ``rise_term`` at each truncation end the objective counts
        (default 0: none, and no full-batch loss is computed)."""
        params = [getattr(net, n) for n in WEIGHT_NAMES]
        total = torch.zeros(sum(p.numel() for p in params))
        objs, used, bad = [], 0, 0
        for traj in trajs:
            n = traj.truncation_length(self.truncation_length)
            if n == 0:
                traj.done = True
                continue
            log_cap = math.log(traj.init_loss * log_cap_factor)
            log_floor = _log_floor(traj, floor_factor)
            start = _first_counted(traj, objective_from)
            batches = _batches(traj, n)
            losses, new = _unroll(traj.task, traj.shapes, traj.states[0], traj.step, batches, net,
                                  net.config, traj.inner_lrs(lr, n), differentiable=True,
                                  second_order=self.second_order, log_cap=log_cap,
                                  objective_batches=_objective_batches(traj, n, objective_split),
                                  objective_start=start, weight_decay=traj.weight_decay())
            obj, diverged = meta_objective(losses, log_cap, log_floor, start)
            if rise_penalty > 0:
                # the truncation's end is counted exactly when any loss is; otherwise the loss only
                # updates the trajectory's best, and no graph is built for it
                with torch.set_grad_enabled(obj is not None):
                    rise = rise_term(traj, 0, _full_loss(traj, new), log_cap)
                if obj is not None:
                    obj = obj + rise_penalty * rise
            if obj is not None and obj.requires_grad:
                grads = torch.autograd.grad(obj, params, allow_unused=True)
                flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                  for g, p in zip(grads, params)])
                if torch.isfinite(flat).all():
                    total += flat
                    used += 1
                else:
                    bad += 1
            traj.states[0] = new.detached()  # explicit truncation: drop the graph here
            traj.step += n
            traj.done = diverged or traj.step >= traj.horizon
            if obj is not None:
                objs.append(float(obj.detach()) - math.log(traj.init_loss))
        stats = {"meta_loss": sum(objs) / max(1, len(objs)), "nonfinite_grads": float(bad)}
        return total / max(1, used), stats


@dataclass
class AntitheticPES:
    """Persistent evolution strategies with antithetic pairs sharing minibatches.

    Args:
        truncation_length: inner steps per truncation. Default 20.
        sigma: standard deviation of the perturbation of each meta-parameter. Default 0.01:
            small next to the O(0.1-1) meta-parameters, so J(theta +- eps) stays in the locally
            linear regime (tests/test_meta_estimators.py checks the estimate against the exact
            gradient at this value).
        inner_impl: ``inner.inner_step``'s ``impl`` for the unrolls, which need no autograd:
            ``"reference"`` (default) or a batched backend (``"auto"``: the C loop on CPU).
    """

    truncation_length: int = 20
    sigma: float = 0.01
    inner_impl: str = "reference"
    n_states: int = field(default=2, init=False)

    def __post_init__(self) -> None:
        if self.inner_impl not in INNER_IMPLS:
            raise ValueError(f"inner_impl must be one of {INNER_IMPLS}, got {self.inner_impl!r}")

    def estimate(self, net: CoordinatewiseLSTM, trajs: Sequence[Trajectory], meta_gen: torch.Generator,
                 lr: float, log_cap_factor: float, floor_factor: float = 0.0,
                 objective_from: float = 0.0, objective_split: str = "train",
                 rise_penalty: float = 0.0) -> tuple[Tensor, dict[str, float]]:
        """As ``TruncatedBPTT.estimate``, by antithetic perturbations of the flat weights."""
        theta = flat_weights(net)
        total = torch.zeros_like(theta)
        objs, used = [], 0
        with torch.no_grad():
            for traj in trajs:
                n = traj.truncation_length(self.truncation_length)
                if n == 0:
                    traj.done = True
                    continue
                eps = torch.randn(theta.shape, generator=meta_gen) * self.sigma
                if traj.pes_acc is None:
                    traj.pes_acc = torch.zeros_like(theta)
                traj.pes_acc += eps
                log_cap = math.log(traj.init_loss * log_cap_factor)
                log_floor = _log_floor(traj, floor_factor)
                batches = _batches(traj, n)  # shared by both members of the pair, as are the held-out ones
                js, div, start = [], False, _first_counted(traj, objective_from)
                held = _objective_batches(traj, n, objective_split)
                lrs, wd = traj.inner_lrs(lr, n), traj.weight_decay()
                for k, sign in enumerate((1.0, -1.0)):
                    w = weights_from_flat(theta + sign * eps, net)
                    losses, new = _unroll(traj.task, traj.shapes, traj.states[k], traj.step, batches, w, net.config,
                                          lrs, differentiable=False, log_cap=log_cap, objective_batches=held,
                                          objective_start=start, weight_decay=wd, impl=self.inner_impl)
                    j, d = meta_objective(losses, log_cap, log_floor, start)
                    if rise_penalty > 0:
                        rise = rise_term(traj, k, _full_loss(traj, new), log_cap)
                        if j is not None:
                            j = j + rise_penalty * rise
                    js.append(0.0 if j is None else float(j))  # nothing counted yet: no signal, no gradient
                    div = div or d
                    traj.states[k] = new.detached()
                total += traj.pes_acc * ((js[0] - js[1]) / (2 * self.sigma**2))
                used += 1
                traj.step += n
                traj.done = div or traj.step >= traj.horizon
                if start < n:
                    objs.append(0.5 * (js[0] + js[1]) - math.log(traj.init_loss))
        stats = {"meta_loss": sum(objs) / max(1, len(objs)), "nonfinite_grads": 0.0}
        return total / max(1, used), stats
