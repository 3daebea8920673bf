"""Quality benchmark: the learned optimizer against Adam-family baselines on held-out tasks.

Run (from a checkout or an installed wheel; scikit-learn and matplotlib needed)::

    learned-optim benchmark quality                      # full run, into ./benchmark-results
    learned-optim benchmark quality --quick --out /tmp/q # a pipeline check (short horizons, 2 seeds)
    learned-optim benchmark quality --weights DIR_OR_NAME --out DIR
    learned-optim benchmark quality --rerender benchmarks/results/quality.json   # summaries and tables again
    learned-optim benchmark quality --weights DIR --reuse-baselines OLD/quality.json   # rerun the learned one only

Protocol. For every task of ``tasks.TASKS`` and every seed, each optimizer of ``OPTIMIZERS``
trains a model from the same initialisation on the same minibatches. Adam is also run at every
learning rate of ``ADAM_LR_GRID`` (``learned_optim.common.adam_baseline``); "Adam tuned" is,
per task, the grid lr with the lowest mean final loss over the seeds, chosen on the very runs
that are reported (an optimistic baseline: its tuning cost, one full run per grid lr and seed,
is reported beside it). "Adam, best single lr" (``suite_lr``) is Adam at the one grid lr with the
lowest geometric mean over tasks of (its mean final loss / the task's Adam-tuned mean final
loss), taken from the same grid runs. The speed-up against a baseline is the steps the baseline
(mean curve over seeds) needs to first reach its own mean final loss over the steps the learned
optimizer (mean curve) needs to reach that loss; there is none ("not reached") when the learned
optimizer ends above the baseline. The loss is the training objective on the task's whole
training split, evaluated ``EVAL_POINTS`` times along the run. A run diverges when its loss becomes
NaN/inf or ends above where it started (``common.adam_baseline.diverged``); it is flagged, and it
loses every comparison. Besides the verdict by mean final loss, each task is tested seed by seed
against each baseline (``paired``: the exact sign-flip test of the per-seed log ratio); the totals
count the tasks won and lost at p < 0.05, which one chaotic seed cannot flip (5 seeds can never
reach it; run ``--seeds 10`` for it, and ``learned-optim benchmark compare`` for two weights).

Held-out loss. Every task has a held-out split (``tasks``: a fixed 80/20 split of the real data,
a separately generated test set, held-out source files); training sees only the training split,
and the same runs are also evaluated on the held-out split at the same steps. The held-out table
compares the same columns (Adam tuned and the best single lr are still chosen on training loss).
Late spikes: every run records ``min_loss``, the lowest loss on its evaluated curve; the report
gives the mean over seeds of final / min and the runs above ``SPIKE_RATIO`` (1.2).

Reusing baselines. ``--reuse-baselines OLD/quality.json`` copies the baseline runs (Adam at every
grid lr, AdamW, SGD+momentum) of an earlier result made under the same settings instead of
rerunning them: a run is a deterministic function of its task (steps, batch size, evaluation
steps, data), seed, optimizer and lr, the settings ``_REUSE_SETTINGS``, the thread count and the
torch version. Runs the earlier file lacks (other tasks or horizons, more seeds) are run; the
learned optimizer is always run. The result records ``reused_baselines`` (the file and the number
of per-seed runs copied), and the report says so.

Outputs (stable names, in ``--out``): ``quality.json`` (every curve and setting),
``quality.md`` (the tables) and ``quality.png`` (one panel per task), the last two from
``quality_report``.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..common.adam_baseline import ADAM_LR_GRID, diverged
from ..common.files import to_jsonable, write_json
from ..common.machine import machine_info
from ..hub import DEFAULT_WEIGHTS, from_pretrained, resolve
from ..network import CoordinatewiseLSTM
from . import tasks as tasks_mod
from .common import DEFAULT_OUT, LearnedSetup, check_out_dir
from .quality_report import write_quality_report
from .quality_stats import SPIKE_RATIO, TIE_RTOL, speedup_vs, suite_lr, summarize_columns, totals, tuned_run_key
from .quality_stats import _compare as _compare  # noqa: F401  (tests and callers used quality._compare)

__all__ = ["OptimizerSpec", "OPTIMIZERS", "BASELINES", "SUITE_KEY", "ADAM_LR_GRID", "OUTPUT_FILES", "TIE_RTOL",
           "SPIKE_RATIO", "run_quality", "train_once", "evaluation_steps", "summarize", "suite_lr", "speedup_vs",
           "finish", "rerender"]

OUTPUT_FILES = ("quality.json", "quality.md", "quality.png")

# What train_once returns and a task's runs store per seed; the held-out pair only where the
# problem has a held-out split. _FLOAT_FIELDS may hold NaN (null in the JSON).
_RUN_FIELDS = ("curve", "final", "initial", "min_loss", "diverged", "optimizer_step_s", "wall_s",
               "nonfinite_grad_warnings")
_HELDOUT_FIELDS = ("heldout_curve", "heldout_final")
_FLOAT_FIELDS = ("curve", "final", "initial", "min_loss", "heldout_curve", "heldout_final")

ADAM_DEFAULT_LR = 1e-3  # torch.optim.Adam's default (Kingma & Ba, 2015)

# Loss evaluations per run (plus one at step 0): speed-ups are resolved to 1/EVAL_POINTS of the
# horizon.
EVAL_POINTS = 50

FULL_SEEDS = 5
QUICK_SEEDS = 2
# --quick: horizons divided by this (at least QUICK_MIN_STEPS), so the quick run is a smoke test
# of the whole pipeline, not a measurement.
QUICK_STEP_DIVISOR = 20
QUICK_MIN_STEPS = 10


@dataclass(frozen=True)
class OptimizerSpec:
    """A column of the table. ``lr=None`` means "tuned over ADAM_LR_GRID"."""

    key: str
    label: str
    make: Callable[[Any, float, LearnedSetup], torch.optim.Optimizer]
    lr: float | None


def _adam(params, lr, _setup):
    return torch.optim.Adam(params, lr=lr)


# The columns. Baseline hyperparameters are each library's defaults, except SGD's lr, which torch
# leaves at a placeholder 1e-3: 0.01 with momentum 0.9 is Keras' SGD default lr and the usual
# momentum (Sutskever et al., 2013).
OPTIMIZERS: tuple[OptimizerSpec, ...] = (
    OptimizerSpec("learned", "learned (lr 1e-3)",
                  lambda params, lr, setup: setup.make(params, lr), 1e-3),
    OptimizerSpec("adam", "Adam (lr 1e-3)", _adam, ADAM_DEFAULT_LR),
    OptimizerSpec("adamw", "AdamW (lr 1e-3, wd 1e-2)",
                  lambda params, lr, _setup: torch.optim.AdamW(params, lr=lr, weight_decay=1e-2), 1e-3),
    OptimizerSpec("sgd_momentum", "SGD+mom (lr 1e-2, 0.9)",
                  lambda params, lr, _setup: torch.optim.SGD(params, lr=lr, momentum=0.9), 1e-2),
    OptimizerSpec("adam_tuned", "Adam tuned", _adam, None),
)
BASELINES = tuple(o.key for o in OPTIMIZERS if o.key != "learned")
# Adam at the one grid lr that is best over the whole suite (``suite_lr``): a column added by
# ``finish`` from the grid runs (no extra training), placed before "Adam tuned".
SUITE_KEY = "adam_suite"


def _learned_column(spec: OptimizerSpec, setup: LearnedSetup) -> dict[str, Any]:
    """The learned column's label and lr: ``--learned-kwargs`` may set the lr, which the label then shows."""
    lr = float(setup.kwargs.get("lr", spec.lr))
    return {"label": setup.label(spec.label if lr == spec.lr else f"learned (lr {lr:g})", shown=("lr",)), "lr": lr}


