"""``learned-optim meta-train``: meta-train or fine-tune a learned optimizer from the command line.

Examples::

    learned-optim meta-train --config default --out pretrained/lstm-h4-v2-t32   # the shipped default
    learned-optim meta-train --config lstm-h4-v1 --out pretrained/lstm-h4-v1
    learned-optim meta-train --config my_run.json --out runs/a --resume
    learned-optim meta-train --config tiny --out runs/ft --init adam-equivalent
    torchrun --nproc_per_node 2 -m learned_optim.cli meta-train --config lstm-h4-v1 --set slot_rng=true --out runs/d
    learned-optim meta-train --config few-shot --out pretrained/lstm-fewshot-digits   # the few-shot weights

``--config`` is a preset name (``learned_optim.meta.PRESETS``) or a JSON file holding
``MetaTrainConfig`` fields, optionally ``{"preset": "default", ...overrides}``. ``--set KEY=VALUE``
overrides single fields (VALUE parsed as JSON, else taken as a string); ``--set network.FIELD=VALUE``
one field of the rule's network, keeping the preset's others (as does a ``network`` dict in
``--set`` or in a preset-based JSON file).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from . import distributed as _dist
from .config import PRESETS, load_config
from .trainer import meta_train

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="default",
                        help=f"preset name ({', '.join(sorted(PRESETS))}, or {FEW_SHOT_PRESET} for the few-shot inner "
                             f"optimizer) or a JSON config file (default: default)")
    parser.add_argument("--out", required=True, help="output directory: weights, checkpoint.pt, log.jsonl")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt (starts fresh if there is none)")
    parser.add_argument("--init", default=None,
                        help="fine-tune from these weights: shipped name, directory or Hub id "
                             "(default: a fresh network)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set meta_steps=100 or --set network.direction_bound=0 "
                             "(repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--val-baselines", default=None, metavar="FILE",
                        help="reuse the validation tasks' Adam baselines from this JSON file (an earlier run's "
                             "val_baselines.json) where they match, instead of recomputing them; no result changes")
    parser.add_argument("--save-evals", action="store_true",
                        help="also save the weights at every evaluation to OUT/evals/stepN")


def _parse_overrides(items: list[str]) -> dict:
    """``--set`` items as a dict of config changes; ``network.FIELD=VALUE`` sets one field of the
    rule's network config (the preset's other network fields are kept)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}; e.g. --set meta_steps=100")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key.startswith("network."):
            out.setdefault("network", {})[key[len("network."):]] = value
        else:
            out[key] = value
    return out


FEW_SHOT_PRESET = "few-shot"


def _run_few_shot(args: argparse.Namespace) -> int:
    """``--config few-shot``: the few-shot inner-optimizer family (``learned_optim.meta.few_shot``),
    which has its own config (``FewShotConfig``; ``--set`` overrides its fields)."""
    from .few_shot import FewShotConfig, train_few_shot

    if args.resume or args.init or args.val_baselines or args.save_evals:
        print("learned-optim meta-train: error: --config few-shot takes none of --resume, --init, --val-baselines, "
              "--save-evals (set start_from with --set start_from=NAME)", file=sys.stderr)
        return 2
    try:
        cfg = FewShotConfig.from_dict(_parse_overrides(args.overrides))
        _, prov = train_few_shot(cfg, out=args.out, progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"learned-optim meta-train: error: {e}", file=sys.stderr)
        return 2
    print(f"saved {args.out} (few-shot inner optimizer, inner_lr {prov['inner_lr']:.4g}, {prov['wall_time_s']} s)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``meta_train`` from parsed arguments; returns the exit status (2 on bad input)."""
    if args.config == FEW_SHOT_PRESET:
        return _run_few_shot(args)
    try:
        config = load_config(args.config)
        overrides = _parse_overrides(args.overrides)
        if overrides:
            config = config.replace(**overrides)
        command = ("learned-optim meta-train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
                   if len(sys.argv) > 2 else None)
        started_group = _dist.init_from_env()  # under torchrun: one process group for the run
        rank = _dist.world()[0]
        try:
            net = meta_train(config, args.out, init=args.init, resume=args.resume, progress=not args.no_progress,
                             command=command, val_baselines=args.val_baselines, save_evals=args.save_evals)
        finally:
            if started_group:
                import torch.distributed as dist

                dist.destroy_process_group()
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"learned-optim meta-train: error: {e}", file=sys.stderr)
        return 2
    if rank != 0:  # rank 0 reports (and alone wrote the weights)
        return 0
    prov = net.provenance
    print(f"saved {args.out} (selected meta-step {prov.get('selected_step')}, "
          f"held-out {prov.get('heldout_metric_reduce', 'mean')} log ratio vs tuned Adam "
          f"{prov.get('heldout_metric_mean_log_ratio_vs_tuned_adam')}, "
          f"{prov.get('wall_seconds')} s)")
    return 0
