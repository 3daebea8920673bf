"""Would a validation ViT scored on held-out digits predict the vit-digits benchmark better?

The meta-validation ViT task (``arch_tasks.arch_validation_tasks``: a 2-layer d=48 ViT, 1000
steps) trains on all the digits and scores training loss; across the benchmarked meta-v2 points its
ratio to tuned Adam does not predict the benchmark's ViT test accuracy
(``selection-vs-benchmark.md``). This probe trains the same model on the fixed training four
fifths of the digits (``arch_tasks._digit_split``) and scores the loss on the held-out fifth, for
every benchmarked point whose weights are committed, 2 seeds each, against Adam at three lrs
(the best by the same held-out loss is the reference; the ranks do not depend on it). It prints
Spearman's rho of the held-out ratio, and of the training-loss ratio of the same points, with
the benchmark's accuracy.

    python benchmarks/heldout_vit_probe.py --out benchmarks/results/meta-v2 [--workers 2]

Writes ``heldout-vit-probe.json``, ``.md`` and ``.png`` into ``--out``. ~5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SEEDS = 2
ADAM_LRS = (3e-4, 1e-3, 3e-3)  # the ranking below does not depend on the reference; these bracket the best
HORIZON = 1000  # the validation ViT task's


def _study():
    spec = importlib.util.spec_from_file_location("selection_vs_benchmark", HERE / "selection_vs_benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _task():
    """The validation ViT task (model, patches, batch size, init scale) on the digits' training split,
    scoring the held-out split."""
    import dataclasses

    from learned_optim.meta.arch_tasks import _digit_split, arch_validation_tasks

    val = arch_validation_tasks()[1][0]
    if val.name != "val-vit2x48-p2-cls-bs32":  # the task the validation records score
        raise RuntimeError(f"arch_validation_tasks()[1] is {val.name!r}; update this probe")

    class HeldoutScored(type(val)):
        """Trains on the training split; its "full batch" (what validation scores) is the held-out split."""

        def full_batch(self):
            return self.heldout_x, self.heldout_y

    train, held = _digit_split()
    kw = {f.name: getattr(val, f.name) for f in dataclasses.fields(val) if f.init}
    kw.update(x=val.x[train], y=val.y[train], name=f"{val.name}-heldout", heldout_x=val.x[held], heldout_y=val.y[held])
    return HeldoutScored(**kw)


def _job(args: tuple[str, str | None, float]) -> tuple[str, list[float]]:
    """(key, weights dir or None for Adam, lr) -> held-out final losses, one per seed."""
    key, weights, lr = args
    torch.set_num_threads(1)
    from learned_optim import from_pretrained
    from learned_optim.meta.validation import _seed, run_inner

    net = from_pretrained(weights) if weights else None
    task = _task()
    return key, [run_inner(task, HORIZON, _seed(1, s), weights=net, lr=lr)["final_loss"] for s in range(SEEDS)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    out = Path(args.out)
    study = _study()
    points = {}
    for name, (log, step, _gpt, vit, _q) in study.POINTS.items():
        weights = (study.ROOT / vit).parent / "weights" if vit else None
        if weights is None or not weights.is_dir():
            continue  # screening points: weights not committed
        run = study.learned_run(study.ROOT / vit)
        if run is None:
            continue
        train_ratio = study.eval_record(study.ROOT / log, step)[0]["val-vit2x48-p2-cls-bs32"]
        points[name] = {"weights": str(weights.relative_to(HERE.parent)),
                        "vit_acc": 100 * statistics.mean(run["test_acc"]), "val_train_ratio": train_ratio}
    jobs = [(f"adam {lr:g}", None, lr) for lr in ADAM_LRS] + [(n, p["weights"], 1e-3) for n, p in points.items()]
    with ProcessPoolExecutor(args.workers) as pool:
        losses = dict(pool.map(_job, jobs))

    def mean_log(xs):
        return statistics.mean(math.log(max(x, 1e-12)) if math.isfinite(x) else math.inf for x in xs)

    adam = {lr: losses[f"adam {lr:g}"] for lr in ADAM_LRS}
    tuned_lr = min(adam, key=lambda lr: mean_log(adam[lr]))
    ref = mean_log(adam[tuned_lr])
    for name, p in points.items():
        p["heldout_losses"] = losses[name]
        p["heldout_ratio"] = math.exp(mean_log(losses[name]) - ref)
    names = list(points)
    acc = [points[n]["vit_acc"] for n in names]
    rho_held = -study.spearman([points[n]["heldout_ratio"] for n in names], acc)
    rho_train = -study.spearman([points[n]["val_train_ratio"] for n in names], acc)
    crit = 1.96 / math.sqrt(len(names) - 1)
    (out / "heldout-vit-probe.json").write_text(json.dumps(
        {"command": "python benchmarks/heldout_vit_probe.py --out " + args.out, "seeds": SEEDS, "horizon": HORIZON,
         "adam_heldout_losses": {f"{lr:g}": v for lr, v in adam.items()}, "tuned_lr": tuned_lr, "points": points,
         "spearman_heldout_ratio_vs_acc": rho_held, "spearman_train_ratio_vs_acc": rho_train,
         "critical_rho_5pct": crit}, indent=1) + "\n")
    at_default = math.exp(mean_log(adam[1e-3]))
    lines = ["# A validation ViT scored on held-out digits, against the vit-digits benchmark", "",
             f"Command: `python benchmarks/heldout_vit_probe.py --out {args.out}`. The validation ViT (2 layers, d 48, "
             f"{HORIZON} steps, batch 32) trained on the fixed training four fifths of the digits, scored by the "
             f"loss on the held-out fifth, {SEEDS} seeds; Adam tuned over {list(ADAM_LRS)} by the same loss "
             f"(best lr {tuned_lr:g}, held-out loss {math.exp(ref):.4f}; at 1e-3 {at_default:.4f}).",
             "", "| point | held-out loss / tuned Adam | training-loss ratio (validation record) | "
             "vit-digits test accuracy, 5 seeds |", "|---|---|---|---|"]
    for n in names:
        p = points[n]
        lines.append(f"| {n} | {p['heldout_ratio']:.3f} | {p['val_train_ratio']:.2f} | {p['vit_acc']:.2f}% |")
    lines += ["", f"Spearman's rho with the benchmark's accuracy over these {len(names)} points (positive = a lower "
              f"ratio goes with a higher accuracy; |rho| > {crit:.2f} differs from 0 at the 5% level): held-out "
              f"ratio **{rho_held:+.2f}**, training-loss ratio **{rho_train:+.2f}**."]
    (out / "heldout-vit-probe.md").write_text("\n".join(lines) + "\n")
    study.scatter_panels(out / "heldout-vit-probe.png", [
        ([points[n][key] for n in names], acc, f"validation ViT {label} / tuned Adam", "vit-digits test accuracy (%)",
         f"rho {rho:+.2f} (n={len(names)})")
        for key, label, rho in (("heldout_ratio", "held-out loss", rho_held),
                                ("val_train_ratio", "training loss", rho_train))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
