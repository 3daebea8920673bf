"""Distributed meta-training: 1 and 2 processes (gloo, spawned here) follow the same meta-trajectory."""

import os

import torch
import torch.distributed as dist
from conftest import spawn_2

from learned_optim.meta import MetaTrainer, get_preset, meta_train

CONFIG = get_preset("tiny").replace(slot_rng=True, num_trajectories=3)  # 3 slots: uneven split 2 + 1


def _worker(rank, port, out, errfile):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        try:
            MetaTrainer(CONFIG.replace(slot_rng=False), out=out + "-refused")
        except ValueError as e:
            if rank == 0:
                with open(errfile, "w") as f:
                    f.write(str(e))
        meta_train(CONFIG, out, progress=False)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    one, two, err = tmp_path / "one", tmp_path / "two", tmp_path / "err.txt"
    meta_train(CONFIG, one, progress=False)
    spawn_2(_worker, (str(two), str(err)), fresh=(two,))

    assert "slot_rng" in err.read_text()
    ck1 = torch.load(one / "checkpoint.pt", weights_only=True)
    ck2 = torch.load(two / "checkpoint.pt", weights_only=True)
    assert ck1["step"] == ck2["step"] == CONFIG.meta_steps
    for name, w in ck1["net"].items():
        torch.testing.assert_close(ck2["net"][name], w, rtol=0, atol=1e-6)
        assert not torch.equal(w, torch.zeros_like(w)) or name.startswith("head")
    # Rank 0's checkpoint holds every slot, including the one rank 1 advanced.
    assert all(t is not None for t in ck2["trajs"]) and len(ck2["slot_gens"]) == 3
    for t1, t2 in zip(ck1["trajs"], ck2["trajs"]):
        assert t1["task_seed"] == t2["task_seed"] and t1["step"] == t2["step"]
        torch.testing.assert_close(t2["states"][0]["params"], t1["states"][0]["params"], rtol=0, atol=1e-5)
    # Only rank 0 wrote the weights and the log, once.
    from learned_optim import from_pretrained

    a, b = from_pretrained(one), from_pretrained(two)
    for name in ("weight", "bias", "head_weight", "head_bias"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=0, atol=1e-6)
    starts = [line for line in (two / "log.jsonl").read_text().splitlines() if '"start"' in line]
    assert len(starts) == 1
