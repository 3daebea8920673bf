"""Training trajectories under the scheduled recipe (warm-up + cosine lr, decoupled weight decay on
matrices): ``MetaTrainConfig.inner_recipe``, ``Trajectory.inner_lrs``, ``inner_step(weight_decay=)``."""

import dataclasses

import pytest
import torch
from conftest import train_interrupted_then_resumed

from learned_optim.common.schedules import FINAL_LR_FRAC, WEIGHT_DECAY, warmup_cosine
from learned_optim.meta import tasks as T
from learned_optim.meta.checkpoint import traj_from_dict, traj_to_dict
from learned_optim.meta.config import MetaTrainConfig, load_config
from learned_optim.meta.estimators import AntitheticPES, InnerState, Trajectory, _unroll
from learned_optim.meta.inner import decay_mask, init_inner, inner_step
from learned_optim.meta.trainer import CHECKPOINT_NAME, MetaTrainer
from learned_optim.network import CoordinatewiseLSTM, LSTMOptimizerConfig


def _task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    y = (x @ torch.tensor([1.0, -2.0, 0.5]) > 0).long()
    return T.MLPTask(x, y, 8, "ce", "tiny-mlp", hidden=(4,), out_dim=2)


def _net():
    net = CoordinatewiseLSTM(LSTMOptimizerConfig(hidden_size=2), seed=0)
    with torch.no_grad():  # a non-zero head, so the rule is not plain Adam
        net.head_weight.copy_(0.5 * torch.randn(net.head_weight.shape, generator=torch.Generator().manual_seed(1)))
    return net


def _traj(recipe, horizon=40, step=0):
    task = _task()
    gen = torch.Generator().manual_seed(3)
    params = task.init_params(gen)
    flat = T.flatten_params(params).detach()
    st = InnerState.fresh(flat, 2)
    return Trajectory(task, [p.shape for p in params], 0, horizon, gen, 1.0, [st, st.clone()], step, recipe=recipe)


def test_weight_decay_in_inner_step():
    net = _net()
    shapes = [torch.Size([2, 3]), torch.Size([3])]
    p = torch.randn(9, generator=torch.Generator().manual_seed(0))
    g = torch.randn(9, generator=torch.Generator().manual_seed(1))
    s = init_inner(p, net.config)
    plain = inner_step(s, g, net, net.config, 0.1)
    # a zero decay is the step without decay, bit for bit (no extra rounding)
    assert torch.equal(inner_step(s, g, net, net.config, 0.1, None, 0.0).params, plain.params)
    mask = decay_mask(shapes, 0.5)
    assert mask.tolist() == [0.5] * 6 + [0.0] * 3
    decayed = inner_step(s, g, net, net.config, 0.1, None, mask)
    u = (p - plain.params) / 0.1  # the rule's direction, the same with or without decay
    want = p * (1 - 0.1 * mask) - 0.1 * u
    torch.testing.assert_close(decayed.params, want)
    assert torch.equal(decayed.params[6:], plain.params[6:])  # the vector is not decayed
    assert not torch.equal(decayed.params[:6], plain.params[:6])


def test_inner_lrs_follow_the_schedule_over_the_horizon():
    const, sched = _traj("constant", horizon=40, step=10), _traj("scheduled", horizon=40, step=10)
    assert const.inner_lrs(1e-3, 5) == 1e-3 and const.weight_decay() == 0.0
    assert sched.inner_lrs(1e-3, 5) == [1e-3 * warmup_cosine(s, 40) for s in range(10, 15)]
    last = _traj("scheduled", horizon=40, step=39)
    assert last.inner_lrs(1e-3, 1) == [pytest.approx(1e-3 * FINAL_LR_FRAC)]
    wd = sched.weight_decay()
    assert wd.shape == sched.states[0].params.shape
    torch.testing.assert_close(torch.unique(wd), torch.tensor([0.0, WEIGHT_DECAY]))


def test_scheduled_unroll_is_the_manual_loop():
    net, traj = _net(), _traj("scheduled", horizon=12, step=0)
    batches = [traj.task.sample_batch(traj.data_gen) for _ in range(7)]
    lrs, wd = traj.inner_lrs(0.05, 6), traj.weight_decay()
    _, got = _unroll(traj.task, traj.shapes, traj.states[0], 0, batches, net, net.config, lrs,
                     differentiable=False, log_cap=10.0, weight_decay=wd)
    state = traj.states[0]
    for i in range(6):
        p = state.params.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(traj.task.loss(T.unflatten_params(p, traj.shapes), batches[i]), p)
        state = inner_step(state._replace(params=p.detach()), g, net, net.config, lrs[i], None, wd)
    assert torch.equal(got.params, state.params)
    _, const = _unroll(traj.task, traj.shapes, traj.states[0], 0, batches, net, net.config, 0.05,
                       differentiable=False, log_cap=10.0)
    assert not torch.equal(const.params, got.params)


def test_pes_estimate_depends_on_the_recipe():
    net, pes = _net(), AntitheticPES(truncation_length=5)
    grads = {}
    for recipe in ("constant", "scheduled"):
        traj = _traj(recipe, horizon=40)
        grads[recipe], _ = pes.estimate(net, [traj], torch.Generator().manual_seed(0), 0.05, 1.5)
        assert torch.isfinite(grads[recipe]).all()
    assert not torch.equal(grads["constant"], grads["scheduled"])


def test_checkpoint_keeps_the_recipe():
    traj = _traj("scheduled")
    back = traj_from_dict(traj_to_dict(traj), lambda seed: _task())
    assert back.recipe == "scheduled"
    old = traj_to_dict(traj)
    del old["recipe"]  # a checkpoint written before recipes existed
    assert traj_from_dict(old, lambda seed: _task()).recipe == "constant"


def test_bad_recipe_is_refused():
    with pytest.raises(ValueError, match="inner_recipe"):
        MetaTrainConfig(inner_recipe="cosine")
    with pytest.raises(ValueError, match="recipe must be 'constant' or 'scheduled'"):
        _traj("mixed")
    assert MetaTrainConfig().inner_recipe == "constant"


def test_mixed_run_draws_both_recipes_and_resumes_exactly(tmp_path):
    cfg = load_config("tiny").replace(inner_recipe="mixed", num_trajectories=8, meta_steps=6, checkpoint_every=1,
                                      eval_every=100, horizon_min=20, horizon_max=30)
    ref = MetaTrainer(cfg, tmp_path / "ref", progress=False)
    ref.train()
    assert {t.recipe for t in ref.trajs} == {"constant", "scheduled"}
    # the constant and scheduled recipes draw the same tasks and horizons (no extra draw)
    a = MetaTrainer(cfg.replace(inner_recipe="constant"), tmp_path / "a", progress=False)
    b = MetaTrainer(cfg.replace(inner_recipe="scheduled"), tmp_path / "b", progress=False)
    ta, tb = a._new_traj(0, True), b._new_traj(0, True)
    assert (ta.task_seed, ta.horizon, ta.recipe, tb.recipe) == (tb.task_seed, tb.horizon, "constant", "scheduled")

    _, y = train_interrupted_then_resumed(cfg, tmp_path / "cut", 3)
    x = torch.load(tmp_path / "ref" / CHECKPOINT_NAME, weights_only=True)["net"]
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert dataclasses.asdict(cfg)["inner_recipe"] == "mixed"
