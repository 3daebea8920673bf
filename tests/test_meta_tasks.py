"""Tasks and task families of learned_optim.meta."""

import math

import pytest
import torch

from learned_optim.meta import tasks as T

FAMILIES = [T.DigitsMLPFamily(), T.DigitsCNNFamily(), T.DigitsLogRegFamily(), T.DigitsAutoencoderFamily(),
            T.SyntheticClassificationFamily(), T.SyntheticRegressionFamily()]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: type(f).__name__)
def test_family_samples_are_deterministic_and_trainable(family):
    a = family.sample(torch.Generator().manual_seed(5))
    b = family.sample(torch.Generator().manual_seed(5))
    assert a.name == b.name
    pa = a.init_params(torch.Generator().manual_seed(1))
    pb = b.init_params(torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    flat = T.flatten_params(pa).requires_grad_(True)
    shapes = [p.shape for p in pa]
    batch = a.sample_batch(torch.Generator().manual_seed(2))
    loss = a.loss(T.unflatten_params(flat, shapes), batch)
    assert loss.ndim == 0 and math.isfinite(float(loss.detach()))
    (g,) = torch.autograd.grad(loss, flat)
    assert g.shape == flat.shape and torch.isfinite(g).all() and g.abs().sum() > 0


def test_default_families_differ_across_seeds():
    fam = T.default_train_family()
    names = {fam.sample(torch.Generator().manual_seed(s)).name for s in range(30)}
    assert len(names) > 10


def test_rescaled_task_is_the_same_problem():
    base = T.SyntheticRegressionFamily(rescale_prob=0.0).sample(torch.Generator().manual_seed(0))
    params = base.init_params(torch.Generator().manual_seed(0))
    scales = tuple(float(i + 2) for i in range(len(params)))
    resc = T.RescaledTask(base, scales)
    q = resc.init_params(torch.Generator().manual_seed(0))
    batch = base.full_batch()
    assert torch.allclose(base.loss(params, batch), resc.loss(q, batch))


def test_module_task_wraps_a_user_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(40, 3), torch.randint(2, (40,))
    task = T.as_task((model, (x, y)))
    params = task.init_params(torch.Generator().manual_seed(0))
    again = task.init_params(torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(params, again))
    loss = task.loss(params, task.sample_batch(torch.Generator().manual_seed(0)))
    assert math.isfinite(float(loss.detach()))
    # the user's model is never touched
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_task_inputs_raise_readable_errors():
    with pytest.raises(TypeError, match="cannot use a int as a task"):
        T.as_task(3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        T.ModuleTask("nope", (torch.zeros(2, 1), torch.zeros(2)))
    with pytest.raises(ValueError, match="same non-zero length"):
        T.ModuleTask(torch.nn.Linear(1, 1), (torch.zeros(3, 1), torch.zeros(2)))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        T.ModuleTask(torch.nn.Linear(1, 1), (torch.zeros(3, 1), torch.zeros(3)), batch_size=0)


def test_module_task_with_a_batch_sampler():
    def sampler(gen):
        x = torch.randn(8, 2, generator=gen)
        return x, x.sum(1, keepdim=True)

    task = T.ModuleTask(torch.nn.Linear(2, 1), sampler)
    params = task.init_params(torch.Generator().manual_seed(0))
    b1 = task.sample_batch(torch.Generator().manual_seed(3))
    b2 = task.sample_batch(torch.Generator().manual_seed(3))
    assert torch.equal(b1[0], b2[0])
    assert torch.equal(task.full_batch()[0], task.full_batch()[0])
    assert math.isfinite(float(task.loss(params, b1).detach()))
