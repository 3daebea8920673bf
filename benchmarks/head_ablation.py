"""Evaluation-time ablation of a rule's two output heads on one quality-suite task.

The rule's step is ``lr * (adam * exp(b * tanh(y_0)) + d * tanh(y_1) [* sign(m)])``: a learned
multiplier on Adam's direction (head row 0) and an additive direction of fixed size up to ``d``
(head row 1; times sign(m) in format version 2). This runs the task as trained, with row 1 zeroed
(no additive direction: tanh(0) = 0) and with row 0 zeroed (Adam's step unscaled, plus the
additive direction), on the same seeds, and reports each run's final and minimum training loss,
to show which head a late loss spike comes from. Nothing is retrained.

    python benchmarks/head_ablation.py WEIGHTS_DIR --out DIR [--task breast_cancer_mlp_long] [--seeds 5]

Writes ``head-ablation.json`` and ``head-ablation.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from learned_optim import LearnedOptimizer, from_pretrained
from learned_optim.benchmarking.quality import evaluation_steps, train_once
from learned_optim.benchmarking.tasks import get_task, task_names

VARIANTS = (("as trained", None), ("no additive direction (row 1 zeroed)", 1), ("no multiplier (row 0 zeroed)", 0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--out", required=True)
    ap.add_argument("--task", default="breast_cancer_mlp_long", choices=task_names())
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    spec = get_task(args.task)
    problem = spec.problem()
    steps = evaluation_steps(spec.steps)
    results: dict[str, list[dict]] = {}
    for name, row in VARIANTS:
        results[name] = []
        for seed in range(args.seeds):
            net = from_pretrained(args.weights)
            if row is not None:
                with torch.no_grad():
                    net.head_weight[row].zero_()
                    net.head_bias[row].zero_()
            run = train_once(problem, lambda p, net=net: LearnedOptimizer(p, lr=args.lr, weights=net), seed,
                             spec.steps, spec.batch_size, steps)
            results[name].append({"seed": seed, "final": run["final"], "min": run["min_loss"],
                                  "final_over_min": run["final"] / run["min_loss"]})
            print(name, json.dumps(results[name][-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    res = {"command": cmd, "weights": args.weights, "task": args.task, "steps": spec.steps, "lr": args.lr,
           "seeds": args.seeds, "wall_s": round(time.time() - t0), "torch": torch.__version__, "results": results}
    (out / "head-ablation.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# Output-head ablation at evaluation time", "",
             f"Command: `{cmd}`; task `{args.task}` ({spec.steps} steps, batch {spec.batch_size}), lr {args.lr}, "
             f"{args.seeds} seeds; wall time {res['wall_s']} s (torch {torch.__version__}, 1 thread). Nothing "
             "retrained; the training-split loss at the suite's evaluation points.", "",
             "| variant | seeds with final > 1.2x min | final / min per seed | final loss per seed "
             "| min loss per seed |",
             "|---|---|---|---|---|"]
    for name, runs in results.items():
        spikes = sum(r["final_over_min"] > 1.2 for r in runs)
        lines.append(f"| {name} | {spikes}/{len(runs)} | " + ", ".join(f"{r['final_over_min']:.3g}" for r in runs)
                     + " | " + ", ".join(f"{r['final']:.2g}" for r in runs)
                     + " | " + ", ".join(f"{r['min']:.2g}" for r in runs) + " |")
    (out / "head-ablation.md").write_text("\n".join(lines) + "\n")
    return 0 if all(math.isfinite(r["final"]) for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
