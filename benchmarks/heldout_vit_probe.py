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

This ViT is not in the benchmark's regime (Adam's best held-out lr is 1e-3 here, the
benchmark's 3e-4). Options to find one: ``--train-fraction F`` trains on the first fraction F of
the training split, ``--horizon`` and ``--seeds`` set the run, ``--recipe scheduled`` uses the
transformer benchmark's warm-up + cosine, weight decay and clipping (``validation.run_inner``),
``--model benchmark-size`` the benchmark's ViT size and ``--model benchmark`` also its
initialisation; ``--adam-only`` runs just Adam over ``--adam-lrs``
(benchmarks/results/meta-v2/heldout-vit-regime/README.md: the initialisation is what matters).

    python benchmarks/heldout_vit_probe.py --out DIR --model benchmark --recipe scheduled \
        --adam-only --adam-lrs 1e-4,3e-4,1e-3,3e-3
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


# The transformer benchmark's ViT size (patch 2, 16 patches + cls, d 64, 4 layers, mlp ratio 4; batch 64) in
# the meta-training model family, for ``--model benchmark-size``; the validation task's: d 48, 2 layers, ratio 2,
# batch 32.
BENCHMARK_SIZE = {"d": 64, "layers": 4, "ratio": 4, "batch_size": 64}


def _task(train_fraction: float = 1.0, model: str = "validation"):
    """The validation ViT task (model, patches, batch size, init scale) on the digits' training split
    (its first ``train_fraction``, in the split's sorted order, which ``_digit_split`` drew at
    random), scoring the held-out split."""
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
    train = train[: max(1, round(len(train) * train_fraction))]
    kw = {f.name: getattr(val, f.name) for f in dataclasses.fields(val) if f.init}
    kw.update(x=val.x[train], y=val.y[train], name=f"{val.name}-heldout", heldout_x=val.x[held], heldout_y=val.y[held])
    if model in ("benchmark-size", "benchmark"):
        size = dict(BENCHMARK_SIZE)
        vit = dataclasses.replace(val.model, d=size.pop("d"), layers=size.pop("layers"), ratio=size.pop("ratio"))
        if model == "benchmark":  # std 0.02 for the patch embedding and the head too
            vit = dataclasses.replace(vit, init_style="nanogpt")
        kw.update(model=vit, **size)
    return HeldoutScored(**kw)


def _job(args: tuple[str, str | None, float, float, int, int, str, str]) -> tuple[str, list[float]]:
    """(key, weights dir or None for Adam, lr, train fraction, horizon, seeds, recipe, model) ->
    held-out final losses, one per seed."""
    key, weights, lr, fraction, horizon, seeds, recipe, model = args
    torch.set_num_threads(1)
    from learned_optim import from_pretrained
    from learned_optim.meta.validation import _seed, run_inner

    net = from_pretrained(weights) if weights else None
    task = _task(fraction, model)
    if recipe == "scheduled":  # the transformer benchmark's recipe, its clipping included; the C loop where it builds
        return key, [run_inner(task, horizon, _seed(1, s), weights=net, lr=lr, impl="auto", recipe="scheduled",
                               clip_norm=1.0)["final_loss"] for s in range(seeds)]
    return key, [run_inner(task, horizon, _seed(1, s), weights=net, lr=lr)["final_loss"] for s in range(seeds)]


def _fraction(text: str) -> float:
    f = float(text)
    if not 0 < f <= 1:
        raise argparse.ArgumentTypeError(f"--train-fraction must be in (0, 1], got {text}")
    return f


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return n


