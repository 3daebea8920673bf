"""Helpers shared by the quality and speed benchmarks: output folder, machine facts, JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["check_out_dir", "machine_info", "write_json", "to_jsonable", "LearnedSetup", "parse_learned_kwargs"]


def check_out_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed; refuse a path that is an existing file."""
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a directory path (str), got {type(out).__name__} {out!r}")
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"out={str(path)!r} is a file; pass a directory, e.g. --out benchmarks/results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_state() -> tuple[str | None, list[str]]:
    """The checkout's commit (+ "-dirty" if the package differs from it) and the package files
    that differ (modified or untracked); (None, []) outside a git checkout, e.g. from a wheel."""
    import subprocess

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
    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
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


def to_jsonable(obj: Any) -> Any:
    """NaN/inf become null (strict JSON); tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _convert_kwargs(raw: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in raw.items():
        if k.endswith("dtype") and isinstance(v, str):  # JSON has no dtypes: "bfloat16" -> torch.bfloat16
            dt = getattr(torch, v.removeprefix("torch."), None)
            if not isinstance(dt, torch.dtype):
                raise ValueError(f"--learned-kwargs: {k}={v!r} is not a torch dtype; e.g. \"bfloat16\" or \"float32\"")
            v = dt
        out[k] = v
    return out


def parse_learned_kwargs(text: str | None) -> dict[str, Any]:
    """Parse ``--learned-kwargs`` (a JSON object of extra LearnedOptimizer keyword arguments,
    e.g. ``'{"impl": "torch", "chunk_size": 4096}'``) and check that LearnedOptimizer accepts it.
    Returns the JSON-able dict (dtype values stay strings; ``LearnedSetup`` converts them)."""
    if text is None or text == "":
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--learned-kwargs must be a JSON object, got {text!r} ({e}); "
                         f"e.g. --learned-kwargs '{{\"impl\": \"torch\"}}'") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--learned-kwargs must be a JSON object, got {text!r}; e.g. '{{\"chunk_size\": 4096}}'")
    for bad in ("weights", "params"):
        if bad in raw:
            raise ValueError(f"--learned-kwargs may not set {bad!r}; use --weights for the weights")
    from ..optimizer import LearnedOptimizer

    probe = torch.nn.Parameter(torch.zeros(2))
    try:
        LearnedOptimizer([probe], **_convert_kwargs(raw))
    except (TypeError, ValueError) as e:
        raise ValueError(f"--learned-kwargs {text!r}: LearnedOptimizer refused it: {e}") from None
    return raw


@dataclass(frozen=True)
class LearnedSetup:
    """What every benchmark needs to build the learned optimizer: its network (loaded once) and
    the extra keyword arguments of ``--learned-kwargs``."""

    network: Any
    kwargs: dict[str, Any] = field(default_factory=dict)

    def make(self, params, lr: float) -> torch.optim.Optimizer:
        from ..optimizer import LearnedOptimizer

        return LearnedOptimizer(params, weights=self.network, **{"lr": lr, **_convert_kwargs(self.kwargs)})

    def label(self, base: str) -> str:
        if not self.kwargs:
            return base
        extra = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{base} [{extra}]"
