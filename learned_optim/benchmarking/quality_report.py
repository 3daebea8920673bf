"""The quality benchmark's report: Markdown tables and a PNG figure from a quality.json dict.

``write_quality_report(res, out)`` writes ``quality.md`` and ``quality.png`` into ``out``. It
reads only the results dict (the optimizer columns, their labels and order come from
``res["settings"]["optimizers"]``), so a saved quality.json renders again without training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..common.files import atomic_write_text
from ..common.machine import machine_line
from .common import save_figure
from .paired import ALPHA, smallest_p

__all__ = ["quality_markdown", "write_quality_report"]

# Plot colours per optimizer column, so every figure reads the same way.
_COLORS = {"learned": "tab:red", "adam": "tab:blue", "adamw": "tab:cyan", "sgd_momentum": "tab:gray",
           "adam_tuned": "tab:green", "adam_suite": "tab:olive"}


def _columns(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The table's columns in order: key -> {"label", "lr"} (lr None: tuned over the grid)."""
    return res["settings"]["optimizers"]


def _num(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "nan"
    return f"{x:.{digits}g}"


def _ratio(x: float | None) -> str:
    return f"{x:.2f}" if x is not None and math.isfinite(x) else "nan"


def _speedup(v: dict[str, Any]) -> str:
    if v.get("speedup") is not None:
        return f"{v['speedup']:.2f}x"
    note = v.get("note") or "not reached"
    if note == "learned ends above":
        ratio = v.get("loss_ratio")
        return "not reached" + (f" (ends {ratio:.4g}x higher)" if ratio is not None and math.isfinite(ratio) else "")
    return f"n/a ({note})"


def _loss_cell(c: dict[str, Any], mean_key: str, std_key: str, best: float) -> str:
    cell = f"{_num(c[mean_key])} ± {_num(c[std_key], 2)}"
    return f"**{cell}**" if c[mean_key] == best else cell


def _best(s: dict[str, Any], columns: dict[str, Any], key: str) -> float:
    vals = [s["columns"][c][key] for c in columns]
    return min((v for v in vals if v is not None and math.isfinite(v)), default=math.nan)


def _heldout_section(res: dict[str, Any], labels: dict[str, str], baselines: list[str]) -> list[str]:
    """The held-out loss table and its totals; nothing for results without held-out losses."""
    held = {name: t for name, t in res["tasks"].items() if t["summary"].get("has_heldout")}
    tot = res["totals"].get("heldout")
    if not held or not tot:
        return []
    lines = ["", "## Held-out loss", "",
             "Final held-out loss (mean ± std over seeds) of the same runs: each task's held-out split (sizes in the "
             "second column, how it is made in the task list below) is never trained on. The columns are the same "
             "runs as above: **Adam tuned** and **Adam, best single lr** keep the lr chosen on *training* loss.", "",
             "| task | train / held-out | " + " | ".join(labels.values()) + " |", "|" + "---|" * (len(labels) + 2)]
    for name, t in held.items():
        s = t["summary"]
        sp = t.get("split") or {}
        best = _best(s, labels, "heldout_mean")
        cells = [name + (" (long)" if t["long_horizon"] else ""),
                 f"{sp.get('train', '?')} / {sp.get('heldout', '?')} {sp.get('unit', '')}".rstrip()]
        for key in labels:
            c = s["columns"][key]
            cell = _loss_cell(c, "heldout_mean", "heldout_std", best)
            if res["settings"]["optimizers"][key]["lr"] is None:
                cell += f" (lr {c['lr']:g}, chosen on training loss)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Learned optimizer against each baseline on held-out loss ({tot['tasks']} tasks): tasks (by mean "
              "held-out loss) and seed pairs won / tied / lost, and the median over tasks of learned held-out loss / "
              "baseline held-out loss.", ""]
    return lines + _versus_table(tot, baselines, labels, "median held-out loss ratio", len(res["settings"]["seeds"]))


def _versus_table(tot: dict[str, Any], baselines: list[str], labels: dict[str, str], ratio_head: str,
                  seeds: int) -> list[str]:
    """The learned optimizer against each baseline over the tasks: won / tied / lost by mean, the
    tasks decided by the seed-paired test, seed pairs, the median ratio."""
    reachable = smallest_p(seeds) < ALPHA
    lines = [f"| baseline | tasks won / tied / lost | tasks won / lost at paired p < {ALPHA:g} | seed pairs won / "
             f"tied / lost | {ratio_head} |", "|---|---|---|---|---|"]
    for base in baselines:
        tt = tot[base]
        paired = (f"{tt['tasks_won_paired']} / {tt['tasks_lost_paired']}" if tt.get("tasks_won_paired") is not None
                  else "not recorded")
        if not reachable:
            paired = f"none decidable ({seeds} seeds)"
        lines.append(f"| {labels[base]} | {tt['tasks_won']} / {tt['tasks_tied']} / {tt['tasks_lost']} | {paired} | "
                     f"{tt['seed_wins']} / {tt['seed_ties']} / {tt['seed_losses']} | "
                     f"{_num(tt['median_loss_ratio'], 3)} |")
    return lines


