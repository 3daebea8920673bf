"""``learned-optim demo``: train a small MLP on real data with the learned optimizer and with Adam.

The data is scikit-learn's bundled ``load_digits`` (1797 8x8 images, 10 classes; no download).
Both optimizers start from the same initial weights and see the same mini-batches, so the two
curves differ only by the update rule. Run: ``learned-optim demo [--steps 300] [--plot demo.png]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .common.data import digits
from .hub import DEFAULT_WEIGHTS, WeightsError, WeightsNotFoundError, resolve
from .optimizer import LearnedOptimizer

__all__ = ["add_arguments", "run", "train_digits"]


def _load_digits(seed: int):
    """The digits in an order fixed by ``seed``: 1400 training and 397 test examples."""
    try:
        x, y = digits()
    except ImportError as e:
        raise SystemExit(f"the demo trains on scikit-learn's bundled digits: {e}") from None
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_train = 1400
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def train_digits(
    make_optimizer, *, steps: int = 300, batch_size: int = 128, seed: int = 0, model: nn.Module | None = None
) -> dict[str, Any]:
    """Train an MLP (64-128-10, ReLU) on digits; returns the loss curve and test accuracy."""
    xtr, ytr, xte, yte = _load_digits(seed)
    if model is None:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = make_optimizer(model.parameters())
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (batch_size,), generator=gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        full = nn.functional.cross_entropy(model(xtr), ytr).item()
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    return {"losses": losses, "final_train_loss": full, "test_accuracy": acc}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of both optimizers (default 1e-3)")
    parser.add_argument("--weights", default=None,
                        help="learned optimizer weights: shipped name, directory or Hub id "
                             "(default: the shipped default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, metavar="PNG", help="also save the two loss curves to this PNG")


def _validate(args: argparse.Namespace) -> None:
    """Check every option before any training starts; errors name the option and the fix."""
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}; e.g. --steps 300")
    if not math.isfinite(args.lr) or args.lr < 0:
        raise ValueError(f"--lr must be a positive number, got {args.lr:g}; e.g. --lr 1e-3")
    if args.lr == 0:
        raise ValueError("--lr 0 would train nothing (every step is lr times the rule's output); e.g. --lr 1e-3")
    try:
        resolve(args.weights)
    except (WeightsError, WeightsNotFoundError, TypeError) as e:
        raise ValueError(f"--weights {args.weights!r}: {e}") from None
    if args.plot is not None:
        plot = Path(args.plot).expanduser()
        if plot.is_dir():
            raise ValueError(f"--plot {args.plot!r} is a directory; name a file in it, e.g. --plot {plot / 'demo.png'}")
        if plot.suffix.lower() != ".png":
            raise ValueError(f"--plot {args.plot!r} must name a .png file, e.g. --plot demo.png")
        folder = plot.parent
        if not folder.is_dir():
            raise ValueError(f"--plot {args.plot!r}: the folder {str(folder)!r} does not exist; create it first")
        try:
            with tempfile.TemporaryFile(dir=folder):  # a folder one may not write into fails here
                pass
        except OSError as e:
            raise ValueError(f"--plot {args.plot!r}: cannot write into {str(folder)!r} ({e.strerror or e})") from None


def run(args: argparse.Namespace) -> int:
    try:
        _validate(args)
    except ValueError as e:
        print(f"learned-optim demo: error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    runs = {
        "learned": lambda p: LearnedOptimizer(p, weights=args.weights, lr=args.lr),
        "adam": lambda p: torch.optim.Adam(p, lr=args.lr),
    }
    results = {name: train_digits(make, steps=args.steps, seed=args.seed, model=copy.deepcopy(model))
               for name, make in runs.items()}
    name = args.weights or DEFAULT_WEIGHTS
    print(f"MLP 64-128-10 on scikit-learn digits, batch 128, lr {args.lr}, learned weights: {name}")
    marks = sorted({1, args.steps // 10, args.steps // 4, args.steps // 2, args.steps} - {0})
    print(f"{'step':>6} " + " ".join(f"{k:>10}" for k in results))
    for s in marks:
        # Mean of the 10 mini-batch losses up to step s: one batch alone is noisy.
        row = [sum(r["losses"][max(0, s - 10) : s]) / len(r["losses"][max(0, s - 10) : s]) for r in results.values()]
        print(f"{s:>6} " + " ".join(f"{v:>10.4f}" for v in row))
    for key, label in (("final_train_loss", "train loss (full set)"), ("test_accuracy", "test accuracy")):
        print(f"{label:>22}: " + ", ".join(f"{k} {r[key]:.4f}" for k, r in results.items()))
    print("Note: digits MLPs are among the tasks the shipped weights were meta-trained on; for tasks they never saw,\n"
          "see the README's \"How good is it?\" section (held-out suite against Adam, including tuned Adam).")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for k, r in results.items():
            ax.plot(r["losses"], label=k, alpha=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("mini-batch cross-entropy")
        ax.set_title(f"digits MLP: learned ({name}) vs Adam, lr {args.lr}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"plot written to {args.plot}")
    return 0
