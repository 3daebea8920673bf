"""Meta-gradient estimators: truncation, PES against the exact gradient, the meta-objective."""

import math

import pytest
import torch

from learned_optim.meta import tasks as T
from learned_optim.meta.estimators import (
    WEIGHT_NAMES,
    AntitheticPES,
    InnerState,
    Trajectory,
    TruncatedBPTT,
    _unroll,
    meta_objective,
)
from learned_optim.network import CoordinatewiseLSTM, LSTMOptimizerConfig


def _tiny_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(32, generator=g)
    return T.MLPTask(x, y, None, "mse", "tiny-linreg", hidden=(), out_dim=1)


def _net(hidden=2, seed=0):
    net = CoordinatewiseLSTM(LSTMOptimizerConfig(hidden_size=hidden), seed=seed)
    with torch.no_grad():  # a non-zero head, so every meta-parameter matters
        g = torch.Generator().manual_seed(seed + 1)
        net.head_weight.copy_(0.5 * torch.randn(net.head_weight.shape, generator=g))
        net.head_bias.copy_(0.5 * torch.randn(net.head_bias.shape, generator=g))
    return net


def _traj(task, net, n_states, horizon, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = task.init_params(gen)
    shapes = [p.shape for p in params]
    flat = T.flatten_params(params)
    with torch.no_grad():
        init_loss = float(task.loss(params, task.full_batch()))
    st = InnerState.fresh(flat, net.config.hidden_size)
    return Trajectory(task, shapes, 0, horizon, gen, init_loss, [st.clone() for _ in range(n_states)])


def _clone_traj(t):
    g = torch.Generator()
    g.set_state(t.data_gen.get_state())
    return Trajectory(t.task, t.shapes, t.task_seed, t.horizon, g, t.init_loss, [s.clone() for s in t.states],
                      t.step, None if t.pes_acc is None else t.pes_acc.clone())


def test_no_graph_leaks_across_truncations():
    task, net = _tiny_task(), _net()
    est = TruncatedBPTT(truncation_length=4)
    traj = _traj(task, net, 1, horizon=100)
    est.estimate(net, [traj], None, 0.05, 1.5)
    # the state carried to the next truncation is cut from the graph ...
    for t in traj.states[0].tensors().values():
        assert t.grad_fn is None and not t.requires_grad
    # ... so the next meta-gradient is exactly the one from a fresh copy of that state: if any
    # graph survived, the gradient would also flow into the first truncation and differ.
    copy = _clone_traj(traj)
    g_continued, _ = est.estimate(net, [traj], None, 0.05, 1.5)
    g_fresh, _ = est.estimate(net, [copy], None, 0.05, 1.5)
    assert g_continued.abs().sum() > 0
    assert torch.equal(g_continued, g_fresh)


def test_truncation_gradient_differs_from_untruncated():
    # Sanity check that the previous test can fail: the untruncated gradient of the second
    # truncation's objective does flow into the first truncation and is different.
    task, net = _tiny_task(), _net()
    params = [getattr(net, n) for n in WEIGHT_NAMES]
    traj = _traj(task, net, 1, horizon=100)
    batches = [task.full_batch()] * 9
    losses, _ = _unroll(task, traj.shapes, traj.states[0], 0, batches, net, net.config, 0.05,
                        differentiable=True, log_cap=10.0)
    j2_full, _ = meta_objective(losses[4:], 10.0)
    g_full = torch.autograd.grad(j2_full, params)
    _, mid = _unroll(task, traj.shapes, traj.states[0], 0, batches[:5], net, net.config, 0.05,
                     differentiable=True, log_cap=10.0)
    losses2, _ = _unroll(task, traj.shapes, mid, 4, batches[4:], net, net.config, 0.05,
                         differentiable=True, log_cap=10.0)
    j2_trunc, _ = meta_objective(losses2, 10.0)
    g_trunc = torch.autograd.grad(j2_trunc, params)
    assert torch.allclose(j2_full, j2_trunc)
    assert not all(torch.allclose(a, b) for a, b in zip(g_full, g_trunc))


@pytest.mark.parametrize("seed", [1, 2])
def test_pes_is_unbiased_over_two_truncations(seed):
    """Mean of many antithetic PES estimates ~ the exact (second-order, untruncated) gradient of
    the sum of the truncation objectives; plain truncated ES would miss the cross-truncation term."""
    torch.manual_seed(0)
    task, net = _tiny_task(), _net(hidden=1)
    lr, k, cap = 0.05, 3, 1.5
    traj0 = _traj(task, net, 2, horizon=2 * k)
    params = [getattr(net, n) for n in WEIGHT_NAMES]
    log_cap = math.log(traj0.init_loss * cap)
    batches = [task.full_batch()] * (2 * k + 1)  # full batch: every estimator sees the same data
    losses, _ = _unroll(task, traj0.shapes, traj0.states[0], 0, batches, net, net.config, lr,
                        differentiable=True, second_order=True, log_cap=log_cap)
    j1, _ = meta_objective(losses[:k], log_cap)
    j2, _ = meta_objective(losses[k:2 * k], log_cap)
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(j1 + j2, params)])

    # What a truncated estimator targets instead: each truncation's own gradient, without the
    # effect of truncation 1's meta-parameters on truncation 2's losses. Here it points the same
    # way but is ~0.56x as long, so the norm check below tells the two apart.
    l1, mid = _unroll(task, traj0.shapes, traj0.states[0], 0, batches[:k + 1], net, net.config, lr,
                      differentiable=True, second_order=True, log_cap=log_cap)
    l2, _ = _unroll(task, traj0.shapes, mid.detached(), k, batches[k:], net, net.config, lr,
                    differentiable=True, second_order=True, log_cap=log_cap)
    truncated = sum(torch.cat([g.reshape(-1) for g in torch.autograd.grad(meta_objective(ls, log_cap)[0], params)])
                    for ls in (l1, l2))
    assert truncated.norm() / exact.norm() < 0.7

    m = 300
    pes = AntitheticPES(truncation_length=k, sigma=0.01)
    trajs = [_clone_traj(traj0) for _ in range(m)]
    meta_gen = torch.Generator().manual_seed(seed)
    g1, _ = pes.estimate(net, trajs, meta_gen, lr, cap)
    g2, _ = pes.estimate(net, trajs, meta_gen, lr, cap)
    est = g1 + g2
    cos = torch.nn.functional.cosine_similarity(est, exact, dim=0)
    assert cos > 0.9, (cos, est, exact)
    assert 0.7 < est.norm() / exact.norm() < 1.3
    assert all(t.done for t in trajs)


