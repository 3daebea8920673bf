"""The shipped meta-trained weights: provenance matches the documented command, and they train."""

import math

import pytest
import torch

from learned_optim import LearnedOptimizer, from_pretrained, list_shipped
from learned_optim.hub import DEFAULT_WEIGHTS, resolve
from learned_optim.meta import MetaTrainConfig, get_preset
from learned_optim.network import PRIOR_KEYS

# Each meta-trained shipped name and the preset its model card documents.
SHIPPED = [("lstm-h4-v1", "lstm-h4-v1"), ("lstm-h4-v2-t32", "lstm-h4-v2-t32"),
           ("lstm-h4-v2-size", "lstm-h4-v2-size"), ("lstm-h4-v2-vec", "lstm-h4-v2-vec"),
           ("lstm-h4-v2-cautious", "lstm-h4-v2-cautious"), ("lstm-h4-v2-cautious-size", "default"),
           ("lstm-h4-v2-cautious-size", "lstm-h4-v2-cautious-size"),
           ("lstm-h4-v2-rescale", "lstm-h4-v2-rescale"), ("lstm-h4-v2-rescale-0.7", "lstm-h4-v2-rescale-0.7"),
           ("lstm-h4-v2-rescale-ratio", "lstm-h4-v2-rescale-ratio")]


def test_the_default_preset_makes_the_default_weights():
    assert DEFAULT_WEIGHTS == "lstm-h4-v2-cautious-size"
    assert get_preset("default") == get_preset(DEFAULT_WEIGHTS)


def test_the_default_differs_from_lstm_h4_v2_cautious_only_below_1e5_parameters():
    """The default is lstm-h4-v2-cautious with a steeper capped size prior: one head weight differs,
    so a model of 1e5 parameters or more (the benchmark transformers) takes the same steps bit for
    bit, and a smaller one takes larger steps."""
    new, old = from_pretrained(DEFAULT_WEIGHTS), from_pretrained("lstm-h4-v2-cautious")
    differ = {k for k, v in new.state_dict().items() if not torch.equal(v, old.state_dict()[k])}
    assert differ == {"head_weight"}
    assert new.provenance["size_prior_capped"] == -1.0 and old.provenance["size_prior_capped"] == -0.5

    def moved(weights, widths, steps):
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:])])
        start = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
        opt = LearnedOptimizer(model.parameters(), weights=weights)
        x = torch.randn(64, widths[0])
        for _ in range(steps):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - start

    big = (300, 300, 40)  # 102,340 parameters: the capped size input is 0
    assert sum(a * b + b for a, b in zip(big, big[1:])) >= 100_000
    assert torch.equal(moved(DEFAULT_WEIGHTS, big, 5), moved("lstm-h4-v2-cautious", big, 5))

    # The transformer benchmark's own models (202k and 834k parameters) under its recipe's param groups.
    from learned_optim.benchmarking.transformer_models import GPT, ViT, param_groups

    def trained(weights, make, batch):
        torch.manual_seed(0)
        model = make()
        opt = LearnedOptimizer(param_groups(model, 0.1), weights=weights)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, y = batch(gen)
            opt.zero_grad()
            out = model(x)
            torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)).backward()
            opt.step()
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    for make, batch in ((ViT, lambda g: (torch.rand(8, 64, generator=g), torch.randint(10, (8,), generator=g))),
                        (GPT, lambda g: (torch.randint(256, (2, 64), generator=g),
                                         torch.randint(256, (2, 64), generator=g)))):
        assert torch.equal(trained(DEFAULT_WEIGHTS, make, batch), trained("lstm-h4-v2-cautious", make, batch))
    small = (20, 30, 4)  # 754 parameters: a larger first step than lstm-h4-v2-cautious's
    assert moved(DEFAULT_WEIGHTS, small, 1).norm() > 1.2 * moved("lstm-h4-v2-cautious", small, 1).norm()


