"""Choose the size prior's slope on the meta-validation set, not on the benchmarks.

``CoordinatewiseLSTM.with_size_prior(slope)`` adds ``slope`` to the head's weight from the
model-size input (log10 of the parameter count over 1e5) to the rule's log step scale. This script
evaluates a rule (default: ``lstm-h4-v2-t32``, the previous default) with each slope of a grid on the
validation tasks its meta-training selected with (``val_tasks="v2"``, 3 seeds each, the default
recipe's ``validation.evaluate`` settings, against the committed Adam baselines) and reports the
selection metric (the worst task's mean log ratio to tuned Adam, ``val_reduce="max"``) and the mean,
with every task's ratio. Slope 0 is the rule itself: its row must equal the last evaluation in the
rule's meta-training log. ``--feature log_num_params_capped`` sweeps the prior on the size input
capped at 1e5 parameters (models at or above it keep the rule's steps); any other context input
works the same way (``with_step_prior``): ``--feature is_vector`` sweeps a shift of the step
scale of vectors alone (biases, LayerNorm gains). ``--impl`` sets the inner
step's implementation (default: the default recipe's ``inner_impl``): the trajectories are chaotic,
so the two implementations give other digits on the noisier tasks. ``--seeds N`` evaluates N seeds
per task instead of the recipe's 3 (the first 3 are the recipe's; Adam's baselines for them are
computed once, written to ``adam-baselines.json`` in ``--out`` and reused from there), and
``--tasks`` a subset of the validation tasks, each with the seeds it has in the full set.

    python benchmarks/size_prior_sweep.py --out benchmarks/results/size-prior
        [--weights lstm-h4-v2-t32] [--slopes 0,-0.1,-0.2,-0.3,-0.4,-0.5] [--feature log_num_params|is_vector|...]
        [--impl reference|auto] [--seeds 9] [--tasks NAME,NAME]

Writes ``size-prior-sweep.json`` and ``size-prior-sweep.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from learned_optim.hub import from_pretrained
from learned_optim.meta.config import VAL_TASKS, load_config
from learned_optim.meta.validation import adam_baselines, evaluate
from learned_optim.network import CONTEXT_FEATURES

BASELINES = "benchmarks/results/meta-v2/v2-validation-adam-baselines.json"


def _sem(xs: list[float]) -> float:
    """Standard error of the mean of ``xs`` (0 for one value)."""
    return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0


def _cell(row: dict, task: str, seeds: int) -> str:
    """A task's ratio, with its one-standard-error range when there are several seeds."""
    ratio = row["ratios"][task]
    if seeds == 1:
        return f"{ratio:.2f}"
    e = math.exp(row["log_ratio_sem"][task])
    return f"{ratio:.2f} ({ratio / e:.2f}-{ratio * e:.2f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", default="lstm-h4-v2-t32")
    ap.add_argument("--slopes", default="0,-0.1,-0.2,-0.3,-0.4,-0.5")
    ap.add_argument("--feature", default="log_num_params", choices=CONTEXT_FEATURES)
    ap.add_argument("--impl", default=None, choices=("reference", "auto"),
                    help="the inner step's implementation (default: the default recipe's inner_impl; the sweeps "
                         "of lstm-h4-v2-t32 ran with reference, its recipe's)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per task (default: the recipe's val_seeds, 3)")
    ap.add_argument("--tasks", default=None, help="comma-separated validation task names (default: all)")
    args = ap.parse_args(argv)
    try:
        slopes = [float(s) for s in args.slopes.split(",")]
    except ValueError:
        ap.error(f"--slopes must be comma-separated numbers, e.g. 0,-0.2,-0.4, got {args.slopes!r}")
    torch.set_num_threads(1)
    cfg = load_config("default")
    if args.impl is not None:
        cfg = cfg.replace(inner_impl=args.impl)
    seeds = cfg.val_seeds if args.seeds is None else args.seeds
    if seeds < 1:
        ap.error(f"--seeds must be >= 1, got {seeds}")
    all_tasks = VAL_TASKS[cfg.val_tasks]()
    names = [t.name for t, _ in all_tasks]
    wanted = names if args.tasks is None else args.tasks.split(",")
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        ap.error(f"--tasks: unknown task(s) {unknown}; the validation tasks are {names}")
    indices = [i for i, n in enumerate(names) if n in wanted]
    val_tasks = [all_tasks[i] for i in indices]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if seeds == cfg.val_seeds:
        baselines_from = BASELINES
        committed = json.loads(Path(BASELINES).read_text())
        baselines = [committed[i] for i in indices]
    else:  # Adam at every grid lr on the new seeds, once; a rerun reuses the rows this wrote
        baselines_from = str(out / "adam-baselines.json")
        earlier = json.loads(Path(baselines_from).read_text()) if Path(baselines_from).exists() else None
        baselines = adam_baselines(val_tasks, seeds, reuse=earlier, indices=indices)
        Path(baselines_from).write_text(json.dumps(baselines, indent=1) + "\n")
    baselines_s = round(time.time() - t0)
    base = from_pretrained(args.weights)
    rows = []
    for slope in slopes:
        t1 = time.time()
        ev = evaluate(base.with_step_prior(slope, args.feature), val_tasks, baselines, inner_lr=cfg.inner_lr,
                      loss_cap=cfg.loss_cap, seeds=seeds, reduce="max", inner_impl=cfg.inner_impl, indices=indices)
        ratios = {r["task"]: r["ratio_vs_tuned"] for r in ev["rows"]}
        mean = math.exp(sum(math.log(v) for v in ratios.values()) / len(ratios))
        # the standard error of each task's mean log ratio over its seeds (the selection's noise)
        sem = {r["task"]: _sem(logs) for r, logs in zip(ev["rows"], ev["log_ratios"])}
        rows.append({"slope": slope, "metric": ev["metric"], "worst_ratio": math.exp(ev["metric"]),
                     "geomean_ratio": mean, "diverged": ev["diverged"], "ratios": ratios,
                     "log_ratio_sem": sem, "log_ratios": dict(zip(ratios, ev["log_ratios"])),
                     "wall_s": round(time.time() - t1)})
        print(json.dumps(rows[-1]), flush=True)
    best = min(rows, key=lambda r: r["metric"])
    res = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
           "weights": args.weights, "feature": args.feature, "baselines": baselines_from, "val_tasks": cfg.val_tasks,
           "tasks": [t.name for t, _ in val_tasks], "seeds": seeds, "baselines_wall_s": baselines_s,
           "inner_impl": cfg.inner_impl, "rows": rows, "selected_slope": best["slope"],
           "wall_s": round(time.time() - t0),
           "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread"}
    (out / "size-prior-sweep.json").write_text(json.dumps(res, indent=1) + "\n")
    tasks = list(rows[0]["ratios"])
    lines = [f"# The {'size ' if args.feature.startswith('log_num_params') else ''}prior's slope on `{args.feature}` "
             "on the meta-validation set", "",
             f"Command: `{res['command']}`; weights `{args.weights}`; prior on `{args.feature}`; validation tasks "
             f"`{cfg.val_tasks}` (the "
             f"default recipe's{'' if len(val_tasks) == len(all_tasks) else '; only ' + ', '.join(res['tasks'])}), "
             f"{seeds} seeds each, inner step `{cfg.inner_impl}`, final loss / tuned "
             f"Adam's on the same seeds (Adam "
             f"baselines from `{baselines_from}`, {baselines_s} s); wall time {res['wall_s']} s "
             f"({res['machine']}).", "",
             "| slope | " + " | ".join(tasks) + " | worst (selection metric) | geometric mean | diverged |",
             "|---" * (len(tasks) + 4) + "|"]
    for r in rows:
        lines.append(f"| {r['slope']:g} | " + " | ".join(_cell(r, t, seeds) for t in tasks)
                     + f" | {r['worst_ratio']:.2f} | {r['geomean_ratio']:.2f} | {r['diverged']} |")
    lines += ["", f"Selected (lowest worst-task ratio, the meta-training runs' selection rule): slope "
              f"{best['slope']:g}."]
    if seeds > 1:
        lines += ["", "In brackets: the ratio at the task's mean log ratio minus and plus one standard error over its "
                  f"{seeds} seeds (how far the seeds leave the mean uncertain)."]
    (out / "size-prior-sweep.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