def _run_key(spec: OptimizerSpec, lr: float) -> str:
    # Adam at every grid lr is stored once as "adam_lr=<lr>"; "adam" and "adam_tuned" point into it.
    return f"adam_lr={lr:g}" if spec.make is _adam else spec.key


def _planned_runs(spec_list: Sequence[OptimizerSpec]) -> list[tuple[str, OptimizerSpec, float]]:
    seen: dict[str, tuple[str, OptimizerSpec, float]] = {}
    for spec in spec_list:
        for lr in (ADAM_LR_GRID if spec.lr is None else (spec.lr,)):
            key = _run_key(spec, lr)
            seen.setdefault(key, (key, spec, lr))
    return list(seen.values())


def train_once(problem: tasks_mod.Problem, make_opt: Callable[[Any], torch.optim.Optimizer],
               seed: int, steps: int, batch_size: int, eval_steps: Sequence[int]) -> dict[str, Any]:
    """One training run. Returns the training-split loss curve at ``eval_steps`` (NaN after a
    divergence), its minimum ``min_loss`` (over the finite points), and, where the problem has a
    held-out split, the held-out loss at the same steps (``heldout_curve``, ``heldout_final``)."""
    model = problem.model(seed)
    opt = make_opt(model.parameters())
    index = problem.batches(seed, steps, batch_size)
    want = set(eval_steps)
    heldout = getattr(problem, "has_heldout", False)
    curve = {0: problem.full_loss(model)}
    held = {0: problem.heldout_loss(model)} if heldout else {}
    step_time = 0.0
    skipped = 0
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        # LearnedOptimizer warns (and skips the update) on non-finite gradients: count, don't spam.
        warnings.simplefilter("always", RuntimeWarning)
        for s in range(1, steps + 1):
            opt.zero_grad(set_to_none=True)
            loss = problem.loss(model, index[s - 1])
            loss.backward()
            ts = time.perf_counter()
            opt.step()
            step_time += time.perf_counter() - ts
            if s in want:
                curve[s] = problem.full_loss(model)
                if heldout:
                    held[s] = problem.heldout_loss(model)
                if not math.isfinite(curve[s]):
                    break
        skipped = sum(1 for w in caught if "non-finite" in str(w.message))
    values = [curve.get(s, math.nan) for s in eval_steps]
    out = {
        "curve": values,
        "initial": values[0],
        "final": values[-1],
        "min_loss": min((v for v in values if math.isfinite(v)), default=math.nan),
        "diverged": diverged(values[0], values[-1]),
        "optimizer_step_s": step_time / steps,
        "wall_s": time.perf_counter() - t0,
        "nonfinite_grad_warnings": skipped,
    }
    if heldout:
        out["heldout_curve"] = [held.get(s, math.nan) for s in eval_steps]
        out["heldout_final"] = out["heldout_curve"][-1]
    return out


