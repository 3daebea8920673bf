"""Speed and memory benchmark: LearnedOptimizer.step() vs torch.optim.Adam (foreach, fused) at
1e4..1e7 parameters, the learned step against its FLOP/byte floor, and a whole training step.

Run (from the repository root; the same as `learned-optim benchmark speed ...`)::

    python benchmarks/speed.py                 # full run, writes benchmarks/results/speed.{json,md,png}
    python benchmarks/speed.py --quick --out /tmp/speed
    python benchmarks/speed.py --quick --sizes 1e6 1e7 --out /tmp/speed   # issue 5's targets

All options: `python benchmarks/speed.py --help`. The code lives in learned_optim.benchmarking, so the
benchmark also runs from an installed wheel as `learned-optim benchmark speed`.
"""

import sys
from pathlib import Path

try:
    from learned_optim.cli import main
except ImportError:  # a checkout that is not pip-installed: use the package next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from learned_optim.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", "speed", *sys.argv[1:]]))
