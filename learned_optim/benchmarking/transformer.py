"""Transformer benchmark: the learned optimizer at its default lr against AdamW at a tuned lr on
two small held-out transformers.

Run::

    learned-optim benchmark transformer                                   # both workloads, 5 seeds
    learned-optim benchmark transformer --learned-lrs 1e-3,3e-4,1e-4 --seeds 3 --out benchmarks/results
    learned-optim benchmark transformer --quick --out /tmp/t              # a pipeline check in seconds
    learned-optim benchmark transformer --rerender DIR/transformer.json   # tables and figure again
    learned-optim benchmark transformer --weights DIR --learned-lrs 1e-3 --reuse-adamw OLD/transformer.json
                                      # a new learned rule against AdamW runs already made (same settings)

Workloads (``WORKLOADS``; models in ``transformer_models``):

* ``gpt-byte``: a GPT-style pre-LN decoder (4 layers, d 128, 4 heads, context 64, tied
  embeddings, 834k parameters) trained on random byte windows of ``common.text.stdlib_bytes("train")``;
  the metric is the mean cross-entropy (nats/byte) on a fixed set of windows of the held-out
  ``stdlib_bytes("validation")`` modules, the same windows for every run.
* ``vit-digits``: a pre-LN ViT (patch 2, 16 patches + cls, d 64, 4 layers, 4 heads) on
  scikit-learn's 8x8 digits, a fixed seeded split (``transformer_models.VIT_SPLIT_SEED``) of 1400
  train / 397 test images; the metric is the test cross-entropy, with test accuracy and the final
  full-train loss beside it.

Protocol. Every method trains from the same initialisation on the same minibatches for a given
seed: AdamW at every lr of ``--adamw-lrs`` and the learned optimizer at every lr of
``--learned-lrs`` (the run at its default lr 1e-3, if in the list, is "learned default"). Both get the
same recipe: weight decay ``WEIGHT_DECAY`` on >= 2-D tensors only (nanoGPT's convention), global
gradient-norm clipping at ``GRAD_CLIP``, and a ``LambdaLR`` schedule of linear warmup over
``WARMUP_FRAC`` of the steps then cosine decay to ``FINAL_LR_FRAC`` of the peak. AdamW keeps
torch's betas (0.9, 0.999), the ones the shipped learned weights were trained with. "AdamW tuned" is
the grid lr with the lowest mean final validation loss over the seeds, chosen on the very runs
that are reported (optimistic for AdamW). A run whose training or validation loss becomes NaN/inf
has diverged: it stops there, its remaining points are NaN, and it loses every comparison.

Outputs (in ``--out``): ``transformer.json`` (rewritten after every run, so a partial run
survives), ``transformer.md`` and ``transformer.png`` (``transformer_report``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..common.files import write_json
from ..common.machine import machine_info
from ..common.schedules import FINAL_LR_FRAC, WARMUP_FRAC, WEIGHT_DECAY
from ..common.schedules import warmup_cosine as lr_factor  # the schedule's lr multiplier before update s of steps
from ..common.text import corpus_id
from ..hub import DEFAULT_WEIGHTS, WeightsError, WeightsNotFoundError, from_pretrained, resolve
from ..optimizer import LearnedOptimizer
from .common import DEFAULT_OUT, check_no_overwrite, check_out_dir
from .paired import paired_test
from .transformer_models import WORKLOADS, count_params, param_groups
from .transformer_report import write_transformer_report

# LearnedOptimizer's default lr (its signature), the lr a "learned default" run uses.
_DEFAULT_LR = inspect.signature(LearnedOptimizer).parameters["lr"].default

__all__ = ["WORKLOADS", "OUTPUT_FILES", "ADAMW_LR_GRID", "LEARNED_LRS", "lr_factor",
           "train_once", "evaluation_steps", "summarize", "run_transformer", "rerender", "add_cli_arguments",
           "run_cli"]

OUTPUT_FILES = ("transformer.json", "transformer.md", "transformer.png")
ADAMW_LR_GRID = (3e-4, 1e-3, 3e-3)
LEARNED_LRS = (1e-3,)  # LearnedOptimizer's default lr, reported as "learned default"
GRAD_CLIP = 1.0
EVAL_POINTS = 20  # validation evaluations per run, plus one at step 0
FULL_SEEDS = 5
QUICK_SEEDS = 2
QUICK_STEPS = 6
_PROG = "learned-optim benchmark transformer"


def evaluation_steps(steps: int) -> list[int]:
    """0, about every steps / EVAL_POINTS, and the last step."""
    every = max(1, steps // EVAL_POINTS)
    pts = list(range(0, steps + 1, every))
    return pts if pts[-1] == steps else pts + [steps]


def train_once(workload: Any, make_opt: Callable[[list], torch.optim.Optimizer], seed: int, steps: int,
               eval_steps: Sequence[int]) -> dict[str, Any]:
    """One run: the model initialised from ``seed``, minibatches drawn from ``seed``, so every
    method sees the same start and data. Returns the validation curve at ``eval_steps`` (NaN after
    a divergence), the mean training loss over each interval between evaluations, the final and
    minimum validation loss, extra final metrics and timings."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = workload.model()
    batches = workload.batches(torch.Generator().manual_seed(10_000 + seed), steps)
    opt = make_opt(param_groups(model, WEIGHT_DECAY))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps))
    want = set(eval_steps)

    def evaluate(final: bool = False) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            ev = workload.evaluate(model, final)
        model.train()
        return ev

    evals = {0: evaluate()}
    train_curve, running, diverged_at, train_s, done = {}, [], None, 0.0, 0
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)  # LearnedOptimizer's non-finite-gradient skips
        for s in range(1, steps + 1):
            ts = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = workload.loss(model, batches[s - 1])
            if not torch.isfinite(loss):
                diverged_at = s
                break
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            sched.step()
            train_s += time.perf_counter() - ts
            done += 1
            running.append(float(loss))
            if s in want:
                evals[s] = evaluate(final=s == steps)
                train_curve[s] = sum(running) / len(running)
                running = []
                if not math.isfinite(evals[s]["val_loss"]):
                    diverged_at = s
                    break
    curve = [evals[s]["val_loss"] if s in evals else math.nan for s in eval_steps]
    finite = [v for v in curve if math.isfinite(v)]
    last = evals.get(steps, {})
    return {
        "curve": curve,
        "train_curve": [train_curve.get(s, math.nan) for s in eval_steps[1:]],
        "final": curve[-1],
        "min": min(finite) if finite else math.nan,
        "diverged": diverged_at is not None,
        "diverged_at": diverged_at,
        "test_acc": last.get("test_acc"),
        "train_loss": last.get("train_loss"),
        "acc_curve": [evals[s].get("test_acc", math.nan) if s in evals else math.nan for s in eval_steps]
        if "test_acc" in evals[0] else None,
        "step_ms": 1e3 * train_s / max(1, done),
        "wall_s": time.perf_counter() - t0,
        "nonfinite_grad_warnings": sum(1 for w in caught if "non-finite" in str(w.message)),
    }


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _std(xs: Sequence[float]) -> float:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0


