"""What every benchmark command shares: the output folder rules, saving a figure,
``--learned-kwargs``, and the learned optimizer's setup (its network, loaded once, plus those
keyword arguments).

Output folder rules (``check_out_dir``, ``check_no_overwrite``): the default folder is
``DEFAULT_OUT`` (``./benchmark-results``, not the repository's committed
``benchmarks/results``); a folder that cannot be created or written is refused before any work
starts; results already in the folder are replaced only with ``--force``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from ..common.files import atomic_write
from ..optimizer import LearnedOptimizer

__all__ = ["DEFAULT_OUT", "check_out_dir", "check_no_overwrite", "save_figure", "parse_learned_kwargs", "LearnedSetup"]

DEFAULT_OUT = "benchmark-results"


def check_out_dir(out: str | os.PathLike) -> Path:
    """Create the folder ``out`` if needed and check that files can be written into it.

    Raises:
        TypeError: ``out`` is not a path.
        ValueError: ``out`` is an existing file, cannot be created (e.g. it lies under a file or in
            a read-only place) or cannot be written into; the message is one line naming the path.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a directory path (str), got {type(out).__name__} {out!r}")
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {str(path)!r} is a file; pass a directory, e.g. --out {DEFAULT_OUT}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # a folder one may not write into fails here
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ValueError(f"--out {str(path)!r} cannot be created or written ({reason}); "
                         f"pass a writable directory, e.g. --out {DEFAULT_OUT}") from None
    return path


def check_no_overwrite(out: str | os.PathLike, names: Iterable[str], force: bool) -> None:
    """Refuse to replace results already in ``out`` (any of ``names``) unless ``force``.

    Raises:
        ValueError: one of the files exists and ``force`` is false.
    """
    if force:
        return
    existing = [n for n in names if (Path(out).expanduser() / n).exists()]
    if existing:
        raise ValueError(f"--out {str(out)!r} already holds {', '.join(existing)}; pass --force to replace "
                         f"them, or another --out")


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    plt.close(fig)


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
    e.g. ``'{"impl": "eager", "chunk_size": 4096}'``) and check that LearnedOptimizer accepts it.
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
        return LearnedOptimizer(params, weights=self.network, **{"lr": lr, **_convert_kwargs(self.kwargs)})

    def label(self, base: str, shown: Iterable[str] = ()) -> str:
        """``base`` with the extra keyword arguments in brackets, but for those ``base`` already shows."""
        extra = ", ".join(f"{k}={v}" for k, v in self.kwargs.items() if k not in set(shown))
        return f"{base} [{extra}]" if extra else base
