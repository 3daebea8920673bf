"""``learned-optim benchmark {quality,speed,few-shot,transformer}``: the benchmark subcommand.

Run::

    learned-optim benchmark quality [--quick] [--weights NAME_OR_DIR] [--out DIR] [--seeds N] [--tasks T ...]
                                    [--reuse-baselines OLD/quality.json]
    learned-optim benchmark speed   [--quick] [--weights NAME_OR_DIR] [--out DIR] [--sizes N ...] [--device cpu|cuda]
    learned-optim benchmark few-shot [--quick] [--weights NAME_OR_DIR] [--out DIR] [--init fresh|learned]
    learned-optim benchmark transformer [--quick] [--weights NAME_OR_DIR] [--out DIR] [--learned-lrs 1e-3,3e-4]
    learned-optim benchmark quality|speed --rerender DIR/<which>.json   # tables and figure again, no runs
    learned-optim benchmark compare REFERENCE.json CANDIDATE.json [--out DIR]  # two results, seed by seed

``learned-optim benchmark <which> --help`` lists every option. ``learned_optim.cli`` calls
``add_arguments(parser)`` and ``run(args)``; the few-shot options and run are
``few_shot.add_cli_arguments`` and ``few_shot.run_cli``, and the transformer benchmark's
``transformer.add_cli_arguments`` and ``transformer.run_cli``, the comparison's ``compare.add_cli_arguments``
and ``compare.run_cli``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import torch

from ..hub import WeightsError, WeightsNotFoundError, resolve
from . import compare, few_shot, quality, speed, tasks, transformer
from .common import DEFAULT_OUT, check_no_overwrite, check_out_dir, parse_learned_kwargs

__all__ = ["add_arguments", "run"]

_OUT_HELP = (f"output directory (default: ./{DEFAULT_OUT}); created if needed. Results already there are "
             "replaced only with --force, so a run never overwrites a checkout's committed benchmarks/results "
             "unless asked")


def _add_shared(parser: argparse.ArgumentParser, which: str, quick_help: str) -> None:
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--weights", default=None, metavar="NAME_OR_DIR",
                        help="learned-optimizer weights: shipped name, directory or Hub repo id "
                             "(default: the package default)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"{_OUT_HELP}. Writes {which}.json, {which}.md and {which}.png")
    parser.add_argument("--force", action="store_true", help=f"replace {which}.json/.md/.png already in --out")
    parser.add_argument("--threads", type=int, default=1, help="torch threads during the runs (default 1)")
    parser.add_argument("--learned-kwargs", default=None, metavar="JSON",
                        help='extra LearnedOptimizer keyword arguments as a JSON object, e.g. \'{"impl": "eager"}\' '
                             'or \'{"state_dtype": "bfloat16"}\'')
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--rerender", default=None, metavar="JSON",
                        help=f"no runs: write {which}.md and {which}.png again beside this saved {which}.json, "
                             "from it" + (" (the summaries are recomputed from the saved curves and the JSON "
                                          "rewritten)" if which == "quality" else " (the JSON is left as it is)"))


def _sizes(sizes) -> str:
    return " ".join(f"{n:.0e}".replace("e+0", "e") for n in sizes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="which", metavar="BENCHMARK")
    sub.required = True
    q = sub.add_parser("quality", help="the learned optimizer against Adam-family baselines on held-out tasks",
                       description=quality.__doc__.splitlines()[0])
    _add_shared(q, "quality", "a pipeline check: horizons / 20, 2 seeds (numbers meaningless)")
    q.add_argument("--seeds", type=int, default=None,
                   help=f"seeds per optimizer (default {quality.FULL_SEEDS}; {quality.QUICK_SEEDS} with --quick)")
    q.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help=f"run only these tasks (of {', '.join(tasks.task_names())})")
    q.add_argument("--reuse-baselines", default=None, metavar="JSON",
                   help="copy the baseline runs (Adam at every grid lr, AdamW, SGD+momentum) of an earlier "
                        "quality.json made under the same settings instead of rerunning them; the learned optimizer "
                        "is always run")
    s = sub.add_parser("speed", help="step time and memory against Adam, the step's floor, a whole training step",
                       description=speed.__doc__.splitlines()[0])
    _add_shared(s, "speed", "a pipeline check in seconds: 2 sizes, short timing budgets")
    s.add_argument("--sizes", nargs="+", type=float, default=None, metavar="N",
                   help=f"parameter counts (default {_sizes(speed.FULL_SIZES)}; "
                        f"{_sizes(speed.QUICK_SIZES)} with --quick)")
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device to benchmark on (default cpu)")
    s.add_argument("--no-rss", action="store_true", help="skip the RSS cross-check subprocesses")
    f = sub.add_parser("few-shot", help="the learned inner optimizer against tuned SGD and Adam on few-shot episodes",
                       description=(few_shot.__doc__ or "").splitlines()[0] or None)
    few_shot.add_cli_arguments(f)
    t = sub.add_parser("transformer", help="the learned optimizer at its default lr against tuned AdamW on a small GPT "
                       "and a small ViT", description=transformer.__doc__.splitlines()[0])
    transformer.add_cli_arguments(t)
    c = sub.add_parser("compare", help="two saved results of one benchmark, seed by seed (which weights is better, "
                       "or within noise)", description=compare.__doc__.splitlines()[0])
    compare.add_cli_arguments(c)


def _command(args: argparse.Namespace) -> str:
    """The canonical command line equivalent to ``args`` (recorded in the results)."""
    parts = ["learned-optim", "benchmark", args.which]
    for flag in ("quick", "no_progress", "force") + (("no_rss",) if args.which == "speed" else ()):
        if getattr(args, flag, False):
            parts.append("--" + flag.replace("_", "-"))
    option, listed = ("seeds", "tasks") if args.which == "quality" else ("device", "sizes")
    for opt in ("weights", "out", "threads", "learned_kwargs", option, "reuse_baselines"):
        val = getattr(args, opt, None)
        if val is not None:
            parts += [f"--{opt.replace('_', '-')}", str(val)]
    if getattr(args, listed, None):
        parts += [f"--{listed}", *(f"{v:g}" if isinstance(v, float) else str(v) for v in getattr(args, listed))]
    return shlex.join(parts)


def _validate(args: argparse.Namespace) -> None:
    """Check the user's options before any work starts (errors name the option and the fix)."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}; e.g. --threads 1")
    try:
        resolve(args.weights)
    except (WeightsError, WeightsNotFoundError) as e:
        raise ValueError(f"--weights {args.weights!r}: {e}") from None
    args.learned_kwargs_dict = parse_learned_kwargs(args.learned_kwargs)
    if args.which == "quality":
        if args.seeds is not None and args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}; e.g. --seeds 3")
        for t in args.tasks or ():
            tasks.get_task(t)
        if args.reuse_baselines is not None:
            if not Path(args.reuse_baselines).is_file():
                raise ValueError(f"--reuse-baselines {args.reuse_baselines!r} is not a file; pass an earlier "
                                 f"quality.json")
            quality._load_reusable(args.reuse_baselines, quick=args.quick, threads=args.threads)  # its errors, now
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch.cuda.is_available() is False; use --device cpu")
        for n in args.sizes or ():
            if not (n >= 16 and math.isfinite(n)):
                raise ValueError(f"--sizes: each parameter count must be a number >= 16, got {n:g}; "
                                 f"e.g. --sizes 1e6 1e7")
    check_out_dir(args.out)
    module = quality if args.which == "quality" else speed
    check_no_overwrite(args.out, module.OUTPUT_FILES, args.force)