def _lrs(text: str) -> tuple[float, ...]:
    try:
        lrs = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--adam-lrs must be comma-separated numbers, got {text!r}") from None
    if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
        raise argparse.ArgumentTypeError(f"--adam-lrs must be positive and finite, got {text!r}")
    return lrs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=_positive, default=2)
    ap.add_argument("--train-fraction", type=_fraction, default=1.0,
                    help="train on this first fraction of the digits' training split (default 1: all of it)")
    ap.add_argument("--horizon", type=_positive, default=HORIZON, help=f"inner steps (default {HORIZON})")
    ap.add_argument("--seeds", type=_positive, default=SEEDS, help=f"seeds per run (default {SEEDS})")
    ap.add_argument("--adam-lrs", type=_lrs, default=ADAM_LRS, help="Adam's lr grid (default 3e-4,1e-3,3e-3)")
    ap.add_argument("--adam-only", action="store_true", help="only Adam's runs: where is its best held-out lr?")
    ap.add_argument("--model", choices=("validation", "benchmark-size", "benchmark"), default="validation",
                    help="the validation task's ViT (default), one of the transformer benchmark's size, or of its "
                         "size and initialisation")
    ap.add_argument("--recipe", choices=("constant", "scheduled"), default="constant",
                    help="constant lr, no weight decay (default: the validation task's), or the transformer "
                         "benchmark's warm-up + cosine, weight decay 0.1 and clipping")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    regime = (args.train_fraction, args.horizon, args.seeds, args.recipe, args.model)
    command = "python benchmarks/heldout_vit_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    adam_lrs = args.adam_lrs
    if args.adam_only:
        with ProcessPoolExecutor(args.workers) as pool:
            adam_runs = dict(pool.map(_job, [(f"{lr:g}", None, lr, *regime) for lr in adam_lrs]))
        (out / "heldout-vit-adam.json").write_text(json.dumps(
            {"command": command, "model": args.model, "recipe": args.recipe, "train_fraction": args.train_fraction,
             "horizon": args.horizon, "seeds": args.seeds, "adam_heldout_losses": adam_runs}, indent=1) + "\n")
        for lr, xs in adam_runs.items():
            print(f"adam lr {lr}: held-out loss {statistics.mean(xs):.4f} ({', '.join(f'{x:.4f}' for x in xs)})")
        return 0
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
    jobs = ([(f"adam {lr:g}", None, lr, *regime) for lr in adam_lrs]
            + [(n, p["weights"], 1e-3, *regime) for n, p in points.items()])
    with ProcessPoolExecutor(args.workers) as pool:
        losses = dict(pool.map(_job, jobs))
    adam = {lr: losses[f"adam {lr:g}"] for lr in adam_lrs}
    tuned_lr, ref = study.heldout_ratios(adam, losses, points)
    names = list(points)
    acc = [points[n]["vit_acc"] for n in names]
    rho_held = -study.spearman([points[n]["heldout_ratio"] for n in names], acc)
    rho_train = -study.spearman([points[n]["val_train_ratio"] for n in names], acc)
    crit = 1.96 / math.sqrt(len(names) - 1)
    (out / "heldout-vit-probe.json").write_text(json.dumps(
        {"command": command, "seeds": args.seeds, "horizon": args.horizon, "train_fraction": args.train_fraction,
         "recipe": args.recipe, "model": args.model,
         "adam_heldout_losses": {f"{lr:g}": v for lr, v in adam.items()}, "tuned_lr": tuned_lr, "points": points,
         "spearman_heldout_ratio_vs_acc": rho_held, "spearman_train_ratio_vs_acc": rho_train,
         "critical_rho_5pct": crit}, indent=1) + "\n")
    at_default = f"{math.exp(study.mean_log(adam[1e-3])):.4f}" if 1e-3 in adam else "not run"
    ntrain = len(_task(args.train_fraction, args.model).y)
    split = ("the fixed training four fifths of the digits" if args.train_fraction == 1 else
             f"the first {args.train_fraction:g} of the fixed training four fifths of the digits ({ntrain} images)")
    lines = ["# A validation ViT scored on held-out digits, against the vit-digits benchmark", "",
             f"Command: `{command}`. The "
             + {"validation": "validation ViT (2 layers, d 48, batch 32, ",
                "benchmark-size": "ViT of the benchmark's size (4 layers, d 64, mlp ratio 4, batch 64, ",
                "benchmark": "ViT of the benchmark's size and initialisation (4 layers, d 64, mlp ratio 4, "
                             "batch 64, std 0.02, "}[args.model]
             + f"{args.horizon} steps, "
             + ("constant lr" if args.recipe == "constant" else
                "the transformer benchmark's warm-up + cosine, weight decay 0.1 and clipping")
             + f") trained on {split}, scored by the "
             f"loss on the held-out fifth, {args.seeds} seeds; Adam tuned over {list(adam_lrs)} by the same loss "
             f"(best lr {tuned_lr:g}, held-out loss {math.exp(ref):.4f}; at 1e-3 {at_default}).",
             "", "| point | held-out loss / tuned Adam | training-loss ratio (validation record) | "
             "vit-digits test accuracy, 5 seeds |", "|---|---|---|---|"]
    for n in names:
        p = points[n]
        lines.append(f"| {n} | {p['heldout_ratio']:.3f} | {p['val_train_ratio']:.2f} | {p['vit_acc']:.2f}% |")
    lines += ["", f"Spearman's rho with the benchmark's accuracy over these {len(names)} points (positive = a lower "
              f"ratio goes with a higher accuracy; |rho| > {crit:.2f} differs from 0 at the 5% level): held-out "
              f"ratio **{rho_held:+.2f}**, training-loss ratio **{rho_train:+.2f}**."]
    (out / "heldout-vit-probe.md").write_text("\n".join(lines) + "\n")
    study.probe_panels(out / "heldout-vit-probe.png", points, acc, "validation ViT", "vit-digits test accuracy (%)",
                       rho_held, rho_train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
