"""The meta-training loop: ``MetaTrainer`` and ``meta_train(...)``.

One meta-step advances ``num_trajectories`` inner training runs ("trajectories", each a task
from the training family with its own horizon) by one truncation each, averages their
meta-gradient estimates (``estimators``), clips it and takes one Adam step on the meta-parameters.
A trajectory that reaches its horizon or diverges is replaced by a fresh task.

Output directory ``out``:
    ``config.json`` + ``model.safetensors``: the best weights so far by held-out evaluation
        (``validation``; ``save_pretrained`` format; the meta-training config and results are in
        the provenance);
    ``checkpoint.pt``: everything needed to resume (``checkpoint``), written atomically;
    ``log.jsonl``: one JSON object per logged meta-step and per evaluation;
    ``val_baselines.json``: the validation tasks' Adam baselines (reusable by a later run);
    ``evals/step{N}/``: the weights at every evaluation, with ``save_evals=True``.

Determinism: the run is a function of the config (and ``init``/``tasks``). All randomness comes
from ``torch.Generator`` objects whose states are checkpointed, so a run killed at any moment
and resumed produces bit-identical weights to an uninterrupted one (with the same thread count).

The config (``MetaTrainConfig``, ``PRESETS``, ``load_config``), the checkpoint file names and
``run_inner`` are importable from here too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ..common.adam_baseline import ADAM_LR_GRID
from ..hub import from_pretrained, save_pretrained
from ..network import PRIOR_KEYS, WEIGHT_NAMES, CoordinatewiseLSTM, LSTMOptimizerConfig
from . import distributed as _dist
from .checkpoint import (
    CHECKPOINT_NAME,
    LOG_NAME,
    append_log,
    gen_state,
    make_gen,
    read_checkpoint,
    traj_from_dict,
    traj_to_dict,
    truncate_log,
    write_checkpoint,
)
from .config import PRESETS, TRAIN_FAMILIES, VAL_TASKS, MetaTrainConfig, get_preset, load_config
from .estimators import AntitheticPES, Trajectory, TruncatedBPTT
from .inner import init_inner
from .task_core import as_family, as_task, flatten_params
from .validation import adam_baselines, evaluate, full_loss, run_inner

BASELINES_NAME = "val_baselines.json"
EVALS_DIR = "evals"


def _load_baselines(value) -> list[dict[str, Any]] | None:
    """``val_baselines`` as a list of rows: None, a list, or a JSON file holding a list."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"val_baselines={os.fspath(value)!r} is not a file; pass a JSON file of "
                                    f"baseline rows, e.g. an earlier run's {BASELINES_NAME}")
        try:
            value = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"val_baselines={os.fspath(path)!r} is not valid JSON ({e}); pass a JSON list "
                             f"of baseline rows, e.g. an earlier run's {BASELINES_NAME}") from None
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise ValueError(f"val_baselines must be a list of baseline rows (JSON objects), got "
                         f"{type(value).__name__}; pass e.g. an earlier run's {BASELINES_NAME}")
    return value


__all__ = [
    "MetaTrainConfig",
    "MetaTrainer",
    "meta_train",
    "PRESETS",
    "get_preset",
    "load_config",
    "run_inner",
    "ADAM_LR_GRID",
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "BASELINES_NAME",
    "EVALS_DIR",
]


