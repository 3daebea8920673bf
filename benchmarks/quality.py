"""Quality benchmark: the learned optimizer vs Adam, AdamW, SGD+momentum and per-task tuned Adam
on the held-out task suite (learned_optim.benchmarking.tasks).

Run (from the repository root; the same as `learned-optim benchmark quality ...`)::

    python benchmarks/quality.py                 # full run, writes benchmarks/results/quality.{json,md,png}
    python benchmarks/quality.py --quick --out /tmp/quality
    python benchmarks/quality.py --weights path/to/weights_dir --out /tmp/quality-trained

All options: `python benchmarks/quality.py --help`. The code lives in learned_optim.benchmarking, so the
benchmark also runs from an installed wheel as `learned-optim benchmark quality`.
"""

import sys
from pathlib import Path

try:
    from learned_optim.cli import main
except ImportError:  # a checkout that is not pip-installed: use the package next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from learned_optim.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", "quality", *sys.argv[1:]]))