def _spike_section(res: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Late-spike check: mean over seeds of final / min training loss, and runs above the threshold."""
    rows = {name: t for name, t in res["tasks"].items() if "final_over_min_mean" in t["summary"]["columns"]["learned"]}
    if not rows:
        return []
    ratio = res["settings"].get("spike_ratio", 1.2)
    lines = ["", "## Late spikes", "",
             f"Final / min: a run's final training loss over the lowest loss on its evaluated curve (1 = it ended at "
             f"its best point), mean over seeds, and in brackets the runs above {ratio:g} (a diverged run counts "
             f"as above); the target on the long-horizon task is at most {ratio:g}.", "",
             "| task | " + " | ".join(labels.values()) + " |", "|" + "---|" * (len(labels) + 1)]
    for name, t in rows.items():
        cols = t["summary"]["columns"]
        cells = [f"{_ratio(cols[k]['final_over_min_mean'])} ({cols[k]['final_over_min_above']}/{cols[k]['seeds']})"
                 for k in labels]
        lines.append(f"| {name}{' (long)' if t['long_horizon'] else ''} | " + " | ".join(cells) + " |")
    return lines


def quality_markdown(res: dict[str, Any]) -> str:
    """The tables of ``quality.md`` (Markdown) from a quality.json dict."""
    columns = _columns(res)
    baselines = [key for key in columns if key != "learned"]
    w = res["weights"]
    seeds = len(res["settings"]["seeds"])
    lines = [f"# Quality: learned optimizer vs Adam on {len(res['tasks'])} held-out tasks", ""]
    if res["settings"]["quick"]:
        lines += ["**QUICK RUN** (horizons cut down, few seeds): a pipeline check, not a measurement.", ""]
    prov = w.get("provenance") or {}
    lines.append(f"Weights: `{w['name']}`" + (" (the package default)" if w["is_default"] else "")
                 + (f". Provenance: {prov.get('note')}" if prov.get("note") else ""))
    if prov.get("trained") is False:
        lines += ["", "**These weights are untrained: the rule is exactly Adam by construction (zero output head),"
                  " so the learned column must tie Adam (lr 1e-3) everywhere. This run checks the benchmark,"
                  " not a learned optimizer.**"]
    lines += [
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {machine_line(res['machine'])}  ",
        *([f"Tables recomputed from the saved curves (`learned-optim benchmark quality --rerender`) at "
           f"{res['summary_recomputed_utc']} UTC.  "]
          if res.get("summary_recomputed_utc") else []),
        f"Date (UTC): {res['machine']['date_utc']}; wall time {res['wall_s']:.0f} s; {seeds} seeds per optimizer "
        f"and lr; Adam lr grid {', '.join(f'{x:g}' for x in res['settings']['adam_lr_grid'])}."
        + (f" {res['reused_baselines']['runs']} baseline runs copied from `{res['reused_baselines']['from']}` "
           "(same settings, deterministic; their wall times are the original runs')."
           if res.get("reused_baselines") else ""),
        "",
        f"Final training loss (on the whole training split), mean ± std over {seeds} seeds (same initialisations "
        "and minibatches for every optimizer; lower is better). **Adam tuned** takes, per task, the grid lr with "
        "the lowest mean final loss on these same seeds (optimistic for Adam); its tuning cost is the grid's runs. "
        "**Adam, best single lr** is Adam at the one grid lr that is best for the whole suite: the lr with the "
        "lowest geometric mean over tasks of (its mean final loss / the task's Adam-tuned mean final loss). "
        "Speed-up vs a baseline = steps the baseline needs (mean curve over seeds) to first reach its own mean final "
        "loss / steps the learned optimizer needs (mean curve) to first reach that loss (> 1: learned is faster); "
        "\"not reached\" when the learned optimizer does not end at or below the baseline's final loss. "
        f"Ties: within {res['settings']['tie_rtol']:g} relative. "
        "⚠ marks runs that diverged (NaN, or final loss above initial).",
        "",
    ]
    labels = {key: c["label"] for key, c in columns.items()}
    sped = [b for b in ("adam", "adam_suite", "adam_tuned") if b in columns]
    head = ["task", "steps"] + list(labels.values()) + [
        f"speed-up vs {'Adam best single lr' if b == 'adam_suite' else labels[b]}" for b in sped] + [
        "tuning cost (runs / steps)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, t in res["tasks"].items():
        s = t["summary"]
        cells = [name + (" (long)" if t["long_horizon"] else ""), str(t["steps"])]
        best = min((s["columns"][key]["final_mean"] for key in columns
                    if s["columns"][key]["final_mean"] is not None and math.isfinite(s["columns"][key]["final_mean"])),
                   default=math.nan)
        for key, spec in columns.items():
            c = s["columns"][key]
            cell = f"{_num(c['final_mean'])} ± {_num(c['final_std'], 2)}"
            if c["final_mean"] == best:
                cell = f"**{cell}**"
            if spec["lr"] is None:
                cell += f" (lr {c['lr']:g}{', grid edge' if s['adam_tuned_at_grid_edge'] else ''})"
            if c["diverged"]:
                cell += f" ⚠ {c['diverged']}/{c['seeds']} diverged"
            cells.append(cell)
        cells += [_speedup(s["vs"][b]) for b in sped]
        cells.append(f"{t['tuning_cost']['adam_runs']} / {t['tuning_cost']['optimizer_steps']}")
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "Learned optimizer against each baseline: tasks (by mean final loss) and seed pairs won / tied / "
              "lost, and the median over tasks of learned final loss / baseline final loss. A task is won or lost at "
              f"paired p < {ALPHA:g} when the two-sided exact sign-flip test of its per-seed log(learned / baseline) "
              "says so (`learned_optim.benchmarking.paired`; 5 seeds can never reach it, 10 can): a count that one "
              "chaotic seed cannot flip.", ""]
    lines += _versus_table(res["totals"], baselines, labels, "median loss ratio", len(res["settings"]["seeds"]))
    suite = res.get("suite_adam")
    geo = res["totals"].get("geomean_ratio_to_adam_tuned")
    if suite or geo:
        lines += ["", "Geometric mean over tasks of each column's mean final loss / Adam tuned's (1 = as good as "
                  "Adam tuned on every task; a diverged mean counts as infinite, shown as nan):", "",
                  "| column | geometric mean ratio to Adam tuned |", "|---|---|"]
        lines += [f"| {labels[key]} | {_num((geo or {}).get(key), 3)} |" for key in columns if key in (geo or {})]
    if suite:
        lines += ["", f"Adam best single lr = {suite['lr']:g}, chosen over the grid by that geometric mean: "
                  + ", ".join(f"lr {lr}: {_num(g, 3)}" for lr, g in suite["by_lr"].items()) + "."]
    lines += _heldout_section(res, labels, baselines)
    lines += _spike_section(res, labels)
    lines += ["", f"Learned-optimizer runs that diverged: {res['totals']['learned_diverged_runs']}.", "",
              "Mean optimizer.step() time per task (ms; 1 thread, includes Python overhead on these small models):", "",
              "| task | learned | Adam | ratio |", "|---|---|---|---|"]
    for name, t in res["tasks"].items():
        c = t["summary"]["columns"]
        lr_, ad = c["learned"]["optimizer_step_ms"], c["adam"]["optimizer_step_ms"]
        lines.append(f"| {name} | {lr_:.3f} | {ad:.3f} | {lr_ / ad:.1f}x |")
    lines += ["", "Tasks:", ""]
    for name, t in res["tasks"].items():
        extra = ""
        if "corpus" in t:
            cp = t["corpus"]
            extra = f" Corpus: {', '.join(cp['files'])} ({cp['chars']} chars, sha256 {cp['sha256'][:12]})."
        if t.get("split"):
            sp = t["split"]
            extra += f" Held-out: {sp['heldout']} {sp['unit']} (train {sp['train']}; {sp['how']})."
        lines.append(f"- `{name}`: {t['description']}; batch {t['batch_size']}.{extra}")
    lines += ["", "Curves: `quality.json` (every run, every seed, every grid lr); figure: `quality.png`.", ""]
    return "\n".join(lines)


def _plot_quality(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["tasks"])
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        t = res["tasks"][name]
        steps = t["eval_steps"]
        positive = True
        for key, spec in _columns(res).items():
            col = t["summary"]["columns"][key]
            curves = t["runs"][col["run"]]["curve"]
            per_step = [[v for v in vals if v is not None and math.isfinite(v)] for vals in zip(*curves)]
            xs = [s for s, v in zip(steps, per_step) if v]
            mean = [sum(v) / len(v) for v in per_step if v]
            lo = [min(v) for v in per_step if v]
            hi = [max(v) for v in per_step if v]
            positive &= all(v > 0 for v in lo)
            label = spec["label"] if spec["lr"] is not None else f"{spec['label']} (lr {col['lr']:g})"
            lw, ls = (2.2, "-") if key == "learned" else (1.2, "--" if key == "adam" else "-")
            ax.plot(xs, mean, color=_COLORS.get(key), lw=lw, ls=ls, label=label,
                    zorder=3 if key == "adam" else 2)  # dashed Adam on top: a tie stays visible
            ax.fill_between(xs, lo, hi, color=_COLORS.get(key), alpha=0.15, lw=0)
        if positive:
            ax.set_yscale("log")
        ax.set_title(name + (" (10x horizon)" if t["long_horizon"] else ""), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("train loss (whole train split)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    w = res["weights"]
    fig.suptitle(f"learned optimizer (weights {w['name']}) vs baselines; mean and min-max over "
                 f"{len(res['settings']['seeds'])} seeds" + (" [QUICK]" if res["settings"]["quick"] else ""),
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def write_quality_report(res: dict[str, Any], out: Path, figure: bool = True) -> None:
    """Write ``quality.md`` (and, with ``figure``, ``quality.png``) into the folder ``out``."""
    atomic_write_text(Path(out) / "quality.md", quality_markdown(res))
    if figure:
        _plot_quality(res, Path(out) / "quality.png")
