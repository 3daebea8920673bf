"""Recompute the Adam baselines of the version-2 validation tasks and compare them with the committed file.

A meta-training run computes these baselines once, at its first evaluation (``MetaTrainer.evaluate``:
Adam at every lr of the grid, ``val_seeds`` runs per task). The version-2 runs reused the committed
``benchmarks/results/meta-v2/v2-validation-adam-baselines.json`` instead. This script recomputes the
rows the ``default`` preset's run would compute and reports whether they are identical (then reuse
changed neither the selection nor the weights) and how long they took (the part of a fresh
``learned-optim meta-train --config default`` run's wall time that a reusing run does not spend).

    python benchmarks/recompute_validation_baselines.py --out benchmarks/results/meta-v2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from learned_optim.common.machine import machine_info
from learned_optim.meta.config import VAL_TASKS, get_preset
from learned_optim.meta.validation import adam_baselines

COMMITTED = Path("benchmarks/results/meta-v2/v2-validation-adam-baselines.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", help="meta-training preset whose validation tasks to use")
    ap.add_argument("--out", required=True, help="folder for validation-baselines-check.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = get_preset(args.preset)
    t0 = time.monotonic()
    rows = adam_baselines(VAL_TASKS[cfg.val_tasks](), cfg.val_seeds)  # the trainer's own val_tasks
    wall = time.monotonic() - t0
    names = [r["task"] for r in rows]
    committed = [r for r in json.loads(COMMITTED.read_text()) if r["task"] in names]
    result = {
        "command": f"python benchmarks/recompute_validation_baselines.py --preset {args.preset} --out {args.out}",
        "identical_to_committed": rows == committed, "tasks": names, "val_seeds": cfg.val_seeds,
        "wall_seconds": round(wall, 1), "machine_at_end": machine_info(1), "rows": rows,
    }
    Path(args.out, "validation-baselines-check.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
