"""Adam's best learning rate on transformer byte LMs of the meta-training families, by width.

Samples tasks from ``TransformerLMFamily`` at its default widths (d 16-48, the ``arch`` families)
and at the wide family's (``wide_arch_family``, d up to 128), trains each with ``torch.optim.Adam``
at every lr of a grid for a fixed horizon (``meta.validation.run_inner``: same initialisation and
minibatches for every lr) and reports the final full-batch loss per lr and the best lr.

    python benchmarks/adam_lr_by_width.py --out benchmarks/results/meta-v2 [--horizon 1000] [--tasks 3]

Writes ``adam-lr-by-width.json`` and ``adam-lr-by-width.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from learned_optim.meta.arch_tasks import TransformerLMFamily
from learned_optim.meta.validation import run_inner

LRS = (3e-4, 1e-3, 3e-3, 1e-2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--horizon", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=3, help="tasks per family (default 3)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    families = {
        "default (d 16-48)": TransformerLMFamily(),
        "wide (d 32-128)": TransformerLMFamily(dims=(32, 48, 64, 96, 128), layers=(1, 2), heads=(2, 4),
                                               contexts=(32,), batch_sizes=(8, 16), max_params=250_000),
    }
    t0 = time.time()
    rows = []
    for fam_name, fam in families.items():
        gen = torch.Generator().manual_seed(7)
        for k in range(args.tasks):
            task = fam.sample(gen)
            final = {lr: run_inner(task, args.horizon, 11 + k, lr=lr)["final_loss"] for lr in LRS}
            best = min(LRS, key=lambda lr: final[lr] if final[lr] == final[lr] else float("inf"))
            rows.append({"family": fam_name, "task": task.name, "final": {f"{lr:g}": final[lr] for lr in LRS},
                         "best_lr": best})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]), "horizon": args.horizon,
           "lrs": list(LRS), "rows": rows, "wall_s": round(time.time() - t0),
           "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread"}
    (out / "adam-lr-by-width.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# Adam's best lr on the meta-training transformer LMs, by width", "",
             f"Command: `{res['command']}`; {args.horizon} Adam steps per run, one seed per task, final full-batch "
             f"training loss; wall time {res['wall_s']} s ({res['machine']}).", "",
             "| family | task | " + " | ".join(f"lr {lr:g}" for lr in LRS) + " | best lr |",
             "|---" * (3 + len(LRS)) + "|"]
    for r in rows:
        name = r["task"].replace("|", "\\|")  # a literal | would split the table cell
        lines.append(f"| {r['family']} | {name} | " + " | ".join(f"{v:.4f}" for v in r["final"].values())
                     + f" | {r['best_lr']:g} |")
    (out / "adam-lr-by-width.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
