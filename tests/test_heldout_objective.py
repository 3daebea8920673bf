"""The held-out meta-objective (``objective_split="heldout"``) and the split task families."""

import math
from dataclasses import dataclass

import pytest
import torch

from learned_optim.meta import tasks as T
from learned_optim.meta.arch_tasks import (
    DigitsArchTask,
    LMTask,
    TransformerLMFamily,
    ViTDigitsFamily,
    _corpus,
    _digit_split,
    wide_arch_family,
)
from learned_optim.meta.config import TRAIN_FAMILIES, MetaTrainConfig
from learned_optim.meta.estimators import (
    AntitheticPES,
    InnerState,
    Trajectory,
    TruncatedBPTT,
    _objective_batches,
    _unroll,
)
from learned_optim.meta.task_core import RescaledTask
from learned_optim.network import CoordinatewiseLSTM, LSTMOptimizerConfig


@dataclass
class _SplitRegression:
    """A linear regression with a training set and a held-out set from a shifted distribution,
    so that held-out and training losses differ at every point."""

    name: str = "split-linreg"

    def __post_init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5])
        self.hx = torch.randn(64, 3, generator=g) + 1.0
        self.hy = self.hx @ torch.tensor([1.5, -1.0, 0.0])
        self.inner = T.MLPTask(self.x, self.y, 16, "mse", "inner", hidden=(), out_dim=1)

    def init_params(self, generator):
        return self.inner.init_params(generator)

    def sample_batch(self, generator):
        return self.inner.sample_batch(generator)

    def full_batch(self):
        return self.inner.full_batch()

    def heldout_batch(self, generator):
        idx = torch.randint(len(self.hx), (16,), generator=generator)
        return self.hx[idx], self.hy[idx]

    def loss(self, params, batch):
        return self.inner.loss(params, batch)


def _net(seed=0):
    net = CoordinatewiseLSTM(LSTMOptimizerConfig(hidden_size=2), seed=seed)
    with torch.no_grad():  # a non-zero head, so every meta-parameter matters
        g = torch.Generator().manual_seed(seed + 1)
        net.head_weight.copy_(0.5 * torch.randn(net.head_weight.shape, generator=g))
        net.head_bias.copy_(0.5 * torch.randn(net.head_bias.shape, generator=g))
    return net


