import pytest
import torch
import torch.multiprocessing as mp

from learned_optim import CoordinatewiseLSTM


@pytest.fixture
def random_net() -> CoordinatewiseLSTM:
    """A network whose output head is non-zero, so the LSTM really changes the step (not Adam)."""
    net = CoordinatewiseLSTM(seed=1)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        net.head_weight.copy_(torch.randn(net.head_weight.shape, generator=gen) * 0.5)
        net.head_bias.copy_(torch.randn(net.head_bias.shape, generator=gen) * 0.2)
    return net


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exit_after(rank, fn, *args) -> None:
    """Run ``fn(rank, *args)`` in a spawned worker, then leave the process at once (exit code 0)
    without the interpreter's teardown; an exception from ``fn`` propagates as usual."""
    import os
    import sys

    fn(rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_2(fn, args, fresh=()) -> None:
    """``mp.spawn(fn, (port, *args), nprocs=2)`` with a fresh free port, retried once (with a new
    port) if a worker was killed by a signal.

    gloo worker processes have been seen (1 run in 9 here) to abort at interpreter teardown
    ("terminate called without an active exception": gloo's threads destroyed while joinable)
    after their work was done, and once both attempts did. So each worker leaves with
    ``os._exit(0)`` once ``fn`` has returned (``_exit_after``), skipping that teardown; the retry
    stays for an abort before then. A worker that raises (a failed assertion) is never retried:
    ``ProcessRaisedException`` propagates. The paths in ``fresh`` (what the workers write, e.g. a
    run directory that refuses to be overwritten) are removed before the retry, so it starts
    from the first attempt's clean slate.
    """
    import shutil
    from pathlib import Path

    for attempt in range(2):
        try:
            mp.spawn(_exit_after, args=(fn, free_port(), *args), nprocs=2, join=True)
            return
        except mp.ProcessExitedException as e:
            if attempt == 1 or e.exit_code is None or e.exit_code >= 0:
                raise
            for path in map(Path, fresh):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)


def train_interrupted_then_resumed(cfg, out, stop_at: int):
    """Meta-train ``cfg`` into ``out``, interrupted (a ``KeyboardInterrupt``) when the trainer is at
    meta-step ``stop_at``, after its checkpoint, then resumed to the end by a fresh trainer from
    what the first left on disk. Returns the resumed trainer and the network of its last checkpoint
    (the saved weights are the selected ones, not the last)."""
    from learned_optim.meta.trainer import CHECKPOINT_NAME, MetaTrainer

    cut = MetaTrainer(cfg, out, progress=False)
    real = cut._estimate

    def interrupt():
        if cut.step == stop_at:
            raise KeyboardInterrupt
        return real()

    cut._estimate = interrupt
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    resumed = MetaTrainer(cfg, out, progress=False)
    resumed.train(resume=True)
    return resumed, torch.load(out / CHECKPOINT_NAME, weights_only=True)["net"]