def _score(x: float | None) -> float:
    return x if x is not None and math.isfinite(x) else math.inf  # NaN (diverged) ranks last


def summarize(wl: dict[str, Any]) -> dict[str, Any]:
    """Per-method statistics, the tuned AdamW lr, and the learned optimizer (each lr) against
    tuned AdamW seed by seed, from a workload's raw runs (partial runs allowed: a method's
    statistics cover the seeds it has finished; comparisons cover seeds both have)."""
    methods = {}
    for key, r in wl["runs"].items():
        finals = [_score(x) for x in r["final"]]
        ratios = [f / m for f, m in zip(r["final"], r["min"]) if f is not None and math.isfinite(f) and m]
        accs = [a for a in r["test_acc"] if a is not None]
        methods[key] = {
            "optimizer": r["optimizer"], "lr": r["lr"], "seeds": len(finals), "diverged": sum(r["diverged"]),
            "val_mean": _mean(finals), "val_std": _std(finals), "min_mean": _mean([_score(x) for x in r["min"]]),
            "final_over_min_mean": _mean(ratios), "final_over_min_max": max(ratios, default=math.nan),
            "test_acc_mean": _mean(accs) if accs else None, "test_acc_std": _std(accs) if accs else None,
            "train_loss_mean": _mean([_score(x) for x in r["train_loss"] if x is not None]),
            "wall_s_mean": _mean(r["wall_s"]), "step_ms_mean": _mean(r["step_ms"]),
        }
    grid = [k for k, m in methods.items() if m["optimizer"] == "adamw" and m["seeds"]]
    learned = [k for k, m in methods.items() if m["optimizer"] == "learned" and m["seeds"]]
    if not grid:
        return {"methods": methods}
    tuned = min(grid, key=lambda k: (methods[k]["val_mean"], methods[k]["lr"]))
    lrs = [methods[k]["lr"] for k in grid]
    out: dict[str, Any] = {"methods": methods, "adamw_tuned": tuned, "adamw_tuned_lr": methods[tuned]["lr"],
                           "adamw_tuned_at_grid_edge": len(lrs) > 1 and methods[tuned]["lr"] in (min(lrs), max(lrs)),
                           "vs_tuned": {}}
    base = dict(zip(wl["runs"][tuned]["seeds"], wl["runs"][tuned]["final"]))
    base_acc = dict(zip(wl["runs"][tuned]["seeds"], wl["runs"][tuned]["test_acc"]))
    for key in learned:
        r = wl["runs"][key]
        pairs = [(_score(x), _score(base[s])) for s, x in zip(r["seeds"], r["final"]) if s in base]
        deltas = [a - b for a, b in pairs if math.isfinite(a - b)]
        accd = [a - base_acc[s] for s, a in zip(r["seeds"], r["test_acc"])
                if s in base_acc and a is not None and base_acc[s] is not None]
        complete = len(deltas) == len(pairs)
        # The seed-paired test of a zero mean delta (AdamW's lr was chosen on these same seeds, so a
        # small p for AdamW is a little optimistic for it); None when a run diverged.
        test = paired_test(deltas) if complete and len(deltas) >= 2 else None
        out["vs_tuned"][key] = {
            "lr": r["lr"], "seeds": len(pairs), "better": sum(a < b for a, b in pairs),
            "mean_delta": _mean(deltas) if complete else math.inf,
            "delta_se": test["se"] if test else None, "delta_p": test["p"] if test else None,
            "mean_rel_delta": _mean([(a - b) / b for a, b in pairs]) if complete else math.inf,
            "mean_acc_delta": _mean(accd) if accd else None,
        }
    if learned:
        best = min(learned, key=lambda k: (methods[k]["val_mean"], -methods[k]["lr"]))
        at_default = [k for k in learned if wl["runs"][k]["lr"] == _DEFAULT_LR]
        if at_default:  # only the run at LearnedOptimizer's own default lr is "learned default"
            out["learned_default"] = at_default[0]
        out["learned_best"] = best
        out["learned_best_lr_over_adamw_tuned_lr"] = methods[best]["lr"] / methods[tuned]["lr"]
    return out


