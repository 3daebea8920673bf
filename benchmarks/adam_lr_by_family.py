"""Adam's best learning rate on every family of the default's meta-training distribution.

The step probe (``step_scale_by_tensor.py``) finds every meta-trained rule taking one constant
multiple of Adam's step on every workload, while the held-out suite wants Adam at lr 1e-2 to 1e-1
and the transformers 1e-3 to 3e-3. A rule can only learn to size its steps per workload if its
training tasks pay for it: this script measures whether they do. It samples tasks from each
family of ``train_tasks="v2-wide"`` (the six small families of ``default_train_family`` and the
seven of ``wide_arch_family``), trains each with ``torch.optim.Adam`` at every lr of a grid for
a fixed horizon (``meta.validation.run_inner``: same initialisation and minibatches for every lr)
and reports the final full-batch training loss per lr, the best lr and the model's size.

    python benchmarks/adam_lr_by_family.py --out benchmarks/results/meta-v2 [--horizon 1000]
        [--small-tasks 3] [--arch-tasks 2]

Writes ``adam-lr-by-family.json`` and ``adam-lr-by-family.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from learned_optim.meta.arch_tasks import wide_arch_family
from learned_optim.meta.task_families import default_train_family
from learned_optim.meta.validation import run_inner

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def _best(final: dict[float, float]) -> float:
    return min(final, key=lambda lr: final[lr] if math.isfinite(final[lr]) else float("inf"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--horizon", type=int, default=1000)
    ap.add_argument("--small-tasks", type=int, default=3, help="tasks per small family (default 3)")
    ap.add_argument("--arch-tasks", type=int, default=2, help="tasks per architecture family (default 2)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    groups = [("small", default_train_family().families, args.small_tasks),
              ("arch", wide_arch_family().families, args.arch_tasks)]
    t0 = time.time()
    rows = []
    for group, families, n in groups:
        for fam in families:
            gen = torch.Generator().manual_seed(7)
            for k in range(n):
                task = fam.sample(gen)
                numel = sum(p.numel() for p in task.init_params(torch.Generator().manual_seed(0)))
                final = {lr: run_inner(task, args.horizon, 11 + k, lr=lr)["final_loss"] for lr in LRS}
                rows.append({"group": group, "family": type(fam).__name__, "task": task.name, "params": numel,
                             "final": {f"{lr:g}": final[lr] for lr in LRS}, "best_lr": _best(final)})
                print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for group in ("small", "arch"):
        best = [r["best_lr"] for r in rows if r["group"] == group]
        summary[group] = {"tasks": len(best), "median_best_lr": statistics.median(best),
                          "geomean_best_lr": math.exp(statistics.fmean(math.log(b) for b in best)),
                          "median_params": statistics.median(r["params"] for r in rows if r["group"] == group)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
           "horizon": args.horizon, "lrs": list(LRS), "rows": rows, "summary": summary,
           "wall_s": round(time.time() - t0),
           "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread"}
    (out / "adam-lr-by-family.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# Adam's best lr on the default's meta-training families", "",
             f"Command: `{res['command']}`; {args.horizon} Adam steps per run, one seed per task, final full-batch "
             f"training loss; wall time {res['wall_s']} s ({res['machine']}). Families: the six of "
             "`default_train_family` (small) and the seven of `wide_arch_family` (arch), which "
             "`train_tasks=\"v2-wide\"` mixes 1:2.", "",
             "| group | family | task | params | " + " | ".join(f"lr {lr:g}" for lr in LRS) + " | best lr |",
             "|---" * (5 + len(LRS)) + "|"]
    for r in rows:
        name = r["task"].replace("|", "\\|")  # a literal | would split the table cell
        lines.append(f"| {r['group']} | {r['family']} | {name} | {r['params']} | "
                     + " | ".join(f"{v:.4g}" for v in r["final"].values()) + f" | {r['best_lr']:g} |")
    lines += ["", "| group | tasks | median best lr | geometric mean best lr | median params |",
              "|---|---|---|---|---|"]
    for group, s in summary.items():
        lines.append(f"| {group} | {s['tasks']} | {s['median_best_lr']:g} | {s['geomean_best_lr']:.3g} | "
                     f"{s['median_params']:g} |")
    (out / "adam-lr-by-family.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
