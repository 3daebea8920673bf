"""Would the learned rule gain from scaling each tensor's step by its gradient against its own history? A probe.

On the MLP matrices, the tensors that decide both transformer benchmarks, rms(g) / rms(sqrt(v_hat)) (the gradient's
size against its long average) separates the ViT, whose gradients shrink as it memorises its 1400 images, from the GPT,
whose gradients hold (benchmarks/results/lr-by-tensor-class/README.md). The rule's format has no such per-tensor input.
This probe asks what a step factor built from it would do, before any format change: ``LearnedOptimizer`` with every
tensor in its own param group, and each tensor's lr at each step multiplied by

    f = clip(r, 0.01, 3) ** s,    r = rms(g_t) / rms(sqrt(v_hat_{t-1})),    v_hat_{t-1} = v_{t-1} / (1 - beta2^(t-1))

from the gradient of this step (after the benchmark's clipping) and the second moment before it (f = 1 at a tensor's
first step). The factor multiplies the whole update of that tensor (the rule's step and the decoupled weight decay).
``s = 0`` is the rule itself with per-tensor param groups (which changes rounding, not maths: trajectories are
chaotic, so it is the seed-by-seed baseline, not the benchmark's own runs). The transformer benchmark's workloads and
recipe (``learned_optim.benchmarking.transformer.train_once``), same initialisation and minibatches per seed.

    python benchmarks/grad_ratio_probe.py --workload gpt-byte --exponents 0,1 --seeds 5 --out OUT

``--workload hf-gpt2`` runs benchmarks/hf_trainer_gpt2.py's tiny GPT-2 under Hugging Face ``Trainer`` instead (its
eval loss in the "final validation loss" column).

Writes ``grad-ratio.json`` (after every run) and ``grad-ratio.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
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

RATIO_CLIP = (0.01, 3.0)


def grad_ratio(grad: torch.Tensor, exp_avg_sq: torch.Tensor, step: float, beta2: float) -> float:
    """rms(grad) / rms(sqrt(v_hat)) with v_hat = exp_avg_sq / (1 - beta2^step), the moment before this step."""
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    return float(grad.float().norm() / v_hat.sqrt().norm().clamp_min(1e-30))


class GradRatioScaled(LearnedOptimizer):
    """``LearnedOptimizer`` whose per-tensor lr is multiplied at each step by ``clip(r, 0.01, 3) ** exponent``
    (module docstring); the param groups it is given are split into one group per tensor (``per_tensor_groups``)."""

    def __init__(self, params, exponent: float = 1.0, **kwargs) -> None:
        super().__init__(per_tensor_groups(list(params)), **kwargs)
        self.exponent = exponent
        self.factors: list[float] = []  # the last step's factors, one per group

    def step(self, closure=None):
        saved, self.factors = [], []
        with torch.no_grad():
            for g in self.param_groups:
                (p,) = g["params"]
                beta2 = g["betas"][1]  # the group's (default: the weights' config)
                st = self.state.get(p, {})
                f = 1.0
                if self.exponent and p.grad is not None and "exp_avg_sq" in st and float(st["step"]) >= 1:
                    r = grad_ratio(p.grad, st["exp_avg_sq"], float(st["step"]), beta2)
                    f = min(max(r, RATIO_CLIP[0]), RATIO_CLIP[1]) ** self.exponent
                saved.append(g["lr"])
                self.factors.append(f)
                g["lr"] = g["lr"] * f
        try:
            return super().step(closure)
        finally:
            for g, lr in zip(self.param_groups, saved):
                g["lr"] = lr


def per_tensor_groups(groups: list) -> list[dict]:
    """Param groups (dicts, or tensors: one group) split into one group per tensor, each keeping its other options."""
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    return [{**{k: v for k, v in g.items() if k not in ("params", "param_names")}, "params": [p]}
            for g in groups for p in g["params"]]


def _hf_module():
    """benchmarks/hf_trainer_gpt2.py, imported from this folder (it needs transformers)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_trainer_gpt2", Path(__file__).with_name("hf_trainer_gpt2.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--{name}: expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise SystemExit(f"--{name}: expected non-negative numbers, got {text!r}")
    return values


