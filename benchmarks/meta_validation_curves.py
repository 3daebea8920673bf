"""Meta-validation curves of meta-training runs, from their ``log.jsonl``: a markdown table and a PNG.

Every ``eval`` record of a run (``learned_optim.meta.trainer``) holds the held-out metric (mean
log of final loss / tuned-Adam final loss over tasks and seeds) and per-task ratios; this script
lays them side by side for several runs.

    python benchmarks/meta_validation_curves.py --out benchmarks/results/meta-v2 \\
        NAME=path/to/log.jsonl [NAME=path/to/log.jsonl ...]

Writes ``validation.md`` and ``validation.png`` into ``--out`` and copies each log there as
``NAME.log.jsonl`` so the figures can be regenerated from the repository alone.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

from learned_optim.network import LSTMOptimizerConfig


def read_evals(path: Path) -> tuple[dict, list[dict]]:
    config, evals = {}, []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "config" in rec and not config:
            config = rec["config"]
        if rec.get("event") == "eval":
            evals.append(rec)
    return config, evals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="NAME=LOG.jsonl")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for spec in args.runs:
        name, _, log = spec.partition("=")
        if not log:
            ap.error(f"runs must be NAME=LOG.jsonl, got {spec!r}")
        src = Path(log)
        dst = out / f"{name}.log.jsonl"
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        runs[name] = read_evals(dst)

    lines = ["# Meta-validation curves", "",
             f"Command: `python benchmarks/meta_validation_curves.py --out {args.out} "
             + " ".join(args.runs) + "`", "",
             "Metric = mean over validation tasks and seeds of log(final loss / tuned-Adam final loss) (lower is "
             "better; 0 = as good as Adam with its lr tuned per task and seed set), or, for a run with "
             "`val_reduce` \"max\", the largest of the tasks' mean log ratios (its worst task); the run keeps "
             "the weights with the lowest metric. Per-task columns: exp(mean log ratio) for that task (< 1: "
             "better than tuned Adam).", ""]
    for name, (config, evals) in runs.items():
        if not evals:
            lines += [f"## {name}", "", "no evaluations yet", ""]
            continue
        tasks = [r["task"] for r in evals[0]["rows"]]
        c = config.get
        defaults = LSTMOptimizerConfig().to_dict()  # the rule's fields that matter here, and any changed one
        rule = {k: v for k, v in c("network", {}).items()
                if k in ("sign_equivariant", "context_features", "log_scale_bound") or defaults.get(k, v) != v}
        lines += [f"## {name}", "",
                  f"Config: estimator {c('estimator')}, {c('meta_steps')} meta-steps of "
                  f"{c('num_trajectories')} trajectories, truncation "
                  f"{c('truncation_length')}, horizons {c('horizon_min')}-{c('horizon_max')}, "
                  f"curriculum fraction {c('curriculum_fraction')}, train tasks `{c('train_tasks')}`, loss floor "
                  f"{c('loss_floor', 0.0)}, objective from {c('objective_from', 0.0)} of each horizon, "
                  f"validation seeds {c('val_seeds', 1)}, metric {c('val_reduce', 'mean')}; "
                  f"network `{json.dumps(rule)}`.",
                  "", "| meta-step | metric | diverged | " + " | ".join(tasks) + " |",
                  "|---" * (3 + len(tasks)) + "|"]
        for e in evals:
            cells = [f"{r['ratio_vs_tuned']:.3g}" for r in e["rows"]]
            lines.append(f"| {e['step']} | {e['metric']:.4f}{' (best so far)' if e.get('best') else ''} | "
                         f"{e['diverged']} | " + " | ".join(cells) + " |")
        lines.append("")
    (out / "validation.md").write_text("\n".join(lines) + "\n")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no validation.png", file=sys.stderr)
        return 0
    names = [n for n, (_, ev) in runs.items() if ev]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(5 * (len(names) + 1), 3.8), squeeze=False)
    for name in names:
        ev = runs[name][1]
        axes[0][0].plot([e["step"] for e in ev], [e["metric"] for e in ev], marker="o", label=name)
    axes[0][0].set(title="validation metric (lower is better)", xlabel="meta-step")
    axes[0][0].axhline(0, color="grey", lw=0.5)
    axes[0][0].legend()
    for ax, name in zip(axes[0][1:], names):
        ev = runs[name][1]
        for k, task in enumerate(r["task"] for r in ev[0]["rows"]):
            ax.plot([e["step"] for e in ev], [math.log10(e["rows"][k]["ratio_vs_tuned"]) for e in ev], marker=".",
                    label=task)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(title=f"{name}: log10(final / tuned Adam)", xlabel="meta-step")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "validation.png", dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
