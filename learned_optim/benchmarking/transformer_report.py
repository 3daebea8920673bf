"""The transformer benchmark's report: Markdown tables and a PNG figure from a transformer.json dict.

``write_transformer_report(res, out)`` writes ``transformer.md`` and ``transformer.png`` into
``out``. It reads only the results dict (with its summaries, ``transformer.summarize``), so a
saved, even partial, transformer.json renders again without training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..common.files import atomic_write_text
from ..common.machine import machine_line
from .common import save_figure

__all__ = ["transformer_markdown", "write_transformer_report"]

# A final validation loss above this multiple of the run's own minimum is flagged: the run got
# worse late (overfitting, or instability the schedule did not damp).
FINAL_OVER_MIN_FLAG = 1.2


def _num(x: float | None, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "nan"
    return f"{x:.{digits}g}"


def _label(m: dict[str, Any]) -> str:
    return f"{'AdamW' if m['optimizer'] == 'adamw' else 'learned'} (lr {m['lr']:g})"


def _workload_lines(name: str, wl: dict[str, Any]) -> list[str]:
    s = wl["summary"]
    methods = s["methods"]
    vit = any(m["test_acc_mean"] is not None for m in methods.values())
    head = ["method", "lr", f"final {wl['metric']}, mean ± std", "min over run, mean", "final / min (mean, max)"]
    head += ["test acc, mean ± std", "final train loss"] if vit else []
    head += ["diverged", "seeds", "wall s / run", "ms / step"]
    lines = [f"## {name}", "", f"{wl['description']}; {wl['params']:,} parameters; {wl['steps']} steps of batch "
             f"{wl['batch_size']}; evaluated at {len(wl['eval_steps'])} points.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = min((m["val_mean"] for m in methods.values() if m["seeds"]), default=math.nan)
    for key, m in methods.items():
        if not m["seeds"]:
            continue
        label = _label(m).split(" (")[0] + (" **tuned**" if key == s.get("adamw_tuned") else "") + (
            " **default**" if key == s.get("learned_default") else "")
        val = f"{_num(m['val_mean'])} ± {_num(m['val_std'], 2)}"
        flag = " ⚠" if math.isfinite(m["final_over_min_max"]) and m["final_over_min_max"] > FINAL_OVER_MIN_FLAG else ""
        cells = [label, f"{m['lr']:g}", f"**{val}**" if m["val_mean"] == best else val, _num(m["min_mean"]),
                 f"{_num(m['final_over_min_mean'], 3)}, {_num(m['final_over_min_max'], 3)}{flag}"]
        if vit:
            acc = (f"{100 * m['test_acc_mean']:.2f}% ± {100 * m['test_acc_std']:.2f}"
                   if m["test_acc_mean"] is not None else "nan")
            cells += [acc, _num(m["train_loss_mean"])]
        cells += [f"{m['diverged']}/{m['seeds']}" if m["diverged"] else "0", str(m["seeds"]),
                  f"{m['wall_s_mean']:.0f}", f"{m['step_ms_mean']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if "adamw_tuned" not in s:
        return lines + [""]
    lines.append("")
    if s["adamw_tuned_at_grid_edge"]:
        lines += [f"Tuned AdamW lr {s['adamw_tuned_lr']:g} is at the edge of the grid: a wider grid might do "
                  "better (the comparison below is then optimistic for the learned optimizer).", ""]
    for key, v in s["vs_tuned"].items():
        which = "learned default" if key == s.get("learned_default") else "learned"
        rel = v["mean_rel_delta"]
        acc = (f"; test accuracy {100 * v['mean_acc_delta']:+.2f} points" if v.get("mean_acc_delta") is not None
               else "")
        lines.append(f"- {which} (lr {v['lr']:g}) vs tuned AdamW (lr {s['adamw_tuned_lr']:g}): {v['better']}/"
                     f"{v['seeds']} seeds better, mean delta {_num(v['mean_delta'], 3)} "
                     + (f"± {_num(v['delta_se'], 2)} (standard error; sign-flip p {v['delta_p']:.3g}) "
                        if v.get("delta_se") is not None else "")
                     + f"({'nan' if not math.isfinite(rel) else f'{100 * rel:+.2f}%'}){acc}")
    if "learned_best" in s and len(s["vs_tuned"]) > 1:
        tried = ", ".join(f"{m['lr']:g}" for m in methods.values() if m["optimizer"] == "learned" and m["seeds"])
        lines += ["", f"Best learned lr here (lowest mean final loss of {tried}): {methods[s['learned_best']]['lr']:g}"
                  f" = {s['learned_best_lr_over_adamw_tuned_lr']:.3g}x the tuned AdamW lr."]
    return lines + [""]


def transformer_markdown(res: dict[str, Any]) -> str:
    """The text of ``transformer.md`` from a transformer.json dict."""
    st = res["settings"]
    w = res["weights"]
    lines = ["# Transformers: learned optimizer vs tuned AdamW", ""]
    if st["quick"]:
        lines += ["**QUICK RUN** (a few steps): a pipeline check, not a measurement.", ""]
    if not res.get("complete", True):
        lines += ["**PARTIAL RESULT**: the run had not finished when this was written; each row covers the seeds "
                  "it has.", ""]
    lines += [
        f"Weights: `{w['name']}`" + (" (the package default)" if w["is_default"] else "") + ".  ",
        f"Command: `{res['command']}`  ",
        f"Machine: {machine_line(res['machine'])}  ",
        f"Date (UTC): {res['machine']['date_utc']}; wall time {res.get('wall_s', 0):.0f} s; corpus "
        f"`{res['corpus_id']}`; {len(st['seeds'])} seeds."
        + (f" {res['reused_adamw']['runs']} AdamW runs copied from `{res['reused_adamw']['from']}` (same settings, "
           "deterministic; their wall times are the original runs')." if res.get("reused_adamw") else ""),
        "",
        f"Same recipe for every method: weight decay {st['weight_decay']:g} on tensors with >= 2 dimensions only, "
        f"gradient-norm clipping {st['grad_clip']:g}, linear warmup over {100 * st['warmup_frac']:g}% of the steps "
        f"then cosine decay to {100 * st['final_lr_frac']:g}% of the peak lr (LambdaLR); AdamW betas "
        f"{tuple(st['adamw_betas'])}. Per seed, every method starts from the same initialisation and sees the same "
        "minibatches. **tuned** AdamW = the grid lr with the lowest mean final validation loss on these same seeds "
        "(optimistic for AdamW). \"Better\" = lower final validation loss at the same seed; delta = learned − "
        "tuned AdamW (negative: learned better), its standard error over the seed pairs and the two-sided exact "
        "sign-flip p-value (5 seeds cannot go below 0.0625; `learned-optim benchmark compare` pairs two results the "
        "same way). final / min: the final validation loss over the run's own lowest "
        f"(⚠: some seed above {FINAL_OVER_MIN_FLAG:g}). A run with a NaN/inf loss is diverged and loses every "
        "comparison.",
        "",
    ]
    for name, wl in res["workloads"].items():
        lines += _workload_lines(name, wl)
    lines += ["Curves: `transformer.json` (every run and seed); figure: `transformer.png`.", ""]
    return "\n".join(lines)


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["workloads"])
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5.5 * max(1, len(names)), 4.0), squeeze=False)
    for ax, name in zip(axes.flat, names):
        wl = res["workloads"][name]
        s = wl["summary"]
        learned = [k for k, m in s["methods"].items() if m["optimizer"] == "learned" and m["seeds"]]
        adamw = [k for k, m in s["methods"].items() if m["optimizer"] == "adamw" and m["seeds"]]
        points, finals = [], []
        for keys, cmap in ((adamw, plt.cm.Blues), (learned, plt.cm.Reds)):
            for i, key in enumerate(keys):
                r, m = wl["runs"][key], s["methods"][key]
                per_step = [[v for v in vals if v is not None and math.isfinite(v)] for vals in zip(*r["curve"])]
                xs = [x for x, v in zip(wl["eval_steps"], per_step) if v]
                mean = [sum(v) / len(v) for v in per_step if v]
                if not mean:
                    continue
                points += mean
                finals.append(mean[-1])
                strong = key in (s.get("adamw_tuned"), s.get("learned_default"))
                label = _label(m) + (" tuned" if key == s.get("adamw_tuned") else "") + (
                    " default" if key == s.get("learned_default") else "")
                ax.plot(xs, mean, color=cmap(0.45 + 0.5 * (i + 1) / len(keys)), lw=2.2 if strong else 1.1,
                        ls="-" if strong else "--", label=label)
        if points:  # from the lowest point to a few times it (not the first steps), every method's end in view
            top = max(2.5 * min(points), 1.15 * max(finals))
            ax.set_ylim(0.97 * min(points), min(ax.get_ylim()[1], top))
        ax.set_title(f"{name} ({wl['params']:,} params)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(wl["metric"], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(f"learned optimizer (weights {res['weights']['name']}) vs AdamW; mean over "
                 f"{len(res['settings']['seeds'])} seeds" + (" [QUICK]" if res["settings"]["quick"] else "")
                 + ("" if res.get("complete", True) else " [PARTIAL]"), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def write_transformer_report(res: dict[str, Any], out: Path, figure: bool = True) -> None:
    """Write ``transformer.md`` (and, with ``figure``, ``transformer.png``) into the folder ``out``."""
    atomic_write_text(Path(out) / "transformer.md", transformer_markdown(res))
    if figure:
        _plot(res, Path(out) / "transformer.png")