@pytest.mark.parametrize("name,preset", SHIPPED)
def test_shipped_weights_come_from_their_preset(name, preset):
    assert name in list_shipped()
    net = from_pretrained(name)
    prov = net.provenance
    assert prov["trained"] is True
    # `learned-optim meta-train --config PRESET` reproduces them: same config, same network.
    # (Fields added to MetaTrainConfig later take their defaults, which keep the old behaviour.)
    config = get_preset(preset)
    assert MetaTrainConfig.from_dict(prov["meta_train_config"]) == config
    network = dict(config.network)
    if config.size_prior:  # the prior's size input is added to the written weights (MetaTrainConfig.size_prior)
        feature = config.size_prior_feature
        if feature not in network["context_features"]:
            network["context_features"] = [*network["context_features"], feature]
        assert prov[PRIOR_KEYS[feature]] == config.size_prior
    if config.vector_prior:  # then the vector prior's input (MetaTrainConfig.vector_prior)
        network["context_features"] = [*network["context_features"], "is_vector_large"]
        assert prov[PRIOR_KEYS["is_vector_large"]] == config.vector_prior
    if config.ratio_prior:  # then the ratio prior's input (MetaTrainConfig.ratio_prior)
        network["context_features"] = [*network["context_features"], "grad_log_ratio_large"]
        assert prov[PRIOR_KEYS["grad_log_ratio_large"]] == config.ratio_prior
    if config.cautious_mask:  # then the cautious mask (MetaTrainConfig.cautious_mask)
        network["cautious_scale"] = config.cautious_mask
        assert prov["cautious_mask"] == config.cautious_mask
        if config.cautious_rescale:  # and its per-tensor rescale (MetaTrainConfig.cautious_rescale)
            network["cautious_rescale"] = True
            assert prov["cautious_rescale"] is True
    assert net.config.to_dict() == network
    card = (resolve(name) / "README.md").read_text(encoding="utf-8")
    assert f"learned-optim meta-train --config {preset}" in card


@pytest.mark.parametrize("name", sorted({n for n, _ in SHIPPED}))
def test_shipped_weights_train_a_small_model(name):
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = (x[:, :3].sum(1) > x[:, 3:].sum(1)).long()
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = LearnedOptimizer(model.parameters(), weights=name)
    with torch.no_grad():
        start = float(torch.nn.functional.cross_entropy(model(x), y))
    for step in range(150):
        idx = torch.randint(256, (32,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        end = float(torch.nn.functional.cross_entropy(model(x), y))
    assert math.isfinite(end) and end < 0.5 * start


@pytest.mark.parametrize("name", sorted({n for n, _ in SHIPPED}))
def test_a_coordinate_whose_gradient_stops_keeps_moving_by_a_nearly_constant_step(name):
    # What the README says of a zero gradient after nonzero ones, for the meta-trained rules without
    # the cautious mask: the LSTM's output at zero input is not zero, so the step does not die away as
    # Adam's does. With the mask (the default) such a coordinate stops at once.
    p = torch.nn.Parameter(torch.zeros(3))
    opt = LearnedOptimizer([p], weights=name)
    for _ in range(20):
        p.grad = torch.tensor([1.0, -0.5, 0.0])
        opt.step()
    steps = []
    for _ in range(600):
        before = p.detach().clone()
        p.grad = torch.zeros(3)
        opt.step()
        steps.append((p.detach() - before).abs())
    assert steps[-1][2] == 0 and float(p.detach()[2]) == 0.0  # never had a gradient: never moves
    if from_pretrained(name).config.cautious_scale:
        # the cautious mask: sign(g) = 0 disagrees with every momentum, so no step at all
        assert all(bool((s == 0).all()) for s in steps)
        return
    late, later = steps[299][:2], steps[-1][:2]
    assert (later > 1e-6).all() and ((later - late).abs() < 0.2 * late).all(), (late, later)