def test_meta_objective_caps_and_survives_nan():
    w = torch.tensor(2.0, requires_grad=True)
    losses = [w * 1.0, w * float("nan"), w * 100.0]
    j, diverged = meta_objective(losses, log_cap=math.log(10.0))
    assert diverged
    assert math.isclose(float(j.detach()), (math.log(2.0) + 2 * math.log(10.0)) / 3, rel_tol=1e-6)
    (g,) = torch.autograd.grad(j, w)
    assert torch.isfinite(g) and math.isclose(float(g), 1 / (3 * 2.0), rel_tol=1e-6)
    j2, d2 = meta_objective([w * 1.0], log_cap=math.log(10.0))
    assert not d2 and math.isclose(float(j2.detach()), math.log(2.0), rel_tol=1e-6)


def test_second_order_bptt_matches_finite_differences():
    """TruncatedBPTT(second_order=True) gives the exact meta-gradient (float64 central differences)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        task, net = _tiny_task(), _net(hidden=2)
        est = TruncatedBPTT(truncation_length=4, second_order=True)
        traj = _traj(task, net, 1, horizon=4)
        traj.task = T.MLPTask(task.x, task.y, None, "mse", "tiny", hidden=(), out_dim=1)  # full batch
        start = traj.states[0].clone()
        grad, _ = est.estimate(net, [traj], None, 0.05, 1.5)
        flat = torch.cat([getattr(net, n).detach().reshape(-1) for n in WEIGHT_NAMES])
        shapes = [getattr(net, n).shape for n in WEIGHT_NAMES]
        log_cap = math.log(traj.init_loss * 1.5)

        def objective(theta):
            w = dict(zip(WEIGHT_NAMES, T.unflatten_params(theta, shapes)))
            losses, _ = _unroll(traj.task, traj.shapes, start, 0, [task.full_batch()] * 5, w, net.config, 0.05,
                                differentiable=False, log_cap=log_cap)
            return float(meta_objective(losses, log_cap)[0].detach())

        h = 1e-6
        for i in (0, 5, flat.numel() - 3, flat.numel() - 1):
            e = torch.zeros_like(flat)
            e[i] = h
            fd = (objective(flat + e) - objective(flat - e)) / (2 * h)
            assert math.isclose(float(grad[i]), fd, rel_tol=1e-4, abs_tol=1e-9), (i, float(grad[i]), fd)
    finally:
        torch.set_default_dtype(prev)


def test_meta_objective_floor_counts_small_losses_as_the_floor_without_gradient():
    import math

    from learned_optim.meta.estimators import meta_objective

    a = torch.tensor(1e-4, requires_grad=True)
    b = torch.tensor(0.5, requires_grad=True)
    j, diverged = meta_objective([a, b], log_cap=math.log(3.0), log_floor=math.log(1e-2))
    assert not diverged
    assert math.isclose(float(j), (math.log(1e-2) + math.log(0.5)) / 2, rel_tol=1e-6)
    ga, gb = torch.autograd.grad(j, [a, b], allow_unused=True)
    assert ga is None and math.isclose(float(gb), 0.5 / 0.5, rel_tol=1e-6)
    j0, _ = meta_objective([a, b], log_cap=math.log(3.0))  # no floor: the old objective
    assert math.isclose(float(j0), (math.log(1e-4) + math.log(0.5)) / 2, rel_tol=1e-6)


def test_objective_from_counts_only_the_late_losses():
    from learned_optim.meta.estimators import _first_counted

    task, net = _tiny_task(), _net()
    traj = _traj(task, net, 1, horizon=40)
    losses = [torch.tensor(float(i)) for i in range(10)]  # losses[i] follows inner step traj.step + i + 1
    traj.step = 15
    assert [float(x) for x in losses[_first_counted(traj, 0.5):]] == list(range(5, 10))  # steps 21..25 > 20
    assert len(losses[_first_counted(traj, 0.0):]) == 10 and not losses[_first_counted(traj, 0.75):]
    for est in (TruncatedBPTT(truncation_length=5), AntitheticPES(truncation_length=5)):
        n = est.n_states
        early, default, zero = (_traj(task, net, n, horizon=40) for _ in range(3))
        # before the counted part: no gradient, but the trajectory advances as usual
        g, stats = est.estimate(net, [early], torch.Generator().manual_seed(0), 0.05, 1.5, 0.0, 0.5)
        assert torch.count_nonzero(g) == 0 and early.step == 5 and stats["meta_loss"] == 0.0
        # objective_from=0 is the default objective
        g0, _ = est.estimate(net, [default], torch.Generator().manual_seed(0), 0.05, 1.5)
        g1, _ = est.estimate(net, [zero], torch.Generator().manual_seed(0), 0.05, 1.5, 0.0, 0.0)
        assert torch.count_nonzero(g0) > 0 and torch.equal(g0, g1)


def test_rise_term_punishes_only_rises_above_the_trajectory_best():
    from learned_optim.meta.estimators import RISE_FLOOR, rise_term

    task, net = _tiny_task(), _net()
    traj = _traj(task, net, 2, horizon=40)
    traj.init_loss = 1.0
    cap = math.log(1.5)
    seq = [0.5, 0.25, 0.5, 0.1, 0.2, 0.0, 1e-13, 10.0, float("nan")]
    want = [0.0, 0.0, math.log(2), 0.0, math.log(2), 0.0, 0.0, cap - math.log(RISE_FLOOR), cap - math.log(RISE_FLOOR)]
    for loss, w in zip(seq, want):
        x = torch.tensor(loss, requires_grad=True)
        r = rise_term(traj, 0, x, cap)
        assert math.isclose(float(r), w, rel_tol=1e-6, abs_tol=1e-12), (loss, float(r), w)
        # a rise inside the clip range carries gradient d log L / dL = 1/L; a clipped loss none
        grad = torch.autograd.grad(r, x, allow_unused=True)[0] if r.requires_grad else None
        if w > 0 and 0 < loss < 1.5 and loss > RISE_FLOOR:
            assert math.isclose(float(grad), 1 / loss, rel_tol=1e-6)
        else:
            assert grad is None or float(grad) == 0.0
    # each state keeps its own best; the other one's is untouched
    assert traj.best_log[1] == 0.0 and math.isclose(traj.best_log[0], math.log(RISE_FLOOR), rel_tol=1e-6)


@pytest.mark.parametrize("est", [TruncatedBPTT(truncation_length=5), AntitheticPES(truncation_length=5)])
def test_rise_penalty_zero_is_the_default_and_positive_changes_the_estimate(est):
    from learned_optim.meta.checkpoint import traj_from_dict, traj_to_dict

    task, net = _tiny_task(), _net()
    n = est.n_states
    a, b, c = (_traj(task, net, n, horizon=40) for _ in range(3))
    ga, _ = est.estimate(net, [a], torch.Generator().manual_seed(0), 0.3, 1.5)
    gb, _ = est.estimate(net, [b], torch.Generator().manual_seed(0), 0.3, 1.5, 0.0, 0.0, "train", 0.0)
    assert torch.equal(ga, gb) and a.best_log is None and b.best_log is None
    # at lr 0.3 this rule's loss goes up and down between truncation ends: the penalty has a say
    gs = []
    for _ in range(6):
        g, _ = est.estimate(net, [c], torch.Generator().manual_seed(0), 0.3, 1.5, 0.0, 0.0, "train", 10.0)
        gs.append(g)
    assert c.best_log is not None and len(c.best_log) == n and all(math.isfinite(v) for v in c.best_log)
    # the per-state best survives a checkpoint round trip
    back = traj_from_dict(traj_to_dict(c), lambda seed: task)
    assert back.best_log == c.best_log
    a2 = _traj(task, net, n, horizon=40)
    ref = [est.estimate(net, [a2], torch.Generator().manual_seed(0), 0.3, 1.5)[0] for _ in range(6)]
    # no rise at the first four truncation ends (the loss falls): the same estimates; then it rises
    assert all(torch.equal(x, y) for x, y in zip(gs[:4], ref[:4]))
    assert all(not torch.equal(x, y) for x, y in zip(gs[4:], ref[4:]))
