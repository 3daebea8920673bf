"""Measuring instruments of the speed benchmark and the developer scripts in ``benchmarks/``.

* parameters: ``make_params`` (a stack of linear layers with fixed gradients), ``clone_params``;
* timing: ``times`` (CUDA events on a GPU, ``time.perf_counter`` otherwise), ``median_time``,
  ``best_time``, ``interleaved`` (several functions timed round-robin);
* memory: ``peak_extra`` (allocations beyond what existed before a call: torch's profiler on the
  CPU, ``torch.cuda.max_memory_allocated`` on a GPU), ``rss_peak_extra`` (growth of the process's
  resident-set high-water mark, Linux) and ``state_bytes`` (an optimizer's state tensors);
* machine peaks: ``matmul_rate`` (an ``addmm`` of a given shape) and ``copy_bandwidth``.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import torch

__all__ = ["make_params", "clone_params", "sync_for", "times", "median_time", "best_time", "interleaved",
           "peak_extra", "rss_peak_extra", "read_proc_status", "state_bytes", "matmul_rate", "copy_bandwidth"]


# ---------------------------------------------------------------- parameters

def make_params(n: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """~n parameters as 4 square linear layers (weight [d, d], bias [d]), with fixed gradients."""
    d = max(2, round(math.sqrt(n / 4)))
    gen = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(4):
        for shape in ((d, d), (d,)):
            p = torch.randn(shape, generator=gen).to(device).requires_grad_()
            p.grad = torch.randn(shape, generator=gen).to(device)
            params.append(p)
    return params


def clone_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Independent copies of ``params``, gradients included."""
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_()
        q.grad = p.grad.clone()
        out.append(q)
    return out


# ---------------------------------------------------------------- timing

def sync_for(device: torch.device | str) -> Callable[[], None]:
    """What waits for the device's queued work: ``torch.cuda.synchronize`` or nothing."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def times(fn: Callable[[], Any], device: torch.device | str, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``: CUDA events on a GPU, the wall clock
    (``time.perf_counter``) around a synchronised call otherwise."""
    out = []
    if torch.device(device).type == "cuda":
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        return out
    sync = sync_for(device)
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def median_time(fn: Callable[[], Any], device: torch.device | str, repeats: int, warmup: int = 0) -> float:
    """Median seconds per call over ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(times(fn, device, repeats))


def best_time(fn: Callable[[], Any], device: torch.device | str, repeats: int) -> float:
    """Fastest of ``repeats`` calls, in seconds. A machine *peak* is the fastest the machine did
    the work: the minimum, not the median, so that a busy neighbour does not lower it."""
    return min(times(fn, device, repeats))


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, budget_s: float, *, warmup: int,
                min_repeats: int, max_repeats: int) -> dict[str, Any]:
    """Median, minimum and maximum time of each fn, measured round-robin with a rotating order
    (drift in machine load hits all alike) after ``warmup`` calls each; the repeat count (within
    [min_repeats, max_repeats]) is sized so that the whole measurement takes about ``budget_s``."""
    sync = sync_for(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    probe = {k: median_time(fn, device, 1) for k, fn in fns.items()}
    repeats = int(max(min_repeats, min(max_repeats, budget_s / max(sum(probe.values()), 1e-9))))
    measured: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            measured[k] += times(fns[k], device, 1)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "repeats": len(v)}
            for k, v in measured.items()}


# ---------------------------------------------------------------- memory

def _profiled_peak_extra(fn: Callable[[], Any]) -> int:
    """Peak of (bytes allocated - bytes freed) by torch on the CPU during fn(), from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    cur = peak = 0
    for _, nb in events:
        cur += nb
        peak = max(peak, cur)
    return peak


def peak_extra(fn: Callable[[], Any], device: torch.device) -> int:
    """The most bytes torch allocated during ``fn()`` beyond what existed before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    return _profiled_peak_extra(fn)


def read_proc_status(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (e.g. ``"VmRSS"``) in bytes; None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_peak_extra(fn: Callable[[], Any]) -> int | None:
    """Growth of the resident-set high-water mark during ``fn()``, in bytes: VmHWM after the call
    minus VmRSS before it, with VmHWM first reset to the current RSS through
    ``/proc/self/clear_refs`` (Linux >= 4.0, proc(5)). None where that is not possible."""
    rss = read_proc_status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return None
    fn()
    hwm = read_proc_status("VmHWM")
    return None if rss is None or hwm is None else max(0, hwm - rss)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in ``opt.state``."""
    return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
               if isinstance(t, torch.Tensor))


# ---------------------------------------------------------------- machine peaks

def matmul_rate(m: int, k: int, n: int, device: torch.device, repeats: int) -> float:
    """FLOP/s of ``addmm`` with a bias column, ``[m, k] @ [k, n]``, fastest of ``repeats``."""
    w = torch.randn(m, k, device=device)
    b = torch.randn(m, 1, device=device)
    z = torch.randn(k, n, device=device)
    out = torch.empty(m, n, device=device)
    fn = lambda: torch.addmm(b, w, z, out=out)  # noqa: E731
    for _ in range(2):
        fn()
    return 2 * m * k * n / best_time(fn, device, repeats)


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int) -> float:
    """Bytes per second read plus written by ``copy_`` of an fp32 buffer of ``nbytes`` (pick it
    well past the last-level cache), fastest of ``repeats``."""
    src = torch.empty(nbytes // 4, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    return 2 * src.nbytes / best_time(lambda: dst.copy_(src), device, repeats)
