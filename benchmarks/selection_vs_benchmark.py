"""Does the meta-validation set predict the held-out benchmark? A rank study over benchmarked points.

Every point here is a set of meta-trained weights that was both evaluated by its run's
meta-validation (the ``eval`` record of its log: each validation task's final loss / tuned Adam)
and benchmarked (gpt-byte validation loss, vit-digits test accuracy, the quality suite). For each
validation task, and for the two reductions a run can select by (``val_reduce`` "mean": the mean
log ratio; "max": the worst task), this prints Spearman's rank correlation with each benchmark
figure over the points, and which point each reduction would keep among them.

    python benchmarks/selection_vs_benchmark.py --out benchmarks/results/meta-v2

Reads only files in ``benchmarks/results/meta-v2`` (the ``POINTS`` table below: log, meta-step,
and where each benchmark result lies); writes ``selection-vs-benchmark.json``, ``.md`` and
``.png`` into ``--out``. A point without a 5-seed result for a figure is left out of that
figure's correlation.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "results" / "meta-v2"

# name: (log with the point's eval record, meta-step, gpt-byte folder, vit-digits folder, quality folder),
# folders relative to ROOT (None: not benchmarked on that workload).
POINTS: dict[str, tuple[str, int, str | None, str | None, str | None]] = {
    "wide-late, step 200": ("wide-late.log.jsonl", 200, "wide-late-step200/gpt-byte",
                            "wide-late-step200/vit-digits", "wide-late-step200/quality"),
    "t32, step 100": ("wide-late-t32.log.jsonl", 100, None, "screening/t32-100-vit", None),
    "t32, step 200": ("wide-late-t32.log.jsonl", 200, None, "screening/t32-200-vit", None),
    "t32, step 300": ("wide-late-t32.log.jsonl", 300, "t32-step300/gpt-byte", "screening/t32-300-vit",
                      "t32-step300/quality"),
    "t32, step 400 (default)": ("wide-late-t32.log.jsonl", 400, "t32-step400/gpt-byte", "t32-step400/vit-digits",
                                "t32-step400/quality"),
    "t32 no direction, step 100": ("wide-late-t32-nodir.log.jsonl", 100, None, "nodir-step100/vit-digits",
                                   "nodir-step100/quality"),
    "fine-tune held-out objective, step 120": ("ft-heldout-step120/meta_train_log.jsonl", 120, None,
                                               "ft-heldout-step120/vit-digits", None),
    "fine-tune training objective, step 120": ("ft-train-step120/meta_train_log.jsonl", 120, None,
                                               "ft-train-step120/vit-digits", None),
    "fine-tune meta-lr 1e-2, step 120": ("ft-lr1e-2-step120/meta_train_log.jsonl", 120, "ft-lr1e-2-step120/gpt-byte",
                                         "ft-lr1e-2-step120/vit-digits", "ft-lr1e-2-step120/quality"),
    "fine-tune size, step 120": ("size-step120/meta_train_log.jsonl", 120, "size-step120/gpt-byte",
                                 "size-step120/vit-digits", "size-step120/quality"),
    "fine-tune size seed 1, step 120": ("size-seed1-step120/meta_train_log.jsonl", 120,
                                        "size-seed1-step120/gpt-byte", "size-seed1-step120/vit-digits",
                                        "size-seed1-step120/quality"),
    "size recipe, step 200": ("scratch-size-step200/meta_train_log.jsonl", 200, "scratch-size-step200/gpt-byte",
                              "scratch-size-step200/vit-digits", "scratch-size-step200/quality"),
    "size recipe, step 400": ("scratch-size-step400/meta_train_log.jsonl", 400, "scratch-size-step400/gpt-byte",
                              "scratch-size-step400/vit-digits", "scratch-size-step400/quality"),
    "rise 1, step 100": ("rise1-step200/meta_train_log.jsonl", 100, "rise1-step100/gpt-byte",
                         "rise1-step100/vit-digits", "rise1-step100/quality"),
    "rise 1, step 200": ("rise1-step200/meta_train_log.jsonl", 200, "rise1-step200/gpt-byte",
                         "rise1-step200/vit-digits", "rise1-step200/quality"),
    "rise 0.25, step 200": ("rise0.25-step400/meta_train_log.jsonl", 200, None, None,
                            "screening/rise0.25-200-quality"),
    "rise 0.25, step 300": ("rise0.25-step400/meta_train_log.jsonl", 300, None, None,
                            "screening/rise0.25-300-quality"),
    "rise 0.25, step 400": ("rise0.25-step400/meta_train_log.jsonl", 400, "rise0.25-step400/gpt-byte",
                            "rise0.25-step400/vit-digits", "rise0.25-step400/quality"),
    "rise 0.25 seed 1, step 100": ("rise0.25-s1-step400/meta_train_log.jsonl", 100, "rise0.25-s1-step100/gpt-byte",
                                   "rise0.25-s1-step100/vit-digits", "rise0.25-s1-step100/quality"),
    "rise 0.25 seed 1, step 200": ("rise0.25-s1-step400/meta_train_log.jsonl", 200, None, None,
                                   "screening/rise0.25-s1-200-quality"),
    "rise 0.25 seed 1, step 300": ("rise0.25-s1-step400/meta_train_log.jsonl", 300, None, None,
                                   "screening/rise0.25-s1-300-quality"),
    "rise 0.25 seed 1, step 400": ("rise0.25-s1-step400/meta_train_log.jsonl", 400, "rise0.25-s1-step400/gpt-byte",
                                   "rise0.25-s1-step400/vit-digits", "rise0.25-s1-step400/quality"),
    "rise 0.25 held-out objective, step 100": ("rise0.25-ho-step200/meta_train_log.jsonl", 100,
                                               "rise0.25-ho-step100/gpt-byte", "rise0.25-ho-step100/vit-digits",
                                               "rise0.25-ho-step100/quality"),
    "rise 0.25 held-out objective, step 200": ("rise0.25-ho-step200/meta_train_log.jsonl", 200,
                                               "rise0.25-ho-step200/gpt-byte", "rise0.25-ho-step200/vit-digits",
                                               "rise0.25-ho-step200/quality"),
    "rise 0.25 held-out objective, step 300": ("rise0.25-ho-step200/meta_train_log.jsonl", 300, None,
                                               "screening/rise0.25-ho-300-vit", "screening/rise0.25-ho-300-quality"),
    "default seed 1, step 400": ("default-s1-step400/meta_train_log.jsonl", 400, "default-s1-step400/gpt-byte",
                                 "default-s1-step400/vit-digits", "default-s1-step400/quality"),
    "mixed recipe, step 100": ("mixed-step400/meta_train_log.jsonl", 100, "screening/mixed-100/gpt-byte",
                               "screening/mixed-100/vit-digits", "screening/mixed-100/quality"),
    "mixed recipe, step 200": ("mixed-step400/meta_train_log.jsonl", 200, None, "screening/mixed-200/vit-digits",
                               "screening/mixed-200/quality"),
    "mixed recipe, step 300": ("mixed-step400/meta_train_log.jsonl", 300, None, "screening/mixed-300/vit-digits",
                               "screening/mixed-300/quality"),
    "mixed recipe, step 400": ("mixed-step400/meta_train_log.jsonl", 400, "mixed-step400/gpt-byte",
                               "mixed-step400/vit-digits", "mixed-step400/quality"),
    "default seed 2 (batched step), step 400": ("default-s2-auto-step400/meta_train_log.jsonl", 400,
                                                "default-s2-auto-step400/gpt-byte",
                                                "default-s2-auto-step400/vit-digits",
                                                "default-s2-auto-step400/quality"),
    "default seed 3 (batched step), step 300": ("default-s3-auto-step300/meta_train_log.jsonl", 300,
                                                "default-s3-auto-step300/gpt-byte",
                                                "default-s3-auto-step300/vit-digits",
                                                "default-s3-auto-step300/quality"),
    "default held-out objective, step 300": ("ho-default-step300/meta_train_log.jsonl", 300,
                                             "ho-default-step300/gpt-byte", "ho-default-step300/vit-digits",
                                             "ho-default-step300/quality"),
    "no additive direction (batched step), step 400": ("nodir-auto-step400/meta_train_log.jsonl", 400,
                                                       "nodir-auto-step400/gpt-byte", "nodir-auto-step400/vit-digits",
                                                       "nodir-auto-step400/quality"),
    "64 trajectories (batched step), step 300": ("t64-step400/meta_train_log.jsonl", 300, None,
                                                 "screening/t64-300/vit-digits", "screening/t64-300/quality"),
    "64 trajectories (batched step), step 400": ("t64-step400/meta_train_log.jsonl", 400, "t64-step400/gpt-byte",
                                                 "t64-step400/vit-digits", "t64-step400/quality"),
    "64 trajectories seed 1 (batched step), step 400": ("t64-s1-step400/meta_train_log.jsonl", 400,
                                                        "t64-s1-step400/gpt-byte", "t64-s1-step400/vit-digits",
                                                        "t64-s1-step400/quality"),
    "64 trajectories, size input, rise 0.25, step 400": ("rise-t64-step400/meta_train_log.jsonl", 400,
                                                         "rise-t64-step400/gpt-byte", "rise-t64-step400/vit-digits",
                                                         "rise-t64-step400/quality"),
}

# benchmark figure: (label, lower is better)
FIGURES = {"gpt": ("gpt-byte validation loss", True), "vit": ("vit-digits test accuracy", False),
           "suite_median": ("suite median ratio to tuned Adam", True),
           "suite_geomean": ("suite geometric-mean ratio to tuned Adam", True)}


def eval_record(log: Path, step: int) -> tuple[dict[str, float], dict[str, float]]:
    """Each validation task's final loss / tuned Adam's, and / Adam's at lr 1e-3, at ``step``."""
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "eval" and rec["step"] == step:
            return ({row["task"]: row["ratio_vs_tuned"] for row in rec["rows"]},
                    {row["task"]: row["learned"] / row["adam_1e-3"] for row in rec["rows"]})
    raise ValueError(f"{log} has no eval record at meta-step {step}")