class MetaTrainer:
    """Meta-train a ``CoordinatewiseLSTM`` (see the module docstring for outputs and guarantees).

    Args:
        config: a ``MetaTrainConfig``, preset name, JSON path or dict. Default the "default" preset.
        out: output directory (created). Required.
        init: start from these weights (shipped name, directory, Hub id or a
            ``CoordinatewiseLSTM``) instead of a fresh Adam-equivalent network; their rule config
            is kept, except that context features the config's ``network`` adds to it start at
            zero weight (``CoordinatewiseLSTM.with_context_features``). Default None.
        tasks: train on these instead of ``config.train_tasks``: a ``TaskFamily``, a ``Task``,
            ``(model, (X, y))`` tuples, or a list of them. Default None.
        val_tasks: held-out evaluation tasks as ``[(task, horizon), ...]`` instead of
            ``config.val_tasks``. Default None.
        progress: show a tqdm progress bar on stderr. Default True.
        command: the command line that started the run, recorded in the provenance. Default None.
        val_baselines: Adam baseline rows of the validation tasks computed before (a list of them
            or a JSON file holding one, e.g. another run's ``val_baselines.json``): rows that match
            are reused instead of recomputed (``validation.adam_baselines``, ``reuse``), which
            changes no result. Default None (all computed).
        save_evals: also save the weights at every evaluation to ``out/evals/step{N}``
            (``save_pretrained`` layout), so that any evaluated point can be benchmarked later.
            Default False.

    Every run writes the validation tasks' Adam baselines to ``out/val_baselines.json``.
    """

    def __init__(self, config=None, out: str | os.PathLike | None = None, *, init=None, tasks=None,
                 val_tasks=None, progress: bool = True, command: str | None = None,
                 val_baselines=None, save_evals: bool = False) -> None:
        if out is None:
            raise ValueError("out must be given: the directory for weights, checkpoints and logs")
        if Path(out).exists() and not Path(out).is_dir():
            raise ValueError(f"out={os.fspath(out)!r} is a file; pass a directory (it is created if missing)")
        self.config = load_config(config)
        self.out = Path(out)
        self.command = command
        self.custom_tasks = tasks is not None
        self.family = as_family(tasks) if tasks is not None else TRAIN_FAMILIES[self.config.train_tasks]()
        if val_tasks is not None:
            vt = []
            for item in val_tasks:
                if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], int)):
                    raise TypeError(f"val_tasks must be a list of (task, horizon) pairs, got an item {item!r}")
                vt.append((as_task(item[0]), item[1]))
            self.val_tasks = vt
        else:
            self.val_tasks = VAL_TASKS[self.config.val_tasks]()
        if isinstance(init, CoordinatewiseLSTM):
            self.net = CoordinatewiseLSTM(init.config, provenance=dict(init.provenance))
            self.net.load_state_dict(init.state_dict())
            self.init_name = "<CoordinatewiseLSTM instance>"
        elif init is not None:
            self.net = from_pretrained(init)
            self.init_name = os.fspath(init)
        else:
            self.net = CoordinatewiseLSTM(LSTMOptimizerConfig.from_dict(self.config.network), seed=self.config.seed)
            self.init_name = None
        if init is not None:
            target = LSTMOptimizerConfig.from_dict(self.config.network)
            if _adds_context(self.net.config, target):
                # the config asks for more context inputs than the init weights have: they start at
                # zero weight (the init's rule exactly) and are learned from there
                self.net = self.net.with_context_features(target.context_features)
            self._warn_prior_twice(self.net.provenance)
        self.net.provenance = {}
        c = self.config
        if c.prior_in_training:
            # the priors are part of the rule being trained: added now, held fixed in _loop
            self.net = self._add_priors(self.net)
            self.net.provenance = {}
        self.estimator = (AntitheticPES(c.truncation_length, c.pes_sigma, c.inner_impl) if c.estimator == "pes"
                          else TruncatedBPTT(c.truncation_length, c.second_order))
        self.meta_opt = torch.optim.Adam(self.net.parameters(), lr=c.meta_lr)
        self.meta_gen = torch.Generator().manual_seed(c.seed)
        # Distributed meta-training: slot i belongs to rank i % world; see _estimate.
        self.rank, self.world = _dist.world()
        if self.world > 1 and not c.slot_rng:
            raise ValueError(
                f"distributed meta-training ({self.world} processes) needs slot_rng=true, so that the run "
                f"does not depend on the number of processes: add \"slot_rng\": true to the config or "
                f"pass --set slot_rng=true"
            )
        self.slot_gens = ([torch.Generator().manual_seed(_dist.slot_seed(c.seed, i)) for i in range(c.num_trajectories)]
                          if c.slot_rng else None)
        self.progress = progress and self.rank == 0
        self.step = 0
        self.trajs: list[Trajectory | None] = [None] * c.num_trajectories
        self.best = {"metric": float("inf"), "step": -1, "weights": None, "table": None}
        self.baselines: list[dict] | None = None
        self.reuse_baselines = _load_baselines(val_baselines)
        if not isinstance(save_evals, bool):
            raise TypeError(f"save_evals must be True or False, got {save_evals!r}")
        self.save_evals = save_evals
        self.elapsed = 0.0
        self.last_eval: dict | None = None

    # ------------------------------------------------------------------ trajectories
    def _horizon_cap(self) -> float:
        c = self.config
        ramp = c.curriculum_fraction * c.meta_steps
        frac = 1.0 if ramp <= 0 else min(1.0, self.step / ramp)
        return math.exp(math.log(c.horizon_min) + frac * (math.log(c.horizon_max) - math.log(c.horizon_min)))

    def _build_task(self, seed: int):
        """The training task of a trajectory: a deterministic function of its seed."""
        return self.family.sample(torch.Generator().manual_seed(seed))

    def _new_traj(self, slot: int, first: bool) -> Trajectory:
        c = self.config
        gen = self.meta_gen if self.slot_gens is None else self.slot_gens[slot]
        seed = int(torch.randint(2**31 - 1, (), generator=gen))
        hi = self._horizon_cap()
        u = torch.rand((), generator=gen).item()
        horizon = int(round(math.exp(math.log(c.horizon_min) + u * (math.log(hi) - math.log(c.horizon_min)))))
        # De-synchronised starts: the first trajectories of a run get a random first truncation
        # so that they do not all reach their horizon (and reset) on the same meta-step.
        first_trunc = int(torch.randint(1, c.truncation_length + 1, (), generator=gen)) if first else 0
        recipe = c.inner_recipe
        if recipe == "mixed":  # drawn last, so the other recipes keep the random stream they always had
            recipe = "scheduled" if torch.rand((), generator=gen).item() < 0.5 else "constant"
        task = self._build_task(seed)
        data_gen = torch.Generator().manual_seed(seed + 1)
        params = task.init_params(data_gen)
        shapes = [p.shape for p in params]
        flat = flatten_params(params).detach()
        init_loss = full_loss(task, flat, shapes)
        if not math.isfinite(init_loss) or init_loss <= 0:
            init_loss = max(init_loss, 1e-8) if math.isfinite(init_loss) else 1.0
        st = init_inner(flat.clone(), self.net.config)
        states = [st] + [st.clone() for _ in range(self.estimator.n_states - 1)]
        return Trajectory(task, shapes, seed, horizon, data_gen, init_loss, states, 0, None, first_trunc,
                          recipe=recipe)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, net: CoordinatewiseLSTM | None = None) -> dict[str, Any]:
        """Held-out evaluation of ``net`` (default: the current weights) against Adam on the
        validation tasks (``validation.evaluate``; the Adam baselines are computed once per run)."""
        if self.baselines is None:
            self.baselines = adam_baselines(self.val_tasks, self.config.val_seeds, reuse=self.reuse_baselines)
            if self.rank == 0:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / BASELINES_NAME).write_text(json.dumps(self.baselines, indent=1) + "\n")
        return evaluate(net or self.net, self.val_tasks, self.baselines, inner_lr=self.config.inner_lr,
                        loss_cap=self.config.loss_cap, seeds=self.config.val_seeds,
                        reduce=self.config.val_reduce, inner_impl=self.config.inner_impl)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> dict:
        return {
            "config": json.dumps(self.config.to_dict(), sort_keys=True),
            "init": self.init_name,
            "custom_tasks": self.custom_tasks,
            "step": self.step,
            "elapsed": self.elapsed,
            "network_config": json.dumps(self.net.config.to_dict(), sort_keys=True),
            "net": {n: getattr(self.net, n).detach().clone() for n in WEIGHT_NAMES},
            "meta_opt": self.meta_opt.state_dict(),
            "meta_gen": gen_state(self.meta_gen),
            "trajs": _dist.gather_slots([None if t is None else traj_to_dict(t) for t in self.trajs],
                                        self.rank, self.world),
            "slot_gens": (None if self.slot_gens is None else
                          _dist.gather_slots([gen_state(g) for g in self.slot_gens], self.rank, self.world)),
            "best": dict(self.best),
            "baselines": json.dumps(self.baselines),
            "last_eval": json.dumps(self.last_eval),
        }

    def save_checkpoint(self) -> Path:
        """Write the checkpoint (rank 0; every rank must call it: slots are gathered)."""
        path = self.out / CHECKPOINT_NAME
        ck = self._checkpoint()
        if self.rank == 0:
            write_checkpoint(ck, path)
        return path

    def load_checkpoint(self) -> bool:
        """Restore from ``out/checkpoint.pt`` if it exists; returns whether it did."""
        path = self.out / CHECKPOINT_NAME
        if not path.is_file():
            return False
        ck = read_checkpoint(path)
        saved = MetaTrainConfig.from_dict(json.loads(ck["config"]))
        if saved != self.config:
            diff = {k: (v, getattr(self.config, k)) for k, v in saved.to_dict().items() if getattr(self.config, k) != v}
            raise ValueError(
                f"cannot resume {path}: it was made with a different config (checkpoint vs now: {diff}); "
                f"resume with the same --config, or use a new --out directory"
            )
        if ck["custom_tasks"] != self.custom_tasks:
            raise ValueError(f"cannot resume {path}: it was {'' if ck['custom_tasks'] else 'not '}trained on "
                             f"custom tasks; pass the same tasks")
        netcfg = LSTMOptimizerConfig.from_dict(json.loads(ck["network_config"]))
        self.net = CoordinatewiseLSTM(netcfg)
        with torch.no_grad():
            for n in WEIGHT_NAMES:
                getattr(self.net, n).copy_(ck["net"][n])
        self.meta_opt = torch.optim.Adam(self.net.parameters(), lr=self.config.meta_lr)
        self.meta_opt.load_state_dict(ck["meta_opt"])
        self.meta_gen = make_gen(ck["meta_gen"])
        self.step = ck["step"]
        self.elapsed = ck["elapsed"]
        self.init_name = ck["init"]
        self.trajs = [None if d is None or not self._owns(i) else traj_from_dict(d, self._build_task)
                      for i, d in enumerate(ck["trajs"])]
        if self.slot_gens is not None:
            self.slot_gens = [make_gen(g) for g in ck["slot_gens"]]
        self.best = dict(ck["best"])
        self.baselines = json.loads(ck["baselines"])
        self.last_eval = json.loads(ck["last_eval"])
        if self.rank == 0:
            truncate_log(self.out, self.step)
        return True

    def _log(self, rec: dict) -> None:
        if self.rank == 0:
            append_log(self.out, rec)

    # ------------------------------------------------------------------ weights out
    def _best_network(self) -> CoordinatewiseLSTM:
        net = CoordinatewiseLSTM(self.net.config)
        found = self.best["weights"] is not None
        src = self.best["weights"] if found else {n: getattr(self.net, n) for n in WEIGHT_NAMES}
        with torch.no_grad():
            for n in WEIGHT_NAMES:
                getattr(net, n).copy_(src[n])
        net.provenance = {
            "trained": True,
            "method": "learned_optim.meta.meta_train",
            "meta_train_config": self.config.to_dict(),
            "init": self.init_name,
            "custom_tasks": self.custom_tasks,
            "selected_step": self.best["step"] if found else self.step,
            "meta_steps_done": self.step,
            # the key predates val_reduce; with val_reduce "max" the value is the worst task's mean log ratio
            "heldout_metric_mean_log_ratio_vs_tuned_adam": self.best["metric"] if found else None,
            "heldout_metric_reduce": self.config.val_reduce,
            "heldout_table": self.best["table"],
            "wall_seconds": round(self.elapsed, 1),
            "command": self.command,
            "torch": torch.__version__,
        }
        return self._with_prior(net)

    def _priors(self) -> list[tuple[str, float]]:
        """The (context input, slope) pairs of ``config.size_prior``, ``config.vector_prior`` and
        ``config.ratio_prior``, in the order they are added; those that are 0 are left out."""
        c = self.config
        return [(f, s) for f, s in ((c.size_prior_feature, c.size_prior), ("is_vector_large", c.vector_prior),
                                    ("grad_log_ratio_large", c.ratio_prior)) if s != 0]

    def _warn_prior_twice(self, init_provenance: dict[str, Any]) -> None:
        # e.g. --init lstm-h4-v2-vec with --config default: the preset would add its priors on top
        # of the ones already in those weights
        again = [f"{PRIOR_KEYS[f]}={init_provenance[PRIOR_KEYS[f]]:g}" for f, _ in self._priors()
                 if init_provenance.get(PRIOR_KEYS[f])]
        if again:
            names = ("size_prior", "vector_prior", "ratio_prior")
            fields = " ".join(f"--set {k}=0" for k in names)
            given = ", ".join(f"{k}={getattr(self.config, k):g}" for k in names)
            warnings.warn(f"the init weights already carry a prior ({', '.join(again)}) that the config adds "
                          f"again ({given}); "
                          f"to keep the init's priors as they are, set them to 0 ({fields})", UserWarning,
                          stacklevel=3)

    def _add_priors(self, net: CoordinatewiseLSTM) -> CoordinatewiseLSTM:
        for feature, slope in self._priors():
            net = net.with_step_prior(slope, feature)
        return net

    def _with_prior(self, net: CoordinatewiseLSTM) -> CoordinatewiseLSTM:
        """``net`` as written out: with ``config.size_prior`` added on ``config.size_prior_feature``,
        then ``config.vector_prior`` on ``"is_vector_large"``, then ``config.ratio_prior`` on
        ``"grad_log_ratio_large"`` (no change where they are 0). With
        ``config.prior_in_training`` they are in ``net`` already: only its provenance records them.
        Then ``config.cautious_mask``, when above 0, turns the cautious mask on (with
        ``config.cautious_rescale``, its per-tensor rescale too)."""
        if not self.config.prior_in_training:
            net = self._add_priors(net)
        else:
            net_out = CoordinatewiseLSTM(net.config, provenance=dict(net.provenance))
            net_out.load_state_dict(net.state_dict())
            net = net_out
            for feature, slope in self._priors():
                key = PRIOR_KEYS[feature]
                net.provenance[key] = float(net.provenance.get(key, 0.0)) + slope
        if self.config.cautious_mask:
            net = net.with_cautious_mask(self.config.cautious_mask, rescale=self.config.cautious_rescale)
        return net

    def _hold_priors(self) -> None:
        """Zero the meta-gradient of the head weights the priors set (``prior_in_training``), so
        that Adam, which starts them with zero moments, never moves them."""
        h = self.net.config.hidden_size
        names = self.net.config.context_features
        for feature, _ in self._priors():
            self.net.head_weight.grad[0, h + names.index(feature)] = 0.0

    def save_weights(self) -> Path:
        if self.rank == 0:  # only rank 0 evaluates, so only it knows the best weights
            save_pretrained(self._best_network(), self.out)
        return self.out

    # ------------------------------------------------------------------ distributed
    def _owns(self, slot: int) -> bool:
        return slot % self.world == self.rank

    def _estimate(self) -> tuple[torch.Tensor, dict[str, float]]:
        """One meta-gradient estimate over all slots.

        With ``slot_rng``, each rank advances only its own slots, one estimator call per slot
        with that slot's random stream, and the per-slot sums are all-reduced (float64, so the
        1- and N-process runs agree to rounding). Otherwise (single process, single stream) the
        estimator sees all trajectories at once, as the shipped default was trained.
        """
        c = self.config
        if self.slot_gens is None:
            return self.estimator.estimate(self.net, self.trajs, self.meta_gen, c.inner_lr, c.loss_cap,
                                           c.loss_floor, c.objective_from, c.objective_split, c.rise_penalty)
        n_w = sum(p.numel() for p in self.net.parameters())
        acc = torch.zeros(n_w + 3, dtype=torch.float64)  # [grad sum | used | meta-loss sum | non-finite]
        for i, traj in enumerate(self.trajs):
            if not self._owns(i):
                continue
            g, st = self.estimator.estimate(self.net, [traj], self.slot_gens[i], c.inner_lr, c.loss_cap,
                                            c.loss_floor, c.objective_from, c.objective_split, c.rise_penalty)
            used = 0.0 if st["nonfinite_grads"] else 1.0
            acc[:n_w] += g.double() * used
            acc[n_w] += used
            acc[n_w + 1] += st["meta_loss"]
            acc[n_w + 2] += st["nonfinite_grads"]
        _dist.all_reduce_sum(acc, self.world)
        grad = (acc[:n_w] / max(1.0, float(acc[n_w]))).to(torch.float32)
        return grad, {"meta_loss": float(acc[n_w + 1]) / len(self.trajs), "nonfinite_grads": float(acc[n_w + 2])}

    # ------------------------------------------------------------------ the loop
    def _meta_lr(self) -> float:
        c = self.config
        if self.step < c.warmup_steps:
            return c.meta_lr * (self.step + 1) / c.warmup_steps
        frac = (self.step - c.warmup_steps) / max(1, c.meta_steps - c.warmup_steps)
        lo = c.meta_lr * c.meta_lr_final_fraction
        return lo + 0.5 * (c.meta_lr - lo) * (1 + math.cos(math.pi * min(1.0, frac)))

    def _do_eval(self) -> dict:
        ev = self.evaluate()
        self.last_eval = {"metric": ev["metric"], "wins_vs_adam": ev["wins_vs_adam"], "diverged": ev["diverged"]}
        improved = ev["metric"] < self.best["metric"]
        if improved:
            self.best = {"metric": ev["metric"], "step": self.step,
                         "weights": {n: getattr(self.net, n).detach().clone() for n in WEIGHT_NAMES},
                         "table": ev["rows"]}
        self._log({"event": "eval", "step": self.step, **self.last_eval, "best": improved,
                   "rows": [{k: r[k] for k in ("task", "learned", "adam_1e-3", "tuned_adam", "ratio_vs_tuned")}
                            for r in ev["rows"]]})
        if self.save_evals and self.rank == 0:
            save_pretrained(self._with_prior(self.net), self.out / EVALS_DIR / f"step{self.step}")
        return ev

    def train(self, resume: bool = False) -> CoordinatewiseLSTM:
        """Run (or, with ``resume=True`` and a checkpoint in ``out``, continue) meta-training.

        Returns the best network (by held-out evaluation; the final one if there is none),
        also saved to ``out`` with ``save_pretrained``.
        """
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        ck = self.out / CHECKPOINT_NAME
        if ck.is_file() and not resume:
            raise ValueError(
                f"{ck} exists: pass resume=True (--resume) to continue that run, or choose another out directory"
            )
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(c.num_threads)
        try:
            resumed = resume and self.load_checkpoint()
            if not resumed and self.rank == 0:
                (self.out / LOG_NAME).unlink(missing_ok=True)
                self._log({"event": "start", "step": 0, "config": c.to_dict(), "init": self.init_name})
            return self._loop()
        finally:
            torch.set_num_threads(prev_threads)

    def _loop(self) -> CoordinatewiseLSTM:
        c = self.config
        from tqdm.auto import tqdm

        bar = tqdm(total=c.meta_steps, initial=self.step, disable=not self.progress, desc="meta-train",
                   unit="step", dynamic_ncols=True, file=sys.stderr)
        t_start = time.monotonic() - self.elapsed
        last_ck = time.monotonic()
        ema = None
        ran = self.step < c.meta_steps  # False when resuming a run that already finished
        try:
            if self.val_tasks and self.rank == 0 and self.step == 0 and self.last_eval is None:
                self._do_eval()  # the starting point (e.g. Adam-equivalent or the init weights)
            while self.step < c.meta_steps:
                for i, t in enumerate(self.trajs):
                    if self._owns(i) and (t is None or t.done):
                        self.trajs[i] = self._new_traj(i, first=t is None)
                grad, stats = self._estimate()
                offset = 0
                for n in WEIGHT_NAMES:
                    p = getattr(self.net, n)
                    p.grad = grad[offset: offset + p.numel()].view_as(p).clone()
                    offset += p.numel()
                if c.prior_in_training:
                    self._hold_priors()
                gnorm = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), c.grad_clip))
                lr = self._meta_lr()
                for group in self.meta_opt.param_groups:
                    group["lr"] = lr
                self.meta_opt.step()
                self.meta_opt.zero_grad(set_to_none=True)
                self.step += 1
                self.elapsed = time.monotonic() - t_start
                ema = stats["meta_loss"] if ema is None else 0.95 * ema + 0.05 * stats["meta_loss"]
                if self.step % c.log_every == 0:
                    self._log({"event": "step", "step": self.step, "meta_loss": stats["meta_loss"], "grad_norm": gnorm,
                               "meta_lr": lr, "horizon_cap": self._horizon_cap(), "elapsed": round(self.elapsed, 2),
                               "nonfinite_grads": stats["nonfinite_grads"]})
                if self.val_tasks and self.rank == 0 and (self.step % c.eval_every == 0 or self.step == c.meta_steps):
                    self._do_eval()
                post = {"meta_loss": f"{ema:.3f}"}
                if self.last_eval:
                    post["heldout"] = f"{self.last_eval['metric']:.3f}"
                    post["best"] = f"{self.best['metric']:.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
                now = time.monotonic()
                due = (self.step % c.checkpoint_every == 0 or now - last_ck >= c.checkpoint_seconds
                       or self.step == c.meta_steps)
                if _dist.agree(due, self.world):  # rank 0's clock decides: saving is collective
                    self.elapsed = now - t_start
                    if self.best["weights"] is not None and self.best["step"] == self.step or self.step == c.meta_steps:
                        self.save_weights()
                    self.save_checkpoint()
                    last_ck = now
        finally:
            bar.close()
        self.save_weights()
        if ran:
            self._log({"event": "done", "step": self.step, "best_step": self.best["step"],
                       "best_metric": self.best["metric"], "elapsed": round(self.elapsed, 2)})
        return self._best_network()


