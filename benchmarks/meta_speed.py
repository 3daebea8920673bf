"""How much faster is a meta-step with the batched inner step (``MetaTrainConfig.inner_impl="auto"``)?

Builds the trajectories of a preset's first meta-step (its training tasks, sampled as the trainer
samples them) and times, alternating the two implementations ``--repeats`` times on copies of the
same trajectories and random stream:

* one PES estimate (one truncation of every trajectory: the whole of a meta-step but the Adam
  update of the meta-parameters and the occasional evaluation), with ``inner_impl="reference"``
  and ``"auto"``;
* ``inner_step`` alone on each trajectory's task (``--steps`` steps with fixed random gradients),
  per task size, with both implementations.

It also reports how far apart the two estimates are (the meta-gradient's relative difference and
the parameters after the truncation), with ``objective_from=0`` so that the first truncation
counts (the preset's 0.5 counts nothing in it; timing does not depend on it).

    python benchmarks/meta_speed.py --out benchmarks/results/meta-speed [--config default] [--repeats 3]

Writes ``meta-speed.json``, ``.md`` and ``.png`` into ``--out``. ~3 minutes on one core.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

IMPLS = ("reference", "auto")


def _estimate(trainer, trajs, impl: str) -> tuple[float, torch.Tensor, float, list[torch.Tensor]]:
    trainer.estimator.inner_impl = impl
    trainer.trajs = copy.deepcopy(trajs)
    gen = torch.Generator().manual_seed(1)
    c = trainer.config
    t0 = time.perf_counter()
    g, stats = trainer.estimator.estimate(trainer.net, trainer.trajs, gen, c.inner_lr, c.loss_cap, c.loss_floor,
                                          c.objective_from, c.objective_split, c.rise_penalty)
    return time.perf_counter() - t0, g, stats["meta_loss"], [t.states[0].params for t in trainer.trajs]


def _inner_ms(trainer, traj, impl: str, steps: int) -> float:
    from learned_optim.meta.inner import inner_step

    n = traj.states[0].params.numel()
    grads = [torch.randn(n, generator=torch.Generator().manual_seed(k)) * 1e-2 for k in range(steps)]
    s, net = traj.states[0], trainer.net
    with torch.no_grad():
        t0 = time.perf_counter()
        for g in grads:
            s = inner_step(s, g, net, net.config, trainer.config.inner_lr, traj.shapes, impl=impl)
    return (time.perf_counter() - t0) / steps * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default="default", help="meta-training preset (default: default)")
    ap.add_argument("--repeats", type=int, default=3, help="timed estimates per implementation (default 3)")
    ap.add_argument("--steps", type=int, default=20, help="inner steps per task in the per-size timing (default 20)")
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile, for the report")
    ap.add_argument("--rerender", action="store_true",
                    help="rewrite the .md and .png in --out from its meta-speed.json, measuring nothing")
    args = ap.parse_args(argv)
    if args.rerender:
        path = Path(args.out) / "meta-speed.json"
        if not path.is_file():
            ap.error(f"--rerender needs {path}, written by an earlier run with this --out")
        result = json.loads(path.read_text())
        _report(Path(args.out), result, len(result["estimate_seconds"]["reference"]))
        return 0
    for name in ("repeats", "steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(1)
    from learned_optim.common.machine import machine_info
    from learned_optim.meta.config import load_config
    from learned_optim.meta.trainer import MetaTrainer

    cfg = load_config(args.config).replace(objective_from=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = MetaTrainer(cfg, tmp, progress=False)
        trajs = [trainer._new_traj(i, first=False) for i in range(cfg.num_trajectories)]
        times = {impl: [] for impl in IMPLS}
        for _ in range(args.repeats):
            for impl in IMPLS:
                dt, g, meta_loss, params = _estimate(trainer, trajs, impl)
                times[impl].append(dt)
                if impl == "reference":
                    g_ref, loss_ref, p_ref = g, meta_loss, params
                else:
                    g_auto, loss_auto, p_auto = g, meta_loss, params
        tasks = []
        for traj in trajs:
            row = {"task": traj.task.name, "params": traj.states[0].params.numel(), "tensors": len(traj.shapes)}
            for impl in IMPLS:
                row[f"{impl}_ms"] = min(_inner_ms(trainer, traj, impl, args.steps) for _ in range(2))
            tasks.append(row)
    move = max(float((p - t.states[0].params).abs().max()) for p, t in zip(p_ref, trajs))
    diff = max(float((a - b).abs().max()) for a, b in zip(p_ref, p_auto))
    med = {impl: statistics.median(ts) for impl, ts in times.items()}
    inner_total = {impl: sum(r[f"{impl}_ms"] for r in tasks) for impl in IMPLS}
    command = f"python benchmarks/meta_speed.py --out {args.out} --config {args.config} --repeats {args.repeats}"
    machine = machine_info(1)
    result = {
        "command": command, "machine": machine, "note": args.note, "config": args.config,
        "trajectories": cfg.num_trajectories, "truncation_length": cfg.truncation_length,
        "estimate_seconds": times, "estimate_seconds_median": med, "speedup_estimate": med["reference"] / med["auto"],
        "inner_step_ms_per_task": tasks, "inner_step_ms_sum": inner_total,
        "speedup_inner_step": inner_total["reference"] / inner_total["auto"],
        "meta_gradient_relative_difference": float((g_auto - g_ref).norm() / g_ref.norm()),
        "meta_loss": {"reference": loss_ref, "auto": loss_auto},
        "params_max_abs_difference_after_truncation": diff, "params_max_abs_move_in_truncation": move,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta-speed.json").write_text(json.dumps(result, indent=1) + "\n")
    _report(out, result, args.repeats)
    return 0


def _report(out: Path, result: dict, repeats: int) -> None:
    """``meta-speed.md`` and ``.png`` from the result alone (``--rerender`` rewrites them from the JSON)."""
    from learned_optim.common.machine import machine_line

    med, times, inner_total = result["estimate_seconds_median"], result["estimate_seconds"], result["inner_step_ms_sum"]
    loss_ref, loss_auto = result["meta_loss"]["reference"], result["meta_loss"]["auto"]
    note = result.get("note", "")
    lines = [
        "# Meta-training speed: the batched inner step against the reference", "",
        f"Command: `{result['command']}`. Machine: {machine_line(result['machine'])}." + (f" {note}" if note else ""),
        "",
        f"The `{result['config']}` preset's first meta-step: {result['trajectories']} trajectories of its training "
        f"tasks, one truncation of {result['truncation_length']} inner steps each (PES: two antithetic unrolls per "
        "trajectory).",
        "",
        "| inner_impl | one PES estimate, median of "
        f"{repeats} (s) | all runs (s) | inner_step alone, summed over the tasks (ms per step) |",
        "|---|---|---|---|",
    ]
    for impl in IMPLS:
        lines.append(f"| {impl} | {med[impl]:.2f} | {', '.join(f'{t:.2f}' for t in times[impl])} | "
                     f"{inner_total[impl]:.1f} |")
    lines += [
        "", f"- **Estimate {result['speedup_estimate']:.2f}x faster, inner step alone "
        f"{result['speedup_inner_step']:.2f}x** (the rest of a meta-step, the tasks' forward and backward passes, is "
        "unchanged).",
        f"- Agreement (objective counted from the first step): meta-gradient relative difference "
        f"{result['meta_gradient_relative_difference']:.1e}; meta-loss {loss_ref:.6f} (reference) and {loss_auto:.6f}; "
        f"the parameters after the truncation differ by at most "
        f"{result['params_max_abs_difference_after_truncation']:.1e} where they moved by up to "
        f"{result['params_max_abs_move_in_truncation']:.1e}.",
        "", "Per task (the best of 2 timings of the inner step alone, fixed random gradients):", "",
        "| task | parameters | tensors | reference (ms per step) | auto (ms per step) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    tasks = result["inner_step_ms_per_task"]
    for r in sorted(tasks, key=lambda r: r["params"]):
        name = r["task"].replace("|", "\\|")  # task names may hold "|", a table's column separator
        lines.append(f"| {name} | {r['params']} | {r['tensors']} | {r['reference_ms']:.3f} | {r['auto_ms']:.3f} | "
                     f"{r['reference_ms'] / r['auto_ms']:.2f}x |")
    (out / "meta-speed.md").write_text("\n".join(lines) + "\n")
    _figure(out / "meta-speed.png", tasks)


def _figure(path: Path, tasks: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for impl, marker in zip(IMPLS, "os"):
        ax.scatter([r["params"] for r in tasks], [r[f"{impl}_ms"] for r in tasks], marker=marker, label=impl)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("task parameters")
    ax.set_ylabel("inner_step, ms per step")
    ax.set_title("inner step time per training task")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
