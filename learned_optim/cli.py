"""The ``learned-optim`` command: ``demo``, ``meta-train``, ``benchmark quality|speed|few-shot``.

Each subcommand's options and work live beside the code they drive:
``learned_optim.demo`` (demo), ``learned_optim.meta.cli`` (meta-train) and
``learned_optim.benchmarking.cli`` (benchmark). Each of those modules provides
``add_arguments(parser)`` and ``run(args) -> int``. ``learned-optim COMMAND --help`` lists a
command's options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

__all__ = ["main"]

_SUBCOMMANDS = {
    "demo": ("learned_optim.demo", "train a small model on real data with the default learned optimizer and with Adam"),
    "meta-train": ("learned_optim.meta.cli", "meta-train (or fine-tune) a learned optimizer"),
    "benchmark": ("learned_optim.benchmarking.cli",
                  "benchmark against Adam and other baselines: quality (held-out tasks), speed (step time and "
                  "memory) or few-shot (held-out episodes)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="learned-optim", description="Learned optimizers for PyTorch.")
    parser.add_argument("--version", action="version", version=f"learned-optim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if not e.name or not (module == e.name or module.startswith(e.name + ".")):
                raise
            p.set_defaults(_run=lambda args, n=name: parser.error(f"'{n}' is not available in this build"))
            continue
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
