"""Evaluation-time ablation of a format-2 rule's per-tensor context features.

For each context feature, zero its columns in the gate and head weights (the rule then sees the
feature as 0 for every tensor, with nothing retrained) and run the meta-training validation tasks
(``meta.config.VAL_TASKS``) against their Adam baselines, as the meta-training evaluation does.

    python benchmarks/context_ablation.py WEIGHTS_DIR --out DIR [--val-tasks v2] [--seeds 3]

Writes ``context-ablation.json`` and ``context-ablation.md`` into ``--out``. The Adam baselines
take ~20 minutes for the v2 set; ``--baselines FILE`` reuses a JSON list made by
``meta.validation.adam_baselines`` for the same tasks and seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from learned_optim import from_pretrained
from learned_optim.meta.config import VAL_TASKS
from learned_optim.meta.validation import adam_baselines, evaluate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--out", required=True)
    ap.add_argument("--val-tasks", default="v2", choices=sorted(VAL_TASKS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--baselines", default=None, help="a JSON list of adam_baselines rows for these tasks and seeds")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    base_net = from_pretrained(args.weights)
    cfg = base_net.config
    if not cfg.context_features:
        ap.error(f"{args.weights} has no context features to ablate")
    tasks = VAL_TASKS[args.val_tasks]()
    if args.baselines:
        base = json.loads(Path(args.baselines).read_text())
        if [b["task"] for b in base] != [t.name for t, _ in tasks]:
            ap.error("--baselines rows do not match the validation tasks")
    else:
        base = adam_baselines(tasks, args.seeds)
    f, h = cfg.num_features, cfg.hidden_size
    results = {}
    for k, name in [(-1, "none (the rule as trained)")] + list(enumerate(cfg.context_features)):
        net = from_pretrained(args.weights)
        if k >= 0:
            with torch.no_grad():  # columns: weight [features | context | h], head_weight [h | context]
                net.weight[:, f + k] = 0
                net.head_weight[:, h + k] = 0
        ev = evaluate(net, tasks, base, inner_lr=1e-3, loss_cap=1.5, seeds=args.seeds)
        results[name] = {"metric_mean": ev["metric"], "diverged": ev["diverged"],
                         "ratio_vs_tuned_adam": {r["task"]: r["ratio_vs_tuned"] for r in ev["rows"]}}
        print(name, json.dumps(results[name]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    res = {"command": cmd, "weights": args.weights, "val_tasks": args.val_tasks, "seeds": args.seeds,
           "wall_s": round(time.time() - t0), "torch": torch.__version__, "results": results}
    (out / "context-ablation.json").write_text(json.dumps(res, indent=1) + "\n")
    names = [t.name for t, _ in tasks]
    lines = ["# Context-feature ablation at evaluation time", "",
             f"Command: `{cmd}`; validation set `{args.val_tasks}`, {args.seeds} seeds per task, lr 1e-3; wall time "
             f"{res['wall_s']} s (torch {torch.__version__}, 1 thread).", "",
             "Each row zeroes one context feature's weights (nothing retrained). Cells: final loss / tuned Adam's "
             "(exp of the mean log ratio over seeds; < 1 is better than tuned Adam); mean = the mean log ratio.", "",
             "| ablated | mean | diverged | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
    for name, r in results.items():
        cells = [f"{r['ratio_vs_tuned_adam'][n]:.3g}" for n in names]
        lines.append(f"| {name} | {r['metric_mean']:.3f} | {r['diverged']} | " + " | ".join(cells) + " |")
    (out / "context-ablation.md").write_text("\n".join(lines) + "\n")
    return 0 if all(math.isfinite(r["metric_mean"]) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