def _traj(task, net, n_states, horizon=100, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = task.init_params(gen)
    flat = T.flatten_params(params)
    with torch.no_grad():
        init_loss = float(task.loss(params, task.full_batch()))
    st = InnerState.fresh(flat, net.config.hidden_size)
    return Trajectory(task, [p.shape for p in params], 0, horizon, gen, init_loss,
                      [st.clone() for _ in range(n_states)])


def _unroll_both(task, net, batches, held, start, differentiable=False):
    traj = _traj(task, net, 1)
    kw = dict(differentiable=differentiable, log_cap=10.0)
    plain = _unroll(task, traj.shapes, traj.states[0], 0, batches, net, net.config, 0.05, **kw)
    split = _unroll(task, traj.shapes, traj.states[0], 0, batches, net, net.config, 0.05, **kw,
                    objective_batches=held, objective_start=start)
    return plain, split


def test_heldout_losses_replace_the_counted_ones_and_leave_the_trajectory_alone():
    task, net = _SplitRegression(), _net()
    g = torch.Generator().manual_seed(3)
    batches = [task.sample_batch(g) for _ in range(7)]  # 6 updates
    held = [task.heldout_batch(g) for _ in range(6)]
    (l_plain, s_plain), (l_split, s_split) = _unroll_both(task, net, batches, held, start=2)
    # the inner trajectory only ever sees training gradients
    assert torch.equal(s_plain.params, s_split.params)
    assert len(l_split) == len(l_plain) == 6
    # uncounted losses (before start) are the minibatch losses, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(l_plain[:2], l_split[:2]))
    # the counted ones are the held-out loss after that update: recompute them by replaying the
    # plain unroll update by update
    traj = _traj(task, net, 1)
    state = traj.states[0]
    for i in range(6):
        _, state = _unroll(task, traj.shapes, state, i, batches[i:i + 2], net, net.config, 0.05,
                           differentiable=False, log_cap=10.0)
        if i >= 2:
            expect = task.loss(T.unflatten_params(state.params, traj.shapes), held[i])
            assert torch.allclose(l_split[i], expect, rtol=1e-6, atol=0)
            assert not torch.allclose(l_split[i], l_plain[i])


def test_heldout_batches_equal_to_the_next_minibatches_reproduce_the_training_objective():
    # an exact check of the indexing: the loss after update i is, without a split, taken on
    # batches[i]; passing those very batches as the held-out ones must change nothing.
    task, net = _SplitRegression(), _net()
    g = torch.Generator().manual_seed(4)
    batches = [task.sample_batch(g) for _ in range(6)]
    (l_plain, _), (l_split, _) = _unroll_both(task, net, batches, batches[1:], start=0)
    assert all(torch.allclose(a, b, rtol=1e-7, atol=0) for a, b in zip(l_plain, l_split))


def test_tbptt_gradient_flows_through_the_heldout_losses():
    task, net = _SplitRegression(), _net()
    trajs = [_traj(task, net, 1, seed=s) for s in range(2)]
    twins = [_traj(task, net, 1, seed=s) for s in range(2)]
    est = TruncatedBPTT(truncation_length=5)
    g_held, _ = est.estimate(net, trajs, None, 0.05, 1.5, objective_split="heldout")
    g_train, _ = est.estimate(net, twins, None, 0.05, 1.5, objective_split="train")
    assert torch.isfinite(g_held).all() and g_held.abs().sum() > 0
    assert not torch.allclose(g_held, g_train)


def test_pes_heldout_equals_train_on_tasks_without_heldout_data():
    task = T.MLPTask(torch.randn(32, 3, generator=torch.Generator().manual_seed(0)),
                     torch.randn(32, generator=torch.Generator().manual_seed(1)), 8, "mse", "plain",
                     hidden=(4,), out_dim=1)
    assert not hasattr(task, "heldout_batch")
    net = _net()
    est = AntitheticPES(truncation_length=5)
    outs = []
    for split in ("train", "heldout"):
        trajs = [_traj(task, net, 2, seed=s) for s in range(2)]
        outs.append(est.estimate(net, trajs, torch.Generator().manual_seed(9), 0.05, 1.5, objective_split=split)[0])
    assert torch.equal(outs[0], outs[1])


def test_pes_heldout_changes_the_estimate_on_split_tasks():
    task, net = _SplitRegression(), _net()
    est = AntitheticPES(truncation_length=5)
    outs = []
    for split in ("train", "heldout"):
        trajs = [_traj(task, net, 2, seed=s) for s in range(2)]
        outs.append(est.estimate(net, trajs, torch.Generator().manual_seed(9), 0.05, 1.5, objective_split=split)[0])
    assert torch.isfinite(outs[1]).all()
    assert not torch.allclose(outs[0], outs[1])


def test_objective_batches_rejects_an_unknown_split():
    traj = _traj(_SplitRegression(), _net(), 1)
    with pytest.raises(ValueError, match="objective_split"):
        _objective_batches(traj, 3, "validation")
    assert _objective_batches(traj, 3, "train") is None
    assert len(_objective_batches(traj, 3, "heldout")) == 3


def test_config_validates_objective_split():
    with pytest.raises(ValueError, match="objective_split"):
        MetaTrainConfig(objective_split="test")
    assert MetaTrainConfig(objective_split="heldout", train_tasks="v2-wide-split").objective_split == "heldout"
    assert "v2-wide-split" in TRAIN_FAMILIES


def test_rescaled_task_has_heldout_batches_exactly_when_its_task_has():
    held = RescaledTask(_SplitRegression(), (2.0,))
    plain = RescaledTask(T.MLPTask(torch.randn(8, 3), torch.randn(8), None, "mse", "p", hidden=(), out_dim=1), (2.0,))
    assert hasattr(held, "heldout_batch") and not hasattr(plain, "heldout_batch")
    x, _ = held.heldout_batch(torch.Generator().manual_seed(0))
    assert x.shape == (16, 3)


def test_digit_split_is_a_fixed_disjoint_partition():
    train, held = _digit_split()
    assert len(set(train.tolist()) & set(held.tolist())) == 0
    assert sorted(train.tolist() + held.tolist()) == list(range(1797))
    assert abs(len(held) / 1797 - 0.2) < 0.01


def test_text_split_is_the_head_and_tail_of_the_training_corpus():
    head, tail, whole = _corpus("train:head"), _corpus("train:tail"), _corpus("train")
    assert torch.equal(torch.cat([head, tail]), whole)


def test_split_families_draw_the_same_tasks_on_disjoint_data():
    for fam, split_fam in ((TransformerLMFamily(), TransformerLMFamily(split=True)),
                           (ViTDigitsFamily(rescale_prob=0.0), ViTDigitsFamily(rescale_prob=0.0, split=True))):
        a = fam.sample(torch.Generator().manual_seed(5))
        b = split_fam.sample(torch.Generator().manual_seed(5))
        assert b.name == f"{a.name}-split"
        assert not hasattr(a, "heldout_batch") and hasattr(b, "heldout_batch")
        if isinstance(b, LMTask):
            assert (b.source, b.objective_source) == ("train:head", "train:tail")
            batch = b.heldout_batch(torch.Generator().manual_seed(0))
            assert batch.shape == (b.batch_size, b.ctx + 1)
        else:
            assert isinstance(b, DigitsArchTask)
            assert len(b.x) + len(b.heldout_x) == len(a.x)
            train_rows = {tuple(r.flatten().tolist()) for r in b.x}
            x, y = b.heldout_batch(torch.Generator().manual_seed(0))
            assert x.shape[0] == b.batch_size
            # duplicated digit images exist in the data; most held-out rows are not training rows
            fresh = sum(tuple(r.flatten().tolist()) not in train_rows for r in x)
            assert fresh >= 0.9 * len(x)
        params = b.init_params(torch.Generator().manual_seed(0))
        assert math.isfinite(float(b.loss(params, b.heldout_batch(torch.Generator().manual_seed(1)))))


def test_wide_split_family_gives_heldout_data_to_the_split_architectures():
    fam = wide_arch_family(split=True)
    g = torch.Generator().manual_seed(0)
    seen = {}
    for _ in range(30):
        t = fam.sample(g)
        name = t.name.split("|")[0]
        seen[name.endswith("-split")] = seen.get(name.endswith("-split"), 0) + 1
        assert hasattr(t, "heldout_batch") == name.endswith("-split")
    assert seen.get(True, 0) > 0 and seen.get(False, 0) > 0
