"""The few-shot benchmark's report: ``<stem>.json`` (every number), ``<stem>.md`` (the table) and
``<stem>.png`` (held-out query accuracy after each inner step), written atomically.

``stem`` is ``few_shot`` for fresh inits and ``few_shot_learned_init`` for meta-learned ones, so
one never overwrites the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..common.files import atomic_write_text, write_json
from ..common.machine import machine_line
from ..meta.few_shot import FEW_SHOT_LR_GRID
from .common import save_figure

__all__ = ["report_stem", "output_files", "markdown", "write_few_shot_report"]


def report_stem(init: str) -> str:
    """The file name stem of the report for ``init`` ("fresh" or "learned")."""
    return "few_shot" if init == "fresh" else "few_shot_learned_init"


def output_files(init: str) -> tuple[str, str, str]:
    """The names of the files the report for ``init`` writes."""
    stem = report_stem(init)
    return f"{stem}.json", f"{stem}.md", f"{stem}.png"


def markdown(payload: dict[str, Any]) -> str:
    """The Markdown report: setup, command, machine, and one table row per setting."""
    init_training = payload["baseline_init_training"]
    lines = [
        f"# Few-shot: held-out query accuracy ({payload['episodes']} episodes, 95% CI), "
        f"T = {payload['inner_steps']} inner steps",
        "",
        f"Weights: `{payload['weights']}`. {payload['model']}. {payload['data']}. Baseline lrs tuned on "
        f"meta-training classes (grid {list(FEW_SHOT_LR_GRID)}, {payload['tuning_episodes']} episodes each"
        + ("" if payload["init"] == "fresh" else "; then meta-learned with the init, " + ", ".join(
            f"{m}: {v['meta_steps']} meta-steps, {v['wall_s']:.0f} s, lr {v['lr_start']:.3g} -> {v['lr']:.3g}"
            for m, v in init_training.items())) + ").",
        f"Command: `{payload['command']}`; wall time {payload['wall_time_s']:.0f} s, "
        f"{payload['torch_threads']} thread(s).",
    ]
    if "machine" in payload:
        lines.append(f"Machine: {machine_line(payload['machine'])}.")
    lines += [
        "",
        "| setting | learned (lr) | SGD tuned (lr) | Adam tuned (lr) | learned beats both, CIs apart? |",
        "|---|---|---|---|---|",
    ]
    for setting, res in payload["results"].items():
        cells = [f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}% ({r['lr']:.3g})" for r in res.values()]
        lo = res["learned"]["accuracy"] - res["learned"]["ci95"]
        apart = all(lo > r["accuracy"] + r["ci95"] for m, r in res.items() if m != "learned")
        lines.append(f"| {setting} | " + " | ".join(cells) + f" | {'yes' if apart else 'no'} |")
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, Any], path: Path) -> None:
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
    save_figure(fig, path, dpi=100)


def write_few_shot_report(payload: dict[str, Any], out_dir: str | Path, stem: str) -> None:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir`` (which must exist)."""
    out_dir = Path(out_dir)
    write_json(out_dir / f"{stem}.json", payload)
    atomic_write_text(out_dir / f"{stem}.md", markdown(payload))
    _plot(payload["results"], out_dir / f"{stem}.png")
