"""Does a model-size prior hurt a transformer of the benchmark GPT's size? A check on validation text.

``with_size_prior(slope)`` on the ``"log_num_params"`` input shifts every model's step with its
size, on both sides of 1e5 parameters; on ``"log_num_params_capped"`` it leaves models of 1e5
parameters or more at the rule's own step (the meta-training tasks have 33 to 76k parameters, so
below 1e5 is where the prior's slope is measured). This script trains one transformer byte LM of
about the benchmark GPT's size, but on the meta-validation text (standard-library modules never
used in meta-training or in the benchmarks' training text), with each rule given as
``--weights`` with and without the prior on the uncapped input, and with Adam at two learning
rates for reference; the capped prior is the rule itself at this size (tested exactly in
``tests/test_rule_v2.py``). Same initial parameters and minibatches for every optimizer of a
seed. ``--recipe constant`` (default): ``validation.run_inner``, a constant lr from step 0, the
validation set's protocol; ``--recipe warmup-cosine``: ``torch.optim.Adam`` and ``LearnedOptimizer``
on the parameter tensors with the transformer benchmark's schedule (``common.schedules.warmup_cosine``)
and gradient-norm clipping at 1, no weight decay.

    python benchmarks/size_prior_cap_check.py --out benchmarks/results/size-prior/cap-check \\
        [--weights lstm-h4-v2-t32,DIR] [--slope -0.3] [--adam-lrs 1e-3,3e-3] [--seeds 3] [--steps 2000]
        [--recipe constant|warmup-cosine]

Writes ``cap-check.json`` and ``cap-check.md`` into ``--out``.
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

from learned_optim import LearnedOptimizer
from learned_optim.common.adam_baseline import diverged
from learned_optim.common.schedules import warmup_cosine
from learned_optim.hub import from_pretrained
from learned_optim.meta.arch_models import TransformerLM
from learned_optim.meta.arch_tasks import LMTask
from learned_optim.meta.task_core import flatten_params
from learned_optim.meta.validation import full_loss, run_inner


def make_task() -> LMTask:
    """A 4-layer d=128 byte transformer (about 0.8M parameters, the benchmark GPT's size) on the
    validation modules' first 90%."""
    model = TransformerLM(d=128, heads=4, layers=4, ctx=64, ratio=4, tied=True)
    return LMTask(model, "validation:head", 64, 16, 1.0, "val-tlm4x128-c64-bs16", heldout="validation:tail")


def run_scheduled(task: LMTask, steps: int, seed: int, weights, lr: float) -> dict:
    """``task`` for ``steps`` steps under the benchmark's warmup + cosine schedule with gradient
    clipping at 1: Adam (``weights=None``) or ``LearnedOptimizer(weights)``; the initial parameters
    and minibatches come from one generator seeded with ``seed``, as in ``run_inner``."""
    gen = torch.Generator().manual_seed(seed)
    params = [p.clone().requires_grad_(True) for p in task.init_params(gen)]
    shapes = [p.shape for p in params]
    init = full_loss(task, flatten_params(params).detach(), shapes)
    opt = torch.optim.Adam(params, lr=lr) if weights is None else LearnedOptimizer(params, weights=weights, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps))
    for _ in range(steps):
        loss = task.loss(params, task.sample_batch(gen))
        if not torch.isfinite(loss.detach()):
            return {"init_loss": init, "final_loss": float("nan"), "diverged": True}
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    final = full_loss(task, flatten_params(params).detach(), shapes)
    return {"init_loss": init, "final_loss": final, "diverged": diverged(init, final)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", default="lstm-h4-v2-t32", help="comma-separated rules (shipped names or folders)")
    ap.add_argument("--slope", type=float, default=-0.3, help="the prior's slope (0: no prior rows)")
    ap.add_argument("--adam-lrs", default="1e-3,3e-3", help="Adam's learning rates (comma-separated; empty: none)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--recipe", default="constant", choices=("constant", "warmup-cosine"))
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.steps < 1:
        ap.error(f"--seeds and --steps must be >= 1, got {args.seeds} and {args.steps}")
    torch.set_num_threads(1)
    task = make_task()
    num_params = sum(p.numel() for p in task.init_params(torch.Generator().manual_seed(0)))
    try:
        adam_lrs = [float(v) for v in args.adam_lrs.split(",") if v]
    except ValueError:
        ap.error(f"--adam-lrs must be comma-separated numbers, e.g. 1e-3,3e-3, got {args.adam_lrs!r}")
    runs: dict[str, tuple] = {f"Adam lr {lr:g}": (None, lr) for lr in adam_lrs}
    for name in args.weights.split(","):
        base = from_pretrained(name)
        runs[f"{name}"] = (base, 1e-3)
        if args.slope:
            runs[f"{name} + prior {args.slope:g} (uncapped)"] = (base.with_size_prior(args.slope), 1e-3)
    t0 = time.time()
    rows = []
    for label, (net, lr) in runs.items():
        t1 = time.time()
        if args.recipe == "constant":
            res = [run_inner(task, args.steps, 1000 + s, weights=net, lr=lr, impl="auto" if net is not None else
                             "reference") for s in range(args.seeds)]
        else:
            res = [run_scheduled(task, args.steps, 1000 + s, net, lr) for s in range(args.seeds)]
        finals = [r["final_loss"] for r in res]
        rows.append({"optimizer": label, "lr": lr, "final_losses": finals,
                     "mean": sum(finals) / len(finals), "diverged": sum(r["diverged"] for r in res),
                     "init_loss": res[0]["init_loss"], "wall_s": round(time.time() - t1)})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
           "task": task.name, "num_params": num_params, "steps": args.steps, "seeds": args.seeds,
           "recipe": args.recipe,
           "rows": rows, "wall_s": round(time.time() - t0),
           "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread"}
    (out / "cap-check.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# A size prior on a transformer of the benchmark GPT's size (validation text)", "",
             f"Command: `{res['command']}`; task `{task.name}` ({num_params} parameters, byte LM on the "
             f"meta-validation modules), {args.steps} steps, recipe `{args.recipe}`, {args.seeds} seeds (the same "
             f"initial parameters and minibatches for every optimizer of a seed); final full-batch training "
             f"loss (nats/byte); wall time {res['wall_s']} s ({res['machine']}).", "",
             "| optimizer | lr | mean final loss | per seed | diverged |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['optimizer']} | {r['lr']:g} | {r['mean']:.4f} | "
                     + ", ".join(f"{v:.4f}" if math.isfinite(v) else "nan" for v in r["final_losses"])
                     + f" | {r['diverged']} |")
    lines += ["", "The prior on the capped input (`log_num_params_capped`) leaves a model of this size at the "
              "rule's own step: its rows are the rule's."]
    (out / "cap-check.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
