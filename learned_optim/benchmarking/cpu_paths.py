"""The CPU paths of the learned step, and running code on one of them in a fresh process.

The C library is built once per process, with the settings the environment holds then, so each
path runs in its own Python process with its own environment:

* ``LEARNED_OPTIM_C_KERNEL=0``: no C loop, the eager torch chunk loop;
* ``LEARNED_OPTIM_C_SIMD=0``: the portable C loop instead of the hand-vectorized one;
* ``LEARNED_OPTIM_C_MARCH=x86-64-v3``: build for AVX2 instead of ``-march=native``.

Used by the speed benchmark (every path) and ``benchmarks/path_sensitivity.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

__all__ = ["C_ENV_VARS", "CpuPath", "CPU_PATHS", "cpu_path", "has_avx2", "skip_reason", "path_environment",
           "run_python"]

C_ENV_VARS = ("LEARNED_OPTIM_C_KERNEL", "LEARNED_OPTIM_C_SIMD", "LEARNED_OPTIM_C_MARCH")


@dataclass(frozen=True)
class CpuPath:
    """A CPU path: its key in results files, a label, and the environment that selects it."""

    key: str
    label: str
    env: Mapping[str, str]


CPU_PATHS: tuple[CpuPath, ...] = (
    CpuPath("native_simd", "C loop, hand-vectorized (this CPU's -march=native)", {}),
    CpuPath("native_portable", "C loop, portable (this CPU's -march=native)", {"LEARNED_OPTIM_C_SIMD": "0"}),
    CpuPath("avx2_simd", "C loop, hand-vectorized, built for AVX2 (-march=x86-64-v3)",
            {"LEARNED_OPTIM_C_MARCH": "x86-64-v3"}),
    CpuPath("avx2_portable", "C loop, portable, built for AVX2 (-march=x86-64-v3)",
            {"LEARNED_OPTIM_C_MARCH": "x86-64-v3", "LEARNED_OPTIM_C_SIMD": "0"}),
    CpuPath("eager", "eager torch chunk loop (no compiler)", {"LEARNED_OPTIM_C_KERNEL": "0"}),
)
_BY_KEY = {p.key: p for p in CPU_PATHS}


def cpu_path(key: str) -> CpuPath:
    """The path called ``key`` (one of ``CPU_PATHS``)."""
    if key not in _BY_KEY:
        raise ValueError(f"unknown CPU path {key!r}; choose from {', '.join(_BY_KEY)}")
    return _BY_KEY[key]


def has_avx2() -> bool:
    """Whether this CPU has AVX2 and FMA (``/proc/cpuinfo``; False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def skip_reason(path: CpuPath) -> str | None:
    """Why ``path`` cannot run on this machine, or None: a build for AVX2 needs AVX2+FMA."""
    if "LEARNED_OPTIM_C_MARCH" in path.env and not has_avx2():
        return "the CPU has no AVX2+FMA"
    return None


def path_environment(env: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment with this checkout first on ``PYTHONPATH`` and, given ``env``,
    only ``env``'s C-loop settings (the caller's own ``LEARNED_OPTIM_C_*`` are dropped); with
    ``env=None`` the caller's settings are kept."""
    full = dict(os.environ)
    if env is not None:
        full = {k: v for k, v in full.items() if k not in C_ENV_VARS}
        full.update(env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH")]))
    return full


def run_python(code: str, env: Mapping[str, str] | None = None, timeout: float = 600) -> Any:
    """Run ``code`` in a fresh Python with ``path_environment(env)`` (``env=None``: the caller's
    C-loop settings); return the JSON value of the last line it printed.

    Raises:
        subprocess.SubprocessError: it failed or ran past ``timeout`` seconds.
        ValueError, IndexError: its last line is missing or not JSON.
    """
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                         env=path_environment(env), check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])
