"""What a measurement ran on: recorded in every results file, summarised in one line.

``machine_info`` gathers the CPU model (and its family, model number and widest vector ISA), core
count, torch threads, platform, Python/torch/CUDA versions, the 1-minute load average (other users
of a shared machine skew timings) and the git commit of the package (with the package files that
differ from it, if any).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["machine_info", "machine_line"]


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def _cpu_model(info: dict[str, str]) -> str:
    return info.get("model name") or platform.processor() or "unknown"


def _cpu_id(info: dict[str, str]) -> str | None:
    """Family, model and widest vector ISA, e.g. "family 23 model 49, AVX2": one model name
    ("AMD EPYC") covers CPUs whose float rounding differs (the C loop has an AVX-512 and an AVX2
    build, and trajectories under a learned rule are chaotic), so results files record this too."""
    if "cpu family" not in info:
        return None
    flags = set(info.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    return f"family {info['cpu family']} model {info.get('model', '?')}, {isa}"


def _git_state() -> tuple[str | None, list[str]]:
    """The checkout's commit (+ "-dirty" if the package differs from it) and the package files
    that differ (modified or untracked); (None, []) outside a git checkout, e.g. from a wheel."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None, []
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", "learned_optim"], cwd=root,
                                capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None, []
    dirty = sorted(line[3:].strip() for line in status.splitlines() if line.strip())
    return (sha + ("-dirty" if dirty else "")) or None, dirty


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on (recorded in every result file)."""
    cpuinfo = _cpuinfo()
    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "platform": platform.platform(),
        "cpu": _cpu_model(cpuinfo),
        "cpu_id": _cpu_id(cpuinfo),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    info["git_commit"], info["uncommitted_files"] = _git_state()
    try:
        info["load_average_1min"] = os.getloadavg()[0]  # other users of a shared machine skew timings
    except OSError:
        pass
    return info


def machine_line(m: dict[str, Any]) -> str:
    """One line for a results file's header: CPU, threads, platform, versions, load, commit."""
    cpu = m["cpu"] + (f" [{m['cpu_id']}]" if m.get("cpu_id") else "")
    return (f"{cpu} ({m['cpu_count']} cores, torch threads {m['torch_threads']}), {m['platform']}, "
            f"Python {m['python']}, torch {m['torch']}" + (f", CUDA {m['cuda']}" if m.get("cuda") else "")
            + (f"; 1-min load average at start {m['load_average_1min']:.2f}" if "load_average_1min" in m else "")
            + (f", at end {m['load_average_1min_end']:.2f}" if m.get("load_average_1min_end") is not None else "")
            + (f"; code at commit `{m['git_commit'][:12]}{'-dirty' if m['git_commit'].endswith('-dirty') else ''}`"
               if m.get("git_commit") else "")
            + (f" (uncommitted package files at run time: {', '.join(m['uncommitted_files'])})"
               if m.get("uncommitted_files") else ""))