def learned_run(folder: Path) -> dict | None:
    """The learned optimizer's runs in a transformer benchmark's JSON, if it has 5 seeds."""
    data = json.loads((folder / "transformer.json").read_text())
    (workload,) = data["workloads"].values()
    (run,) = [r for name, r in workload["runs"].items() if name.startswith("learned")]
    return run if len(run["seeds"]) == 5 else None


def figures(gpt: str | None, vit: str | None, quality: str | None) -> dict[str, float]:
    out = {}
    if gpt and (run := learned_run(ROOT / gpt)):
        out["gpt"] = statistics.mean(c[-1] for c in run["curve"])
    if vit and (run := learned_run(ROOT / vit)):
        out["vit"] = 100 * statistics.mean(run["test_acc"])
    if quality:
        data = json.loads((ROOT / quality / "quality.json").read_text())
        ratios = sorted(t["summary"]["columns"]["learned"]["ratio_to_adam_tuned"] for t in data["tasks"].values())
        out["suite_median"] = statistics.median(ratios)
        out["suite_geomean"] = math.exp(statistics.mean(math.log(r) for r in ratios))
    return out


def ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    points = []
    for name, (log, step, gpt, vit, quality) in POINTS.items():
        val, vs_default = eval_record(ROOT / log, step)
        logs = [math.log(r) for r in val.values()]
        points.append({"point": name, "log": log, "meta_step": step, "validation": val,
                       "val_mean": math.exp(statistics.mean(logs)), "val_max": math.exp(max(logs)),
                       "vs_adam_1e-3": vs_default, "vs_adam_1e-3_max": max(vs_default.values()),
                       **figures(gpt, vit, quality)})
    tasks = list(points[0]["validation"])
    predictors = {t: (lambda p, t=t: p["validation"][t]) for t in tasks}
    predictors["mean (val_reduce=mean)"] = lambda p: p["val_mean"]
    predictors["worst task (val_reduce=max)"] = lambda p: p["val_max"]
    predictors["worst task vs Adam at lr 1e-3"] = lambda p: p["vs_adam_1e-3_max"]

    table = {}
    for fig, (label, lower_better) in FIGURES.items():
        have = [p for p in points if fig in p]
        # sign so that a positive value means "a better validation ratio goes with a better benchmark figure"
        sign = 1 if lower_better else -1
        table[fig] = {"n": len(have), "rho": {name: sign * spearman([f(p) for p in have], [p[fig] for p in have])
                                              for name, f in predictors.items()}}
    full = [p for p in points if all(f in p for f in FIGURES)]
    kept = {red: min(full, key=lambda p: p[key])["point"]
            for red, key in (("mean", "val_mean"), ("max", "val_max"), ("max vs Adam at lr 1e-3", "vs_adam_1e-3_max"))}

    (out / "selection-vs-benchmark.json").write_text(json.dumps(
        {"command": "python benchmarks/selection_vs_benchmark.py --out " + args.out, "points": points,
         "spearman": table, "kept_among_fully_benchmarked": kept}, indent=1) + "\n")

    short = {t: t.split("-")[1] if t.startswith("val-") else t for t in tasks}
    lines = ["# Does meta-validation predict the benchmark?", "",
             f"Command: `python benchmarks/selection_vs_benchmark.py --out {args.out}` (reads committed results only).",
             "",
             "Each row is a set of meta-trained weights that both had a meta-validation evaluation in its run's log "
             "and was benchmarked. Validation columns: final loss / tuned Adam per validation task (3 seeds), their "
             "geometric mean (close to what `val_reduce=\"mean\"` ranks by, which averages per-seed log ratios) "
             "and their largest (what `\"max\"` ranks by). Benchmark columns "
             "(5 seeds; blank where the point was not benchmarked with 5 seeds): gpt-byte validation nats/byte, "
             "vit-digits test accuracy, the quality suite's median and geometric mean of final loss / tuned Adam.", "",
             "| point | " + " | ".join(short.values()) + " | mean | max | gpt | vit % | suite median | suite geomean |",
             "|---" * (len(tasks) + 7) + "|"]
    for p in points:
        cells = [f"{p['validation'][t]:.2f}" for t in tasks] + [f"{p['val_mean']:.2f}", f"{p['val_max']:.2f}"]
        cells += [f"{p[k]:.4f}" if k == "gpt" and k in p else f"{p[k]:.2f}" if k in p else "" for k in FIGURES]
        lines.append(f"| {p['point']} | " + " | ".join(cells) + " |")
    lines += ["", "Spearman rank correlation over the points that have the figure, signed so that **positive = a "
              "better validation ratio goes with a better benchmark figure**. To differ from 0 at the 5% level "
              "(two-sided) |rho| must exceed about 1.96 / sqrt(n - 1) ("
              + ", ".join(f"{1.96 / math.sqrt(n - 1):.2f} at n = {n}" for n in sorted({t["n"] for t in table.values()}))
              + "; marked **bold**), and the points are not independent (several come from one run):", "",
              "| validation predictor | " + " | ".join(f"{FIGURES[f][0]} (n={table[f]['n']})" for f in FIGURES) + " |",
              "|---" * (len(FIGURES) + 1) + "|"]
    for name in predictors:
        cells = []
        for f in FIGURES:
            rho, n = table[f]["rho"][name], table[f]["n"]
            cells.append(f"**{rho:+.2f}**" if abs(rho) > 1.96 / math.sqrt(n - 1) else f"{rho:+.2f}")
        lines.append(f"| {short.get(name, name)} | " + " | ".join(cells) + " |")
    lines += ["", f"Among the {len(full)} points benchmarked on all three workloads, `val_reduce=\"mean\"` would keep "
              f"**{kept['mean']}**, `\"max\"` **{kept['max']}**, and the worst task measured against Adam at "
              f"lr 1e-3 (the rule's own default lr) instead of tuned Adam **{kept['max vs Adam at lr 1e-3']}**."]
    (out / "selection-vs-benchmark.md").write_text("\n".join(lines) + "\n")

    pairs = [(tasks[0], "gpt"), (tasks[1], "vit"), ("worst task (val_reduce=max)", "suite_median"),
             ("mean (val_reduce=mean)", "gpt")]
    panels = []
    for pred, f in pairs:
        have = [p for p in points if f in p]
        panels.append(([predictors[pred](p) for p in have], [p[f] for p in have],
                       f"validation: {short.get(pred, pred)} / tuned Adam", FIGURES[f][0],
                       f"rho {table[f]['rho'][pred]:+.2f} (n={len(have)})"))
    scatter_panels(out / "selection-vs-benchmark.png", panels)
    return 0


