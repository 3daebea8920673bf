"""Speed and memory benchmark: LearnedOptimizer.step() against torch.optim.Adam, side by side.

Run::

    learned-optim benchmark speed                        # full: 1e4..1e7 params, writes benchmarks/results/
    learned-optim benchmark speed --quick --out /tmp/s   # seconds: 1e4 and 1e6, fewer repeats
    learned-optim benchmark speed --quick --sizes 1e6 1e7 --out /tmp/s   # the fast-path targets (issue 5)
    learned-optim benchmark speed --device cuda          # CUDA events and CUDA memory stats

What is measured, per parameter count N (a stack of 4 square linear layers with biases):

* step time of every optimizer of ``CONFIGS`` on its own copy of the same parameters and
  gradients, interleaved round-robin (so drift in machine load hits all alike), median after
  warm-up; reported also as ratios to Adam (fused) and Adam (foreach).
* state bytes per parameter (the tensors in ``optimizer.state``).
* peak extra memory during one steady-state ``step()`` (allocations beyond what existed before
  it): on CPU from torch's profiler (``profile_memory=True``: every allocation and free of the
  step, summed in time order), cross-checked by the process's resident-set high-water mark
  (``/proc/self/clear_refs`` + ``VmHWM``) in a fresh subprocess; on CUDA from
  ``torch.cuda.max_memory_allocated``.
* the floor of the learned step: FLOPs and bytes it must move per parameter (from the weights'
  config), at the machine's measured matmul rate (an ``addmm`` of the step's own shape
  ``[4H, F+H] @ [F+H, K]``, at K = chunk size and K = N, the faster of the two) and measured
  copy bandwidth; reported as measured time / floor.
* a whole training step (zero_grad, forward, backward, step) of a small transformer language
  model, per optimizer, interleaved the same way.
* on CPU, the learned step at 1e6 parameters on each CPU implementation (hand-vectorized and
  portable C loops, for this CPU and built for AVX2, and the eager torch loop), each in a fresh
  process selected by environment variables (skipped with ``--learned-kwargs``).

The CUDA path (``--device cuda``) times with CUDA events; it has not been run on a GPU by this
package's CI (none was available), so treat its first results with care.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..hub import DEFAULT_WEIGHTS, from_pretrained, resolve
from ..network import LSTMOptimizerConfig
from ..update import DEFAULT_CHUNK_SIZE
from .common import LearnedSetup, check_out_dir, machine_info, write_json

__all__ = ["SpeedConfig", "CONFIGS", "run_speed", "step_floor", "speed_markdown", "plot_speed"]

FULL_SIZES = (1e4, 1e5, 1e6, 1e7)
QUICK_SIZES = (1e4, 1e6)
CUDA_EXTRA_SIZES = (1e8,)  # issue 5's CUDA target size; only with --device cuda

# Timing: repeat each optimizer until it has spent ~budget seconds, within [min, max] repeats.
WARMUP = 3
FULL_BUDGET_S, QUICK_BUDGET_S = 5.0, 0.3
MIN_REPEATS, MAX_REPEATS = 5, 100
# The RSS cross-check spawns one Python per (size, optimizer): only where the sizes make RSS
# meaningful (small steps are lost in allocator noise).
RSS_MIN_SIZE = 1e6


@dataclass(frozen=True)
class SpeedConfig:
    key: str
    label: str
    make: Callable[[list[torch.Tensor], LearnedSetup], torch.optim.Optimizer]


# The optimizers compared. Adam foreach/fused are torch's two fast Adam paths; fused AdamW is the
# baseline issue 5 names for whole-training-step overhead.
CONFIGS: tuple[SpeedConfig, ...] = (
    SpeedConfig("adam_foreach", "Adam (foreach)", lambda p, _setup: torch.optim.Adam(p, lr=1e-3, foreach=True)),
    SpeedConfig("adam_fused", "Adam (fused)", lambda p, _setup: torch.optim.Adam(p, lr=1e-3, fused=True)),
    SpeedConfig("adamw_fused", "AdamW (fused)",
                lambda p, _setup: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, fused=True)),
    SpeedConfig("learned", "learned", lambda p, setup: setup.make(p, lr=1e-3)),
)
_BY_KEY = {c.key: c for c in CONFIGS}


# ---------------------------------------------------------------- the floor

def step_floor(config: LSTMOptimizerConfig, param_bytes: int = 4, state_bytes: int = 4) -> dict[str, float]:
    """FLOPs and bytes per parameter that one learned step must do/move (from the rule's maths).

    FLOPs (H = hidden size, F = features): the gate matmul 2*4H*(F+H), the head 2*2H, and the
    elementwise work counted op by op from ``update.lstm_rule`` (each transcendental as 1):
    moments 7, denominator 3, Adam direction 2, g/d 1, clipping 2F, gate bias 4H, gate
    nonlinearities 4H, tanh of the cell input 2H, cell update 3H, tanh(c') 3H, h' H, head bias
    and tanh 4, step multiplier 2, direction 3, parameter write 2.
    Bytes: read + write of the parameter, m, v, h (H) and c (H); read of the gradient.
    """
    h, f = config.hidden_size, config.num_features
    matmul = 2 * 4 * h * (f + h)
    head = 2 * 2 * h
    elementwise = 7 + 3 + 2 + 1 + 2 * f + 4 * h + 4 * h + 2 * h + 3 * h + 3 * h + h + 4 + 2 + 3 + 2
    bytes_ = 2 * param_bytes + param_bytes + 2 * state_bytes * (2 + 2 * h)
    return {"flops_matmul": matmul, "flops_head": head, "flops_elementwise": elementwise,
            "flops": matmul + head + elementwise, "bytes": bytes_}


def _times(fn: Callable[[], Any], sync: Callable[[], None], repeats: int) -> list[float]:
    ts = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return ts


def _median_time(fn: Callable[[], Any], sync: Callable[[], None], repeats: int) -> float:
    return statistics.median(_times(fn, sync, repeats))


def _best_time(fn: Callable[[], Any], sync: Callable[[], None], repeats: int) -> float:
    # A machine *peak* is the fastest the machine did the work: the minimum, not the median, so
    # that a busy neighbour does not lower the floor the optimizer is measured against.
    return min(_times(fn, sync, repeats))


def measure_machine(config: LSTMOptimizerConfig, sizes: Sequence[int], device: torch.device,
                    chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, Any]:
    """Peak matmul rate for the step's own gate-matmul shape, and peak copy bandwidth (read +
    write), each from the fastest of several repeats."""
    sync = _sync(device)
    h, f = config.hidden_size, config.num_features
    w = torch.randn(4 * h, f + h, device=device)
    b = torch.randn(4 * h, 1, device=device)
    rates = {}
    for k in sorted({chunk_size, *sizes}):
        z = torch.randn(f + h, k, device=device)
        out = torch.empty(4 * h, k, device=device)
        fn = lambda: torch.addmm(b, w, z, out=out)  # noqa: E731
        for _ in range(2):
            fn()
        reps = max(10, min(200, int(2e8 / max(k, 1) / 16)))
        t = _best_time(fn, sync, reps)
        rates[str(k)] = 2 * 4 * h * (f + h) * k / t
        del z, out
    # Copy bandwidth on a buffer well past the last-level cache (the 32 MiB L3 of the reference
    # machine, `lscpu`): 256 MiB on CUDA, 64 MiB on CPU.
    n = (256 if device.type == "cuda" else 64) * 2**20 // 4
    src = torch.empty(n, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    t = _best_time(lambda: dst.copy_(src), sync, 30)
    return {"matmul_flops_per_s": rates, "matmul_shape": f"[{4 * h}, {f + h}] @ [{f + h}, K]",
            "best_matmul_flops_per_s": max(rates.values()),
            "copy_bytes_per_s": 2 * src.nbytes / t, "copy_buffer_bytes": src.nbytes}


# ---------------------------------------------------------------- parameters and timing

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


def _clone_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_()
        q.grad = p.grad.clone()
        out.append(q)
    return out


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
               if isinstance(t, torch.Tensor))


def _interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, budget_s: float) -> dict[str, Any]:
    """Median time of each fn, measured round-robin (rotating order) after WARMUP calls each."""
    sync = _sync(device)
    for fn in fns.values():
        for _ in range(WARMUP):
            fn()
    sync()
    # Size the repeat count from the slowest fn so the whole measurement fits the budget.
    probe = {k: _median_time(fn, sync, 1) for k, fn in fns.items()}
    repeats = int(max(MIN_REPEATS, min(MAX_REPEATS, budget_s / max(sum(probe.values()), 1e-9))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    use_events = device.type == "cuda"
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            if use_events:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fns[k]()
                end.record()
                end.synchronize()
                times[k].append(start.elapsed_time(end) / 1e3)
            else:
                t = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "repeats": len(v)}
            for k, v in times.items()}


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


def _peak_extra(fn: Callable[[], Any], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    return _profiled_peak_extra(fn)


def _read_status(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_probe(key: str, n: int, weights_dir: str, threads: int, learned_kwargs_json: str = "{}") -> None:
    """Subprocess entry: one optimizer at one size; prints the RSS high-water growth of a
    steady-state step (bytes) as JSON. Linux only (``/proc/self/clear_refs``)."""
    torch.set_num_threads(threads)
    setup = LearnedSetup(from_pretrained(weights_dir), json.loads(learned_kwargs_json))
    params = make_params(n, torch.device("cpu"))
    opt = _BY_KEY[key].make(params, setup)
    for _ in range(2):  # state and any cached buffers exist after these
        opt.step()
    rss = _read_status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0, proc(5))
    except OSError:
        print(json.dumps({"rss_extra": None}))
        return
    opt.step()
    hwm = _read_status("VmHWM")
    print(json.dumps({"rss_extra": None if rss is None or hwm is None else max(0, hwm - rss)}))


def _rss_extra(key: str, n: int, weights_dir: str, threads: int, learned_kwargs: dict[str, Any]) -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    code = ("from learned_optim.benchmarking.speed import _rss_probe; "
            f"_rss_probe({key!r}, {n}, {weights_dir!r}, {threads}, {json.dumps(learned_kwargs)!r})")
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                                 str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))})
        return json.loads(res.stdout.strip().splitlines()[-1])["rss_extra"]
    except (subprocess.SubprocessError, ValueError, IndexError, KeyError):
        return None


# ---------------------------------------------------------------- CPU implementations

# The CPU paths of the learned step, each selected by environment variables in a fresh process
# (the C library is built once per process): (key, label, environment).
CPU_PATHS = (
    ("native_simd", "C loop, hand-vectorized (this CPU's -march=native)", {}),
    ("native_portable", "C loop, portable (this CPU's -march=native)", {"LEARNED_OPTIM_C_SIMD": "0"}),
    ("avx2_simd", "C loop, hand-vectorized, built for AVX2 (-march=x86-64-v3)",
     {"LEARNED_OPTIM_C_MARCH": "x86-64-v3"}),
    ("avx2_portable", "C loop, portable, built for AVX2 (-march=x86-64-v3)",
     {"LEARNED_OPTIM_C_MARCH": "x86-64-v3", "LEARNED_OPTIM_C_SIMD": "0"}),
    ("eager", "eager torch chunk loop (no compiler)", {"LEARNED_OPTIM_C_KERNEL": "0"}),
)


def _path_probe(n: int, weights_dir: str, threads: int, repeats: int) -> None:
    """Subprocess entry: median time of the learned step at ``n`` parameters on the CPU path the
    environment selects; prints JSON with the time and which C loop ran."""
    torch.set_num_threads(threads)
    from ..kernels import cpu
    from ..optimizer import LearnedOptimizer

    net = from_pretrained(weights_dir)
    params = make_params(n, torch.device("cpu"))
    opt = LearnedOptimizer(params, weights=net)
    for _ in range(WARMUP):
        opt.step()
    times = _times(opt.step, lambda: None, repeats)
    built = cpu.available(net.config.hidden_size, net.config.num_features)
    simd = cpu.simd_width(net.config.hidden_size, net.config.num_features) if built else None
    print(json.dumps({"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times),
                      "c_loop_built": built, "simd_width": simd}))


def _has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def _cpu_paths_bench(n: int, weights_dir: str, threads: int, repeats: int) -> dict[str, Any]:
    """The learned step at ``n`` parameters on every CPU path this machine can run."""
    out: dict[str, Any] = {"n_params_requested": n, "threads": threads, "paths": {}, "skipped": {}}
    for key, label, env in CPU_PATHS:
        if "LEARNED_OPTIM_C_MARCH" in env and not _has_avx2():
            out["skipped"][key] = "the CPU has no AVX2+FMA"
            continue
        code = ("from learned_optim.benchmarking.speed import _path_probe; "
                f"_path_probe({n}, {weights_dir!r}, {threads}, {repeats})")
        full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, [
            str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))}
        for k in ("LEARNED_OPTIM_C_KERNEL", "LEARNED_OPTIM_C_SIMD", "LEARNED_OPTIM_C_MARCH"):
            if k not in env:
                full_env.pop(k, None)  # only this path's settings, not the caller's
        try:
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                                 env=full_env)
            out["paths"][key] = {"label": label, "env": env, **json.loads(res.stdout.strip().splitlines()[-1])}
        except (subprocess.SubprocessError, ValueError, IndexError) as e:
            out["skipped"][key] = f"the probe failed: {type(e).__name__}"
    return out


# ---------------------------------------------------------------- whole training step

class _TinyTransformerLM(nn.Module):
    """A small causal transformer LM (the "realistic small model" of the training-step timing)."""

    def __init__(self, vocab: int, d_model: int, layers: int, seq_len: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(seq_len, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=4 * d_model, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq_len))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        return self.head(self.body(self.emb(x) + self.pos[:t], mask=self.mask[:t, :t], is_causal=True))


# (vocab, d_model, layers, batch, seq_len): full ~0.8M params, quick ~0.1M.
TRAIN_MODEL_FULL = (256, 128, 4, 16, 64)
TRAIN_MODEL_QUICK = (256, 64, 2, 4, 32)


def _training_step_bench(setup: LearnedSetup, device: torch.device, quick: bool,
                         budget_s: float) -> dict[str, Any]:
    vocab, d, layers, batch, seq = TRAIN_MODEL_QUICK if quick else TRAIN_MODEL_FULL
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(vocab, (batch, seq + 1), generator=gen).to(device)
    torch.manual_seed(0)
    base = _TinyTransformerLM(vocab, d, layers, seq).to(device)
    fns, models = {}, {}
    for cfg in CONFIGS:
        model = _TinyTransformerLM(vocab, d, layers, seq).to(device)
        model.load_state_dict(base.state_dict())
        opt = cfg.make(list(model.parameters()), setup)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            logits = model(x[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))
            loss.backward()
            opt.step()

        fns[cfg.key] = step
        models[cfg.key] = model
    n_params = sum(p.numel() for p in base.parameters())
    timing = _interleaved(fns, device, budget_s * 2)
    return {"model": f"causal transformer LM: vocab {vocab}, d_model {d}, {layers} layers, batch {batch}, "
                     f"seq {seq}", "params": n_params, "timing": timing,
            "ratio_learned_to": {k: timing["learned"]["median_s"] / timing[k]["median_s"] for k in timing}}


# ---------------------------------------------------------------- the benchmark

def _parse_sizes(sizes: Sequence[float] | None, quick: bool, device: torch.device) -> list[int]:
    if sizes is None:
        sizes = QUICK_SIZES if quick else FULL_SIZES + (CUDA_EXTRA_SIZES if device.type == "cuda" else ())
    out = []
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 16:
            raise ValueError(f"sizes: each parameter count must be a number >= 16, got {s!r}; e.g. --sizes 1e6 1e7")
        out.append(int(s))
    return out


def run_speed(*, weights: str | None = None, quick: bool = False, out: str | Path = "benchmarks/results",
              sizes: Sequence[float] | None = None, threads: int = 1, device: str = "cpu",
              rss_check: bool = True, learned_kwargs: dict[str, Any] | None = None, progress: bool = True,
              command: str = "") -> dict[str, Any]:
    """Run the speed/memory benchmark and write speed.json / .md / .png into ``out``.

    Args:
        weights: learned-optimizer weights (their config sets H and F); None = the default.
        quick: fewer sizes (QUICK_SIZES), shorter timing budgets, a smaller training-step model.
        out: output directory (created).
        sizes: parameter counts to measure (default FULL_SIZES, or QUICK_SIZES with ``quick``).
        threads: torch intra-op threads (default 1: the reference machine is shared; the
            ratios, not the absolute times, are the result).
        device: ``"cpu"`` or ``"cuda"``.
        rss_check: also measure RSS high-water growth in subprocesses (CPU, sizes >= 1e6).
        learned_kwargs: extra LearnedOptimizer keyword arguments (JSON-able; e.g.
            ``{"impl": "reference"}`` or ``{"chunk_size": 4096}``), from ``--learned-kwargs``.
        progress: show a tqdm progress bar.
        command: the command line, recorded in the outputs.
    """
    from tqdm.auto import tqdm

    from .report import write_speed_report

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False; use --device cpu")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}; e.g. --threads 1")
    dev = torch.device(device)
    size_list = _parse_sizes(sizes, quick, dev)
    out = check_out_dir(out)
    net = from_pretrained(weights).to(dev)
    setup = LearnedSetup(net, dict(learned_kwargs or {}))
    weights_dir = str(resolve(weights))
    budget = QUICK_BUDGET_S if quick else FULL_BUDGET_S
    floor = step_floor(net.config)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    t_start = time.perf_counter()
    res: dict[str, Any] = {
        "benchmark": "speed", "schema_version": 1, "command": command, "machine": machine_info(threads),
        "device": device,
        "weights": {"name": str(weights if weights is not None else DEFAULT_WEIGHTS), "path": weights_dir,
                    "config": net.config.to_dict()},
        "settings": {"quick": quick, "sizes": size_list, "warmup": WARMUP, "budget_s": budget,
                     "threads": threads, "timer": "CUDA events" if device == "cuda" else "time.perf_counter",
                     "param_layout": "4 x (weight [d, d] + bias [d]), fp32",
                     "learned_kwargs": setup.kwargs,
                     "configs": {c.key: setup.label(c.label) if c.key == "learned" else c.label for c in CONFIGS}},
        "floor_per_param": floor,
        "sizes": [],
    }
    try:
        steps_total = len(size_list) + 3
        with tqdm(total=steps_total, desc="speed", unit="stage", disable=not progress, mininterval=1.0) as bar:
            bar.set_postfix_str("machine peaks")
            res["machine_peaks"] = measure_machine(net.config, size_list, dev)
            bar.update(1)
            peak_rate = res["machine_peaks"]["best_matmul_flops_per_s"]
            bw = res["machine_peaks"]["copy_bytes_per_s"]
            for n in size_list:
                bar.set_postfix_str(f"N={n:.0e}")
                base = make_params(n, dev)
                n_actual = sum(p.numel() for p in base)
                opts, fns = {}, {}
                for cfg in CONFIGS:
                    ps = _clone_params(base)
                    opts[cfg.key] = cfg.make(ps, setup)
                    fns[cfg.key] = opts[cfg.key].step
                del base
                timing = _interleaved(fns, dev, budget)
                entry: dict[str, Any] = {"n_params": n_actual, "timing": timing, "memory": {}}
                for key, opt in opts.items():
                    state = _state_bytes(opt)
                    extra = _peak_extra(opt.step, dev)
                    mem = {"state_bytes": state, "state_bytes_per_param": state / n_actual,
                           "peak_extra_bytes": extra,
                           "peak_extra_over_state": extra / state if state else None}
                    if rss_check and dev.type == "cpu" and n >= RSS_MIN_SIZE:
                        rss = _rss_extra(key, n, weights_dir, threads, setup.kwargs)
                        mem["rss_extra_bytes"] = rss
                        mem["rss_extra_over_state"] = rss / state if rss is not None and state else None
                    entry["memory"][key] = mem
                learned_t = timing["learned"]["median_s"]
                entry["ratio_learned_to"] = {k: learned_t / v["median_s"] for k, v in timing.items()}
                compute_floor = floor["flops"] * n_actual / peak_rate
                bytes_floor = floor["bytes"] * n_actual / bw
                entry["floor"] = {"compute_s": compute_floor, "bytes_s": bytes_floor,
                                  "floor_s": max(compute_floor, bytes_floor),
                                  "measured_over_compute_floor": learned_t / compute_floor,
                                  "measured_over_bytes_floor": learned_t / bytes_floor,
                                  "measured_over_floor": learned_t / max(compute_floor, bytes_floor)}
                res["sizes"].append(entry)
                del opts, fns
                bar.update(1)
            bar.set_postfix_str("training step")
            res["training_step"] = _training_step_bench(setup, dev, quick, budget)
            bar.update(1)
            if dev.type == "cpu" and not setup.kwargs:
                bar.set_postfix_str("CPU paths")
                n_paths = 10_000 if quick else 1_000_000
                res["cpu_paths"] = _cpu_paths_bench(n_paths, weights_dir, threads, 5 if quick else 30)
                for v in res["cpu_paths"]["paths"].values():
                    v["over_compute_floor"] = v["median_s"] / (floor["flops"] * n_paths / peak_rate)
    finally:
        torch.set_num_threads(old_threads)
    res["wall_s"] = time.perf_counter() - t_start
    res["machine"]["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    write_json(out / "speed.json", res)
    write_speed_report(res, out)
    return res


# ---------------------------------------------------------------- report

def _ms(s: float) -> str:
    return f"{s * 1e3:.3g}"


def _mib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.3g}"


def speed_markdown(res: dict[str, Any]) -> str:
    labels = res["settings"]["configs"]
    fl = res["floor_per_param"]
    mp = res["machine_peaks"]
    cfg = res["weights"]["config"]
    from .report import _machine_line

    lines = [f"# Speed and memory: LearnedOptimizer.step() vs torch.optim.Adam ({res['device']})", ""]
    if res["settings"]["quick"]:
        lines += ["**QUICK RUN** (short timing budget): indicative only.", ""]
    lines += [
        f"Command: `{res['command']}`  ",
        f"Machine: {_machine_line(res['machine'])}  ",
        f"Date (UTC): {res['machine']['date_utc']}; wall time {res['wall_s']:.0f} s. Weights `{res['weights']['name']}` "
        f"(H = {cfg['hidden_size']}, F = {len(cfg['features'])}). Parameters: {res['settings']['param_layout']}. "
        f"Timer: {res['settings']['timer']}; medians after {res['settings']['warmup']} warm-up steps, optimizers "
        "interleaved round-robin in one process.",
        "",
        "## Optimizer step time (ms, median)", "",
        "| params | " + " | ".join(labels.values()) + " | learned / Adam fused | learned / Adam foreach |",
        "|---|" + "---|" * (len(labels) + 2),
    ]
    for e in res["sizes"]:
        t = e["timing"]
        lines.append(f"| {e['n_params']:.3g} | " + " | ".join(_ms(t[k]["median_s"]) for k in labels)
                     + f" | {e['ratio_learned_to']['adam_fused']:.1f}x | {e['ratio_learned_to']['adam_foreach']:.1f}x |")
    lines += [
        "", "## The learned step against its floor", "",
        f"Per parameter the step must do {fl['flops']} FLOPs ({fl['flops_matmul']} gate matmul, {fl['flops_head']} head, "
        f"{fl['flops_elementwise']} elementwise) and move {fl['bytes']} bytes (read+write of param, m, v, h, c; read of "
        f"grad; fp32). Measured peaks: matmul {mp['matmul_shape']} at "
        + ", ".join(f"K={k}: {v / 1e9:.1f} GFLOP/s" for k, v in mp["matmul_flops_per_s"].items())
        + f" (floor uses the best, {mp['best_matmul_flops_per_s'] / 1e9:.1f} GFLOP/s); copy bandwidth "
        f"{mp['copy_bytes_per_s'] / 1e9:.1f} GB/s (read+write, {mp['copy_buffer_bytes'] / 2**20:.0f} MiB buffer); "
        "both peaks are the fastest of their repeats. Floor = max(compute floor, bytes floor).",
        "",
        "| params | learned (ms) | compute floor (ms) | bytes floor (ms) | measured / compute floor | measured / bytes floor | measured / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in res["sizes"]:
        f = e["floor"]
        lines.append(f"| {e['n_params']:.3g} | {_ms(e['timing']['learned']['median_s'])} | {_ms(f['compute_s'])} | "
                     f"{_ms(f['bytes_s'])} | {f['measured_over_compute_floor']:.2f}x | {f['measured_over_bytes_floor']:.2f}x | "
                     f"{f['measured_over_floor']:.2f}x |")
    rss_cols = any("rss_extra_bytes" in m for e in res["sizes"] for m in e["memory"].values())
    lines += ["", "## Memory", "",
              "State bytes/param: tensors in `optimizer.state`. Peak extra: the most memory allocated beyond what "
              "existed before one steady-state `step()` ("
              + ("torch.cuda.max_memory_allocated" if res["device"] == "cuda" else
                 "torch profiler, every CPU allocation and free of the step")
              + "), in MiB and as a fraction of the optimizer's state"
              + ("; RSS: growth of the resident-set high-water mark over that step in a fresh process." if rss_cols else ".")
              + " Workspace an optimizer allocates once and keeps between steps (e.g. cached chunk buffers) is"
              " not in either figure; the state column counts only `optimizer.state`.",
              ""]
    head = "| params | optimizer | state B/param | state (MiB) | peak extra (MiB) | peak extra / state |"
    if rss_cols:
        head += " RSS extra (MiB) | RSS extra / state |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for e in res["sizes"]:
        for k, m in e["memory"].items():
            row = (f"| {e['n_params']:.3g} | {labels[k]} | {m['state_bytes_per_param']:.1f} | {_mib(m['state_bytes'])} | "
                   f"{_mib(m['peak_extra_bytes'])} | "
                   + ("n/a" if m["peak_extra_over_state"] is None else f"{100 * m['peak_extra_over_state']:.1f}%") + " |")
            if rss_cols:
                r = m.get("rss_extra_over_state")
                row += f" {_mib(m.get('rss_extra_bytes'))} | " + ("n/a" if r is None else f"{100 * r:.1f}%") + " |"
            lines.append(row)
    ts = res["training_step"]
    lines += ["", f"## Whole training step: {ts['model']} ({ts['params'] / 1e6:.2f}M params)", "",
              "zero_grad + forward + backward + step: median and minimum over the repeats (ms), and the learned "
              "optimizer's median over this one's.", "",
              "| optimizer | median ms | min ms | learned / this (medians) |", "|---|---|---|---|"]
    for k, v in ts["timing"].items():
        lines.append(f"| {labels[k]} | {_ms(v['median_s'])} | {_ms(v['min_s'])} | {ts['ratio_learned_to'][k]:.2f}x |")
    # Adam (fused) and AdamW (fused) do nearly the same work, so their gap is a gauge of timing
    # noise on this machine (other processes, frequency changes).
    gaps = [abs(e["timing"]["adam_fused"]["median_s"] - e["timing"]["adamw_fused"]["median_s"])
            / e["timing"]["adam_fused"]["median_s"] for e in res["sizes"]]
    tgap = abs(ts["timing"]["adam_fused"]["median_s"] - ts["timing"]["adamw_fused"]["median_s"]) \
        / ts["timing"]["adam_fused"]["median_s"]
    lines += ["", f"Noise gauge: Adam (fused) and AdamW (fused) do nearly the same work; their medians differ by "
              f"{', '.join(f'{100 * g:.0f}%' for g in gaps)} over the step sizes above and by {100 * tgap:.0f}% on the "
              "training step. Differences of that order are not signal."]
    cp = res.get("cpu_paths")
    if cp:
        lines += ["", f"## CPU implementations of the learned step ({cp['n_params_requested']:.0e} params, "
                  f"{cp['threads']} thread(s))", "",
                  "The same step on each CPU path, each in a fresh process with the environment shown (medians; "
                  "the floor is the compute floor above). The AVX2 builds run on this CPU, so they show what the "
                  "AVX2 code costs here, not on an AVX2-only machine.", "",
                  "| path | environment | median ms | / compute floor | C loop |", "|---|---|---|---|---|"]
        for v in cp["paths"].values():
            env = " ".join(f"`{k}={x}`" for k, x in v["env"].items()) or "(default)"
            loop = ("none" if not v["c_loop_built"] or v["env"].get("LEARNED_OPTIM_C_KERNEL") == "0" else
                    "portable" if v["env"].get("LEARNED_OPTIM_C_SIMD") == "0" or not v["simd_width"] else
                    f"{v['simd_width']}-bit vectors")
            lines.append(f"| {v['label']} | {env} | {_ms(v['median_s'])} | {v['over_compute_floor']:.2f}x | {loop} |")
        for k, why in cp["skipped"].items():
            lines.append(f"| {k} | skipped: {why} | | | |")
    lines += ["", "Targets of issue 5 (CPU, 1e6 and 1e7 params): measured / compute floor <= 2; peak extra / state "
              "<= 25%. Raw numbers: `speed.json`; figure: `speed.png`.", ""]
    return "\n".join(lines)


def plot_speed(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = res["settings"]["configs"]
    ns = [e["n_params"] for e in res["sizes"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for k, lab in labels.items():
        a1.plot(ns, [e["timing"][k]["median_s"] * 1e3 for e in res["sizes"]], marker="o", label=lab,
                lw=2.2 if k == "learned" else 1.2)
        line, = a2.plot(ns, [e["memory"][k]["state_bytes_per_param"] for e in res["sizes"]], marker="o",
                        label=f"{lab}: state", lw=2.2 if k == "learned" else 1.2)
        a2.plot(ns, [e["memory"][k]["peak_extra_bytes"] / e["n_params"] for e in res["sizes"]], ls="--", marker="x",
                color=line.get_color(), label=f"{lab}: peak extra during step")
    a1.plot(ns, [e["floor"]["floor_s"] * 1e3 for e in res["sizes"]], "k:", label="learned floor")
    a1.set(xscale="log", yscale="log", xlabel="parameters", ylabel="step time (ms, median)",
           title=f"optimizer.step() time ({res['device']}, {res['settings']['threads']} thread(s))")
    a1.legend(fontsize=7)
    a2.set(xscale="log", xlabel="parameters", ylabel="bytes / parameter", title="optimizer memory per parameter")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
