"""Average the meta-parameters of several saved learned optimizers (a "weight soup").

    python benchmarks/average_weights.py OUT WEIGHTS [WEIGHTS ...]

Each ``WEIGHTS`` is a folder in the ``save_pretrained`` layout (``config.json`` +
``model.safetensors``); all must have the same rule config. ``OUT`` receives the element-wise mean
of their tensors (computed in float64, stored in the inputs' dtype) with the first input's rule
config and a provenance naming the inputs. Used for the averaging study in
``benchmarks/results/meta-v2/README.md`` (the mean over a run's evaluations, and over two seeds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from learned_optim.hub import from_pretrained, save_pretrained
from learned_optim.network import WEIGHT_NAMES, CoordinatewiseLSTM


def average(folders: list[Path]) -> CoordinatewiseLSTM:
    """The network whose weights are the mean of the networks saved in ``folders``."""
    if len(folders) < 2:
        raise ValueError(f"WEIGHTS: give at least two folders to average, got {len(folders)}")
    nets = [from_pretrained(str(f)) for f in folders]
    for f, net in zip(folders[1:], nets[1:]):
        if net.config != nets[0].config:
            raise ValueError(f"WEIGHTS: {f} has another rule config than {folders[0]}; average only weights of "
                             "one config")
    out = CoordinatewiseLSTM(nets[0].config)
    with torch.no_grad():
        for name in WEIGHT_NAMES:
            ref = getattr(nets[0], name)
            mean = torch.stack([getattr(n, name).detach().double() for n in nets]).mean(0)
            getattr(out, name).copy_(mean.to(ref.dtype))
    out.provenance = {"method": "mean of the weights of", "inputs": [str(f) for f in folders]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to write the averaged weights to (created)")
    ap.add_argument("weights", type=Path, nargs="+", help="saved weights folders to average")
    args = ap.parse_args(argv)
    save_pretrained(average(args.weights), args.out)
    print(f"wrote the mean of {len(args.weights)} weights to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
