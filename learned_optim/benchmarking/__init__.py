"""Benchmarks of the learned optimizer: quality on held-out tasks, speed and memory, few-shot.

Run::

    learned-optim benchmark quality  [--quick] [--weights NAME_OR_DIR] [--out DIR]
    learned-optim benchmark speed    [--quick] [--weights NAME_OR_DIR] [--out DIR]
    learned-optim benchmark few-shot [--quick] [--weights NAME_OR_DIR] [--out DIR]
    learned-optim benchmark transformer [--quick] [--weights NAME_OR_DIR] [--out DIR]

Each writes JSON (every measurement), Markdown (the tables) and a PNG into ``--out`` (default
``./benchmark-results``; results already there are replaced only with ``--force``), with the
command and the machine recorded.

Modules, each depending only on those listed before it:

* ``common``: output-folder rules, saving a figure, ``--learned-kwargs``, the learned setup;
* ``measure``: parameters, timing, memory and machine-peak instruments;
* ``cpu_paths``: the CPU paths of the learned step and running code on one in a fresh process;
* ``tasks``: the held-out task suite;
* ``quality_report`` / ``speed_report``: tables and figures from a results dict;
* ``quality`` / ``speed``: the runs (and ``rerender`` from a saved JSON);
* ``few_shot_report`` / ``few_shot``: the few-shot benchmark;
* ``transformer_models`` / ``transformer_report`` / ``transformer``: a small GPT and ViT against tuned AdamW;
* ``cli``: the ``benchmark`` subcommand.
"""

from .quality import run_quality
from .speed import run_speed

__all__ = ["run_quality", "run_speed"]
