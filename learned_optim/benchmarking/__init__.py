"""Benchmarks of the learned optimizer against Adam: quality on held-out tasks, speed and memory.

Run::

    learned-optim benchmark quality [--quick] [--weights NAME_OR_DIR] [--out DIR]
    learned-optim benchmark speed   [--quick] [--weights NAME_OR_DIR] [--out DIR]

or ``python benchmarks/quality.py`` / ``python benchmarks/speed.py`` from a checkout. Both write
JSON (every measurement), Markdown (the tables) and a PNG into ``--out`` (default
``benchmarks/results``), with the command and the machine recorded.

Modules: ``tasks`` (the held-out suite), ``quality``, ``speed``, ``report`` (tables, figures),
``cli`` (the ``benchmark`` subcommand).
"""

from .quality import run_quality
from .speed import run_speed


__all__ = ["run_quality", "run_speed"]