def markdown(res: dict) -> str:
    acc = res["configs"][0]["runs"][0].get("test_acc") is not None
    first = [r["final"] for r in res["configs"][0]["runs"]]
    lines = [f"# {res['workload']}: the learned rule with a per-tensor step factor clip(r, 0.01, 3)^s", "",
             f"Command: `{res['command']}`  ", f"Machine: {res['machine_line']}  ",
             f"Date (UTC): {res['date']}; weights `{res['weights']}`, lr {res['lr']:g}; {res['steps']} steps, "
             + ("Hugging Face Trainer's defaults (benchmarks/hf_trainer_gpt2.py), its eval loss"
                if res["workload"] == "hf-gpt2" else "the transformer benchmark's recipe")
             + f"; wall time {res['wall_s']:.0f} s.", "",
             "| exponent s | final validation loss, mean ± std | per seed | " + ("test accuracy | " if acc else "")
             + "lower than the first row, seeds |", "|---|---|---|" + ("---|" if acc else "") + "---|"]
    for c in res["configs"]:
        finals = [r["final"] for r in c["runs"]]
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        a = ""
        if acc:
            accs = [r["test_acc"] for r in c["runs"]]
            a = f"{100 * statistics.fmean(accs):.2f}% ± {100 * (statistics.stdev(accs) if len(accs) > 1 else 0):.2f} | "
        lines.append(f"| {c['exponent']:g} | {statistics.fmean(finals):.4f} ± {sd:.4f} | "
                     f"{', '.join(f'{x:.4f}' for x in finals)} | {a}{sum(f < b for f, b in zip(finals, first))}"
                     f"/{len(finals)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=sorted(WORKLOADS) + ["hf-gpt2"], default="gpt-byte",
                    help="a transformer benchmark workload, or hf-gpt2: benchmarks/hf_trainer_gpt2.py's Trainer run "
                         "(200 steps of batch 16, its eval loss)")
    ap.add_argument("--exponents", default="0,1", help="comma-separated exponents s (0: the rule itself)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="default: the workload's benchmark length")
    ap.add_argument("--weights", default=None, help="the rule (default: the package default)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    exponents = _floats(args.exponents, "exponents")
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    torch.set_num_threads(1)
    workload = None if args.workload == "hf-gpt2" else WORKLOADS[args.workload]()
    steps = args.steps or (200 if workload is None else workload.steps)
    machine = machine_info(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    argv_text = sys.argv[1:] if argv is None else argv
    res = {"workload": args.workload, "command": "python benchmarks/grad_ratio_probe.py " + shlex.join(argv_text),
           "machine": machine, "machine_line": machine_line(machine), "weights": args.weights or "package default",
           "lr": args.lr, "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "steps": steps,
           "configs": [], "wall_s": 0.0}
    t0 = time.perf_counter()
    hf = _hf_module() if workload is None else None
    for s in exponents:
        kw = {"lr": args.lr, "exponent": s, **({"weights": args.weights} if args.weights else {})}
        runs = []
        for seed in range(args.seeds):
            def make_opt(groups, kw=kw):
                return GradRatioScaled(groups, **kw)
            if hf is not None:  # hf-gpt2: the Trainer run of benchmarks/hf_trainer_gpt2.py, this optimizer
                r = hf.run_one("learned", args.lr, seed, steps, 16, optimizer_cls_and_kwargs=(GradRatioScaled, kw))
                r = {"final": r["eval_loss"], "min": None, "diverged": False, "test_acc": None, "train_loss": None,
                     "wall_s": r["wall_s"]}
            else:
                r = train_once(workload, make_opt, seed, steps, evaluation_steps(steps))
            runs.append({k: r[k] for k in ("final", "min", "diverged", "test_acc", "train_loss", "wall_s")})
            print(f"s={s:g} seed {seed}: {r['final']:.4f}" + (f" acc {r['test_acc']:.4f}" if r["test_acc"] else ""),
                  flush=True)
        res["configs"].append({"exponent": s, "runs": runs})
        res["wall_s"] = time.perf_counter() - t0
        write_json(out / "grad-ratio.json", res)
    (out / "grad-ratio.md").write_text(markdown(res))
    print(json.dumps([(c["exponent"], statistics.fmean(r["final"] for r in c["runs"])) for c in res["configs"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