def mean_log(xs: list[float]) -> float:
    """The mean log of ``xs`` (a non-finite value, a diverged run, counts as infinite)."""
    return statistics.mean(math.log(max(x, 1e-12)) if math.isfinite(x) else math.inf for x in xs)


def heldout_ratios(adam: dict[float, list[float]], losses: dict[str, list[float]],
                   points: dict[str, dict]) -> tuple[float, float]:
    """The held-out probes' scoring: Adam's tuned lr (lowest mean log loss over ``adam``, lr -> losses per seed) and
    its mean log loss; each point of ``points`` gets its ``losses`` (``heldout_losses``) and their ratio to tuned
    Adam's (``heldout_ratio``, the exp of the difference of mean logs)."""
    tuned_lr = min(adam, key=lambda lr: mean_log(adam[lr]))
    ref = mean_log(adam[tuned_lr])
    for name, p in points.items():
        p["heldout_losses"] = losses[name]
        p["heldout_ratio"] = math.exp(mean_log(losses[name]) - ref)
    return tuned_lr, ref


def probe_panels(path: Path, points: dict[str, dict], ys: list[float], what: str, ylabel: str,
                 rho_held: float, rho_train: float) -> None:
    """The held-out probes' figure: the benchmark figure ``ys`` (one per point, in ``points``' order) against each
    point's held-out ratio and its validation record's training-loss ratio, with their Spearman rhos."""
    names = list(points)
    scatter_panels(path, [
        ([points[n][key] for n in names], ys, f"{what} {label} / tuned Adam", ylabel,
         f"rho {rho:+.2f} (n={len(names)})")
        for key, label, rho in (("heldout_ratio", "held-out loss", rho_held),
                                ("val_train_ratio", "training loss", rho_train))])


def scatter_panels(path: Path, panels: list[tuple[list[float], list[float], str, str, str]]) -> None:
    """One scatter plot per ``(xs, ys, xlabel, ylabel, title)`` side by side, saved as PNG at ``path``
    (nothing, with a note on stderr, without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib missing: no {path.name}", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8), squeeze=False)
    for ax, (xs, ys, xlabel, ylabel, title) in zip(axes[0], panels):
        ax.scatter(xs, ys, s=18)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
