"""The quality benchmark's statistics: per-task summaries and totals from the raw runs.

Everything here reads only a results dict (``quality.json``), so ``quality.rerender`` recomputes
it without training. ``quality.summarize`` picks the columns (which run each optimizer column
reads); this module computes, per column, the final training loss (mean, spread, divergences),
the held-out loss where the task has a held-out split, the late-spike ratio final / min, and the
learned optimizer's comparisons with every baseline, then the totals over tasks.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .paired import paired_outcome

__all__ = ["TIE_RTOL", "SPIKE_RATIO", "suite_lr", "speedup_vs", "tuned_run_key", "summarize_columns",
           "final_over_min", "run_minima", "totals"]

# Two final losses within this relative distance are a tie (run-to-run float noise of identical
# algorithms, e.g. the untrained learned rule vs Adam, is far below it).
TIE_RTOL = 1e-3

# Late-spike check: a run whose final training loss is more than this times the lowest loss on its
# evaluated curve ended well above its best point (the target on the long-horizon task is <= 1.2).
SPIKE_RATIO = 1.2


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _median(xs: Sequence[float]) -> float:
    xs = sorted(xs)
    if not xs:
        return math.nan
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def _score(x: float | None) -> float:
    # A NaN final loss ranks below everything (diverged runs lose every comparison).
    return x if x is not None and math.isfinite(x) else math.inf


def _compare(a: float, b: float) -> int:
    """-1 if a is better (lower) than b, 0 if tied within TIE_RTOL, +1 if worse."""
    a, b = _score(a), _score(b)
    if a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= TIE_RTOL * max(abs(a), abs(b))):
        return 0
    return -1 if a < b else 1


def _steps_to_reach(curve: Sequence[float], eval_steps: Sequence[int], target: float) -> int | None:
    """First evaluated step at which ``curve`` is at or below ``target``; a final value tied
    with the target (within TIE_RTOL) counts as reaching it at the last step."""
    if not math.isfinite(target):
        return None
    for s, v in zip(eval_steps, curve):
        if math.isfinite(v) and v <= target:
            return s
    if _compare(curve[-1], target) == 0:
        return eval_steps[-1]
    return None


def _log_ratio(x: float, ref: float) -> float:
    """log(x / ref) for losses; a non-finite x is +inf, and x == ref gives 0 even at 0."""
    x, ref = _score(x), _score(ref)
    if x == ref:
        return 0.0
    if not math.isfinite(x) or ref <= 0:
        return math.inf
    return math.log(x / ref) if x > 0 else -math.inf


def _geomean_ratio(xs: Sequence[float], refs: Sequence[float]) -> float:
    """Geometric mean of xs[i] / refs[i] (NaN xs count as infinitely worse)."""
    logs = [_log_ratio(x, r) for x, r in zip(xs, refs)]
    return math.exp(_mean(logs)) if logs else math.nan


def suite_lr(results: dict[str, Any]) -> dict[str, Any]:
    """The single Adam grid lr that is best for the whole suite, from the saved grid runs.

    For each grid lr: the geometric mean over tasks of (that lr's mean final loss / the task's
    best grid mean final loss), a NaN mean (a diverged seed) counting as infinitely worse. The lr
    with the lowest geometric mean is "Adam, best single lr" (ties: the smaller lr). Returns
    ``{"lr", "geomean_ratio_to_tuned", "by_lr": {str(lr): geomean}}``.
    """
    grid = results["settings"]["adam_lr_grid"]
    by_lr: dict[float, float] = {}
    for lr in grid:
        logs = []
        for tr in results["tasks"].values():
            means = {g: _score(_mean([_score(x) for x in tr["runs"][f"adam_lr={g:g}"]["final"]])) for g in grid}
            logs.append(_log_ratio(means[lr], min(means.values())))
        by_lr[lr] = math.exp(_mean(logs)) if logs else math.nan
    best = min(grid, key=lambda lr: (_score(by_lr[lr]), lr))
    return {"lr": best, "geomean_ratio_to_tuned": by_lr[best], "by_lr": {f"{lr:g}": by_lr[lr] for lr in grid}}


def speedup_vs(learned_curve: Sequence[float], base_curve: Sequence[float], eval_steps: Sequence[int],
               verdict: int) -> dict[str, Any]:
    """Speed-up of the learned optimizer over a baseline, from their mean curves.

    Target = the baseline's mean final loss. Speed-up = steps the baseline needs to first reach it
    / steps the learned optimizer needs to first reach it (> 1: learned is faster). Reported only
    when the learned optimizer ends at or below the baseline (``verdict`` <= 0, as ``_compare``)
    and reaches the target; otherwise ``speedup`` is None and ``note`` says why
    ("learned ends above", "learned diverged", "baseline diverged").
    """
    target = base_curve[-1]
    base_reach = _steps_to_reach(base_curve, eval_steps, target)
    learned_reach = _steps_to_reach(learned_curve, eval_steps, target)
    note = None
    if not math.isfinite(learned_curve[-1]):
        note = "learned diverged"
    elif not math.isfinite(target):
        note = "baseline diverged"
    elif verdict > 0 or learned_reach is None:
        note = "learned ends above"  # it may dip below the target on the way and come back up
    elif not learned_reach or not base_reach:
        note = "target reached at step 0"
    return {"target": target, "baseline_steps_to_reach": base_reach, "learned_steps_to_reach": learned_reach,
            "speedup": None if note else base_reach / learned_reach, "note": note}


def tuned_run_key(task_result: dict[str, Any]) -> str:
    """The Adam grid run with the lowest mean final *training* loss over the seeds (ties: the
    smaller key); the held-out loss never takes part in the choice."""
    runs = task_result["runs"]
    grid_keys = [f"adam_lr={lr:g}" for lr in task_result["adam_lr_grid"]]
    return min(grid_keys, key=lambda k: (_score(_mean([_score(x) for x in runs[k]["final"]])), k))


def run_minima(run: dict[str, Any]) -> list[float]:
    """Per seed, the lowest finite loss on the evaluated training curve: the saved ``min_loss``,
    or (results from before it was recorded) the minimum of the saved curve."""
    if "min_loss" in run:
        return list(run["min_loss"])
    return [min((v for v in c if v is not None and math.isfinite(v)), default=math.nan) for c in run["curve"]]


def final_over_min(final: float, minimum: float) -> float:
    """final / min of one run (1: it ended at its lowest evaluated loss); NaN for a diverged run
    (non-finite final). A minimum of 0 gives 1 when the final is 0 too, else inf."""
    if final is None or minimum is None or not (math.isfinite(final) and math.isfinite(minimum)):
        return math.nan
    if final == minimum:
        return 1.0
    return final / minimum if minimum > 0 else math.inf


def _has_heldout(run: dict[str, Any]) -> bool:
    return "heldout_final" in run


def _versus(learned: Sequence[float], base: Sequence[float], learned_mean: float, base_mean: float) -> dict:
    per_seed = [_compare(x, y) for x, y in zip(learned, base)]
    # The seed-paired sign-flip test of log(learned / baseline): a task counts as decided only when
    # its seeds agree beyond chance, so a chaotic task's last-bit flip does not move the count.
    paired = paired_outcome(base, learned, lambda b, x: _log_ratio(x, b))
    return {
        "paired_p": paired["p"],
        "paired_verdict": {"candidate": -1, "reference": 1}.get(paired["verdict"], 0),
        "task_verdict": _compare(learned_mean, base_mean),
        "seed_wins": per_seed.count(-1),
        "seed_ties": per_seed.count(0),
        "seed_losses": per_seed.count(1),
        "loss_ratio": (learned_mean / base_mean
                       if math.isfinite(learned_mean) and math.isfinite(base_mean) and base_mean > 0 else math.nan),
    }


def _column(run: dict[str, Any], key: str, heldout: bool) -> dict[str, Any]:
    finals = run["final"]
    ratios = [final_over_min(f, m) for f, m in zip(finals, run_minima(run))]
    col = {
        "run": key,
        "lr": run["lr"],
        "final_mean": _mean(finals),
        "final_std": _std(finals),
        "final_min": min(finals, key=_score),
        "final_max": max(finals, key=_score),
        "diverged": sum(run["diverged"]),
        "seeds": len(finals),
        "optimizer_step_ms": 1e3 * _mean(run["optimizer_step_s"]),
        # Late-spike check: the mean over seeds of final / min (NaN if a seed diverged), and how many
        # runs end above SPIKE_RATIO times their minimum (a diverged run counts as one).
        "final_over_min_mean": _mean(ratios),
        "final_over_min_above": sum(not (r <= SPIKE_RATIO) for r in ratios),
    }
    if heldout:
        col["heldout_mean"] = _mean(run["heldout_final"])
        col["heldout_std"] = _std(run["heldout_final"])
    return col


def summarize_columns(task_result: dict[str, Any], plan: Sequence[tuple[str, str]], tuned_key: str) -> dict[str, Any]:
    """The summary of one task given ``plan``, the (column, run key) pairs in table order, and the
    Adam-tuned run key. Held-out statistics are added when every planned run has them."""
    runs = task_result["runs"]
    eval_steps = task_result["eval_steps"]
    heldout = all(_has_heldout(runs[key]) for _, key in plan)
    columns = {col: _column(runs[key], key, heldout) for col, key in plan}
    tuned_mean = columns["adam_tuned"]["final_mean"]
    for c in columns.values():
        c["ratio_to_adam_tuned"] = math.exp(_log_ratio(c["final_mean"], tuned_mean))
    learned = runs[columns["learned"]["run"]]
    learned_final = columns["learned"]["final_mean"]
    learned_curve = [_mean(v) for v in zip(*learned["curve"])]
    vs = {}
    for base in [col for col, _ in plan if col != "learned"]:
        b = runs[columns[base]["run"]]
        v = _versus(learned["final"], b["final"], learned_final, columns[base]["final_mean"])
        vs[base] = {**v, **speedup_vs(learned_curve, [_mean(vals) for vals in zip(*b["curve"])], eval_steps,
                                      v["task_verdict"])}
        if heldout:
            vs[base]["heldout"] = _versus(learned["heldout_final"], b["heldout_final"],
                                          columns["learned"]["heldout_mean"], columns[base]["heldout_mean"])
    tuned_lr = runs[tuned_key]["lr"]
    grid = task_result["adam_lr_grid"]
    return {
        "columns": columns,
        "vs": vs,
        "has_heldout": heldout,
        "adam_tuned_lr": tuned_lr,
        "adam_tuned_at_grid_edge": tuned_lr in (min(grid), max(grid)),
    }


def _won_tied_lost(verdicts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tasks_won": sum(v["task_verdict"] == -1 for v in verdicts),
        "tasks_tied": sum(v["task_verdict"] == 0 for v in verdicts),
        "tasks_lost": sum(v["task_verdict"] == 1 for v in verdicts),
        # Results saved before the paired test was recorded have no "paired_verdict": None there.
        "tasks_won_paired": (sum(v["paired_verdict"] == -1 for v in verdicts)
                             if all("paired_verdict" in v for v in verdicts) else None),
        "tasks_lost_paired": (sum(v["paired_verdict"] == 1 for v in verdicts)
                              if all("paired_verdict" in v for v in verdicts) else None),
        "seed_wins": sum(v["seed_wins"] for v in verdicts),
        "seed_ties": sum(v["seed_ties"] for v in verdicts),
        "seed_losses": sum(v["seed_losses"] for v in verdicts),
        "median_loss_ratio": _median([v["loss_ratio"] for v in verdicts if math.isfinite(v["loss_ratio"])]),
    }


def totals(results: dict[str, Any]) -> dict[str, Any]:
    """Across tasks: learned vs each baseline (task verdicts by mean final loss, seed pairs); the
    same on the held-out loss over the tasks that have it (``"heldout"``, absent if none)."""
    tot: dict[str, Any] = {}
    summaries = [t["summary"] for t in results["tasks"].values()]
    cols = list(summaries[0]["columns"]) if summaries else list(results["settings"]["optimizers"])
    bases = [k for k in cols if k != "learned"]
    for base in bases:
        tot[base] = _won_tied_lost([s["vs"][base] for s in summaries])
    tot["geomean_ratio_to_adam_tuned"] = {
        col: _geomean_ratio([s["columns"][col]["final_mean"] for s in summaries],
                            [s["columns"]["adam_tuned"]["final_mean"] for s in summaries])
        for col in cols}
    tot["learned_diverged_runs"] = sum(s["columns"]["learned"]["diverged"] for s in summaries)
    held = [s for s in summaries if s.get("has_heldout")]
    if held:
        tot["heldout"] = {"tasks": len(held), **{base: _won_tied_lost([s["vs"][base]["heldout"] for s in held])
                                                 for base in bases}}
    return tot
