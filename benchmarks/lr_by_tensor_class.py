"""Which tensors' step sizes decide a transformer benchmark's result? AdamW with one class of tensors at another lr.

The vit-digits benchmark is won by AdamW at lr 3e-4 and loses 1.6 points of test accuracy at 3e-3; the gpt-byte
benchmark is won at 3e-3. A learned rule that takes one multiple of Adam's step on every tensor (about 2-3x on both
workloads: benchmarks/results/vector-prior/step-scale/step-scale.md) cannot serve both, unless what decides the ViT is
the step on tensors that its context inputs can tell apart from the GPT's. This script runs AdamW under the
transformer benchmark's recipe (``learned_optim.benchmarking.transformer.train_once``: warm-up + cosine, clipping at 1,
weight decay 0.1 on tensors with >= 2 dimensions) with every tensor at ``--base-lr`` except one class at
``--class-lr``, for each class in turn, plus both uniform lrs; same initialisation and minibatches per seed.

Classes (by parameter name; see ``tensor_class``): ``embed`` (the token/patch embedding matrix, the positional
embedding, the ViT's cls token), ``attn`` (attention qkv and output projection matrices), ``mlp`` (the MLP's two
matrices), ``head`` (the ViT's classifier matrix; the GPT's head is its tied token embedding), ``vectors`` (every
tensor with <= 1 dimension: biases and LayerNorm gains).

    python benchmarks/lr_by_tensor_class.py --workload vit-digits --base-lr 3e-3 --class-lr 3e-4 --seeds 5 \\
        --out benchmarks/results/lr-by-tensor-class/vit-base3e-3

Writes ``lr-by-class.json`` (after every run, so a partial run survives), ``lr-by-class.md`` and ``lr-by-class.png``
to ``--out``; ``--rerender`` rewrites the last two from the JSON.
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

from learned_optim.benchmarking.transformer import evaluation_steps, train_once  # noqa: E402
from learned_optim.benchmarking.transformer_models import WORKLOADS  # noqa: E402
from learned_optim.common.files import write_json  # noqa: E402
from learned_optim.common.machine import machine_info, machine_line  # noqa: E402

CLASSES = ("embed", "attn", "mlp", "head", "vectors")


def tensor_class(name: str, param: torch.Tensor) -> str:
    """The class of a benchmark transformer's parameter, from its name and shape (``CLASSES``)."""
    if param.dim() <= 1:
        return "vectors"
    if ".attn." in name:
        return "attn"
    if name.startswith("blocks."):
        return "mlp"
    if name.startswith("head."):
        return "head"
    return "embed"


def param_groups_by_class(groups: list[dict], base_lr: float, lrs: dict[str, float]) -> list[dict]:
    """The benchmark's param groups (``transformer_models.param_groups``: decay and no-decay, each with
    ``param_names``) split by class: lr ``lrs.get(class, base_lr)``, each tensor's weight decay kept."""
    out: dict[tuple[str, float], list[torch.Tensor]] = {}
    for g in groups:
        for name, p in zip(g["param_names"], g["params"]):
            out.setdefault((tensor_class(name, p), g["weight_decay"]), []).append(p)
    return [{"params": ps, "lr": lrs.get(c, base_lr), "weight_decay": wd} for (c, wd), ps in out.items()]


def configs(base_lr: float, class_lr: float, classes: list[str]) -> list[tuple[str, dict[str, float]]]:
    """(label, per-class lrs): uniform ``base_lr``, each class alone at ``class_lr``, uniform ``class_lr``."""
    return ([(f"all at {base_lr:g}", {})] + [(f"{c} at {class_lr:g}", {c: class_lr}) for c in classes]
            + [(f"all at {class_lr:g}", dict.fromkeys(CLASSES, class_lr))])


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive learning rate, got {text!r}")
    return value


