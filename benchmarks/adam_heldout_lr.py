"""Adam's best learning rate on held-out loss, on the tasks of one meta-training family.

A held-out meta-objective (``objective_split="heldout"``) can only ask the rule for small steps
where small steps pay on held-out data within meta-training's own trajectories. This script
measures whether they do: it samples tasks with held-out examples from a training family (e.g.
``vit-nanogpt-split``, the ViTs initialised like the ViT benchmark's), trains each with
``torch.optim.Adam`` at every lr of a grid at a constant lr (meta-training's inner recipe), and
reports the held-out loss (all held-out examples) at the end, and its mean over the second half
of the run (every ``--every`` steps), which is what the default recipe's meta-objective
(``objective_from=0.5``) counts, with the final training loss beside them.

    python benchmarks/adam_heldout_lr.py --family vit-nanogpt-split --out benchmarks/results/meta-v2/adam-heldout-lr
        [--tasks 6] [--horizon 1000] [--every 50]

Writes ``adam-heldout-lr.json`` and ``adam-heldout-lr.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from learned_optim.meta.config import TRAIN_FAMILIES
from learned_optim.meta.task_core import flatten_params, unflatten_params

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def curves(task, horizon: int, seed: int, lr: float, every: int) -> dict[str, list[float]]:
    """Adam at ``lr`` on ``task`` for ``horizon`` steps (initial parameters and minibatches from one
    generator seeded with ``seed``); the held-out and full-batch training losses every ``every``
    steps."""
    gen = torch.Generator().manual_seed(seed)
    params = task.init_params(gen)
    shapes = [p.shape for p in params]
    p = flatten_params(params).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    heldout, train = [], []
    for t in range(horizon):
        loss = task.loss(unflatten_params(p, shapes), task.sample_batch(gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (t + 1) % every == 0:
            with torch.no_grad():
                q = unflatten_params(p, shapes)
                heldout.append(float(task.loss(q, (task.heldout_x, task.heldout_y))))
                train.append(float(task.loss(q, task.full_batch())))
    return {"heldout": heldout, "train": train}


def summarize(c: dict[str, list[float]]) -> dict[str, float]:
    """Final held-out loss, its mean over the second half of the evaluations, final training loss."""
    h = c["heldout"]
    half = h[len(h) // 2:]
    return {"final_heldout": h[-1], "mean_heldout_late": sum(half) / len(half), "final_train": c["train"][-1]}


def _best(rows: dict[float, dict[str, float]], key: str) -> float:
    return min(rows, key=lambda lr: rows[lr][key] if math.isfinite(rows[lr][key]) else float("inf"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="vit-nanogpt-split", help=f"a training family, one of {sorted(TRAIN_FAMILIES)}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", type=int, default=6, help="tasks with held-out examples to sample (default 6)")
    ap.add_argument("--horizon", type=int, default=1000)
    ap.add_argument("--every", type=int, default=50, help="evaluate every this many steps (default 50)")
    ap.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS))
    args = ap.parse_args(argv)
    if args.family not in TRAIN_FAMILIES:
        ap.error(f"--family must be one of {sorted(TRAIN_FAMILIES)}, got {args.family!r}")
    if args.every < 1 or args.horizon < 2 * args.every:
        ap.error(f"--horizon ({args.horizon}) must be at least twice --every ({args.every}), which must be >= 1")
    lrs = [float(x) for x in args.lrs.split(",")]
    torch.set_num_threads(1)
    fam = TRAIN_FAMILIES[args.family]()
    gen = torch.Generator().manual_seed(123)
    t0 = time.time()
    rows, draws = [], 0
    while len(rows) < args.tasks:
        task = fam.sample(gen)
        draws += 1
        if draws > 100 * args.tasks:
            raise SystemExit(f"family {args.family!r}: no tasks with held-out examples in {draws} draws")
        if getattr(task, "heldout_x", None) is None:
            continue  # only tasks a held-out objective scores differently
        res = {lr: summarize(curves(task, args.horizon, 11, lr, args.every)) for lr in lrs}
        numel = sum(p.numel() for p in task.init_params(torch.Generator().manual_seed(0)))
        rows.append({"task": task.name, "params": numel, "by_lr": {f"{lr:g}": res[lr] for lr in lrs},
                     "best_final_heldout": _best(res, "final_heldout"),
                     "best_mean_heldout_late": _best(res, "mean_heldout_late"),
                     "best_final_train": _best(res, "final_train")})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
           "family": args.family, "horizon": args.horizon, "every": args.every, "lrs": lrs, "rows": rows,
           "wall_s": round(time.time() - t0),
           "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread"}
    (out / "adam-heldout-lr.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [f"# Adam's best lr on held-out loss: `{args.family}`", "",
             f"Command: `{res['command']}`; {args.horizon} Adam steps per run at a constant lr, one seed per task; "
             f"held-out loss on all of the task's held-out examples every {args.every} steps; wall time "
             f"{res['wall_s']} s ({res['machine']}). Cells: final held-out loss / its mean over the second half of "
             "the run (what `objective_from=0.5` counts) / final full-batch training loss.", "",
             "| task | params | " + " | ".join(f"lr {lr:g}" for lr in lrs)
             + " | best lr: final held-out / late mean held-out / final train |",
             "|---" * (3 + len(lrs)) + "|"]
    for r in rows:
        cells = [f"{v['final_heldout']:.3f} / {v['mean_heldout_late']:.3f} / {v['final_train']:.3g}"
                 for v in r["by_lr"].values()]
        best = f"{r['best_final_heldout']:g} / {r['best_mean_heldout_late']:g} / {r['best_final_train']:g}"
        lines.append(f"| {r['task']} | {r['params']} | " + " | ".join(cells) + f" | {best} |")
    (out / "adam-heldout-lr.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