def _rerender(args: argparse.Namespace) -> int:
    path = Path(args.rerender).expanduser()
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or saved.get("benchmark") != args.which:
            raise ValueError(f"not a {args.which}.json")
    except (OSError, ValueError) as e:
        print(f"learned-optim benchmark {args.which}: error: --rerender {str(path)!r}: {e}", file=sys.stderr)
        return 2
    (quality if args.which == "quality" else speed).rerender(path)
    print(f"wrote {path.parent}/{args.which}.md, {args.which}.png from {path.name}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.which == "few-shot":
        return few_shot.run_cli(args)
    if args.which == "transformer":
        return transformer.run_cli(args)
    if args.which == "compare":
        return compare.run_cli(args)
    if args.rerender is not None:
        return _rerender(args)
    try:
        _validate(args)
    except (ValueError, TypeError) as e:
        print(f"learned-optim benchmark {args.which}: error: {e}", file=sys.stderr)
        return 2
    command = _command(args)
    if args.which == "quality":
        res = quality.run_quality(weights=args.weights, quick=args.quick, out=args.out, seeds=args.seeds,
                                  task_filter=args.tasks, threads=args.threads,
                                  learned_kwargs=args.learned_kwargs_dict, progress=not args.no_progress,
                                  command=command, reuse_baselines=args.reuse_baselines)
    else:
        res = speed.run_speed(weights=args.weights, quick=args.quick, out=args.out, sizes=args.sizes,
                              threads=args.threads, device=args.device, rss_check=not args.no_rss,
                              learned_kwargs=args.learned_kwargs_dict, progress=not args.no_progress,
                              command=command)
    print(f"wrote {args.out}/{args.which}.json, {args.which}.md, {args.which}.png ({res['wall_s']:.0f} s)")
    return 0