def evaluation_steps(steps: int) -> list[int]:
    """The steps at which a run of ``steps`` steps is evaluated: 0, about every
    steps / EVAL_POINTS, and the last."""
    every = max(1, steps // EVAL_POINTS)
    pts = list(range(0, steps + 1, every))
    if pts[-1] != steps:
        pts.append(steps)
    return pts


def summarize(task_result: dict[str, Any], suite: float | None = None) -> dict[str, Any]:
    """Per-task statistics from the raw runs: means, spreads, tuned lr, wins, speed-ups, and the
    held-out loss and late-spike ratio final / min (``quality_stats.summarize_columns``).

    ``suite``: the Adam grid lr chosen for the whole suite (``suite_lr``); adds the column
    ``"adam_suite"`` (Adam at that lr) and the comparison against it.
    """
    tuned_key = tuned_run_key(task_result)
    plan = [(spec.key, tuned_key if spec.lr is None else _run_key(spec, spec.lr)) for spec in OPTIMIZERS]
    if suite is not None:
        plan.insert(len(plan) - 1, (SUITE_KEY, f"adam_lr={suite:g}"))
    return summarize_columns(task_result, plan, tuned_key)


def _weights_info(weights: str | None, network: CoordinatewiseLSTM) -> dict[str, Any]:
    name = weights if weights is not None else DEFAULT_WEIGHTS
    return {
        "name": str(name),
        "is_default": weights is None or str(weights) == DEFAULT_WEIGHTS,
        "path": str(resolve(weights)),
        "config": network.config.to_dict(),
        "provenance": network.provenance,
    }


def run_quality(*, weights: str | None = None, quick: bool = False, out: str | Path = DEFAULT_OUT,
                seeds: int | None = None, task_filter: Sequence[str] | None = None, threads: int = 1,
                learned_kwargs: dict[str, Any] | None = None, progress: bool = True,
                command: str = "", reuse_baselines: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the quality benchmark and write quality.json / .md / .png into ``out``.

    Args:
        weights: learned-optimizer weights (shipped name, directory or Hub id); None = default.
        quick: horizons / QUICK_STEP_DIVISOR and QUICK_SEEDS seeds (a pipeline check).
        out: output directory (created).
        seeds: number of seeds (default FULL_SEEDS, or QUICK_SEEDS with ``quick``); >= 1.
        task_filter: task names to run (default: all of ``tasks.TASKS``).
        threads: torch intra-op threads during the runs (1: the machine is shared).
        learned_kwargs: extra LearnedOptimizer keyword arguments (JSON-able; e.g.
            ``{"state_dtype": "bfloat16"}``), from ``--learned-kwargs``.
        progress: show a tqdm progress bar (on stderr).
        command: the command line, recorded in the outputs.
        reuse_baselines: an earlier quality.json whose baseline runs (Adam at every grid lr, AdamW,
            SGD+momentum) are copied instead of rerun where everything that decides them is the
            same (task steps, batch size, evaluation steps and data, seed, optimizer and lr, the
            settings ``_REUSE_SETTINGS``, threads and the torch version): a run is a deterministic
            function of these, so a learned-optimizer candidate can be compared without
            retraining the baselines. Seeds and tasks it lacks are run; the learned optimizer is
            always run. Default None: run all.
    Returns:
        The results dict that was written to quality.json.
    Raises:
        ValueError: a bad argument (the message names it and the fix).
    """
    if seeds is None:
        seeds = QUICK_SEEDS if quick else FULL_SEEDS
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}; e.g. --seeds 3")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}; e.g. --threads 1")
    specs = [tasks_mod.get_task(n) for n in task_filter] if task_filter else list(tasks_mod.TASKS)
    out = check_out_dir(out)
    network = from_pretrained(weights)
    setup = LearnedSetup(network, dict(learned_kwargs or {}))

    plan = _planned_runs(OPTIMIZERS)
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "quality",
        "schema_version": 2,  # 2: held-out loss, min_loss, task splits
        "command": command,
        "machine": machine_info(threads),
        "weights": _weights_info(weights, network),
        "settings": {
            "quick": quick, "seeds": list(range(seeds)), "adam_lr_grid": list(ADAM_LR_GRID),
            "eval_points": EVAL_POINTS, "tie_rtol": TIE_RTOL, "threads": threads,
            "learned_kwargs": setup.kwargs,
            "optimizers": {o.key: _learned_column(o, setup) if o.key == "learned" else {"label": o.label, "lr": o.lr}
                           for o in OPTIMIZERS},
            "tuning": "Adam tuned = grid lr with the lowest mean final training loss over the reported seeds",
            "heldout": "held-out loss of the same runs at the same steps (tasks.Problem.heldout_loss); never used "
                       "to choose an lr",
            "spike_ratio": SPIKE_RATIO,
        },
        "tasks": {},
    }
    reused = {}
    if reuse_baselines is not None:
        reused = _load_reusable(reuse_baselines, quick=quick, threads=threads)
        results["reused_baselines"] = {"from": os.fspath(reuse_baselines), "runs": 0}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    total = len(specs) * len(plan) * seeds
    try:
        with tqdm(total=total, desc="quality", unit="run", disable=not progress, mininterval=1.0) as bar:
            for spec in specs:
                problem = spec.problem()
                steps = max(QUICK_MIN_STEPS, spec.steps // QUICK_STEP_DIVISOR) if quick else spec.steps
                eval_steps = evaluation_steps(steps)
                corpus = tasks_mod.corpus_info() if spec.name == "char_gru_lm" else None
                data = _data_id(to_jsonable(problem.split), corpus)
                task_runs: dict[str, Any] = {}
                fields = _RUN_FIELDS + (_HELDOUT_FIELDS if problem.has_heldout else ())
                for key, ospec, lr in plan:
                    if ospec.key == "learned":
                        lr = float(setup.kwargs.get("lr", lr))  # --learned-kwargs may set the lr
                    rec = {"lr": lr, "optimizer": ospec.key if ospec.make is not _adam else "adam",
                           **{k: [] for k in fields}}
                    for seed in range(seeds):
                        bar.set_postfix_str(f"{spec.name} {key} seed {seed}")
                        run_id = (spec.name, key, rec["optimizer"], lr, seed, steps, spec.batch_size,
                                  tuple(eval_steps), data)
                        r = reused.get(run_id) if ospec.key != "learned" else None
                        if r is not None and all(k in r for k in fields):
                            results["reused_baselines"]["runs"] += 1
                        else:
                            r = train_once(problem, lambda p, m=ospec.make, lr=lr: m(p, lr, setup),
                                           seed, steps, spec.batch_size, eval_steps)
                        for k in fields:
                            rec[k].append(r[k])
                        bar.update(1)
                    task_runs[key] = rec
                tr = {"description": spec.description, "steps": steps, "batch_size": spec.batch_size,
                      "long_horizon": spec.long_horizon, "eval_steps": eval_steps,
                      "adam_lr_grid": list(ADAM_LR_GRID), "split": problem.split, "runs": task_runs}
                grid_runs = len(ADAM_LR_GRID) * seeds
                tr["tuning_cost"] = {"adam_runs": grid_runs, "optimizer_steps": grid_runs * steps,
                                     "wall_s": sum(sum(task_runs[f"adam_lr={lr:g}"]["wall_s"]) for lr in ADAM_LR_GRID)}
                if corpus is not None:
                    tr["corpus"] = corpus
                results["tasks"][spec.name] = tr
    finally:
        torch.set_num_threads(old_threads)
    results["wall_s"] = time.perf_counter() - t_start
    results["machine"]["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    finish(results)
    write_json(out / "quality.json", results)
    write_quality_report(results, out)
    return results


# the settings that decide a baseline run besides its task, seed, optimizer and lr (and the torch version)
_REUSE_SETTINGS = ("quick", "threads", "adam_lr_grid", "eval_points", "baseline optimizers")


def _data_id(split: Any, corpus: dict[str, Any] | None) -> str:
    """What a task's runs trained and were evaluated on, as its result records it: the split and,
    for char_gru_lm, the hashes of the corpus and its held-out text (not where they were read)."""
    hashes = None if corpus is None else [corpus.get("sha256"), (corpus.get("heldout") or {}).get("sha256")]
    return json.dumps({"split": split, "corpus": hashes}, sort_keys=True)


def _load_reusable(path: str | os.PathLike, *, quick: bool, threads: int) -> dict[tuple, dict[str, Any]]:
    """The baseline runs of the earlier result ``path`` that a run with ``quick`` and ``threads``
    would reproduce exactly, one record per seed (the fields of ``train_once``, NaN restored), keyed
    by (task, run key, optimizer, lr, seed, steps, batch size, evaluation steps, ``_data_id``).
    Raises ValueError if ``path`` is not a quality result or was made under other settings
    (then nothing could be reused)."""
    try:
        prev = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"reuse_baselines={os.fspath(path)!r} is not a readable quality.json ({e}); pass an "
                         f"earlier quality.json, or drop --reuse-baselines") from None
    if not isinstance(prev, dict) or prev.get("benchmark") != "quality":
        raise ValueError(f"reuse_baselines={os.fspath(path)!r} is not a quality benchmark result; pass a "
                         f"quality.json written by `learned-optim benchmark quality`, or drop --reuse-baselines")
    here = {"quick": quick, "threads": threads, "adam_lr_grid": list(ADAM_LR_GRID), "eval_points": EVAL_POINTS,
            "baseline optimizers": {o.key: [o.label, o.lr] for o in OPTIMIZERS if o.key in BASELINES}}
    st = prev.get("settings") if isinstance(prev.get("settings"), dict) else {}
    opts = st.get("optimizers") if isinstance(st.get("optimizers"), dict) else {}
    there = {**{k: st.get(k) for k in _REUSE_SETTINGS},
             "baseline optimizers": {k: [(opts.get(k) or {}).get("label"), (opts.get(k) or {}).get("lr")]
                                     for k in BASELINES}}
    mismatch = [k for k in _REUSE_SETTINGS if there[k] != here[k]]
    if (prev.get("machine") or {}).get("torch") != torch.__version__:
        mismatch.append("torch version")
    if mismatch:
        raise ValueError(f"reuse_baselines={os.fspath(path)!r} was made with other {', '.join(mismatch)}; its "
                         f"baseline runs would not be reproduced here: drop --reuse-baselines")
    out = {}
    try:
        for name, tr in prev.get("tasks", {}).items():
            data = _data_id(tr.get("split"), tr.get("corpus"))
            for key, run in tr["runs"].items():
                if key == "learned":
                    continue
                for i, seed in enumerate(st["seeds"]):
                    rec = {k: _nan_from_null(run[k][i]) if k in _FLOAT_FIELDS else run[k][i]
                           for k in _RUN_FIELDS + _HELDOUT_FIELDS if k in run and i < len(run[k])}
                    out[(name, key, run.get("optimizer"), run.get("lr"), seed, tr["steps"], tr["batch_size"],
                         tuple(tr["eval_steps"]), data)] = rec
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"reuse_baselines={os.fspath(path)!r} is not a well-formed quality.json "
                         f"({type(e).__name__}: {e}); pass one written by `learned-optim benchmark quality`, or drop "
                         f"--reuse-baselines") from None
    return out


def finish(results: dict[str, Any]) -> dict[str, Any]:
    """Compute every task's summary and the totals from the raw runs (in place)."""
    suite = suite_lr(results) if results["tasks"] else None
    for tr in results["tasks"].values():
        tr["summary"] = summarize(tr, suite["lr"] if suite else None)
    if suite:
        opts = {k: v for k, v in results["settings"]["optimizers"].items() if k != SUITE_KEY}
        spec = {"label": f"Adam, best single lr ({suite['lr']:g})", "lr": suite["lr"],
                "selected": "the grid lr with the lowest geometric mean over tasks of its mean final loss / "
                            "the task's best grid mean final loss"}
        results["settings"]["optimizers"] = {**{k: v for k, v in opts.items() if k != "adam_tuned"},
                                             SUITE_KEY: spec, "adam_tuned": opts["adam_tuned"]}
        results["suite_adam"] = suite
    results["totals"] = totals(results)
    return results


def _nan_from_null(x: Any) -> Any:
    if x is None:
        return math.nan
    if isinstance(x, list):
        return [_nan_from_null(v) for v in x]
    return x


def rerender(path: str | Path, figure: bool = True) -> dict[str, Any]:
    """Recompute the summaries of a saved quality.json from its raw curves, rewrite it, and
    write its .md (and, with ``figure``, its .png) beside it; no training. Use after a change to
    how results are summarized or reported.

    Run: ``learned-optim benchmark quality --rerender benchmarks/results/quality.json``
    """
    path = Path(path)
    results = json.loads(path.read_text(encoding="utf-8"))
    for tr in results["tasks"].values():
        for run in tr["runs"].values():
            for key in _FLOAT_FIELDS:
                if key in run:
                    run[key] = _nan_from_null(run[key])
    finish(results)
    results["summary_recomputed_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    write_json(path, results)
    write_quality_report(results, path.parent, figure=figure)
    return results
