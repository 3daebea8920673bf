"""How much do the learned optimizer's held-out results move with float-level details of its CPU path?

The CPU implementations of the rule (the hand-vectorized C loop, the portable C loop, the eager
torch loop) compute the same function and agree to float rounding per step (tests/test_fastpath.py),
but training is chaotic: a difference in the 7th digit of one step can end a 500-step run at a
different loss. This script trains the default learned optimizer on the quality suite's tasks for
many seeds with each path (each path in its own process, selected by the environment of
``learned_optim.benchmarking.cpu_paths``) and reports, per task and path, the spread of final
losses. Same seeds, same data order, same initialisations for every path: only the rounding differs.

Run (from the repository root; writes path_sensitivity.{json,md,png} into --out, default
./benchmark-results; results already there are replaced only with --force):

    python benchmarks/path_sensitivity.py                       # 3 tasks x 20 seeds x 3 paths
    python benchmarks/path_sensitivity.py --tasks iris_deep_mlp --seeds 40 --paths simd portable
    python benchmarks/path_sensitivity.py --quick --out /tmp/ps  # seconds: 2 seeds, 20 steps
    python benchmarks/path_sensitivity.py --rerender benchmarks/results/path_sensitivity.json  # .md/.png again
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    import learned_optim  # noqa: F401
except ImportError:  # a checkout that is not pip-installed: use the package next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learned_optim import LearnedOptimizer, from_pretrained  # noqa: E402
from learned_optim.benchmarking import tasks as T  # noqa: E402
from learned_optim.benchmarking.common import (  # noqa: E402
    DEFAULT_OUT,
    check_no_overwrite,
    check_out_dir,
    save_figure,
)
from learned_optim.benchmarking.cpu_paths import cpu_path, path_environment  # noqa: E402
from learned_optim.benchmarking.quality import evaluation_steps, train_once  # noqa: E402
from learned_optim.common.files import atomic_write_text, write_json  # noqa: E402
from learned_optim.common.machine import machine_info, machine_line  # noqa: E402
from learned_optim.kernels import cpu  # noqa: E402

# This script's path names -> the CPU paths of the speed benchmark (learned_optim.benchmarking.cpu_paths)
PATHS = {"simd": "native_simd", "portable": "native_portable", "eager": "eager"}
DEFAULT_TASKS = ["iris_deep_mlp", "breast_cancer_mlp", "char_gru_lm"]
OUTPUT_FILES = ("path_sensitivity.json", "path_sensitivity.md", "path_sensitivity.png")


def _worker(args) -> None:
    """One path, in this process: final losses per task and seed."""
    import torch

    torch.set_num_threads(1)
    out = {}
    for name in args.tasks:
        spec = T.get_task(name)
        problem = spec.problem()
        steps = 20 if args.quick else spec.steps
        runs = [train_once(problem, lambda ps: LearnedOptimizer(ps, weights=args.weights), seed, steps,
                           spec.batch_size, evaluation_steps(steps))
                for seed in range(args.first_seed, args.first_seed + args.seeds)]
        out[name] = {"steps": steps, "final": [r["final"] for r in runs], "initial": [r["initial"] for r in runs],
                     "diverged": [r["diverged"] for r in runs]}
    Path(args.worker_out).write_text(json.dumps(out))


def _path_available(path: str, weights: str | None) -> str | None:
    """None if the path can run here, else why not (e.g. no AVX-512 or AVX2 for "simd")."""
    if path == "eager":
        return None
    cfg = from_pretrained(weights).config
    if not cpu.available(cfg.hidden_size, cfg.num_features):
        return "the C loop does not build here"
    if path == "simd" and not cpu.simd_width(cfg.hidden_size, cfg.num_features):
        return "no AVX-512 or AVX2+FMA on this CPU"
    return None


def _summary(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None and math.isfinite(x)]  # NaN runs count as diverged only
    if not xs:
        return {k: math.nan for k in ("median", "mean", "q1", "q3", "min", "max")}
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median": statistics.median(xs), "mean": statistics.mean(xs), "q1": q[0], "q3": q[2],
            "min": min(xs), "max": max(xs)}


def _write_report(report: dict, out_dir: Path) -> None:
    atomic_write_text(out_dir / "path_sensitivity.md", _markdown(report))
    _plot(report, out_dir / "path_sensitivity.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS,
                        help=f"quality-suite tasks (default {DEFAULT_TASKS})")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per task and path (default 20)")
    parser.add_argument("--first-seed", type=int, default=100,
                        help="first seed (default 100: not the quality benchmark's seeds 0-4)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS), help="CPU paths to compare")
    parser.add_argument("--weights", default=None, help="learned-optimizer weights (default: the package default)")
    parser.add_argument("--jobs", type=int, default=2, help="paths run in parallel, one thread each (default 2)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default ./{DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="replace path_sensitivity.* already in --out")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 20 steps: a pipeline check")
    parser.add_argument("--rerender", metavar="JSON", help="no runs: write the .md and .png again beside this JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.quick:
        args.seeds = min(args.seeds, 2)
    if args.worker:
        _worker(args)
        return 0
    if args.rerender:
        path = Path(args.rerender)
        _write_report(json.loads(path.read_text(encoding="utf-8")), path.parent)
        print(f"wrote {path.parent}/path_sensitivity.md, .png")
        return 0

    for name in args.tasks:
        try:
            T.get_task(name)
        except ValueError as e:  # names the known tasks
            parser.error(f"--tasks: {e}")
    try:
        out_dir = check_out_dir(args.out)
        check_no_overwrite(out_dir, OUTPUT_FILES, args.force)
    except ValueError as e:
        parser.error(str(e))
    machine = machine_info(1)
    skipped = {p: why for p in args.paths if (why := _path_available(p, args.weights))}
    paths = [p for p in args.paths if p not in skipped]
    t0 = time.time()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def run(path: str) -> None:
            out = Path(tmp, f"{path}.json")
            cmd = [sys.executable, __file__, "--worker", path, "--worker-out", str(out), "--seeds", str(args.seeds),
                   "--first-seed", str(args.first_seed), "--tasks", *args.tasks]
            if args.weights:
                cmd += ["--weights", args.weights]
            if args.quick:
                cmd.append("--quick")
            subprocess.run(cmd, check=True, env=path_environment(cpu_path(PATHS[path]).env))
            results[path] = json.loads(out.read_text())

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(run, paths))
    wall = time.time() - t0

    summary = {name: {p: {**_summary(results[p][name]["final"]), "diverged": sum(results[p][name]["diverged"])}
                      for p in paths} for name in args.tasks}
    command = "python benchmarks/path_sensitivity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {
        "benchmark": "path_sensitivity", "command": command.strip(),
        "machine": machine, "wall_s": wall,
        "weights": args.weights or "package default",
        "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
        "paths": paths, "skipped_paths": skipped, "quick": args.quick, "runs": results, "summary": summary,
    }
    write_json(out_dir / "path_sensitivity.json", report)
    _write_report(report, out_dir)
    print(f"wrote {out_dir}/path_sensitivity.json, .md, .png ({wall:.0f} s)")
    return 0


def _markdown(r: dict) -> str:
    lines = ["# Held-out results against float-level details of the CPU path", ""]
    if r["quick"]:
        lines += ["**QUICK RUN** (2 seeds, 20 steps): a pipeline check, not a measurement.", ""]
    lines += [f"Command: `{r['command']}`  ", f"Machine: {machine_line(r['machine'])}  ",
              f"Date (UTC): {r['machine']['date_utc']}; wall time {r['wall_s']:.0f} s. Weights: {r['weights']}. "
              f"Seeds {r['seeds'][0]}..{r['seeds'][-1]} ({len(r['seeds'])}), the same for every path.", ""]
    if r["skipped_paths"]:
        lines += ["Not run here: " + "; ".join(f"{p} ({why})" for p, why in r["skipped_paths"].items()), ""]
    lines += ["Final full-data training loss of the default learned optimizer (lr 1e-3) per task and CPU path: "
              "median [quartiles], range, and runs that diverged (NaN, or final above initial). `simd`: the "
              "hand-vectorized C loop (AVX-512, or AVX2+FMA where the CPU has no AVX-512); `portable`: the "
              "portable C loop; `eager`: the torch chunk loop.", "",
              "| task | steps | path | median [q1, q3] | min .. max | diverged |", "|---|---|---|---|---|---|"]
    for name, per in r["summary"].items():
        for p, s in per.items():
            steps = r["runs"][p][name]["steps"]
            lines.append(f"| {name} | {steps} | {p} | {s['median']:.4g} [{s['q1']:.4g}, {s['q3']:.4g}] | "
                         f"{s['min']:.4g} .. {s['max']:.4g} | {s['diverged']}/{len(r['seeds'])} |")
    lines += ["", "Per seed, the largest ratio between two paths' final losses (same seed, same data, same init):", "",
              "| task | median over seeds | max over seeds |", "|---|---|---|"]
    for name in r["summary"]:
        ratios = []
        for i in range(len(r["seeds"])):
            vals = [r["runs"][p][name]["final"][i] for p in r["paths"]]
            if all(v is not None and math.isfinite(v) and v > 0 for v in vals):
                ratios.append(max(vals) / min(vals))
        if ratios:
            lines.append(f"| {name} | {statistics.median(ratios):.3g}x | {max(ratios):.3g}x |")
    lines += ["", "Raw final losses per seed: `path_sensitivity.json`; figure: `path_sensitivity.png`.", ""]
    return "\n".join(lines)


def _plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["summary"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for k, p in enumerate(r["paths"]):
            ys = r["runs"][p][name]["final"]
            xs = [k + 0.08 * ((i % 5) - 2) for i in range(len(ys))]
            ax.scatter(xs, ys, s=12, alpha=0.7, label=p)
        # the same seed across paths
        for i in range(len(r["seeds"])):
            ax.plot(range(len(r["paths"])), [r["runs"][p][name]["final"][i] for p in r["paths"]], color="0.8", lw=0.5,
                    zorder=0)
        ax.set_xticks(range(len(r["paths"])), r["paths"])
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("final loss")
    fig.suptitle("Final loss per seed and CPU path (lines join the same seed)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