def _adds_context(have: LSTMOptimizerConfig, want: LSTMOptimizerConfig) -> bool:
    """Whether ``want`` is ``have`` with more context features (and nothing else changed)."""
    return (set(have.context_features) < set(want.context_features)
            and dataclasses.replace(want, context_features=have.context_features) == have)


def meta_train(config=None, out: str | os.PathLike | None = None, *, init=None, tasks=None, val_tasks=None,
               resume: bool = False, progress: bool = True, command: str | None = None,
               val_baselines=None, save_evals: bool = False, **overrides) -> CoordinatewiseLSTM:
    """Meta-train (or fine-tune) a learned optimizer and save it to ``out``.

    Args:
        config: preset name, JSON file, dict or ``MetaTrainConfig``. Default the "default" preset.
        out: output directory (weights, checkpoint, log). Required.
        init: fine-tune from these weights: a shipped name (e.g. ``"adam-equivalent"``), a
            directory, a Hub id or a ``CoordinatewiseLSTM``. Default None (fresh network).
        tasks: your own tasks (a ``Task``, a ``TaskFamily``, ``(model, (X, y))``, or a list).
            Default None (the config's ``train_tasks`` family).
        val_tasks: ``[(task, horizon), ...]`` for held-out selection. Default the config's.
        resume: continue from ``out/checkpoint.pt`` if present. Default False.
        progress: tqdm progress bar. Default True.
        command: recorded in the provenance. Default None.
        val_baselines: validation Adam baselines computed before, to reuse (``MetaTrainer``). Default None.
        save_evals: also save the weights at every evaluation to ``out/evals/step{N}``. Default False.
        **overrides: ``MetaTrainConfig`` fields to change, e.g. ``meta_steps=100``.
    Returns:
        The selected ``CoordinatewiseLSTM`` (use it as ``LearnedOptimizer(params, weights=net)``).

    Example:
        >>> net = meta_train("tiny", out="runs/tiny", init="adam-equivalent",
        ...                  tasks=[(torch.nn.Linear(4, 1), (X, y))])  # doctest: +SKIP
    """
    cfg = load_config(config)
    if overrides:
        cfg = cfg.replace(**overrides)
    trainer = MetaTrainer(cfg, out, init=init, tasks=tasks, val_tasks=val_tasks, progress=progress, command=command,
                          val_baselines=val_baselines, save_evals=save_evals)
    return trainer.train(resume=resume)
