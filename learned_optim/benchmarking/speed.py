"""Speed and memory benchmark: LearnedOptimizer.step() against torch.optim.Adam, side by side.

Run::

    learned-optim benchmark speed                        # full: 1e4..1e7 params, into ./benchmark-results
    learned-optim benchmark speed --quick --out /tmp/s   # seconds: 1e4 and 1e6, fewer repeats
    learned-optim benchmark speed --quick --sizes 1e6 1e7 --out /tmp/s   # the sizes the CPU targets are set at
    learned-optim benchmark speed --device cuda          # CUDA events and CUDA memory stats
    learned-optim benchmark speed --rerender benchmarks/results/speed.json   # tables and figure again, no runs

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
* on CPU, the learned step on each CPU path of ``cpu_paths.CPU_PATHS`` (hand-vectorized and
  portable C loops, for this CPU and built for AVX2, and the eager torch loop), each in a fresh
  process (skipped with ``--learned-kwargs``).

The tables and the figure come from ``speed_report``. The CUDA path (``--device cuda``) times
with CUDA events; it has not been run on a GPU by this package's CI (none was available), so
treat its first results with care.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..common.files import write_json
from ..common.machine import machine_info
from ..hub import DEFAULT_WEIGHTS, from_pretrained, resolve
from ..kernels import cpu
from ..network import LSTMOptimizerConfig
from ..optimizer import LearnedOptimizer
from ..update import DEFAULT_CHUNK_SIZE
from .common import DEFAULT_OUT, LearnedSetup, check_out_dir
from .cpu_paths import CPU_PATHS, run_python, skip_reason
from .measure import (
    clone_params,
    copy_bandwidth,
    interleaved,
    make_params,
    matmul_rate,
    peak_extra,
    rss_peak_extra,
    state_bytes,
    times,
)
from .speed_report import write_speed_report

__all__ = ["SpeedConfig", "CONFIGS", "OUTPUT_FILES", "run_speed", "rerender", "step_floor", "measure_machine"]

OUTPUT_FILES = ("speed.json", "speed.md", "speed.png")

FULL_SIZES = (1e4, 1e5, 1e6, 1e7)
QUICK_SIZES = (1e4, 1e6)
CUDA_EXTRA_SIZES = (1e8,)  # a large model's parameter count, where a GPU step is bandwidth-bound; CUDA only

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
# usual baseline for the overhead of a whole training step.
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


def measure_machine(config: LSTMOptimizerConfig, sizes: Sequence[int], device: torch.device,
                    chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, Any]:
    """Peak matmul rate for the step's own gate-matmul shape, and peak copy bandwidth (read +
    write), each from the fastest of several repeats."""
    h, f = config.hidden_size, config.num_features
    rates = {str(k): matmul_rate(4 * h, f + h, k, device, repeats=max(10, min(200, int(2e8 / max(k, 1) / 16))))
             for k in sorted({chunk_size, *sizes})}
    # Copy bandwidth on a buffer well past the last-level cache: 256 MiB on CUDA, 64 MiB on CPU.
    nbytes = (256 if device.type == "cuda" else 64) * 2**20
    return {"matmul_flops_per_s": rates, "matmul_shape": f"[{4 * h}, {f + h}] @ [{f + h}, K]",
            "best_matmul_flops_per_s": max(rates.values()),
            "copy_bytes_per_s": copy_bandwidth(device, nbytes, repeats=30), "copy_buffer_bytes": nbytes}


# ---------------------------------------------------------------- memory in a fresh process

def _rss_probe(key: str, n: int, weights_dir: str, threads: int, learned_kwargs_json: str = "{}") -> None:
    """Subprocess entry: one optimizer at one size; prints the RSS high-water growth of a
    steady-state step (bytes) as JSON. Linux only (``/proc/self/clear_refs``)."""
    torch.set_num_threads(threads)
    setup = LearnedSetup(from_pretrained(weights_dir), json.loads(learned_kwargs_json))
    opt = _BY_KEY[key].make(make_params(n, torch.device("cpu")), setup)
    for _ in range(2):  # state and any cached buffers exist after these
        opt.step()
    print(json.dumps({"rss_extra": rss_peak_extra(opt.step)}))


def _rss_extra(key: str, n: int, weights_dir: str, threads: int, learned_kwargs: dict[str, Any]) -> int | None:
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    code = ("from learned_optim.benchmarking.speed import _rss_probe; "
            f"_rss_probe({key!r}, {n}, {weights_dir!r}, {threads}, {json.dumps(learned_kwargs)!r})")
    try:
        return run_python(code)["rss_extra"]
    except (subprocess.SubprocessError, ValueError, IndexError, KeyError):
        return None


# ---------------------------------------------------------------- CPU paths

def _path_probe(n: int, weights_dir: str, threads: int, repeats: int) -> None:
    """Subprocess entry: median time of the learned step at ``n`` parameters on the CPU path the
    environment selects; prints JSON with the time and which C loop ran."""
    torch.set_num_threads(threads)
    net = from_pretrained(weights_dir)
    opt = LearnedOptimizer(make_params(n, torch.device("cpu")), weights=net)
    for _ in range(WARMUP):
        opt.step()
    ts = times(opt.step, "cpu", repeats)
    built = cpu.available(net.config.hidden_size, net.config.num_features)
    simd = cpu.simd_width(net.config.hidden_size, net.config.num_features) if built else None
    print(json.dumps({"median_s": statistics.median(ts), "min_s": min(ts), "repeats": len(ts),
                      "c_loop_built": built, "simd_width": simd}))


def _cpu_paths_bench(n: int, weights_dir: str, threads: int, repeats: int) -> dict[str, Any]:
    """The learned step at ``n`` parameters on every CPU path this machine can run."""
    out: dict[str, Any] = {"n_params_requested": n, "threads": threads, "paths": {}, "skipped": {}}
    for path in CPU_PATHS:
        why = skip_reason(path)
        if why:
            out["skipped"][path.key] = why
            continue
        code = ("from learned_optim.benchmarking.speed import _path_probe; "
                f"_path_probe({n}, {weights_dir!r}, {threads}, {repeats})")
        try:
            out["paths"][path.key] = {"label": path.label, "env": dict(path.env), **run_python(code, path.env)}
        except (subprocess.SubprocessError, ValueError, IndexError) as e:
            out["skipped"][path.key] = f"the probe failed: {type(e).__name__}"
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
    timing = interleaved(fns, device, budget_s * 2, warmup=WARMUP, min_repeats=MIN_REPEATS, max_repeats=MAX_REPEATS)
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


def run_speed(*, weights: str | None = None, quick: bool = False, out: str | Path = DEFAULT_OUT,
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
                    ps = clone_params(base)
                    opts[cfg.key] = cfg.make(ps, setup)
                    fns[cfg.key] = opts[cfg.key].step
                del base
                timing = interleaved(fns, dev, budget, warmup=WARMUP, min_repeats=MIN_REPEATS,
                                     max_repeats=MAX_REPEATS)
                entry: dict[str, Any] = {"n_params": n_actual, "timing": timing, "memory": {}}
                for key, opt in opts.items():
                    state = state_bytes(opt)
                    extra = peak_extra(opt.step, dev)
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




def rerender(path: str | Path, figure: bool = True) -> dict[str, Any]:
    """Rewrite the Markdown (and, with ``figure``, the PNG) beside a saved speed.json from it,
    without measuring anything; the JSON is left as it is. Use after a change to the report.

    Run: ``learned-optim benchmark speed --rerender benchmarks/results/speed.json``
    """
    path = Path(path)
    res = json.loads(path.read_text(encoding="utf-8"))
    write_speed_report(res, path.parent, figure=figure)
    return res