def _finish(results: dict[str, Any]) -> None:
    for wl in results["workloads"].values():
        wl["summary"] = summarize(wl)


def _method_plan(adamw_lrs: Sequence[float], learned_lrs: Sequence[float]) -> list[tuple[str, str, float]]:
    return ([(f"adamw_lr={lr:g}", "adamw", lr) for lr in adamw_lrs]
            + [(f"learned_lr={lr:g}", "learned", lr) for lr in learned_lrs])


def _check_lrs(name: str, lrs: Sequence[float]) -> list[float]:
    lrs = list(lrs)
    if not lrs or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < math.inf for x in lrs):
        raise ValueError(f"{name} must be a non-empty list of positive finite lrs, got {lrs!r}; e.g. {name} 1e-3,3e-4")
    if len(set(lrs)) != len(lrs):
        raise ValueError(f"{name} lists an lr twice: {lrs!r}; list each once")
    return [float(x) for x in lrs]


def check_arguments(*, workloads: Sequence[str], seeds: int, steps: dict[str, int] | None,
                    adamw_lrs: Sequence[float], learned_lrs: Sequence[float], threads: int) -> tuple:
    """Check ``run_transformer``'s arguments before any work starts; returns them normalised
    (lists of floats). Raises ValueError naming the argument and the fix."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}; e.g. --seeds 3")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}; e.g. --threads 1")
    workloads = list(workloads)
    bad = [w for w in workloads if w not in WORKLOADS] or ([] if workloads else ["(none)"])
    if bad or len(set(workloads)) != len(workloads):
        raise ValueError(f"workloads: {bad[0] if bad else 'a repeated name'!r} is not a list of distinct names of "
                         f"{', '.join(WORKLOADS)}; e.g. --workloads gpt-byte,vit-digits")
    for name, n in (steps or {}).items():
        if name not in workloads or isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"steps: {name}={n!r} must name a chosen workload ({', '.join(workloads)}) and be an "
                             f"int >= 1; e.g. --steps 1000 or --steps gpt-byte=2000")
    return workloads, seeds, steps, _check_lrs("--adamw-lrs", adamw_lrs), _check_lrs("--learned-lrs", learned_lrs)


def run_transformer(*, workloads: Sequence[str] = tuple(WORKLOADS), seeds: int | None = None,
                    steps: dict[str, int] | None = None, adamw_lrs: Sequence[float] = ADAMW_LR_GRID,
                    learned_lrs: Sequence[float] = LEARNED_LRS, weights: str | None = None, quick: bool = False,
                    out: str | os.PathLike = DEFAULT_OUT, threads: int = 1, progress: bool = True,
                    command: str = "", reuse_adamw: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the transformer benchmark; write transformer.json (after every run) and .md / .png.

    Args:
        workloads: names of ``WORKLOADS`` to run, in order (default: all).
        seeds: seeds per method (default FULL_SEEDS, QUICK_SEEDS with ``quick``); >= 1.
        steps: training steps per workload name (default: each workload's own; QUICK_STEPS with
            ``quick``); names not given keep the default.
        adamw_lrs: AdamW's lr grid (default ADAMW_LR_GRID); tuned AdamW is its best lr.
        learned_lrs: the learned optimizer's lrs (default LEARNED_LRS); the one equal to
            ``LearnedOptimizer``'s default lr (1e-3), if any, is reported as "learned default".
        weights: learned-optimizer weights (shipped name, directory or Hub id); None = the package default.
        quick: a pipeline check: QUICK_STEPS steps, QUICK_SEEDS seeds, 8 validation windows.
        out: output directory (created).
        threads: torch intra-op threads during the runs (default 1: the machine is shared).
        progress: a tqdm progress bar and one line per finished run (on stderr).
        command: the command line, recorded in the outputs.
        reuse_adamw: an earlier transformer.json whose AdamW runs are copied instead of rerun
            where everything that decides them is the same (workload, steps, evaluation points,
            seed, lr, the shared recipe, corpus, torch version and threads): a run is a
            deterministic function of these, so a learned-optimizer candidate can be compared
            without retraining the AdamW grid. Seeds it lacks are run. Default None: run all.
    Returns:
        The results dict written to transformer.json.
    Raises:
        ValueError: a bad argument (the message names it and the fix).
    """
    workloads, seeds, steps, adamw_lrs, learned_lrs = check_arguments(
        workloads=workloads, seeds=(QUICK_SEEDS if quick else FULL_SEEDS) if seeds is None else seeds, steps=steps,
        adamw_lrs=adamw_lrs, learned_lrs=learned_lrs, threads=threads)
    out = check_out_dir(out)
    network = from_pretrained(weights)
    plan = _method_plan(adamw_lrs, learned_lrs)
    makers = {"adamw": lambda groups, lr: torch.optim.AdamW(groups, lr=lr),
              "learned": lambda groups, lr: LearnedOptimizer(groups, weights=network, lr=lr)}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "transformer", "schema_version": 1, "command": command, "machine": machine_info(threads),
        "corpus_id": corpus_id(), "complete": False,
        "weights": {"name": str(weights or DEFAULT_WEIGHTS), "is_default": weights in (None, DEFAULT_WEIGHTS),
                    "path": str(resolve(weights)), "provenance": network.provenance},
        "settings": {"quick": quick, "seeds": list(range(seeds)), "threads": threads, "adamw_lrs": adamw_lrs,
                     "learned_lrs": learned_lrs, "weight_decay": WEIGHT_DECAY, "grad_clip": GRAD_CLIP,
                     "warmup_frac": WARMUP_FRAC, "final_lr_frac": FINAL_LR_FRAC, "adamw_betas": [0.9, 0.999],
                     "decay": "tensors with >= 2 dims (nanoGPT); none on biases and LayerNorm",
                     "tuning": "AdamW tuned = grid lr with the lowest mean final validation loss over the seeds"},
        "workloads": {},
    }
    reused = {}
    if reuse_adamw is not None:
        reused = _load_reusable(reuse_adamw, results)
        results["reused_adamw"] = {"from": os.fspath(reuse_adamw), "runs": 0}
    try:
        built = {name: WORKLOADS[name](**({"val_windows": 8} if quick and name == "gpt-byte" else {}))
                 for name in workloads}
        n_steps = {name: (steps or {}).get(name, QUICK_STEPS if quick else w.steps) for name, w in built.items()}
        with tqdm(total=len(built) * seeds * len(plan), desc="transformer", unit="run", disable=not progress,
                  mininterval=1.0) as bar:
            for name, w in built.items():
                with torch.random.fork_rng(devices=[]):
                    n_params = count_params(w.model())
                results["workloads"][name] = {
                    "description": w.description, "metric": w.metric, "params": n_params, "steps": n_steps[name],
                    "batch_size": w.batch_size, "eval_steps": evaluation_steps(n_steps[name]),
                    "runs": {key: {"optimizer": opt, "lr": lr, "seeds": [], **{k: [] for k in _RUN_KEYS}}
                             for key, opt, lr in plan}}
            # seed-major: a partial result (the JSON is rewritten after every run) compares every method
            # on every workload over the seeds it has finished
            for seed in range(seeds):
                for name, w in built.items():
                    wl = results["workloads"][name]
                    for key, opt, lr in plan:
                        bar.set_postfix_str(f"{name} {key} seed {seed}")
                        run_id = (name, key, seed, wl["steps"], tuple(wl["eval_steps"]))
                        r = reused.get(run_id) if opt == "adamw" else None
                        if r is not None:
                            results["reused_adamw"]["runs"] += 1
                        else:
                            r = train_once(w, lambda g, m=makers[opt], lr=lr: m(g, lr), seed, wl["steps"],
                                           wl["eval_steps"])
                        wl["runs"][key]["seeds"].append(seed)
                        for k in _RUN_KEYS:
                            wl["runs"][key][k].append(r[k])
                        bar.update(1)
                        if progress:
                            bar.write(f"{name} {key} seed {seed}: final {r['final']:.4f} min {r['min']:.4f}"
                                      + (f" acc {r['test_acc']:.4f}" if r["test_acc"] is not None else "")
                                      + (f" DIVERGED at step {r['diverged_at']}" if r["diverged"] else "")
                                      + f" ({r['wall_s']:.0f} s, {r['step_ms']:.1f} ms/step)")
                        results["wall_s"] = time.perf_counter() - t_start
                        _finish(results)
                        write_json(out / "transformer.json", results)
    finally:
        torch.set_num_threads(old_threads)
    results["complete"] = True
    results["wall_s"] = time.perf_counter() - t_start
    results["machine"]["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    _finish(results)
    write_json(out / "transformer.json", results)
    write_transformer_report(results, out)
    return results


# the settings that decide an AdamW run besides its workload, steps, lr and seed
_REUSE_SETTINGS = ("quick", "threads", "weight_decay", "grad_clip", "warmup_frac", "final_lr_frac", "adamw_betas")


def _load_reusable(path: str | os.PathLike, results: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    """The AdamW runs of the earlier result ``path`` that this run would reproduce exactly, keyed by
    (workload, method key, seed, steps, evaluation steps). Raises ValueError if ``path`` is not a
    transformer result or was made under other shared settings (then nothing could be reused)."""
    try:
        prev = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"reuse_adamw={os.fspath(path)!r} is not a readable transformer.json: {e}") from None
    if not isinstance(prev, dict) or prev.get("benchmark") != "transformer":
        raise ValueError(f"reuse_adamw={os.fspath(path)!r} is not a transformer benchmark result; pass a "
                         f"transformer.json written by `learned-optim benchmark transformer`")
    mismatch = [k for k in _REUSE_SETTINGS if prev.get("settings", {}).get(k) != results["settings"][k]]
    mismatch += [k for k in ("corpus_id",) if prev.get(k) != results[k]]
    if prev.get("machine", {}).get("torch") != results["machine"].get("torch"):
        mismatch.append("torch version")
    if mismatch:
        raise ValueError(f"reuse_adamw={os.fspath(path)!r} was made with other {', '.join(mismatch)}; its AdamW runs "
                         f"would not be reproduced here: drop --reuse-adamw")
    out = {}
    for name, wl in prev.get("workloads", {}).items():
        for key, run in wl.get("runs", {}).items():
            if run.get("optimizer") != "adamw":
                continue
            for i, seed in enumerate(run["seeds"]):
                out[(name, key, seed, wl["steps"], tuple(wl["eval_steps"]))] = {k: run[k][i] for k in _RUN_KEYS}
    return out


_RUN_KEYS = ("curve", "train_curve", "acc_curve", "final", "min", "diverged", "diverged_at", "test_acc",
             "train_loss", "step_ms", "wall_s", "nonfinite_grad_warnings")


def _nan_from_null(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan_from_null(v) for v in x]
    return math.nan if x is None else x


def rerender(path: str | os.PathLike, figure: bool = True) -> dict[str, Any]:
    """Recompute the summaries of a saved (possibly partial) transformer.json from its raw runs,
    rewrite it, and write transformer.md (and, with ``figure``, .png) beside it; no training."""
    from pathlib import Path

    path = Path(path)
    results = json.loads(path.read_text(encoding="utf-8"))
    for wl in results["workloads"].values():
        for r in wl["runs"].values():
            for k in ("curve", "final", "min"):
                r[k] = _nan_from_null(r[k])
    _finish(results)
    write_json(path, results)
    write_transformer_report(results, path.parent, figure=figure)
    return results


# ------------------------------------------------------------------------------------- command line


def _floats(option: str, text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}; e.g. {option} 1e-3,3e-4") from None


def _steps(text: str | None, workloads: Sequence[str]) -> dict[str, int] | None:
    """``--steps 1000`` (every workload) or ``--steps gpt-byte=2000,vit-digits=1000``."""
    if text is None:
        return None
    try:
        if "=" not in text:
            return {w: int(text) for w in workloads}
        return {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise ValueError(f"--steps must be an int or NAME=INT pairs, got {text!r}; e.g. --steps 1000 or "
                         f"--steps gpt-byte=2000,vit-digits=1000") from None


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``learned-optim benchmark transformer`` to ``parser`` (read by ``run_cli``)."""
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated (default: all)")
    parser.add_argument("--seeds", type=int, default=None, help=f"default {FULL_SEEDS} ({QUICK_SEEDS} with --quick)")
    parser.add_argument("--steps", default=None, help="N, or NAME=N,... (default: gpt-byte 3000, vit-digits 1000)")
    parser.add_argument("--adamw-lrs", default=",".join(f"{x:g}" for x in ADAMW_LR_GRID), help="AdamW's lr grid")
    parser.add_argument("--learned-lrs", default=",".join(f"{x:g}" for x in LEARNED_LRS),
                        help="learned-optimizer lrs, the first reported as its default (default 1e-3)")
    parser.add_argument("--weights", default=None, metavar="NAME_OR_DIR",
                        help="learned-optimizer weights: shipped name, directory or Hub id (default: the package's)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"output directory (default ./{DEFAULT_OUT}); writes {', '.join(OUTPUT_FILES)}")
    parser.add_argument("--force", action="store_true", help="replace transformer.json/.md/.png already in --out")
    parser.add_argument("--quick", action="store_true",
                        help=f"pipeline check: {QUICK_STEPS} steps, {QUICK_SEEDS} seeds (numbers meaningless)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads during the runs (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--reuse-adamw", default=None, metavar="JSON",
                        help="copy AdamW runs made under the same settings from this earlier transformer.json")
    parser.add_argument("--rerender", default=None, metavar="JSON",
                        help="no runs: summaries, transformer.md and .png again from this saved transformer.json")


def run_cli(args: argparse.Namespace) -> int:
    """Run from the options of ``add_cli_arguments``. Returns 0, or 2 (message on stderr) on bad input."""
    try:
        if args.rerender is not None:
            res = rerender(args.rerender)
            print(f"wrote transformer.md, transformer.png beside {args.rerender} ({len(res['workloads'])} workloads)")
            return 0
        workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}; e.g. --threads 1")
        if args.seeds is not None and args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}; e.g. --seeds 3")
        workloads, seeds, steps, adamw_lrs, learned_lrs = check_arguments(
            workloads=workloads, seeds=args.seeds or (QUICK_SEEDS if args.quick else FULL_SEEDS),
            steps=_steps(args.steps, workloads), adamw_lrs=_floats("--adamw-lrs", args.adamw_lrs),
            learned_lrs=_floats("--learned-lrs", args.learned_lrs), threads=args.threads)
        try:
            resolve(args.weights)
        except (WeightsError, WeightsNotFoundError) as e:
            raise ValueError(f"--weights {args.weights!r}: {e}") from None
        if args.reuse_adamw is not None and not Path(args.reuse_adamw).is_file():
            raise ValueError(f"--reuse-adamw {args.reuse_adamw!r} is not a file; pass an earlier transformer.json")
        check_out_dir(args.out)
        check_no_overwrite(args.out, OUTPUT_FILES, args.force)
    except (ValueError, OSError, KeyError) as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 2
    parts = [*_PROG.split()] + ["--quick"] * args.quick
    for opt in ("workloads", "seeds", "steps", "adamw_lrs", "learned_lrs", "weights", "out", "threads", "reuse_adamw"):
        if getattr(args, opt) is not None:
            parts += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    command = shlex.join(parts + ["--force"] * args.force + ["--no-progress"] * args.no_progress)
    res = run_transformer(workloads=workloads, seeds=seeds, steps=steps, adamw_lrs=adamw_lrs, learned_lrs=learned_lrs,
                          weights=args.weights, quick=args.quick, out=args.out, threads=args.threads,
                          progress=not args.no_progress, command=command, reuse_adamw=args.reuse_adamw)
    print(f"wrote {args.out}/transformer.json, transformer.md, transformer.png ({res['wall_s']:.0f} s)")
    return 0
