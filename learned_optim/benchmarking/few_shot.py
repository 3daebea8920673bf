"""Few-shot benchmark: the learned inner optimizer against tuned SGD (MAML's inner loop) and tuned Adam.

5-way 1-shot and 5-way 5-shot episodes from held-out classes of scikit-learn's digits (digits 5-9,
each rotation a class; ``learned_optim.meta.few_shot``), T = 10 inner steps, 600 episodes per
setting, query accuracy with 95% confidence intervals. Baseline lrs are tuned on meta-training
classes only. Writes ``few_shot.json`` / ``.md`` / ``.png`` (``few_shot_learned_init.*`` with
``--init learned``) into ``--out``.

Run::

    learned-optim benchmark few-shot                                  # shipped lstm-fewshot-digits, 600 episodes
    learned-optim benchmark few-shot --weights DIR --episodes 600 --out benchmarks/results
    learned-optim benchmark few-shot --quick --out /tmp/few_shot      # seconds: a 3-step trained net, 20 episodes
    learned-optim benchmark few-shot --weights lstm-fewshot-digits-init --init learned

With ``--init learned`` (weights trained with ``learn_init``) every method starts from a
meta-learned initialisation: the learned optimizer from its own, each baseline from one
meta-learned here for its own inner loop (as many meta-steps as the learned optimizer had unless
``--baseline-meta-steps``).

``learned_optim.benchmarking.cli`` calls ``add_cli_arguments(parser)`` and ``run_cli(args)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..common.machine import machine_info
from ..hub import WeightsError, WeightsNotFoundError, from_pretrained, list_shipped, resolve
from ..meta.few_shot import (
    EpisodeSampler,
    FewShotConfig,
    adapt,
    digits_classes,
    init_params,
    load_init,
    mean_last,
    meta_train_inner,
    train_few_shot,
    tune_lr,
)
from ..network import CoordinatewiseLSTM
from .common import DEFAULT_OUT, check_no_overwrite, check_out_dir
from .few_shot_report import output_files, report_stem, write_few_shot_report

__all__ = ["evaluate", "run_benchmark", "add_cli_arguments", "run_cli", "DEFAULT_WEIGHTS"]

DEFAULT_WEIGHTS = "lstm-fewshot-digits"
_PROG = "learned-optim benchmark few-shot"


def _ci95(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    mean = sum(xs) / n
    var = sum((a - mean) ** 2 for a in xs) / max(1, n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def evaluate(
    network: CoordinatewiseLSTM,
    cfg: FewShotConfig,
    *,
    k_shot: int,
    episodes: int = 600,
    lrs: dict[str, float],
    data=None,
    seed: int = 12345,
    inits: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Held-out accuracy of each method in ``lrs`` ({method: inner lr}) on the same episodes and
    initialisations: mean, 95% CI half-width, per-step accuracy curve. A method in ``inits``
    ({method: flat parameters}) starts every episode from its learned init instead."""
    from tqdm.auto import tqdm

    x, y, _, held = data if data is not None else digits_classes()
    sampler = EpisodeSampler(x, y, held, cfg.n_way, cfg.q_query)
    gen = torch.Generator().manual_seed(seed)
    eps = []
    for _ in range(episodes):
        xs, ys, xq, yq = sampler.sample(k_shot, gen)
        eps.append((xs, ys, xq, yq, init_params(x.shape[1], cfg.hidden, cfg.n_way, gen)))
    results = {}
    for method, lr in lrs.items():
        finals, curves = [], torch.zeros(cfg.inner_steps + 1)
        for xs, ys, xq, yq, fresh in tqdm(eps, desc=f"{cfg.n_way}-way {k_shot}-shot {method}", disable=not progress):
            theta0 = inits[method] if inits and method in inits else fresh
            _, accs = adapt(method, theta0, (xs, ys), steps=cfg.inner_steps, lr=lr, hidden=cfg.hidden,
                            n_way=cfg.n_way, network=network, query=(xq, yq))
            finals.append(accs[-1])
            curves += torch.tensor(accs)
        mean, half = _ci95(finals)
        results[method] = {"lr": lr, "accuracy": mean, "ci95": half, "per_step": (curves / episodes).tolist()}
    return results


