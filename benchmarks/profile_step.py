"""Quick sweep of one learned step over implementations, chunk sizes and thread counts.

For iterating on the fast path; the published numbers come from ``learned-optim benchmark speed``
(``learned_optim.benchmarking.speed``), whose instruments this script shares
(``learned_optim.benchmarking.measure``). It times ``learned_update`` per ``--impls`` value and
chunk size on a transformer-like mix of tensor shapes, with a non-zero output head (so the whole
rule runs as it would trained), beside fused and foreach Adam and the step's compute floor (the
speed benchmark's ``step_floor`` FLOPs at the measured matmul rate); ``--memory`` adds the growth
of resident memory during one step.

    python benchmarks/profile_step.py --sizes 1e6 1e7 --threads 1 2

Timings are medians over ``--reps`` steps (the machine may be shared: medians, not means).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

try:
    import learned_optim  # noqa: F401
except ImportError:  # a checkout that is not pip-installed: use the package next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learned_optim.benchmarking.measure import matmul_rate, median_time, rss_peak_extra  # noqa: E402
from learned_optim.benchmarking.speed import step_floor  # noqa: E402
from learned_optim.common.machine import machine_info, machine_line  # noqa: E402
from learned_optim.network import CoordinatewiseLSTM, LSTMOptimizerConfig  # noqa: E402
from learned_optim.update import DEFAULT_CHUNK_SIZE, learned_update  # noqa: E402

CPU = torch.device("cpu")


def model_shapes(n: int) -> list[tuple[int, ...]]:
    """A transformer-like mix of shapes totalling about n parameters: per block a [d, 3d] and a
    [d, d] attention matrix, [4d, d] and [d, 4d] MLP matrices, biases and two LayerNorms."""
    d = 256 if n <= 2_000_000 else 512
    block = [(3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,), (d,), (d,), (d,), (d,)]
    shapes, total = [], 0
    while total < n:
        for s in block:
            k = 1
            for x in s:
                k *= x
            take = min(k, n - total)
            if take <= 0:
                break
            shapes.append(s if take == k else (take,))
            total += take
    return shapes


def _ms(fn, reps: int) -> float:
    return median_time(fn, CPU, reps, warmup=2) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e6])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--chunks", nargs="+", type=int, default=[DEFAULT_CHUNK_SIZE])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--impls", nargs="+", default=["auto"], choices=["auto", "fused", "eager", "reference"])
    ap.add_argument("--state-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--no-adam", action="store_true")
    ap.add_argument("--memory", action="store_true", help="also measure resident-memory growth during a step (Linux)")
    args = ap.parse_args()

    cfg = LSTMOptimizerConfig()
    net = CoordinatewiseLSTM(cfg)
    with torch.no_grad():  # a non-zero head, so the whole rule runs as it would trained
        net.head_weight.normal_(0, 0.1)
        net.head_bias.normal_(0, 0.1)
    hs, nf = cfg.hidden_size, cfg.num_features
    flops_per_coord = step_floor(cfg)["flops"]
    sdt = getattr(torch, args.state_dtype)
    print(machine_line(machine_info(torch.get_num_threads())))

    for nt in args.threads:
        torch.set_num_threads(nt)
        big = matmul_rate(1024, 1024, 1024, CPU, repeats=20)
        skinny = matmul_rate(4 * hs, nf + hs, DEFAULT_CHUNK_SIZE, CPU, repeats=200)
        print(f"threads={nt}: sgemm 1024^3 {big / 1e9:.1f} GFLOP/s; "
              f"[{4 * hs}x{nf + hs}]@[{nf + hs}x{DEFAULT_CHUNK_SIZE}] {skinny / 1e9:.1f} GFLOP/s")
        for n_f in args.sizes:
            n = int(n_f)
            shapes = model_shapes(n)
            gen = torch.Generator().manual_seed(0)
            params = [torch.randn(s, generator=gen) for s in shapes]
            grads = [torch.randn(s, generator=gen) for s in shapes]
            state_bytes = sum(p.numel() for p in params) * (2 * 4 + 2 * hs * sdt.itemsize)
            floor_big = n * flops_per_coord / big * 1e3
            floor_skinny = n * flops_per_coord / skinny * 1e3
            print(f"  n={n:.0e} ({len(shapes)} tensors), state {state_bytes / 2**20:.1f} MiB; compute floor "
                  f"{floor_big:.2f} ms (sgemm rate) / {floor_skinny:.2f} ms (skinny-matmul rate)")
            if not args.no_adam:
                for kind in ("fused", "foreach"):
                    ps = [p.clone() for p in params]
                    for p, g in zip(ps, grads):
                        p.grad = g
                    opt = torch.optim.Adam(ps, **{kind: True})
                    print(f"    Adam {kind:8s} {_ms(opt.step, args.reps):8.2f} ms")
                    del opt, ps
            for impl in args.impls:
                for cs in args.chunks:
                    ps = [p.clone() for p in params]
                    ms_ = [torch.zeros_like(p) for p in ps]
                    vs = [torch.zeros_like(p) for p in ps]
                    hs_ = [torch.zeros(hs, *p.shape, dtype=sdt) for p in ps]
                    cs_ = [torch.zeros(hs, *p.shape, dtype=sdt) for p in ps]
                    st = [torch.tensor(0.0) for _ in ps]

                    def step():
                        learned_update(ps, grads, ms_, vs, hs_, cs_, st, weights=net, config=cfg, lr=1e-3,
                                       weight_decay=0.0, maximize=False, impl=impl, chunk_size=cs)

                    ms = _ms(step, args.reps)
                    line = (f"    learned {impl:9s} chunk={cs:6d} {ms:8.2f} ms  = {ms / floor_big:5.1f}x sgemm floor, "
                            f"{ms / floor_skinny:5.1f}x skinny floor")
                    if args.memory:
                        peak = rss_peak_extra(step)
                        line += "; resident-memory growth " + ("n/a" if peak is None else (
                            f"{peak / 2**20:.2f} MiB = {100 * peak / state_bytes:.1f}% of state"))
                    print(line, flush=True)


if __name__ == "__main__":
    main()
