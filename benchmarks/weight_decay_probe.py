"""Should a user scale weight decay when swapping AdamW for the learned optimizer? A probe on the
transformer benchmark's workloads.

AdamW's decoupled decay shrinks each weight by ``lr * weight_decay`` per step, so with the same
``weight_decay`` the decay per unit of movement is tied to the lr. The learned rule's steps are a
multiple of Adam's at the same lr (2.3-2.6x for the default on the benchmark GPT and ViT:
``benchmarks/results/weight-decay/README.md``), while its decay is ``lr * weight_decay`` at its
nominal lr, so against AdamW at the lr that takes the same steps its decay is several times weaker.
This script trains the learned optimizer at its default lr on ``learned_optim.benchmarking.transformer``'s
workloads, with the benchmark's recipe (warm-up + cosine, clipping at 1, decay on >= 2-D tensors)
but the weight decay multiplied by each of ``--wd-mults``, and compares every seed with the
same seed of a transformer benchmark run (``--baseline-dir``: its "learned default" runs are the
multiplier 1, and its tuned AdamW is shown beside them). Same initialisation and minibatches per seed.

    python benchmarks/weight_decay_probe.py --workloads gpt-byte --wd-mults 3 --seeds 5 \\
        --baseline-dir benchmarks/results/size-prior/zen2 --out benchmarks/results/weight-decay/gpt-byte

``--baseline-dir`` holds one folder per workload with the benchmark's ``transformer.json``
(``learned-optim benchmark transformer --workloads W --out DIR/W ...``), made on the same machine
and code: trajectories are chaotic, so a baseline from another CPU is not comparable seed by seed
(the script refuses one whose CPU name, or family, model and vector ISA where recorded, differ).
Writes ``weight-decay.json`` and ``weight-decay.md`` to ``--out`` (the JSON after every run, so a
partial run survives).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import learned_optim  # noqa: F401
except ImportError:  # a checkout that is not pip-installed: use the package next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learned_optim import LearnedOptimizer  # noqa: E402
from learned_optim.benchmarking.transformer import evaluation_steps, train_once  # noqa: E402
from learned_optim.benchmarking.transformer_models import WORKLOADS  # noqa: E402
from learned_optim.common.files import write_json  # noqa: E402
from learned_optim.common.machine import machine_info, machine_line  # noqa: E402

LEARNED_KEY = "learned_lr=0.001"


def _csv(text: str, cast, name: str) -> list:
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--{name}: expected a comma-separated list, got {text!r}") from None
    if not values:
        raise SystemExit(f"--{name}: empty list")
    return values


def load_baseline(path: Path, workload: str, machine: dict) -> dict:
    """The learned-default and tuned-AdamW runs of ``workload`` in a transformer benchmark JSON
    made on this kind of CPU (its family, model and vector ISA where the file records them)."""
    if not path.is_file():
        raise SystemExit(f"--baseline-dir: {path} not found; run `learned-optim benchmark transformer "
                         f"--workloads {workload} --out {path.parent}` on this machine first")
    data = json.loads(path.read_text())
    theirs = (data["machine"]["cpu"], data["machine"].get("cpu_id", machine.get("cpu_id")))
    if theirs != (machine["cpu"], machine.get("cpu_id")):
        raise SystemExit(f"--baseline-dir: {path} was made on {theirs}, this machine is "
                         f"{(machine['cpu'], machine.get('cpu_id'))}; trajectories differ between CPUs, so rerun "
                         "the benchmark here")
    wl = data["workloads"][workload]
    if LEARNED_KEY not in wl["runs"]:
        raise SystemExit(f"--baseline-dir: {path} has no {LEARNED_KEY} runs; run it with --learned-lrs 1e-3")
    tuned = f"adamw_lr={wl['summary']['adamw_tuned_lr']}"
    return {"steps": wl["steps"], "learned": wl["runs"][LEARNED_KEY], "adamw_tuned": wl["runs"][tuned],
            "adamw_tuned_lr": wl["summary"]["adamw_tuned_lr"], "commit": data["machine"]["git_commit"]}


def _mean_std(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.4g} ± {statistics.stdev(xs):.2g}" if len(xs) > 1 else f"{xs[0]:.4g}"


def _accuracy(values: list) -> str:
    """Mean test accuracy in percent, or "" for a workload without one (its values are None)."""
    return "" if not values or values[0] is None else f"{100 * statistics.fmean(values):.2f}%"


def report(res: dict) -> str:
    commits = sorted(set(b["commit"] for b in res["baselines"].values()))
    lines = ["# Weight decay for the learned default: the benchmark's value, and scaled", "",
             f"Command: `{res['command']}`  ", f"Machine: {res['machine_line']}  ",
             f"Date (UTC): {res['machine']['date_utc']}. Baselines (multiplier 1 and tuned AdamW): "
             f"`{res['baseline_dir']}`, code at `{', '.join(commits)}`.",
             "", "The learned default (lr 1e-3) under the transformer benchmark's recipe with its weight decay (0.1 on "
             ">= 2-D tensors) multiplied by m; per seed the same initialisation and minibatches. Final validation "
             "loss (GPT, nats/byte) or test loss and accuracy (ViT), mean ± std over seeds; 'better' counts seeds "
             "where m beats m = 1 on the loss.", "",
             "| workload | method | final loss | test accuracy | seeds better than m = 1 |", "|---|---|---|---|---|"]
    for name, wl in res["workloads"].items():
        base = res["baselines"][name]
        n = len(wl["seeds"])
        tuned = base["adamw_tuned"]
        lines.append(f"| {name} | AdamW tuned (lr {base['adamw_tuned_lr']:g}, m = 1) | "
                     f"{_mean_std(tuned['final'][:n])} | {_accuracy(tuned['test_acc'][:n])} | |")
        lines.append(f"| {name} | learned default, m = 1 | {_mean_std(base['learned']['final'][:n])} | "
                     f"{_accuracy(base['learned']['test_acc'][:n])} | |")
        for m, runs in wl["runs"].items():
            if not runs["final"]:
                continue
            k = len(runs["final"])
            better = sum(a < b for a, b in zip(runs["final"], base["learned"]["final"]))
            lines.append(f"| {name} | learned default, m = {m} | {_mean_std(runs['final'])} | "
                         f"{_accuracy(runs['test_acc'])} | {better}/{k} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="gpt-byte,vit-digits")
    ap.add_argument("--wd-mults", default="3")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--baseline-dir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    workloads = _csv(args.workloads, str, "workloads")
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"--workloads: unknown workload {w!r}; choose from {sorted(WORKLOADS)}")
    mults = _csv(args.wd_mults, float, "wd-mults")
    if any(not math.isfinite(m) or m < 0 for m in mults):
        raise SystemExit(f"--wd-mults: multipliers must be finite and >= 0, got {args.wd_mults!r}")
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(1)
    machine = machine_info(1)
    baselines = {w: load_baseline(Path(args.baseline_dir) / w / "transformer.json", w, machine)
                 for w in workloads}
    for w, b in baselines.items():
        if b["learned"]["seeds"][:args.seeds] != list(range(args.seeds)):
            raise SystemExit(f"--seeds {args.seeds}: the baseline of {w} has seeds {b['learned']['seeds']}; "
                             f"pass --seeds {len(b['learned']['seeds'])} or fewer, or rerun the benchmark with more")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/weight_decay_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    res = {"benchmark": "weight_decay_probe", "command": command, "machine": machine,
           "machine_line": machine_line(machine), "baseline_dir": args.baseline_dir, "baselines": baselines,
           "workloads": {}}
    t0 = time.perf_counter()
    for name in workloads:
        w = WORKLOADS[name]()
        steps = baselines[name]["steps"]
        seeds = list(range(args.seeds))
        wl = res["workloads"][name] = {"seeds": seeds, "steps": steps,
                                       "runs": {f"{m:g}": {"final": [], "test_acc": []} for m in mults}}
        for m in mults:
            for seed in seeds:
                def make(groups, m=m):
                    for g in groups:
                        g["weight_decay"] *= m
                    return LearnedOptimizer(groups, lr=1e-3)
                r = train_once(w, make, seed, steps, evaluation_steps(steps))
                wl["runs"][f"{m:g}"]["final"].append(r["final"])
                wl["runs"][f"{m:g}"]["test_acc"].append(r.get("test_acc"))
                res["wall_s"] = round(time.perf_counter() - t0, 1)
                write_json(out / "weight-decay.json", res)
                print(f"{name} m={m:g} seed {seed}: {r['final']:.4f}", flush=True)
    (out / "weight-decay.md").write_text(report(res), encoding="utf-8")
    print(f"wrote {out / 'weight-decay.json'}, weight-decay.md ({res['wall_s']} s)")


if __name__ == "__main__":
    main()