def _baseline_inits(network, cfg, sampler, d_in, tuning, *, tune_episodes, baseline_meta_steps, progress):
    """``init="learned"``: each baseline's init (and inner lr) meta-learned for its own inner loop,
    from its lr tuned with fresh inits. Returns ({method: init}, {method: training record})."""
    inits, records = {}, {}
    base_cfg = dataclasses.replace(cfg, meta_steps=baseline_meta_steps if baseline_meta_steps is not None
                                   else cfg.meta_steps)
    for method in ("sgd", "adam"):
        lr0, tuning[f"fresh-init {method}"] = tune_lr(method, sampler, cfg, cfg.k_shots[0], network=network,
                                                      episodes=tune_episodes)
        t_m = time.perf_counter()
        lr_m, inits[method], hist = meta_train_inner(method, base_cfg, sampler, d_in, lr0=lr0, network=network,
                                                     learn_init=True, progress=progress,
                                                     desc=f"MAML-style init for {method}")
        records[method] = {"lr_start": lr0, "lr": lr_m, "meta_steps": base_cfg.meta_steps,
                           "final_query_loss_mean_last100": mean_last(hist, 100),
                           "wall_s": round(time.perf_counter() - t_m, 1)}
    return inits, records


def run_benchmark(
    network: CoordinatewiseLSTM,
    cfg: FewShotConfig,
    out_dir: str | Path,
    *,
    episodes: int = 600,
    tune_episodes: int | None = None,
    k_shots: Sequence[int] = (1, 5),
    weights_name: str = "",
    command: str | None = None,
    init: str = "fresh",
    init_dir: str | Path | None = None,
    baseline_meta_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Tune the baselines' lr on meta-training classes, evaluate all methods on held-out classes,
    write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``.

    ``init="fresh"`` (stem ``few_shot``): every method starts each episode from the same fresh
    default init. ``init="learned"`` (stem ``few_shot_learned_init``), the MAML-style policy: the
    learned optimizer starts from the init it was meta-trained with (``few_shot_init.safetensors``
    in ``init_dir``), and each baseline from an init meta-learned for its own inner loop here
    (MAML for SGD), on the same meta-training episodes, for ``baseline_meta_steps`` (default: as
    many as the learned optimizer had), its inner lr meta-learned too, starting from the tuned one.
    Returns the payload written to ``<stem>.json``.
    """
    if init not in ("fresh", "learned"):
        raise ValueError(f"init must be 'fresh' or 'learned', got {init!r}")
    if init == "learned" and init_dir is None:
        raise ValueError("init='learned' needs init_dir= (the weights directory with few_shot_init.safetensors)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(torch.get_num_threads())
    t0 = time.perf_counter()
    data = digits_classes()
    d_in = data[0].shape[1]
    sampler = EpisodeSampler(data[0], data[1], data[2], cfg.n_way, cfg.q_query)
    inner_lr = float(network.provenance.get("inner_lr", 0) or 0)
    results, tuning, inits, init_training = {}, {}, None, {}
    if init == "learned":
        inits = {"learned": load_init(init_dir, cfg, d_in)}
        baseline_inits, init_training = _baseline_inits(network, cfg, sampler, d_in, tuning,
                                                        tune_episodes=tune_episodes,
                                                        baseline_meta_steps=baseline_meta_steps, progress=progress)
        inits.update(baseline_inits)
    for k in k_shots:
        lrs = {}
        for method in ("sgd", "adam"):
            if init == "learned":
                lrs[method] = init_training[method]["lr"]
            else:
                lrs[method], tuning[f"{k}-shot {method}"] = tune_lr(
                    method, sampler, cfg, k, network=network, episodes=tune_episodes)
        if inner_lr > 0:
            lrs["learned"] = inner_lr
        else:  # weights without a meta-learned step scale: tune it like the baselines
            lrs["learned"], tuning[f"{k}-shot learned"] = tune_lr("learned", sampler, cfg, k, network=network,
                                                                  episodes=tune_episodes)
        lrs = {m: lrs[m] for m in ("learned", "sgd", "adam")}
        results[f"{cfg.n_way}-way {k}-shot"] = evaluate(network, cfg, k_shot=k, episodes=episodes, lrs=lrs,
                                                        data=data, inits=inits, progress=progress)
    payload = {
        "command": command or f"{_PROG} --weights {weights_name} --episodes {episodes}",
        "weights": weights_name,
        "episodes": episodes,
        "inner_steps": cfg.inner_steps,
        "init": init,
        "baseline_init_training": init_training,
        "model": f"MLP {d_in}-{cfg.hidden}-{cfg.n_way} (ReLU), " + (
            "fresh PyTorch-default init per episode" if init == "fresh" else
            "init meta-learned per method (MAML-style): the learned optimizer's jointly with it, SGD's and "
            "Adam's here for their own inner loops (inner lr meta-learned too)"),
        "data": "scikit-learn load_digits, digit x rotation = 40 classes; held-out digits 5-9 (20 classes)",
        "lr_tuning": {k: {str(lr): acc for lr, acc in v.items()} for k, v in tuning.items()},
        "tuning_episodes": tune_episodes or cfg.tune_episodes,
        "results": results,
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": machine,
    }
    write_few_shot_report(payload, out_dir, report_stem(init))
    return payload


# ------------------------------------------------------------------------------------- command line


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``learned-optim benchmark few-shot`` to ``parser`` (a fresh subparser:
    no positional argument; every option below is read back by ``run_cli``)."""
    parser.add_argument("--weights", default=None, metavar="NAME_OR_DIR",
                        help=f"weights to evaluate: shipped name, directory or Hub id (default: {DEFAULT_WEIGHTS})")
    parser.add_argument("--episodes", type=int, default=None,
                        help="held-out episodes per setting (default 600; 20 with --quick)")
    parser.add_argument("--tune-episodes", type=int, default=None,
                        help="meta-training episodes per lr when tuning (default: the weights' tune_episodes, 100)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"output directory for few_shot[_learned_init].json/.md/.png (default: ./{DEFAULT_OUT}); "
                             "created if needed")
    parser.add_argument("--force", action="store_true", help="replace results already in --out")
    parser.add_argument("--quick", action="store_true",
                        help="pipeline check in seconds: trains a 3-step net, 20 episodes (numbers meaningless)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads during the run (default 1)")
    parser.add_argument("--init", choices=("fresh", "learned"), default="fresh",
                        help="fresh default init per episode (default), or meta-learned inits (MAML-style)")
    parser.add_argument("--baseline-meta-steps", type=int, default=None,
                        help="--init learned: meta-steps for each baseline's init (default: the learned optimizer's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _command(args: argparse.Namespace) -> str:
    """The canonical command line equivalent to ``args`` (recorded in the results)."""
    parts = [*_PROG.split()] + ["--quick"] * args.quick
    for opt in ("weights", "episodes", "tune_episodes", "out", "threads", "init", "baseline_meta_steps"):
        val = getattr(args, opt)
        if val is not None:
            parts += [f"--{opt.replace('_', '-')}", str(val)]
    return shlex.join(parts + ["--force"] * args.force + ["--no-progress"] * args.no_progress)


def _check(args: argparse.Namespace) -> None:
    """Refuse bad options before any work starts (the message names the option and the fix)."""
    for opt, low in (("threads", 1), ("episodes", 1), ("tune_episodes", 1), ("baseline_meta_steps", 0)):
        val = getattr(args, opt)
        if val is not None and val < low:
            raise ValueError(f"--{opt.replace('_', '-')} must be >= {low}, got {val}")
    if args.quick and args.weights is not None:
        raise ValueError("--quick trains its own 3-step weights; drop --weights")
    if args.weights is None and not args.quick and DEFAULT_WEIGHTS not in list_shipped():
        raise ValueError(f"shipped weights {DEFAULT_WEIGHTS!r} not found; pass --weights")
    check_out_dir(args.out)
    check_no_overwrite(args.out, output_files(args.init), args.force)


def run_cli(args: argparse.Namespace) -> int:
    """Run the benchmark from the options ``add_cli_arguments`` added; prints the Markdown table.
    Returns 0, or 2 (message on stderr) on bad input."""
    try:
        _check(args)
        if not args.quick:
            name = args.weights or DEFAULT_WEIGHTS
            net = from_pretrained(name)
            cfg = FewShotConfig.from_dict(net.provenance.get("few_shot_config", {}))
            if args.init == "learned" and not cfg.learn_init:
                raise ValueError(f"--init learned: the weights {name!r} were trained without learn_init "
                                 f"(no learned init); use --init fresh")
    except (ValueError, TypeError, WeightsError, WeightsNotFoundError) as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 2
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        common = dict(init=args.init, command=_command(args), progress=not args.no_progress)
        if args.quick:
            cfg = FewShotConfig(meta_steps=3, meta_batch=2, tune_episodes=5, learn_init=args.init == "learned")
            with tempfile.TemporaryDirectory() as tmp:
                net, _ = train_few_shot(cfg, out=tmp, progress=False)
                run_benchmark(net, cfg, args.out, episodes=args.episodes or 20, tune_episodes=args.tune_episodes or 5,
                              weights_name="3-step quick run", init_dir=tmp, **common)
        else:
            run_benchmark(net, cfg, args.out, episodes=args.episodes or 600, tune_episodes=args.tune_episodes,
                          weights_name=name, init_dir=resolve(name) if args.init == "learned" else None,
                          baseline_meta_steps=args.baseline_meta_steps, **common)
    finally:
        torch.set_num_threads(old_threads)
    print((Path(args.out) / f"{report_stem(args.init)}.md").read_text(encoding="utf-8"))
    return 0
