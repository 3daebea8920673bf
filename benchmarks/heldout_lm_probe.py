"""Would a validation LM trained like the gpt-byte benchmark predict it better?

The meta-validation transformer LM (``arch_tasks.arch_validation_tasks``: 2 layers, d 64,
context 32, batch 8, 2000 steps on the first 90% of the validation modules of the standard
library) trains at a constant lr and scores training loss; across the benchmarked meta-v2 points
its ratio to tuned Adam ranks the gpt-byte benchmark only weakly (``selection-vs-benchmark.md``).
This probe trains the same task under the benchmark's recipe (linear warm-up over 5%, cosine decay
to 10%, decoupled weight decay 0.1 on matrices, gradient clipping at 1: ``validation.run_inner``
with ``recipe="scheduled"``) and scores the loss on the held-out last 10% of that text, for every
meta-v2 point whose weights are committed and which has a 5-seed gpt-byte result, against Adam
over a grid (the best by the same held-out loss is the reference; the ranks do not depend on it).
It prints Spearman's rho of the held-out ratio, and of the training-loss ratio of the same points'
validation records, with the benchmark's validation loss.

    python benchmarks/heldout_lm_probe.py --out DIR [--workers 2] [--model deep]

``--model deep`` trains a deeper LM (4 layers, d 64, context 64: the benchmark's depth and context
at half its width) instead of the validation task's. Writes ``heldout-lm-probe.json``, ``.md``
and ``.png`` into ``--out``.
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
SEEDS = 3
ADAM_LRS = (1e-3, 3e-3, 1e-2)  # the gpt-byte benchmark's AdamW grid
HORIZON = 2000  # the validation LM task's
VAL_TASK = "val-tlm2x64-c32-bs8"
# the deeper model of --model deep: the benchmark's 4 layers and context 64 at half its width
DEEP = {"d": 64, "heads": 4, "layers": 4, "ctx": 64, "ratio": 4, "tied": True}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _task(model: str = "validation"):
    """The validation LM task, or its deeper variant, scored by the loss on its held-out text."""
    import dataclasses

    from learned_optim.meta.arch_models import TransformerLM
    from learned_optim.meta.arch_tasks import arch_validation_tasks

    val = arch_validation_tasks()[0][0]
    if val.name != VAL_TASK:  # the task the validation records score
        raise RuntimeError(f"arch_validation_tasks()[0] is {val.name!r}; update this probe")

    class HeldoutScored(type(val)):
        """Trains on the head of the text; its "full batch" (what run_inner scores) is the held-out tail."""

        def full_batch(self):
            return self.validation_batch()

    kw = {f.name: getattr(val, f.name) for f in dataclasses.fields(val) if f.init}
    kw["name"] = f"{val.name}-heldout"
    if model == "deep":
        kw.update(model=TransformerLM(**DEEP), ctx=DEEP["ctx"], name=f"tlm4x64-c64-bs{val.batch_size}-heldout")
    return HeldoutScored(**kw)


def _cache_file(cache: Path, key: str) -> Path:
    return cache / (key.replace(" ", "-").replace("/", "_") + ".json")


def _job(args: tuple[str, str | None, float, int, int, str, str]) -> tuple[str, list[float]]:
    """(key, weights dir or None for Adam, lr, horizon, seeds, model, cache dir) -> held-out final
    losses, one per seed (NaN for a diverged run). Each job's losses are written to the cache dir as
    it finishes and read back instead of rerun, so an interrupted probe resumes where it stopped."""
    key, weights, lr, horizon, seeds, model, cache = args
    done = _cache_file(Path(cache), key)
    if done.is_file():
        record = json.loads(done.read_text(encoding="utf-8"))
        if record["regime"] == [weights, lr, horizon, seeds, model]:
            return key, record["losses"]
    torch.set_num_threads(1)
    from learned_optim import from_pretrained
    from learned_optim.meta.validation import _seed, run_inner

    net = from_pretrained(weights) if weights else None
    task = _task(model)
    losses = [run_inner(task, horizon, _seed(0, s), weights=net, lr=lr, impl="auto", recipe="scheduled",
                        clip_norm=1.0)["final_loss"] for s in range(seeds)]
    done.write_text(json.dumps({"regime": [weights, lr, horizon, seeds, model], "losses": losses}) + "\n",
                    encoding="utf-8")
    return key, losses


def main(argv: list[str] | None = None) -> int:
    vit_probe = _module("heldout_vit_probe")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=vit_probe._positive, default=2)
    ap.add_argument("--horizon", type=vit_probe._positive, default=HORIZON, help=f"inner steps (default {HORIZON})")
    ap.add_argument("--seeds", type=vit_probe._positive, default=SEEDS, help=f"seeds per run (default {SEEDS})")
    ap.add_argument("--adam-lrs", type=vit_probe._lrs, default=ADAM_LRS, help="Adam's lr grid (default 1e-3,3e-3,1e-2)")
    ap.add_argument("--model", choices=("validation", "deep"), default="validation",
                    help="the validation task's LM (default) or a deeper one (4 layers, d 64, context 64)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/heldout_lm_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    study = _module("selection_vs_benchmark")
    points = {}
    for name, (log, step, gpt, _vit, _q) in study.POINTS.items():
        weights = (study.ROOT / gpt).parent / "weights" if gpt else None
        if weights is None or not weights.is_dir():
            continue
        run = study.learned_run(study.ROOT / gpt)
        if run is None:
            continue
        points[name] = {"weights": str(weights.relative_to(HERE.parent)),
                        "gpt": statistics.mean(c[-1] for c in run["curve"]),
                        "val_train_ratio": study.eval_record(study.ROOT / log, step)[0][VAL_TASK]}
    cache = out / f"jobs-{args.model}"
    cache.mkdir(exist_ok=True)
    regime = (args.horizon, args.seeds, args.model, str(cache))
    jobs = ([(f"adam {lr:g}", None, lr, *regime) for lr in args.adam_lrs]
            + [(n, p["weights"], 1e-3, *regime) for n, p in points.items()])
    with ProcessPoolExecutor(args.workers) as pool:
        losses = dict(pool.map(_job, jobs))
    adam = {lr: losses[f"adam {lr:g}"] for lr in args.adam_lrs}
    tuned_lr, ref = study.heldout_ratios(adam, losses, points)
    names = list(points)
    gpt = [points[n]["gpt"] for n in names]
    # positive = a lower ratio goes with a lower benchmark loss
    rho_held = study.spearman([points[n]["heldout_ratio"] for n in names], gpt)
    rho_train = study.spearman([points[n]["val_train_ratio"] for n in names], gpt)
    crit = 1.96 / math.sqrt(len(names) - 1)
    (out / "heldout-lm-probe.json").write_text(json.dumps(
        {"command": command, "seeds": args.seeds, "horizon": args.horizon, "model": args.model,
         "adam_heldout_losses": {f"{lr:g}": v for lr, v in adam.items()}, "tuned_lr": tuned_lr, "points": points,
         "spearman_heldout_ratio_vs_gpt": rho_held, "spearman_train_ratio_vs_gpt": rho_train,
         "critical_rho_5pct": crit}, indent=1) + "\n")
    model = ("the validation task's LM (2 layers, d 64, context 32, batch 8" if args.model == "validation" else
             "a deeper LM (4 layers, d 64, context 64, batch 8")
    lines = ["# A validation LM trained like the gpt-byte benchmark, scored on held-out text", "",
             f"Command: `{command}`. {model}, {args.horizon} steps under the gpt-byte benchmark's recipe: warm-up + "
             "cosine, weight decay 0.1 on matrices, clipping at 1) trained on the first 90% of the standard "
             "library's validation modules, scored by the loss on the last 10%, "
             f"{args.seeds} seeds; Adam tuned over {list(args.adam_lrs)} by the same loss (best lr {tuned_lr:g}, "
             f"held-out loss {math.exp(ref):.4f}). Learned points at lr 1e-3 through the C loop.",
             "", "| point | held-out loss / tuned Adam | training-loss ratio (validation record) | "
             "gpt-byte validation nats/byte, 5 seeds |", "|---|---|---|---|"]
    for n in names:
        p = points[n]
        lines.append(f"| {n} | {p['heldout_ratio']:.4f} | {p['val_train_ratio']:.2f} | {p['gpt']:.4f} |")
    lines += ["", f"Spearman's rho with the benchmark's validation loss over these {len(names)} points (positive = "
              f"a lower ratio goes with a lower benchmark loss; |rho| > {crit:.2f} differs from 0 at the 5% level): "
              f"held-out ratio **{rho_held:+.2f}**, training-loss ratio **{rho_train:+.2f}**."]
    (out / "heldout-lm-probe.md").write_text("\n".join(lines) + "\n")
    study.probe_panels(out / "heldout-lm-probe.png", points, gpt, "validation LM", "gpt-byte validation nats/byte",
                       rho_held, rho_train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
