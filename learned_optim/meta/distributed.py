"""Distributed meta-training on ``torch.distributed``: the few collectives ``MetaTrainer`` uses.

Work split: trajectory slot ``i`` belongs to rank ``i % world``. Each rank advances its own
slots; the per-slot meta-gradient sums are all-reduced, so every rank takes the same
meta-optimizer step and holds the same meta-parameters. Rank 0 alone evaluates, logs and
writes weights and checkpoints; a checkpoint gathers every rank's slots to rank 0, and on resume
every rank reads the checkpoint (on several machines, ``--out`` must be a shared filesystem).

With one process (or no process group) every function here is a no-op, so the single-process
trainer pays nothing for it.

Launch (one machine, 2 processes; several machines: the usual ``torchrun --nnodes N
--node_rank R --rdzv_endpoint HOST:PORT`` flags):
    torchrun --nproc_per_node 2 -m learned_optim.cli meta-train --config lstm-h4-v1 \\
        --set slot_rng=true --out runs/dist
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["world", "slot_seed", "all_reduce_sum", "agree", "gather_slots", "init_from_env"]


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def slot_seed(seed: int, slot: int) -> int:
    """The seed of slot ``slot``'s random stream: distinct per slot, independent of the world size."""
    # A large odd multiplier spreads (seed, slot) pairs apart; any injective map would do.
    return (seed * 1_000_003 + slot + 1) % (2**63 - 1)


def all_reduce_sum(t: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def agree(flag: bool, world_size: int) -> bool:
    """Rank 0's ``flag`` on every rank (for decisions taken on a clock, such as checkpointing,
    which must be collective)."""
    if world_size == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.broadcast(t, src=0)
    return bool(t.item())


def gather_slots(items: list[Any], rank: int, world_size: int) -> list[Any] | None:
    """Merge per-slot items: slot ``i`` is taken from rank ``i % world``. Returns the merged list
    on rank 0 and ``None`` elsewhere (every rank must call it)."""
    if world_size == 1:
        return items
    gathered: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(items, gathered, dst=0)
    if rank != 0:
        return None
    return [gathered[i % world_size][i] for i in range(len(items))]


def init_from_env() -> bool:
    """Initialise the default process group when started by ``torchrun`` (``WORLD_SIZE`` > 1 in
    the environment) and none exists yet. Returns whether it did (the caller then destroys it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    # gloo runs everywhere; the meta-training inner loops here run on the CPU.
    dist.init_process_group(backend="gloo")
    return True
