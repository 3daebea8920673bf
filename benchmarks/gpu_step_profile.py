"""Where the learned optimizer's CUDA step spends its time (the follow-up to gpu_check.py).

    python benchmarks/gpu_step_profile.py --json /tmp/gpu_step_profile.json

gpu_check.py found the shipped default's whole step (``LearnedOptimizer.step()``, Triton path)
well above its bytes floor at 1e8 parameters and about 1 ms at 1e6, and the kernel alone faster
with 4 warps per 256-coordinate program than with the table's 8. This script splits the step:

- per size (1e6, 1e8 parameters; gpu_check's tensor layout) and weights (the default, format
  version 2, and ``lstm-h4-v1``, which has no per-tensor context): the whole step (CUDA events,
  median), the host time of a step (wall clock over back-to-back steps, which is the step time
  when the host is the bottleneck), the parts (``tensor_context``, ``learned_update`` with the
  context given) timed alone, and one profiled step's CUDA kernels (torch.profiler table);
- the kernel's (BLOCK, num_warps) at 1e8 for fp32 and bf16 LSTM state, measured in two passes in
  opposite orders (drift shows as a difference between the passes);
- with ``--host-profile`` instead: a cProfile of the step's host side at 1e6 parameters.

Rows as in gpu_check.py (``--json``: rewritten after every row). Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check as gc  # noqa: E402  (the rows, the JSON report, the timer)

from learned_optim import LearnedOptimizer  # noqa: E402
from learned_optim.hub import DEFAULT_WEIGHTS, from_pretrained  # noqa: E402
from learned_optim.update import learned_update, tensor_context  # noqa: E402

# (BLOCK, num_warps) settings of the sweep (over gpu_check.SWEEP_N parameters, which a dry run on CPU shrinks).
LAUNCHES = [(256, 8), (256, 4), (256, 2), (128, 4), (128, 2), (128, 1), (512, 4), (512, 2), (64, 2)]
SIZES = [1e6, 1e8]


def optimizer_for(device, n: int, weights: str) -> LearnedOptimizer:
    gen = torch.Generator(device=device).manual_seed(0)
    ps = [torch.randn(s, device=device, generator=gen).requires_grad_() for s in gc.layout(n)]
    for p in ps:
        p.grad = torch.randn(p.shape, device=device, generator=gen)
    opt = LearnedOptimizer(ps, weights=weights, impl="fused")
    opt.step()  # creates the state
    return opt


def tensors(opt: LearnedOptimizer):
    """The parameters and (grads, exp_avgs, exp_avg_sqs, lstm_hs, lstm_cs, steps) of the optimizer's one group."""
    ps = list(opt.param_groups[0]["params"])
    st = [opt.state[p] for p in ps]
    return ps, ([p.grad for p in ps], [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
                [s["lstm_h"] for s in st], [s["lstm_c"] for s in st], [s["step"] for s in st])


def split(device, n: int, weights: str, reps: int) -> None:
    opt = optimizer_for(device, n, weights)
    tag = f"{weights}, {n:.0e} params"
    gc.row(f"step (events) {tag}", f"{gc.cuda_ms(opt.step, reps):.3f} ms")
    gc.row(f"step (host wall, back-to-back) {tag}", f"{gc.steady_ms(opt.step, reps):.3f} ms")
    net = from_pretrained(weights).to(device)
    ps, (gs, ms, vs, hs, cs, steps) = tensors(opt)
    if net.config.context_features:
        def ctx():
            return tensor_context(ps, net.config, dtype=torch.float32, num_params=n)
        gc.row(f"  tensor_context alone {tag}", f"{gc.cuda_ms(ctx, reps):.3f} ms")

    def update():
        learned_update(ps, gs, ms, vs, hs, cs, steps, weights=net, config=net.config, lr=1e-3, weight_decay=0.0,
                       maximize=False, impl="fused", num_params=n)
    gc.row(f"  learned_update alone (context included) {tag}", f"{gc.cuda_ms(update, reps):.3f} ms")
    gc.row(f"  learned_update host wall {tag}", f"{gc.steady_ms(update, reps):.3f} ms")
    profile(opt, tag)


def profile(opt: LearnedOptimizer, tag: str) -> None:
    """One profiled step under torch.profiler: its table printed, its self CUDA time as a row."""
    try:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof_ctx
        with prof_ctx(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            opt.step()
            torch.cuda.synchronize()
        avgs = prof.key_averages()
        sort = "self_device_time_total" if hasattr(avgs[0], "self_device_time_total") else "self_cuda_time_total"
        print(avgs.table(sort_by=sort, row_limit=15), flush=True)
        # self times, less the step's own annotation range (its CUDA time spans the kernels in it)
        total = sum(getattr(a, sort, 0.0) for a in avgs if not a.key.startswith("Optimizer.")) / 1e3
        gc.row(f"  profiled step: self CUDA time {tag}", f"{total:.3f} ms")
    except Exception as e:  # the profiler's API moves between torch versions: a report, not a failure
        gc.row(f"  profiled step {tag}", "n/a", f"{type(e).__name__}: {str(e)[:80]}")


def host_profile(device, n: int, weights: str, steps: int = 300) -> None:
    """cProfile of ``steps`` back-to-back steps (the host's side; the device keeps up at this size):
    the 25 functions with the most own time, printed, and the host time per step as a row."""
    import cProfile
    import io
    import pstats

    opt = optimizer_for(device, n, weights)
    for _ in range(20):
        opt.step()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        opt.step()
    prof.disable()
    torch.cuda.synchronize()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("tottime")
    stats.print_stats(25)
    print(out.getvalue(), flush=True)
    gc.row(f"host profile {weights}, {n:.0e} params", f"{stats.total_tt / steps * 1e3:.3f} ms",
           "per step under cProfile")


def sweep(device, reps: int) -> None:
    for s_dtype in (torch.float32, torch.bfloat16):
        found = gc.launch_times(device, reps, torch.float32, s_dtype, LAUNCHES, passes=2)
        for (block, warps), (a, b) in found.items():
            gc.row(f"sweep float32/{str(s_dtype)[6:]} BLOCK={block} num_warps={warps}, {gc.SWEEP_N:.0e}",
                   f"{min(a, b):.3f} ms", f"passes {a:.3f} / {b:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the rows to this file")
    ap.add_argument("--host-profile", action="store_true",
                    help="only cProfile the host's side of the step at 1e6 parameters (both weights)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_step_profile: no CUDA device here; nothing was measured.")
        return 0
    device = torch.device("cuda")
    if args.json:
        gc.REPORT["path"] = args.json
        gc.REPORT["head"] = {"benchmark": "gpu_step_profile",
                             "command": "python benchmarks/gpu_step_profile.py " + " ".join(sys.argv[1:]),
                             "machine": gc.machine_info(torch.get_num_threads())}
    print(f"gpu_step_profile on {gc.machine_line(gc.machine_info(torch.get_num_threads()))}")
    if args.host_profile:
        for weights in (DEFAULT_WEIGHTS, "lstm-h4-v1"):
            host_profile(device, 10**6, weights)
        return 0
    for n in SIZES:
        for weights in (DEFAULT_WEIGHTS, "lstm-h4-v1"):
            split(device, int(n), weights, args.reps)
    sweep(device, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
