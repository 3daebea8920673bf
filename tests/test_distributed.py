"""LearnedOptimizer inside torch.distributed: DDP and FSDP2 on CPU with gloo, 2 spawned processes.

Each test spawns 2 ranks that write their results to a file; the parent compares them with a
single-process run of the same global batches.
"""

import importlib.util
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from conftest import spawn_2
from torch import nn

from learned_optim import CoordinatewiseLSTM, LearnedOptimizer
from learned_optim.network import CONTEXT_FEATURES, LSTMOptimizerConfig

WORLD = 2
STEPS = 8
GLOBAL_BATCH = 16


def _net(v2: bool = False) -> CoordinatewiseLSTM:
    # A non-zero head, so the LSTM and its per-coordinate state matter (not plain Adam). With v2,
    # every per-tensor context input and the cautious rescale: statistics and counts of whole
    # tensors, which FSDP2 shards across ranks.
    cfg = LSTMOptimizerConfig(sign_equivariant=True, context_features=CONTEXT_FEATURES, cautious_scale=1.0,
                              cautious_rescale=True) if v2 else None
    net = CoordinatewiseLSTM(cfg, seed=2)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        net.head_weight.copy_(torch.randn(net.head_weight.shape, generator=gen) * 0.5)
        net.head_bias.copy_(torch.randn(2, generator=gen) * 0.2)
    return net


def _model() -> nn.Module:
    torch.manual_seed(0)
    # Odd first dims (7, 5) give uneven FSDP2 shards (4 + 3 rows, 3 + 2 rows).
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3))


def _batch(step: int):
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL_BATCH, 6, generator=gen), torch.randint(0, 3, (GLOBAL_BATCH,), generator=gen)


# "fsdp_nan": at this step one element of rank 1's shard of the first weight's gradient is NaN.
NAN_STEP = 3


def _train(model, opt, steps, start=0, rank=None, poison=None):
    for i in range(start, start + steps):
        x, y = _batch(i)
        if rank is not None:  # each rank takes its half of the global batch
            per = GLOBAL_BATCH // WORLD
            x, y = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if poison is not None and i == NAN_STEP:
            poison()
        opt.step()


def _reference(steps, nan_step=False, v2=False):
    model = _model()
    opt = LearnedOptimizer(model.parameters(), _net(v2), lr=1e-2, weight_decay=0.01)

    def poison():  # single process: the whole first weight's update is skipped at NAN_STEP
        model[0].weight.grad[-1, 0] = float("nan")

    with pytest.warns(RuntimeWarning, match="1 parameter") if nan_step else _no_context():
        _train(model, opt, steps, poison=poison if nan_step else None)
    return [p.detach() for p in model.parameters()]


class _no_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _setup(rank, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)


def _worker(rank, port, mode, out, ckpt_dir):
    _setup(rank, port)
    v2 = "_v2" in mode
    mode = mode.replace("_v2", "")
    impl = "auto"
    if mode.endswith("_reference"):  # lstm_rule per shard, with the whole tensors' context and counts
        impl, mode = "reference", mode[: -len("_reference")]
    if mode.endswith("_triton"):
        # The fused path with device-side finite flags (the Triton kernel, in its interpreter on
        # these CPU tensors): the cross-rank MIN of the flags then runs with no host read.
        os.environ["TRITON_INTERPRET"] = "1"
        from learned_optim import kernels

        if not kernels.triton_available("cpu"):
            raise RuntimeError("Triton's interpreter is not available in the worker")
        kernels.FUSED_BACKENDS["cpu"] = kernels.triton
    try:
        if mode == "ddp":
            model = nn.parallel.DistributedDataParallel(_model())
            opt = LearnedOptimizer(model.parameters(), _net(v2), lr=1e-2, weight_decay=0.01, impl=impl)
            _train(model, opt, STEPS, rank=rank)
            params = [p.detach() for p in model.module.parameters()]
        else:
            from torch.distributed.fsdp import fully_shard

            def sharded():
                m = _model()
                for layer in m:
                    if isinstance(layer, nn.Linear):
                        fully_shard(layer)
                fully_shard(m)
                return m

            model = sharded()
            opt = LearnedOptimizer(model.parameters(), _net(v2), lr=1e-2, weight_decay=0.01, impl=impl)
            if mode == "fsdp":
                _train(model, opt, STEPS, rank=rank)
            elif mode.startswith("fsdp_nan"):
                # The NaN lands in rank 1's shard only (rows 4..6 of 7). Both ranks must skip the
                # whole parameter that step (the cross-rank MIN of the finite flags), or its
                # shards would step a different number of times. On the Triton path the warning
                # and the step count's correction come one step later.
                import warnings

                def poison():
                    if rank == 1:
                        model[0].weight.grad.to_local()[-1, 0] = float("nan")

                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    _train(model, opt, STEPS, rank=rank, poison=poison)
                msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
                assert len(msgs) == 1 and "1 parameter(s) had non-finite" in msgs[0], msgs
                steps = [float(opt.state[p]["step"].full_tensor() if hasattr(opt.state[p]["step"], "full_tensor")
                               else opt.state[p]["step"]) for p in model.parameters()]
                assert steps == [STEPS - 1] + [STEPS] * (len(steps) - 1), steps
            else:  # "fsdp_resume": k steps, sharded checkpoint, fresh model + optimizer, k more
                import torch.distributed.checkpoint as dcp
                from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

                k = STEPS // 2
                _train(model, opt, k, rank=rank)
                msd, osd = get_state_dict(model, opt)
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=ckpt_dir)
                model = sharded()
                opt = LearnedOptimizer(model.parameters(), _net(v2), lr=1e-2, weight_decay=0.01, impl=impl)
                msd, osd = get_state_dict(model, opt)
                state = {"model": msd, "optim": osd}
                dcp.load(state, checkpoint_id=ckpt_dir)
                set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
                _train(model, opt, STEPS - k, start=k, rank=rank)
            # The rule ran on local shards only: every state tensor is a DTensor shard.
            from torch.distributed.tensor import DTensor

            st = opt.state[next(iter(model.parameters()))]
            assert all(isinstance(st[k], DTensor) for k in ("exp_avg", "lstm_h", "lstm_c"))
            params = [p.full_tensor().detach() for p in model.parameters()]
        if rank == 0:
            torch.save(params, out)
        else:
            torch.save(params, out + ".rank1")
    finally:
        dist.destroy_process_group()


def _run(mode):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "params.pt")
        spawn_2(_worker, (mode, out, os.path.join(tmp, "ckpt")), fresh=(os.path.join(tmp, "ckpt"),))
        return torch.load(out, weights_only=True), torch.load(out + ".rank1", weights_only=True)


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "fsdp_resume", "fsdp_nan", "fsdp_nan_triton", "ddp_v2", "fsdp_v2",
                                  "fsdp_nan_v2", "fsdp_nan_triton_v2", "fsdp_reference_v2"])
def test_distributed_matches_single_process(mode):
    """v2: a rule with every per-tensor context input and the cautious rescale, whose values and
    counts FSDP2 must compute over the whole tensor (all ranks' shards), not over the local shard."""
    if "_triton" in mode and importlib.util.find_spec("triton") is None:
        pytest.skip("the triton package is not installed")
    rank0, rank1 = _run(mode)
    ref = _reference(STEPS, nan_step=mode.startswith("fsdp_nan"), v2="_v2" in mode)
    for a, b, r in zip(rank0, rank1, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # ranks agree exactly
        torch.testing.assert_close(a, r, rtol=0, atol=1e-5)
