"""Probe the cautious mask outside the rule: any optimizer's step, masked after the fact, on the
transformer benchmark's workloads with its recipe (``learned_optim.benchmarking.transformer.train_once``:
warm-up + cosine, clipping at 1, weight decay 0.1 on matrices; per seed the same initialisation and
minibatches as the benchmark).

``Cautious`` wraps an optimizer whose weight decay is decoupled (``p <- p (1 - lr wd) - lr u``, as
``torch.optim.AdamW`` and ``LearnedOptimizer``): after the wrapped step it recovers the step
``u`` per coordinate, keeps it only where a sign test passes, and scales what it keeps:

* ``--method adamw-cautious`` / ``learned-cautious``: kept where the step agrees in sign with the
  gradient (the cautious optimizers' test, Liang et al. 2024), scaled per tensor by
  ``numel / (kept + 1)`` (their rescale);
* ``learned-cmN``: kept where sign(m_t) sign(g_t) > 0 (m_t the optimizer's first moment after the
  step, the test ``LearnedOptimizer`` runs in its kernels with ``cautious_scale``), scaled per tensor
  by ``numel / (kept + 1)``;
* ``learned-cm<c>`` (e.g. ``learned-cm1``, ``learned-cm1.5``): the same test, scaled by the constant
  ``c`` (what ``LearnedOptimizer`` does with ``cautious_scale=c``; c = 1 keeps the rule's own steps);
* ``adamw`` / ``learned``: the optimizer alone.

``adamw*`` runs ``torch.optim.AdamW``, ``learned*`` ``LearnedOptimizer`` with ``--weights`` (default
``lstm-h4-v2-vec``, the rule without the mask), at ``--lr``. One JSON line per run is appended to
``--out`` (final validation loss, test accuracy where the workload has one, the validation curve), so
runs of several invocations collect in one file.

    python benchmarks/cautious_probe.py --workload gpt-byte --method learned-cm1 --lr 1e-3 --seeds 0,1,2,3,4 \\
        --out benchmarks/results/cautious/probe.jsonl

``quality METHOD ARGS...`` runs ``learned-optim benchmark quality ARGS...`` with the learned optimizer's
column built by ``METHOD`` (one of the ``learned*`` methods; its lr is the column's, 1e-3):

    python benchmarks/cautious_probe.py quality learned-cautious --no-progress --out OUT --threads 1 --seeds 5 \\
        --reuse-baselines benchmarks/results/ten-seeds/default-quality/quality.json
"""

from __future__ import annotations

import argparse
import json
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

STEPS = {"gpt-byte": 3000, "vit-digits": 1000}  # the benchmark's horizons


class Cautious(torch.optim.Optimizer):
    """``inner``'s step, masked per coordinate. ``by_m``: keep where sign(m_t) sign(g) > 0 (m_t =
    ``inner.state[p]["exp_avg"]`` after the step), else where the step u and -g agree in sign.
    ``scale``: ``None`` rescales per tensor by numel / (kept + 1), a number by that constant."""

    def __init__(self, inner: torch.optim.Optimizer, *, by_m: bool = False, scale: float | None = None):
        self.inner, self.by_m, self.scale = inner, by_m, scale
        self.param_groups, self.state, self.defaults = inner.param_groups, inner.state, inner.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        old = {p: p.detach().clone() for g in self.param_groups for p in g["params"] if p.grad is not None}
        self.inner.step()
        for group in self.param_groups:
            keep_decay = 1 - group["lr"] * group["weight_decay"]
            for p in group["params"]:
                if p not in old:
                    continue
                base = old[p] * keep_decay  # the decay part of the step is left as it is
                u = p - base  # -lr times the step
                if self.by_m:
                    mask = (self.inner.state[p]["exp_avg"].sign() * p.grad.sign()) > 0
                else:
                    mask = u * p.grad < 0
                mask = mask.to(p.dtype)
                mask = mask * (mask.numel() / (mask.sum() + 1)) if self.scale is None else mask * self.scale
                p.copy_(base + u * mask)


def make_optimizer(method: str, lr: float, weights="lstm-h4-v2-vec"):
    """A function of the param groups building ``method``'s optimizer (see the module docstring)."""
    base, _, variant = method.partition("-")
    if base not in ("adamw", "learned") or (variant and variant != "cautious" and not variant.startswith("cm")):
        raise SystemExit(f"--method: unknown {method!r}; use adamw, learned, adamw-cautious, learned-cautious, "
                         "learned-cmN or learned-cm<scale>")
    if variant.startswith("cm") and base != "learned":
        raise SystemExit(f"--method {method!r}: the sign(m) test reads LearnedOptimizer's state; use learned-{variant}")
    scale = None
    if variant.startswith("cm") and variant != "cmN":
        try:
            scale = float(variant[2:])
        except ValueError:
            raise SystemExit(f"--method {method!r}: expected learned-cm<number> or learned-cmN") from None

    def make(groups):
        if base == "adamw":
            inner = torch.optim.AdamW(groups, lr=lr)
        else:
            inner = LearnedOptimizer(groups, lr=lr, weights=weights)
        if not variant:
            return inner
        return Cautious(inner, by_m=variant.startswith("cm"), scale=scale)

    return make


def quality(argv: list[str]) -> int:
    """``learned-optim benchmark quality argv[1:]`` with the learned column built by method ``argv[0]``."""
    from learned_optim.benchmarking import common
    from learned_optim.cli import main as cli_main

    if not argv or not argv[0].startswith("learned"):
        raise SystemExit("quality: pass a learned* method first, e.g. `quality learned-cautious --out OUT ...`")
    method = argv[0]
    make_optimizer(method, 1e-3)  # checks the name

    def make(self, params, lr):
        return make_optimizer(method, lr, self.network)(params)

    common.LearnedSetup.make = make
    return cli_main(["benchmark", "quality", *argv[1:]])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "quality":
        raise SystemExit(quality(argv[1:]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", required=True, choices=sorted(STEPS))
    ap.add_argument("--method", required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--weights", default="lstm-h4-v2-vec", help="LearnedOptimizer's weights (default lstm-h4-v2-vec)")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0-4)")
    ap.add_argument("--steps", type=int, default=None, help="default: the benchmark's horizon")
    ap.add_argument("--out", required=True, help="JSON-lines file, appended to")
    args = ap.parse_args(argv)
    make = make_optimizer(args.method, args.lr, args.weights)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    steps = args.steps or STEPS[args.workload]
    torch.set_num_threads(1)
    workload = WORKLOADS[args.workload]()
    for seed in seeds:
        t0 = time.time()
        r = train_once(workload, make, seed, steps, evaluation_steps(steps))
        rec = {"workload": args.workload, "method": args.method, "lr": args.lr, "seed": seed, "steps": steps,
               "weights": args.weights if args.method.startswith("learned") else None,
               "final": r["final"], "test_acc": r.get("test_acc"), "train_loss": r.get("train_loss"),
               "curve": r["curve"], "wall_s": round(time.time() - t0, 1)}
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{args.workload} {args.method} lr {args.lr:g} seed {seed}: {r['final']:.4f}", flush=True)


if __name__ == "__main__":
    main()
