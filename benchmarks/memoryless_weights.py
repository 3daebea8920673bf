"""Write a rule's weights with the output head cut off from the LSTM's hidden state.

The head is ``y = head_weight @ [h'; context] + head_bias`` (``learned_optim.network``): the first
``hidden_size`` columns read the recurrent state, the rest read the per-tensor context features.
Zeroing the hidden columns of a row leaves that output a per-tensor constant (set by the context
features alone), so the rule keeps its per-tensor step scale but loses its per-coordinate,
history-dependent modulation. Running the written weights through ``learned-optim benchmark
transformer`` next to the original shows how much that modulation is worth. Nothing is retrained.

    python benchmarks/memoryless_weights.py lstm-h4-v2-vec --rows 0 --out DIR
    python benchmarks/memoryless_weights.py lstm-h4-v2-vec --rows 0,1 --out DIR
    python benchmarks/memoryless_weights.py lstm-h4-v2-vec --rows 0 --drop-rows 1 --out DIR

Row 0 is the log step-scale output (a multiplier on Adam's step), row 1 the additive direction.
``--drop-rows 1`` also zeroes row 1 entirely (weights and bias: ``tanh(0) = 0``, no additive
direction), which with ``--rows 0`` leaves Adam's step times a learned per-tensor constant.
The provenance of the written weights records the source and the rows zeroed.
"""

from __future__ import annotations

import argparse
import sys

import torch

from learned_optim import from_pretrained, save_pretrained


def parse_rows(text: str, flag: str) -> list[int]:
    parts = [r.strip() for r in text.split(",")]
    if not all(r in ("0", "1") for r in parts):
        raise SystemExit(f"{flag} must be a comma-separated list of 0 and/or 1, got {text!r}")
    return sorted({int(r) for r in parts})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", help="shipped name, directory or Hub id of the source weights")
    ap.add_argument("--rows", default="0", help="head rows whose hidden-state columns are zeroed (default 0)")
    ap.add_argument("--drop-rows", default=None, help="head rows zeroed entirely, bias included (default none)")
    ap.add_argument("--out", required=True, help="directory to write config.json and model.safetensors into")
    args = ap.parse_args(argv)
    rows = parse_rows(args.rows, "--rows")
    dropped = parse_rows(args.drop_rows, "--drop-rows") if args.drop_rows else []
    net = from_pretrained(args.weights)
    h = net.config.hidden_size
    with torch.no_grad():
        for r in rows:
            net.head_weight[r, :h] = 0.0
        for r in dropped:
            net.head_weight[r] = 0.0
            net.head_bias[r] = 0.0
    net.provenance["hidden_head_columns_zeroed"] = {"source": args.weights, "rows": rows}
    if dropped:
        net.provenance["head_rows_zeroed"] = dropped
    save_pretrained(net, args.out)
    print(f"wrote {args.out}: {args.weights} with head rows {rows} cut off from the hidden state"
          + (f", rows {dropped} zeroed" if dropped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