def _summary(runs: list[dict]) -> dict:
    finals = [r["final"] for r in runs]
    out = {"seeds": len(runs), "val_mean": statistics.fmean(finals),
           "val_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
           "diverged": sum(r["diverged"] for r in runs)}
    accs = [r["test_acc"] for r in runs if r.get("test_acc") is not None]
    if accs:
        out["test_acc_mean"] = statistics.fmean(accs)
        out["test_acc_std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return out


def markdown(res: dict) -> str:
    has_acc = any("test_acc_mean" in c["summary"] for c in res["configs"])
    lines = [f"# {res['workload']}: AdamW with one class of tensors at another lr", "",
             f"Command: `{res['command']}`  ", f"Machine: {res['machine_line']}  ",
             f"Date (UTC): {res['date']}; {res['seeds']} seeds, {res['steps']} steps, the transformer benchmark's "
             f"recipe; wall time {res['wall_s']:.0f} s.", "",
             "| AdamW lrs | final validation loss, mean ± std | " + ("test accuracy | " if has_acc else "")
             + "seed-by-seed vs the first row (lower loss) | diverged |",
             "|---|---|" + ("---|" if has_acc else "") + "---|---|"]
    first = [r["final"] for r in res["configs"][0]["runs"]]
    for c in res["configs"]:
        s = c["summary"]
        finals = [r["final"] for r in c["runs"]]
        better = sum(f < b for f, b in zip(finals, first))
        acc = f"{100 * s['test_acc_mean']:.2f}% ± {100 * s['test_acc_std']:.2f} | " if "test_acc_mean" in s else ""
        lines.append(f"| {c['label']} | {s['val_mean']:.4f} ± {s['val_std']:.4f} | {acc}{better}/{len(finals)} | "
                     f"{s['diverged']} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    """Every seed's final validation loss (and test accuracy, where the workload has one) per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("final", "final validation loss")] + (
        [("test_acc", "test accuracy")] if res["configs"][0]["runs"][0].get("test_acc") is not None else [])
    labels = [c["label"] for c in res["configs"]]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 0.45 * len(labels) + 1.8), sharey=True,
                             squeeze=False)
    for ax, (key, title) in zip(axes[0], keys):
        for i, c in enumerate(res["configs"]):
            xs = [r[key] for r in c["runs"]]
            ax.plot(xs, [i] * len(xs), "o", alpha=0.6)
            ax.plot([statistics.fmean(xs)], [i], "k|", markersize=14)
        ax.set_title(f"{res['workload']}: {title}", fontsize=9)
    axes[0][0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(res: dict, out: Path) -> None:
    (out / "lr-by-class.md").write_text(markdown(res))
    plot(res, out / "lr-by-class.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="vit-digits")
    ap.add_argument("--base-lr", type=_positive, help="lr of every tensor outside the varied class (required)")
    ap.add_argument("--class-lr", type=_positive, help="lr of the varied class (required)")
    ap.add_argument("--classes", default=",".join(CLASSES), help=f"comma-separated subset of {CLASSES}")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="default: the workload's benchmark length")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rerender", action="store_true", help="only rewrite the .md and .png from --out's JSON")
    args = ap.parse_args(argv)
    if args.rerender:
        path = Path(args.out) / "lr-by-class.json"
        if not path.is_file():
            ap.error(f"--rerender: no {path}; run without --rerender first")
        write_report(json.loads(path.read_text()), Path(args.out))
        return 0
    for name in ("base_lr", "class_lr"):
        if getattr(args, name) is None:
            ap.error(f"--{name.replace('_', '-')} is required (a positive learning rate, e.g. 3e-4)")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    bad = [c for c in classes if c not in CLASSES]
    if bad or not classes:
        ap.error(f"--classes: unknown class(es) {bad}; choose from {CLASSES}")
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(args.threads)
    workload = WORKLOADS[args.workload]()
    steps = args.steps or workload.steps
    machine = machine_info(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"workload": args.workload, "command": "python " + shlex.join(sys.argv if argv is None else
                                                                        ["benchmarks/lr_by_tensor_class.py", *argv]),
           "machine": machine, "machine_line": machine_line(machine),
           "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "seeds": args.seeds, "steps": steps,
           "base_lr": args.base_lr, "class_lr": args.class_lr, "configs": [], "wall_s": 0.0}
    t0 = time.perf_counter()
    for label, lrs in configs(args.base_lr, args.class_lr, classes):
        runs = []
        for seed in range(args.seeds):
            def make_opt(groups, lrs=lrs):
                return torch.optim.AdamW(param_groups_by_class(groups, args.base_lr, lrs))
            r = train_once(workload, make_opt, seed, steps, evaluation_steps(steps))
            runs.append({k: r[k] for k in ("final", "min", "diverged", "test_acc", "train_loss", "wall_s")})
            print(f"{label} seed {seed}: {r['final']:.4f}" + (f" acc {r['test_acc']:.4f}" if r["test_acc"] else ""),
                  flush=True)
        res["configs"].append({"label": label, "lrs": lrs, "runs": runs, "summary": _summary(runs)})
        res["wall_s"] = time.perf_counter() - t0
        write_json(out / "lr-by-class.json", res)
    write_report(res, out)
    print(json.dumps([(c["label"], c["summary"]) for c in res["configs"]], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
