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


def _learned_default(path: Path, workload: str) -> tuple[dict, dict]:
    """The learned default's summary statistics and raw runs (per seed) on one workload."""
    wl = json.loads(path.read_text())["workloads"][workload]
    key = wl["summary"]["learned_default"]
    return wl["summary"]["methods"][key], wl["runs"][key]


def read_run(spec: str, root: Path = RESULTS) -> dict:
    """The four figures of one benchmarked run (``spec``: "folder" or "folder:quality folder")."""
    folder, _, quality = spec.partition(":")
    base = root / folder
    q = json.loads((base / (quality or "quality") / "quality.json").read_text())["totals"]
    gpt, gpt_runs = _learned_default(base / "gpt-byte" / "transformer.json", "gpt-byte")
    vit, vit_runs = _learned_default(base / "vit-digits" / "transformer.json", "vit-digits")
    return {"run": spec, "gpt": gpt["val_mean"], "vit": 100 * vit["test_acc_mean"],
            "suite_median": q["adam_tuned"]["median_loss_ratio"],
            "suite_wins": q["adam_suite"]["tasks_won"] + 0.5 * q["adam_suite"]["tasks_tied"],
            # per benchmark seed (every run has the same seeds: the same initialisations and batches)
            "seeds": gpt_runs["seeds"], "gpt_by_seed": gpt_runs["final"],
            "vit_by_seed": [100 * a for a in vit_runs["test_acc"]]}


def components(recipes: dict[str, list[dict]], key: str) -> dict:
    """Run x benchmark-seed decomposition of one figure, pooled over recipes (two-way layout, one
    value per run and seed): the sd of a run's mean over its seeds ("between runs", what
    ``spread`` pools), the sd of the run-by-seed interaction (how much a run's result on one seed
    departs from its mean and that seed's), and the run component that more benchmark seeds
    would not remove, ``sqrt(max(0, (MS_run - MS_interaction) / S))``."""
    ss_run = ss_int = dof_run = dof_int = 0.0
    n_seeds = set()
    for runs in recipes.values():
        x = [r[key] for r in runs]
        n_r, n_s = len(x), len(x[0])
        if n_r < 2 or any(len(row) != n_s for row in x) or len({tuple(r["seeds"]) for r in runs}) != 1:
            raise ValueError(f"{key}: every run of a recipe needs the same benchmark seeds")
        n_seeds.add(n_s)
        grand = statistics.fmean(v for row in x for v in row)
        rows = [statistics.fmean(row) for row in x]
        cols = [statistics.fmean(row[j] for row in x) for j in range(n_s)]
        ss_run += n_s * sum((m - grand) ** 2 for m in rows)
        ss_int += sum((x[i][j] - rows[i] - cols[j] + grand) ** 2 for i in range(n_r) for j in range(n_s))
        dof_run += n_r - 1
        dof_int += (n_r - 1) * (n_s - 1)
    (n_s,) = n_seeds
    ms_run, ms_int = ss_run / dof_run, ss_int / dof_int
    return {"seeds": n_s, "between_runs_sd": math.sqrt(ms_run / n_s), "interaction_sd": math.sqrt(ms_int),
            "run_component_sd": math.sqrt(max(0.0, (ms_run - ms_int) / n_s))}


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
    lines += ["", "Where the spread between runs comes from (two-way layout of run x benchmark seed within each recipe,"
              " pooled; `components` in the script): the sd of a run's mean over the seeds, the sd of the"
              " run-by-seed interaction, and the part that more benchmark seeds would not remove:", "",
              "| figure | seeds per run | sd between runs | run-by-seed interaction sd | run component sd |",
              "|---|---|---|---|---|"]
    for f, c in result["components"].items():
        lines.append(f"| {FIGURES[f]} | {c['seeds']} | {_fmt(f, c['between_runs_sd'])} | "
                     f"{_fmt(f, c['interaction_sd'])} | {_fmt(f, c['run_component_sd'])} |")
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
    result = {"runs": runs, "default": read_run(DEFAULT), "spread": spread(runs), "gaps": GAPS,
              "components": {"gpt": components(runs, "gpt_by_seed"), "vit": components(runs, "vit_by_seed")}}
    write_report(result, args.out, "python benchmarks/recipe_spread.py " + " ".join(argv or sys.argv[1:]))
    plot(result, args.out)
    return result


if __name__ == "__main__":
    main()
