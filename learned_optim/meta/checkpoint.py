"""Meta-training's files in ``out``: the resumable checkpoint and the JSON-lines log.

``checkpoint.pt`` is a plain dict of tensors, strings and Python scalars (loaded with
``torch.load(weights_only=True)``, never unpickling code), written atomically
(``common.files.atomic_write``): the meta-parameters, the meta-optimizer state, every random
generator's state, the step counter, the trajectories in flight and the best weights so far.
``MetaTrainer`` assembles and restores it; this module holds the format: its tag, how a random
generator and a trajectory are stored, reading with checks, and the log.

``log.jsonl`` holds one JSON object per line (``"event"``: ``start``, ``step``, ``eval``, ``done``,
each with its ``"step"``). On resume, entries after the checkpoint's step are dropped
(``truncate_log``) and written again by the resumed run, so the log reads as one run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..common.files import atomic_write, atomic_write_text
from .estimators import Trajectory
from .inner import InnerState
from .task_core import Task

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "CHECKPOINT_FORMAT",
    "gen_state",
    "make_gen",
    "traj_to_dict",
    "traj_from_dict",
    "write_checkpoint",
    "read_checkpoint",
    "append_log",
    "truncate_log",
]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
CHECKPOINT_FORMAT = "learned_optim.meta.checkpoint/1"


def gen_state(g: torch.Generator) -> torch.Tensor:
    """A copy of ``g``'s state (a uint8 tensor)."""
    return g.get_state().clone()


def make_gen(state: torch.Tensor) -> torch.Generator:
    """A CPU generator in the state ``gen_state`` returned."""
    g = torch.Generator()
    g.set_state(state)
    return g


def traj_to_dict(t: Trajectory) -> dict[str, Any]:
    """A trajectory as checkpoint data: its task is stored as the seed that rebuilds it."""
    return {
        "task_seed": t.task_seed, "horizon": t.horizon, "step": t.step, "init_loss": t.init_loss,
        "first_truncation": t.first_truncation, "done": t.done, "data_gen": gen_state(t.data_gen),
        "states": [{k: v.detach().clone() for k, v in s.tensors().items()} for s in t.states],
        "pes_acc": None if t.pes_acc is None else t.pes_acc.clone(),
        "best_log": None if t.best_log is None else list(t.best_log),
        "recipe": t.recipe,
    }


def traj_from_dict(d: dict[str, Any], build_task: Callable[[int], Task]) -> Trajectory:
    """The trajectory ``traj_to_dict`` stored; ``build_task(seed)`` rebuilds its task."""
    task = build_task(d["task_seed"])
    shapes = [p.shape for p in task.init_params(torch.Generator().manual_seed(0))]
    states = [InnerState(s["params"], s["exp_avg"], s["exp_avg_sq"], s["h"], s["c"], d["step"]) for s in d["states"]]
    return Trajectory(task, shapes, d["task_seed"], d["horizon"], make_gen(d["data_gen"]), d["init_loss"],
                      states, d["step"], d["pes_acc"], d["first_truncation"], d["done"], d.get("best_log"),
                      d.get("recipe", "constant"))  # checkpoints from before recipes trained at a constant lr


def write_checkpoint(ck: dict[str, Any], path: Path) -> Path:
    """Write the checkpoint dict ``ck`` to ``path`` atomically (tagged with ``CHECKPOINT_FORMAT``)."""
    return atomic_write(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **ck}, f))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by ``write_checkpoint``; ``ValueError`` if it is something else."""
    ck = torch.load(path, weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        found = ck.get("format") if isinstance(ck, dict) else None
        raise ValueError(f"{path} is not a learned_optim.meta checkpoint (format {found!r}); "
                         f"start a new run in another out directory")
    return ck


def append_log(out: Path, rec: dict[str, Any]) -> None:
    """Append one record to ``out/log.jsonl``."""
    with open(out / LOG_NAME, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")


def truncate_log(out: Path, step: int) -> None:
    """Keep the records of ``out/log.jsonl`` up to ``step`` (and drop a half-written last line):
    a resumed run writes the later ones again."""
    path = out / LOG_NAME
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, ("\n".join(keep) + "\n") if keep else "")
