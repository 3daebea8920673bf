"""``learned-optim benchmark {quality,speed}``: the benchmark subcommand.

Run::

    learned-optim benchmark quality [--quick] [--weights NAME_OR_DIR] [--out DIR] [--seeds N] [--tasks T ...]
    learned-optim benchmark speed   [--quick] [--weights NAME_OR_DIR] [--out DIR] [--sizes N ...] [--device cpu|cuda]

``learned_optim.cli`` calls ``add_arguments(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

__all__ = ["add_arguments", "run"]

DEFAULT_OUT = "benchmarks/results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", choices=("quality", "speed"), help="which benchmark to run")
    parser.add_argument("--quick", action="store_true",
                        help="a fast pipeline check (quality: < 2 min on 2 cores; speed: seconds)")
    parser.add_argument("--weights", default=None, metavar="NAME_OR_DIR",
                        help="learned-optimizer weights: shipped name, directory or Hub repo id (default: the package default)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"output directory for <which>.json/.md/.png (default: {DEFAULT_OUT})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads during the runs (default 1)")
    parser.add_argument("--learned-kwargs", default=None, metavar="JSON",
                        help='extra LearnedOptimizer keyword arguments as a JSON object, e.g. \'{"impl": "torch"}\' '
                             'or \'{"state_dtype": "bfloat16"}\' (if this build accepts it)')
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    q = parser.add_argument_group("quality only")
    q.add_argument("--seeds", type=int, default=None, help="seeds per optimizer (default 5; 2 with --quick)")
    q.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="run only these tasks")
    s = parser.add_argument_group("speed only")
    s.add_argument("--sizes", nargs="+", type=float, default=None, metavar="N",
                   help="parameter counts (default 1e4 1e5 1e6 1e7; 1e4 1e6 with --quick)")
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device to benchmark on (default cpu)")
    s.add_argument("--no-rss", action="store_true", help="skip the RSS cross-check subprocesses")


def _command(args: argparse.Namespace) -> str:
    """The canonical command line equivalent to ``args`` (recorded in the results)."""
    parts = ["learned-optim", "benchmark", args.which]
    for flag in ("quick", "no_progress") + (("no_rss",) if args.which == "speed" else ()):
        if getattr(args, flag, False):
            parts.append("--" + flag.replace("_", "-"))
    relevant = ("seeds", "tasks") if args.which == "quality" else ("device", "sizes")
    for opt in ("weights", "out", "threads", "learned_kwargs") + relevant[:1]:
        val = getattr(args, opt, None)
        if val is not None:
            parts += [f"--{opt.replace('_', '-')}", str(val)]
    for opt in relevant[1:]:
        val = getattr(args, opt, None)
        if val:
            parts += [f"--{opt}", *(f"{v:g}" if isinstance(v, float) else str(v) for v in val)]
    return shlex.join(parts)


def _validate(args: argparse.Namespace) -> None:
    """Check the user's options before any work starts (errors name the option and the fix)."""
    from ..hub import WeightsError, WeightsNotFoundError, resolve
    from .common import check_out_dir, parse_learned_kwargs

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}; e.g. --threads 1")
    try:
        resolve(args.weights)
    except (WeightsError, WeightsNotFoundError) as e:
        raise ValueError(f"--weights {args.weights!r}: {e}") from None
    check_out_dir(args.out)
    args.learned_kwargs_dict = parse_learned_kwargs(args.learned_kwargs)
    if args.which == "quality":
        if args.sizes is not None or args.device != "cpu" or args.no_rss:
            raise ValueError("--sizes, --device and --no-rss apply to the speed benchmark only; drop them for 'quality'")
        if args.seeds is not None and args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}; e.g. --seeds 3")
        if args.tasks:
            from .tasks import get_task

            for t in args.tasks:
                get_task(t)
    else:
        if args.seeds is not None or args.tasks is not None:
            raise ValueError("--seeds and --tasks apply to the quality benchmark only; drop them for 'speed'")
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--device cuda, but torch.cuda.is_available() is False; use --device cpu")
        for n in args.sizes or ():
            if not n >= 16 or n != n or n == float("inf"):
                raise ValueError(f"--sizes: each parameter count must be a number >= 16, got {n:g}; e.g. --sizes 1e6 1e7")


def run(args: argparse.Namespace) -> int:
    try:
        _validate(args)
    except (ValueError, TypeError) as e:
        print(f"learned-optim benchmark {args.which}: error: {e}", file=sys.stderr)
        return 2
    command = _command(args)
    if args.which == "quality":
        from .quality import run_quality

        res = run_quality(weights=args.weights, quick=args.quick, out=args.out, seeds=args.seeds,
                          task_filter=args.tasks, threads=args.threads, learned_kwargs=args.learned_kwargs_dict,
                          progress=not args.no_progress,
                          command=command)
        print(f"wrote {args.out}/quality.json, quality.md, quality.png ({res['wall_s']:.0f} s)")
    else:
        from .speed import run_speed

        res = run_speed(weights=args.weights, quick=args.quick, out=args.out, sizes=args.sizes,
                        threads=args.threads, device=args.device, rss_check=not args.no_rss,
                        learned_kwargs=args.learned_kwargs_dict,
                        progress=not args.no_progress, command=command)
        print(f"wrote {args.out}/speed.json, speed.md, speed.png ({res['wall_s']:.0f} s)")
    return 0
