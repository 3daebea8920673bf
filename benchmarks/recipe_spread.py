"""How far apart do runs of one meta-training recipe land on the benchmarks, and how many runs
does a comparison of recipes need?

Every recipe below has two or more runs benchmarked with the same commands (5 seeds each of
gpt-byte validation loss, vit-digits test accuracy, and the small-task quality suite). For each
figure this prints each run, each recipe's mean and standard deviation over its runs, the
pooled within-recipe standard deviation (the run-to-run spread, which one run's 5 benchmark
seeds do not show), and how many runs per recipe a two-recipe comparison needs so that a given
difference is two standard errors: ``n = 2 (2 sd / d)^2``.

    python benchmarks/recipe_spread.py --out benchmarks/results/meta-v2/recipe-spread

Reads only committed results under ``benchmarks/results`` (the ``RECIPES`` table: a run is a
folder with ``gpt-byte``, ``vit-digits`` and a quality folder, ``quality`` unless named after a
colon); writes ``recipe-spread.json``, ``.md`` and ``.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# recipe -> its runs, as "folder" or "folder:quality folder", relative to RESULTS. Each run is the
# point its recipe's selection (or a fixed meta-step, for the fine-tunes) kept, benchmarked as in
# meta-v2/README.md. Suite figures of recipes without the model-size input have no size prior and
# are not comparable with the default's; their spread is.
RECIPES: dict[str, list[str]] = {
    "t32: the previous default's recipe (4 seeds)": [
        "meta-v2/t32-step400", "meta-v2/default-s1-step400", "meta-v2/default-s2-auto-step400",
        "meta-v2/default-s3-auto-step300"],
    "t32 with 64 trajectories (2 seeds)": ["meta-v2/t64-step400", "meta-v2/t64-s1-step400"],
    "late-rise penalty 0.25 (2 seeds)": ["meta-v2/rise0.25-step400", "meta-v2/rise0.25-s1-step400"],
    "model-size input fine-tuned in, meta-lr 1e-2 (2 seeds)": ["meta-v2/size-step120",
                                                               "meta-v2/size-seed1-step120"],
    "one in twelve nanoGPT ViTs, held-out, meta-lr 1e-3 (5 runs)": [
        "meta-v2/ft-nanovit-step100:quality-c05", "meta-v2/ft-nanovit-rerun-s0-step100",
        "meta-v2/ft-nanovit-rerun-s1-step100", "meta-v2/ft-nanovit-rerun-s2-step100",
        "meta-v2/ft-nanovit-rerun-s3-step100"],
    "one in three, held-out, meta-lr 3e-3, adam_log_rms fine-tuned in (2 seeds)": [
        "meta-v2/ft-arms-vitnano3-s0-step100", "meta-v2/ft-arms-vitnano3-s1-step100"],
}
# The shipped default, for reference (its transformer runs are its run's, which the capped size
# prior leaves unchanged; its suite with the prior on the same CPU).
DEFAULT = "meta-v2/rise-t64-step400:../../size-prior/xeon-default/quality"
FIGURES = {"gpt": "gpt-byte validation nats/byte", "vit": "vit-digits test accuracy %",
           "suite_median": "suite median final loss / tuned Adam",
           "suite_wins": "suite wins vs Adam at the best single lr"}
# differences worth resolving: the default's gaps to its targets (tuned AdamW 1.692 on the GPT,
# 97.53 - 1 points on the ViT, a median of 1.0 on the suite)
GAPS = {"gpt": 0.016, "vit": 0.26, "suite_median": 0.14}


def _learned_default(path: Path, workload: str) -> dict:
    summary = json.loads(path.read_text())["workloads"][workload]["summary"]
    return summary["methods"][summary["learned_default"]]


def read_run(spec: str, root: Path = RESULTS) -> dict:
    """The four figures of one benchmarked run (``spec``: "folder" or "folder:quality folder")."""
    folder, _, quality = spec.partition(":")
    base = root / folder
    q = json.loads((base / (quality or "quality") / "quality.json").read_text())["totals"]
    return {"run": spec, "gpt": _learned_default(base / "gpt-byte" / "transformer.json", "gpt-byte")["val_mean"],
            "vit": 100 * _learned_default(base / "vit-digits" / "transformer.json", "vit-digits")["test_acc_mean"],
            "suite_median": q["adam_tuned"]["median_loss_ratio"],
            "suite_wins": q["adam_suite"]["tasks_won"] + 0.5 * q["adam_suite"]["tasks_tied"]}


def spread(recipes: dict[str, list[dict]]) -> dict:
    """Per recipe, mean and sd over its runs; pooled within-recipe sd and runs needed per figure."""
    out: dict = {"recipes": {}, "pooled_sd": {}, "runs_needed": {}}
    for name, runs in recipes.items():
        out["recipes"][name] = {f: {"mean": statistics.fmean(r[f] for r in runs),
                                    "sd": statistics.stdev(r[f] for r in runs) if len(runs) > 1 else math.nan}
                                for f in FIGURES}
    for f in FIGURES:
        ss = sum(sum((r[f] - statistics.fmean(x[f] for x in runs)) ** 2 for r in runs)
                 for runs in recipes.values())
        dof = sum(len(runs) - 1 for runs in recipes.values())
        sd = math.sqrt(ss / dof) if dof else math.nan
        out["pooled_sd"][f] = sd
        if f in GAPS:
            out["runs_needed"][f] = math.ceil(2 * (2 * sd / GAPS[f]) ** 2)
        # the difference that is two standard errors with 4 runs per recipe
        out.setdefault("resolved_with_4_runs", {})[f] = 2 * sd * math.sqrt(2 / 4)
    return out


def _fmt(f: str, x: float) -> str:
    return f"{x:.3f}" if f == "gpt" else f"{x:.2f}"


def write_report(result: dict, out: Path, command: str) -> None:
    lines = ["# Run-to-run spread of meta-training recipes on the benchmarks", "",
             f"Command: `{command}`. Reads the committed results of every run listed (each benchmarked on 5 seeds);"
             " see the script's docstring.", "",
             "| recipe / run | " + " | ".join(FIGURES.values()) + " |", "|---|" + "---|" * len(FIGURES)]
    d = result["default"]
    lines.append(f"| **the default** (`{d['run']}`) | " + " | ".join(_fmt(f, d[f]) for f in FIGURES) + " |")
    for name, runs in result["runs"].items():
        st = result["spread"]["recipes"][name]
        lines.append(f"| **{name}**: mean ± sd over runs | "
                     + " | ".join(f"{_fmt(f, st[f]['mean'])} ± {_fmt(f, st[f]['sd'])}" for f in FIGURES) + " |")
        lines += [f"| &nbsp;&nbsp;`{r['run']}` | " + " | ".join(_fmt(f, r[f]) for f in FIGURES) + " |" for r in runs]
    sp = result["spread"]
    lines += ["", "Pooled within-recipe standard deviation over runs (each run's figure is already a mean over 5"
              " benchmark seeds), and the runs per recipe that a two-recipe comparison needs for a difference of the"
              " default's gap to its target to be two standard errors, `n = 2 (2 sd / d)^2`:", "",
              "| figure | pooled sd over runs | difference d | runs per recipe | difference resolved with 4 runs per"
              " recipe |", "|---|---|---|---|---|"]
    for f in FIGURES:
        need = sp["runs_needed"].get(f)
        lines.append(f"| {FIGURES[f]} | {_fmt(f, sp['pooled_sd'][f])} | "
                     f"{_fmt(f, GAPS[f]) if f in GAPS else ''} | {need if need is not None else ''} | "
                     f"{_fmt(f, sp['resolved_with_4_runs'][f])} |")
    (out / "recipe-spread.md").write_text("\n".join(lines) + "\n")
    (out / "recipe-spread.json").write_text(json.dumps(result, indent=1) + "\n")


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = ["gpt", "vit", "suite_median"]
    fig, axes = plt.subplots(1, len(figs), figsize=(5 * len(figs), 0.6 * len(result["runs"]) + 2), sharey=True)
    names = list(result["runs"])
    for ax, f in zip(axes, figs):
        for i, name in enumerate(names):
            xs = [r[f] for r in result["runs"][name]]
            ax.plot(xs, [i] * len(xs), "o", alpha=0.7)
            ax.plot([statistics.fmean(xs)], [i], "k|", markersize=14)
        ax.axvline(result["default"][f], color="grey", linestyle="--", label="the default")
        ax.set_title(FIGURES[f], fontsize=9)
    axes[0].set_yticks(range(len(names)), [n.split(":")[0][:40] for n in names], fontsize=8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "recipe-spread.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {name: [read_run(s) for s in specs] for name, specs in RECIPES.items()}
    result = {"runs": runs, "default": read_run(DEFAULT), "spread": spread(runs), "gaps": GAPS}
    write_report(result, args.out, "python benchmarks/recipe_spread.py " + " ".join(argv or sys.argv[1:]))
    plot(result, args.out)
    return result


if __name__ == "__main__":
    main()
