"""Quick timing of one optimizer step of the learned update's paths (issue 5's own measurements).

The official numbers come from ``benchmarks/speed.py``; this script is for iterating on the fast
path: it times ``learned_update`` per ``impl``/chunk size, fused and foreach Adam, a matmul-rate
floor, and the peak extra memory allocated during one step.

    python benchmarks/profile_step.py --sizes 1e6 1e7 --threads 1 2

Timings are medians over ``--reps`` steps (the machine is shared: medians, not means).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from learned_optim.network import CoordinatewiseLSTM, LSTMOptimizerConfig
from learned_optim.update import DEFAULT_CHUNK_SIZE, learned_update


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


def median_ms(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def peak_extra_bytes(fn) -> int:
    """Peak resident memory above the level before ``fn`` ran, in bytes (Linux: VmHWM after
    resetting it through /proc/self/clear_refs). torch.profiler's CPU memory events came back
    empty here, and resident memory is what a user pays anyway."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (proc(5))
    before = _proc_status_kib("VmRSS")
    fn()
    return max(0, _proc_status_kib("VmHWM") - before) * 1024


def matmul_gflops(shape_m: int, shape_k: int, shape_n: int, reps: int = 20) -> float:
    a, b = torch.randn(shape_m, shape_k), torch.randn(shape_k, shape_n)
    out = torch.empty(shape_m, shape_n)
    ms = median_ms(lambda: torch.mm(a, b, out=out), reps)
    return 2 * shape_m * shape_k * shape_n / (ms * 1e-3) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e6])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--chunks", nargs="+", type=int, default=[DEFAULT_CHUNK_SIZE])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--impls", nargs="+", default=["torch"])
    ap.add_argument("--state-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--no-adam", action="store_true")
    ap.add_argument("--memory", action="store_true", help="also measure peak extra memory (profiler)")
    args = ap.parse_args()

    cfg = LSTMOptimizerConfig()
    net = CoordinatewiseLSTM(cfg)
    with torch.no_grad():  # a non-zero head, so the whole rule runs as it would trained
        net.head_weight.normal_(0, 0.1)
        net.head_bias.normal_(0, 0.1)
    hs, nf = cfg.hidden_size, cfg.num_features
    flops_per_coord = 2 * 4 * hs * (nf + hs) + 2 * 2 * hs  # the two matmuls of the cell and head
    sdt = getattr(torch, args.state_dtype)

    for nt in args.threads:
        torch.set_num_threads(nt)
        big = matmul_gflops(1024, 1024, 1024)
        skinny = matmul_gflops(4 * hs, nf + hs, DEFAULT_CHUNK_SIZE, reps=200)
        print(f"threads={nt}: sgemm 1024^3 {big:.1f} GFLOP/s; [{4*hs}x{nf+hs}]@[{nf+hs}x{DEFAULT_CHUNK_SIZE}] {skinny:.1f} GFLOP/s")
        for n_f in args.sizes:
            n = int(n_f)
            shapes = model_shapes(n)
            gen = torch.Generator().manual_seed(0)
            params = [torch.randn(s, generator=gen) for s in shapes]
            grads = [torch.randn(s, generator=gen) for s in shapes]
            state_bytes = sum(p.numel() for p in params) * (2 * 4 + 2 * hs * sdt.itemsize)
            floor_big = n * flops_per_coord / (big * 1e9) * 1e3
            floor_skinny = n * flops_per_coord / (skinny * 1e9) * 1e3
            print(f"  n={n:.0e} ({len(shapes)} tensors), state {state_bytes/2**20:.1f} MiB; "
                  f"floor {floor_big:.2f} ms (sgemm rate) / {floor_skinny:.2f} ms (skinny-matmul rate)")
            if not args.no_adam:
                for kind in ("fused", "foreach"):
                    ps = [p.clone() for p in params]
                    for p, g in zip(ps, grads):
                        p.grad = g
                    opt = torch.optim.Adam(ps, **{kind: True})
                    print(f"    Adam {kind:8s} {median_ms(opt.step, args.reps):8.2f} ms")
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

                    ms = median_ms(step, args.reps)
                    line = (f"    learned {impl:6s} chunk={cs:6d} {ms:8.2f} ms  = {ms/floor_big:5.1f}x sgemm floor, "
                            f"{ms/floor_skinny:5.1f}x skinny floor")
                    if args.memory:
                        peak = peak_extra_bytes(step)
                        line += f"; peak extra {peak/2**20:.2f} MiB = {100*peak/state_bytes:.1f}% of state"
                    print(line, flush=True)


if __name__ == "__main__":
    main()
